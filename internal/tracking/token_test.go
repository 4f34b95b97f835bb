package tracking

import (
	"bytes"
	"encoding/base64"
	"errors"
	"math"
	"strings"
	"testing"
)

func testKey(id uint8, fill byte) Key {
	return Key{ID: id, Secret: bytes.Repeat([]byte{fill}, MinSecretLen)}
}

func testSigner(t testing.TB) *Signer {
	t.Helper()
	s, err := NewSigner(testKey(1, 'a'))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestTokenRoundTrip(t *testing.T) {
	s := testSigner(t)
	cases := []struct {
		name string
		ref  Ref
	}{
		{"open zero ids", Ref{LogID: 0, DeliveryID: 0, Link: NoLink, Kind: KindOpen}},
		{"open ids one", Ref{LogID: 1, DeliveryID: 1, Link: NoLink, Kind: KindOpen}},
		{"open max ids", Ref{LogID: math.MaxInt64, DeliveryID: math.MaxInt64, Link: NoLink, Kind: KindOpen}},
		{"mirror", Ref{LogID: 123456789, DeliveryID: 4321, Link: NoLink, Kind: KindMirror}},
		{"optout", Ref{LogID: 123456789, DeliveryID: 4321, Link: NoLink, Kind: KindOptOut}},
		{"click link 0", Ref{LogID: 123456789, DeliveryID: 4321, Link: 0, Kind: KindClick}},
		{"click max link", Ref{LogID: math.MaxInt64, DeliveryID: math.MaxInt64, Link: NoLink - 1, Kind: KindClick}},
		{"click personalised", Ref{LogID: 7, DeliveryID: 8, Link: 3, Kind: KindClick, URL: "https://shop.example/p/42?u=ab%20c"}},
		{"click long URL", Ref{LogID: 7, DeliveryID: 8, Link: 3, Kind: KindClick, URL: "https://a.example/" + strings.Repeat("x", MaxURLLen-18)}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			tok, err := s.Sign(c.ref)
			if err != nil {
				t.Fatal(err)
			}
			got, err := s.Verify(tok)
			if err != nil {
				t.Fatalf("Verify(%q): %v", tok, err)
			}
			want := c.ref
			want.KeyID = 1
			if got != want {
				t.Fatalf("Verify = %+v, want %+v", got, want)
			}
			if strings.ContainsAny(tok, "+/=") {
				t.Fatalf("token %q is not unpadded base64url", tok)
			}
		})
	}
}

func TestTokenLength(t *testing.T) {
	s := testSigner(t)
	// Typical: a hundred-million-row sending log, ten thousand deliveries, a link in the first 128.
	tok, _ := s.Sign(Ref{LogID: 250_000_000, DeliveryID: 12_000, Link: 17, Kind: KindClick})
	if len(tok) > 32 {
		t.Errorf("typical click token %q is %d chars; want at most 32", tok, len(tok))
	}
	tok, _ = s.Sign(Ref{LogID: math.MaxInt64, DeliveryID: math.MaxInt64, Link: NoLink - 1, Kind: KindClick})
	if len(tok) > 48 {
		t.Errorf("largest fixed-link token %q is %d chars; want at most 48", tok, len(tok))
	}
}

func TestSignRefusesBadRefs(t *testing.T) {
	s := testSigner(t)
	for name, ref := range map[string]Ref{
		"negative log":       {LogID: -1, Link: NoLink, Kind: KindOpen},
		"negative delivery":  {DeliveryID: -1, Link: NoLink, Kind: KindOpen},
		"zero kind":          {Link: NoLink},
		"unknown kind":       {Link: NoLink, Kind: 9},
		"click without link": {Link: NoLink, Kind: KindClick},
		"open with link":     {Link: 2, Kind: KindOpen},
		"URL on optout":      {Link: NoLink, Kind: KindOptOut, URL: "https://x.example/"},
		"URL too long":       {Link: 1, Kind: KindClick, URL: "https://x.example/" + strings.Repeat("y", MaxURLLen)},
		"javascript URL":     {Link: 1, Kind: KindClick, URL: "javascript:alert(1)"},
		"URL with newline":   {Link: 1, Kind: KindClick, URL: "https://x.example/\r\nSet-Cookie: a=b"},
	} {
		if tok, err := s.Sign(ref); err == nil {
			t.Errorf("%s: Sign(%+v) = %q, want an error", name, ref, tok)
		}
	}
}

