package profile

import (
	"errors"
	"io"
	"strings"
	"testing"
)

type csvResult struct {
	line   int
	fields string // joined with |
	err    string
}

func readAll(t *testing.T, input string, maxLine int) []csvResult {
	t.Helper()
	r := newCSVReader(strings.NewReader(input), maxLine)
	var out []csvResult
	for {
		f, line, err := r.read()
		if err == io.EOF {
			return out
		}
		var re *recordError
		if errors.As(err, &re) {
			out = append(out, csvResult{line: re.Line, err: re.Error()})
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, csvResult{line: line, fields: strings.Join(f, "|")})
	}
}

func TestCSVReader(t *testing.T) {
	cases := []struct {
		name  string
		input string
		want  []csvResult
	}{
		{"simple", "a,b,c\n1,2,3\n", []csvResult{{1, "a|b|c", ""}, {2, "1|2|3", ""}}},
		{"crlf and no final newline", "a,b\r\n1,2", []csvResult{{1, "a|b", ""}, {2, "1|2", ""}}},
		{"quoted with comma, quote and newline", "x,\"a, \"\"b\"\"\nc\",y\nz,w,v\n",
			[]csvResult{{1, "x|a, \"b\"\nc|y", ""}, {3, "z|w|v", ""}}},
		{"empty fields", ",,\n\"\",x,\n", []csvResult{{1, "||", ""}, {2, "|x|", ""}}},
		{"blank lines skipped", "a\n\n  \nb\n", []csvResult{{1, "a", ""}, {4, "b", ""}}},
		{"unbalanced quote resumes on the next line", "a,b\n\"open,x\nc,d\ne,f\n",
			[]csvResult{{1, "a|b", ""}, {2, "", "line 2, column 1: a quoted field is never closed"}, {3, "c|d", ""}, {4, "e|f", ""}}},
		{"bare quote in unquoted field", "a,b\"c\nd,e\n",
			[]csvResult{{1, "", "line 1, column 2: a quote inside an unquoted field"}, {2, "d|e", ""}}},
		{"text after closing quote", "\"a\"b,c\nd,e\n",
			[]csvResult{{1, "", "line 1, column 1: text after a closing quote"}, {2, "d|e", ""}}},
		{"invalid UTF-8", "ok,1\nbad\xff,2\nok,3\n",
			[]csvResult{{1, "ok|1", ""}, {2, "", "line 2: the line is not valid UTF-8 (at byte 4)"}, {3, "ok|3", ""}}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := readAll(t, c.input, 1<<20)
			if len(got) != len(c.want) {
				t.Fatalf("got %d records %+v, want %d %+v", len(got), got, len(c.want), c.want)
			}
			for i := range got {
				w := c.want[i]
				if got[i].line != w.line || got[i].fields != w.fields || !strings.HasPrefix(got[i].err, w.err) || (w.err == "") != (got[i].err == "") {
					t.Errorf("record %d = %+v, want %+v", i, got[i], w)
				}
			}
		})
	}
}

func TestCSVReaderLongLineInsideUnclosedQuote(t *testing.T) {
	long := strings.Repeat("x", 2<<20)
	got := readAll(t, "h\n\"open,x\nfay\ngus,"+long+"\nhal\n", 1<<20)
	want := []csvResult{{1, "h", ""}, {2, "", "line 2, column 1: a quoted field is never closed"}, {3, "fay", ""}, {4, "", "line 4: the line is longer than"}, {5, "hal", ""}}
	if len(got) != len(want) {
		t.Fatalf("got %+v", got)
	}
	for i := range want {
		if got[i].line != want[i].line || got[i].fields != want[i].fields || !strings.HasPrefix(got[i].err, want[i].err) {
			t.Errorf("record %d = %+v, want %+v", i, got[i], want[i])
		}
	}
}

func TestCSVReaderLongLine(t *testing.T) {
	long := strings.Repeat("x", 3<<20)
	got := readAll(t, "a,b\n"+long+",1\nc,d\n", 1<<20)
	if len(got) != 3 || got[1].line != 2 || !strings.Contains(got[1].err, "longer than") || got[2].fields != "c|d" || got[2].line != 3 {
		t.Fatalf("got %+v", got)
	}
}
