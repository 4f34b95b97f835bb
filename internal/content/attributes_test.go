package content

import (
	"reflect"
	"testing"
)

// TestDecodeAttributesFastPathAgrees compares DecodeAttributes, which reads flat objects itself,
// with encoding/json's reading of the same input, over inputs the fast path takes and inputs it
// must leave to encoding/json.
func TestDecodeAttributesFastPathAgrees(t *testing.T) {
	flat := []string{
		`{}`, ` { } `, `{"first_name":"Ann","city":"Lyon"}`, "{\n \"a\" : 1 ,\t\"b\":-42,\"c\":0,\"d\":-0}",
		`{"t":true,"f":false,"n":null}`, `{"a":"x","a":"y"}`, `{"big":9223372036854775807,"small":-9223372036854775808}`,
		`{"u":"é 中 😀","empty":"","k":"with space and 'quote'"}`,
	}
	others := []string{
		`{"esc":"a\"b"}`, `{"uni":"\u00e9"}`, `{"f":1.5}`, `{"e":1e3}`, `{"E":2E+2}`, `{"over":9223372036854775808}`,
		`{"nested":{"a":1}}`, `{"list":[1,"a"]}`, `{"lead":01}`, `{"neg":-}`, `{"bad":tru}`, `{"trail":1,}`, `{"a":1}x`,
		`{"a":1} {"b":2}`, `[1,2]`, `"str"`, `{"ctl":"a` + "\x01" + `"}`, `{"bad":"` + "\xff" + `"}`, `{"a" 1}`, `{"a":1`,
		`{a:1}`, `{"a":"x"`, `{"a":truex}`, `{"a":nul}`, `{"a":-01}`, `{"a":1.}`,
	}
	for _, in := range append(flat, others...) {
		got, gerr := DecodeAttributes([]byte(in))
		want, werr := decodeAttributes([]byte(in))
		if (gerr == nil) != (werr == nil) || !reflect.DeepEqual(got, want) {
			t.Errorf("%s: got %#v, %v; encoding/json gives %#v, %v", in, got, gerr, want, werr)
		}
	}
	// The result outlives its input: the engine decodes from the driver's buffer, reused at the
	// next row.
	for _, in := range append(flat, others[:8]...) {
		raw := []byte(in)
		got, err := DecodeAttributes(raw)
		want, _ := DecodeAttributes([]byte(in))
		for i := range raw {
			raw[i] = 'X'
		}
		if err == nil && !reflect.DeepEqual(got, want) {
			t.Errorf("%s: the result changed with its input: %#v", in, got)
		}
	}
	for _, in := range flat {
		if _, ok := decodeFlat([]byte(in)); !ok {
			t.Errorf("%s: the fast path left it to encoding/json", in)
		}
	}
	for _, in := range others[:8] {
		if _, ok := decodeFlat([]byte(in)); ok {
			t.Errorf("%s: the fast path took it", in)
		}
	}
}

func BenchmarkDecodeAttributes(b *testing.B) {
	raw := []byte(`{"first_name":"Annie","city":"Lyon","vip":true,"points":1500}`)
	b.Run("flat", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := DecodeAttributes(raw); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("encoding-json", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := decodeAttributes(raw); err != nil {
				b.Fatal(err)
			}
		}
	})
}