// TestVerifyRejectsEveryAlteration replaces each character of valid tokens with every other
// byte value: no altered token may verify, and all fail with the one error value.
func TestVerifyRejectsEveryAlteration(t *testing.T) {
	s := testSigner(t)
	refs := []Ref{
		{LogID: 0, DeliveryID: 0, Link: NoLink, Kind: KindOpen},
		{LogID: 123456789, DeliveryID: 4321, Link: 5, Kind: KindClick},
		{LogID: math.MaxInt64, DeliveryID: 1, Link: NoLink, Kind: KindOptOut},
		{LogID: 9, DeliveryID: 9, Link: 0, Kind: KindClick, URL: "https://shop.example/p/1"},
	}
	for _, ref := range refs {
		tok, err := s.Sign(ref)
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < len(tok); i++ {
			for b := 0; b < 256; b++ {
				if byte(b) == tok[i] {
					continue
				}
				alt := tok[:i] + string(rune(b)) + tok[i+1:]
				if b >= 0x80 {
					alt = tok[:i] + string([]byte{byte(b)}) + tok[i+1:]
				}
				if got, err := s.Verify(alt); !errors.Is(err, ErrInvalidToken) {
					t.Fatalf("token %q altered at %d to %q: Verify = %+v, %v; want ErrInvalidToken", tok, i, alt, got, err)
				}
			}
		}
		// Truncation and extension.
		for n := 0; n < len(tok); n++ {
			if _, err := s.Verify(tok[:n]); !errors.Is(err, ErrInvalidToken) {
				t.Fatalf("token %q cut to %d chars verified", tok, n)
			}
		}
		for _, ext := range []string{"A", "AA", "AAA", "AAAA", "_", "=", "=="} {
			if _, err := s.Verify(tok + ext); !errors.Is(err, ErrInvalidToken) {
				t.Fatalf("token %q extended by %q verified", tok, ext)
			}
		}
	}
}

// TestVerifyRejectsReforgedFields re-encodes a token with one field changed and the original tag:
// each must fail (the tag covers every field, the key id included).
func TestVerifyRejectsReforgedFields(t *testing.T) {
	s := testSigner(t)
	tok, _ := s.Sign(Ref{LogID: 1000, DeliveryID: 20, Link: 3, Kind: KindClick})
	raw, err := base64.RawURLEncoding.DecodeString(tok)
	if err != nil {
		t.Fatal(err)
	}
	// raw: [kid, hdr, 1000 as 2 varint bytes, 20, 3, tag...]
	for i := 0; i < len(raw)-macLen; i++ {
		for _, delta := range []byte{1, 0x80, 0xFF} {
			alt := bytes.Clone(raw)
			alt[i] += delta
			if _, err := s.Verify(base64.RawURLEncoding.EncodeToString(alt)); !errors.Is(err, ErrInvalidToken) {
				t.Errorf("byte %d += %#x verified", i, delta)
			}
		}
	}
}

func TestVerifyRejectsOtherKey(t *testing.T) {
	mine := testSigner(t)
	theirs, _ := NewSigner(testKey(1, 'b')) // same id, another secret
	other, _ := NewSigner(testKey(2, 'a'))  // same secret, another id
	ref := Ref{LogID: 5, DeliveryID: 6, Link: 1, Kind: KindClick}
	for name, s := range map[string]*Signer{"other secret": theirs, "unknown id": other} {
		tok, _ := s.Sign(ref)
		if _, err := mine.Verify(tok); !errors.Is(err, ErrInvalidToken) {
			t.Errorf("%s: token verified by the wrong signer: %v", name, err)
		}
	}
	for _, junk := range []string{"", "x", strings.Repeat("A", 22), strings.Repeat("_", 40), strings.Repeat("A", 5000), "!!!!!!!!!!!!!!!!!!!!!!!!!!"} {
		if _, err := mine.Verify(junk); !errors.Is(err, ErrInvalidToken) {
			t.Errorf("Verify(%q) = %v", junk, err)
		}
	}
}

func TestKeyRotation(t *testing.T) {
	oldKey, newKey := testKey(1, 'o'), testKey(2, 'n')
	before, _ := NewSigner(oldKey)
	during, err := NewSigner(newKey, oldKey)
	if err != nil {
		t.Fatal(err)
	}
	after, _ := NewSigner(newKey)
	ref := Ref{LogID: 42, DeliveryID: 7, Link: NoLink, Kind: KindOpen}

	oldTok, _ := before.Sign(ref)
	newTok, _ := during.Sign(ref)
	if during.SigningKeyID() != 2 {
		t.Fatalf("signing key id = %d, want 2", during.SigningKeyID())
	}
	if got, err := during.Verify(oldTok); err != nil || got.KeyID != 1 {
		t.Errorf("old token during rotation: %+v, %v", got, err)
	}
	if got, err := during.Verify(newTok); err != nil || got.KeyID != 2 {
		t.Errorf("new token during rotation: %+v, %v", got, err)
	}
	if _, err := after.Verify(oldTok); !errors.Is(err, ErrInvalidToken) {
		t.Errorf("retired key's token verified: %v", err)
	}
	if _, err := before.Verify(newTok); !errors.Is(err, ErrInvalidToken) {
		t.Errorf("new key's token verified by a signer without it: %v", err)
	}
}

func TestNewSignerRefusesBadKeys(t *testing.T) {
	if _, err := NewSigner(Key{ID: 1, Secret: []byte("short")}); err == nil {
		t.Error("a short secret was accepted")
	}
	if _, err := NewSigner(testKey(1, 'a'), testKey(1, 'b')); err == nil {
		t.Error("a duplicate key id was accepted")
	}
}

// TestDecodeMatchesStdlib checks the strict decoder against encoding/base64's strict one.
func TestDecodeMatchesStdlib(t *testing.T) {
	strict := base64.RawURLEncoding.Strict()
	for n := 0; n < 20; n++ {
		src := make([]byte, n)
		for i := range src {
			src[i] = byte(i*37 + n)
		}
		enc := base64.RawURLEncoding.EncodeToString(src)
		got, ok := appendDecode(nil, enc)
		if !ok || !bytes.Equal(got, src) {
			t.Fatalf("decode(%q) = %x, %v; want %x", enc, got, ok, src)
		}
		if enc == "" {
			continue
		}
		// Every variant of the last character: accepted exactly when the stdlib accepts it.
		for _, c := range "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_+/=" {
			alt := enc[:len(enc)-1] + string(c)
			_, stdErr := strict.DecodeString(alt)
			_, ok := appendDecode(nil, alt)
			if ok != (stdErr == nil) {
				t.Errorf("%q: ours ok=%v, stdlib err=%v", alt, ok, stdErr)
			}
		}
	}
}

func TestVerifyAllocations(t *testing.T) {
	if raceEnabled {
		t.Skip("sync.Pool drops items under the race detector")
	}
	s := testSigner(t)
	tok, _ := s.Sign(Ref{LogID: 250_000_000, DeliveryID: 12_000, Link: 17, Kind: KindClick})
	allocs := testing.AllocsPerRun(1000, func() {
		if _, err := s.Verify(tok); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Errorf("Verify allocates %v times per call; want 0", allocs)
	}
}

func BenchmarkVerify(b *testing.B) {
	s := testSigner(b)
	tok, _ := s.Sign(Ref{LogID: 250_000_000, DeliveryID: 12_000, Link: 17, Kind: KindClick})
	b.ReportAllocs()
	b.Run("serial", func(b *testing.B) {
		for b.Loop() {
			if _, err := s.Verify(tok); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := s.Verify(tok); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
	b.Run("forged", func(b *testing.B) {
		last := byte('A')
		if tok[len(tok)-1] == last {
			last = 'B'
		}
		forged := tok[:len(tok)-1] + string(last)
		for b.Loop() {
			if _, err := s.Verify(forged); err == nil {
				b.Fatal("forged token verified")
			}
		}
	})
}

func BenchmarkSign(b *testing.B) {
	s := testSigner(b)
	ref := Ref{LogID: 250_000_000, DeliveryID: 12_000, Link: 17, Kind: KindClick}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := s.Sign(ref); err != nil {
			b.Fatal(err)
		}
	}
}
