package profile

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"unicode/utf8"
)

// csvReader reads RFC 4180 records one at a time and, unlike encoding/csv, recovers from a
// bad record without losing the good ones after it: a quoted field that is never closed is
// reported at the line where it opened, and reading resumes on the next line instead of
// swallowing the rest of the file. It reads in constant memory: a physical line longer than
// maxLine is skipped and reported without being held.
type csvReader struct {
	br      *bufio.Reader
	sep     byte
	maxLine int
	// maxRecordLines bounds how many physical lines a quoted field may span.
	maxRecordLines int

	line   int        // number of the last physical line taken from br
	replay []physical // physical lines to read again, after an unclosed quote
	buf    []byte
	fields []string
}

// physical is one physical line kept to be read again.
type physical struct {
	text    []byte
	n       int
	tooLong bool
}

// recordError is a problem with one record; reading can go on after it.
type recordError struct {
	Line   int
	Column int // 1-based field number, 0 when the record as a whole is at fault
	Msg    string
}

func (e *recordError) Error() string {
	if e.Column > 0 {
		return fmt.Sprintf("line %d, column %d: %s", e.Line, e.Column, e.Msg)
	}
	return fmt.Sprintf("line %d: %s", e.Line, e.Msg)
}

func newCSVReader(r io.Reader, maxLine int) *csvReader {
	return &csvReader{br: bufio.NewReaderSize(r, 64<<10), sep: ',', maxLine: maxLine, maxRecordLines: 1000}
}

// physLine returns the next physical line without its line ending, and its number. A line
// over maxLine is consumed to its end and reported as tooLong.
func (c *csvReader) physLine() (line []byte, n int, tooLong bool, err error) {
	if len(c.replay) > 0 {
		p := c.replay[0]
		c.replay = c.replay[1:]
		return p.text, p.n, p.tooLong, nil
	}
	c.buf = c.buf[:0]
	for {
		chunk, err := c.br.ReadSlice('\n')
		if !tooLong {
			if len(c.buf)+len(chunk) > c.maxLine+2 {
				tooLong, c.buf = true, c.buf[:0]
			} else {
				c.buf = append(c.buf, chunk...)
			}
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		if err == io.EOF && len(c.buf) == 0 && !tooLong {
			return nil, 0, false, io.EOF
		}
		if err != nil && err != io.EOF {
			return nil, 0, false, err
		}
		break
	}
	c.line++
	line = bytes.TrimSuffix(c.buf, []byte{'\n'})
	line = bytes.TrimSuffix(line, []byte{'\r'})
	return line, c.line, tooLong, nil
}

// read returns the next record's fields (valid until the next call) and the line it starts
// on. A *recordError is a bad record; io.EOF ends the input; any other error is fatal.
func (c *csvReader) read() ([]string, int, error) {
	for {
		line, start, tooLong, err := c.physLine()
		if err != nil {
			return nil, 0, err
		}
		if tooLong {
			return nil, start, &recordError{Line: start, Msg: fmt.Sprintf("the line is longer than %d bytes; it was skipped", c.maxLine)}
		}
		if len(bytes.TrimSpace(line)) == 0 {
			continue // blank lines are not records
		}
		return c.parse(line, start)
	}
}

func (c *csvReader) parse(line []byte, start int) ([]string, int, error) {
	c.fields = c.fields[:0]
	var consumed []physical // extra physical lines taken by a multi-line field
	var field []byte
	cur := line
	curLine := start
	i := 0
	col := 1
	if !utf8.Valid(cur) {
		return nil, start, &recordError{Line: start, Msg: fmt.Sprintf("the line is not valid UTF-8 (at byte %d); save the file as UTF-8", invalidAt(cur)+1)}
	}
	for {
		// Start of a field.
		if i < len(cur) && cur[i] == '"' {
			openLine := curLine
			i++
			field = field[:0]
			for {
				if i >= len(cur) {
					// The quoted field goes on on the next physical line.
					next, n, tooLong, err := c.physLine()
					if err == nil {
						// physLine reuses its buffer: keep a copy in case the line must be read again.
						next = append([]byte(nil), next...)
					}
					if err == nil && !tooLong && len(consumed) < c.maxRecordLines && utf8.Valid(next) {
						consumed = append(consumed, physical{next, n, false})
						field = append(field, '\n')
						cur, curLine, i = next, n, 0
						continue
					}
					// Never closed: report it and read the lines it swallowed again.
					if err == nil {
						consumed = append(consumed, physical{next, n, tooLong})
					}
					if err != nil && err != io.EOF {
						return nil, start, err
					}
					c.replay = append(consumed, c.replay...)
					return nil, start, &recordError{Line: openLine, Column: col,
						Msg: "a quoted field is never closed (unbalanced quote); the line was skipped"}
				}
				b := cur[i]
				if b == '"' {
					if i+1 < len(cur) && cur[i+1] == '"' {
						field = append(field, '"')
						i += 2
						continue
					}
					i++
					break
				}
				field = append(field, b)
				i++
			}
			c.fields = append(c.fields, string(field))
			if i < len(cur) && cur[i] != c.sep {
				// The field did close, so the lines it spans were its own: nothing to read again.
				return nil, start, &recordError{Line: start, Column: col, Msg: "text after a closing quote; a quote inside a quoted field is written twice (\"\")"}
			}
		} else {
			j := bytes.IndexByte(cur[i:], c.sep)
			var raw []byte
			if j < 0 {
				raw = cur[i:]
				i = len(cur)
			} else {
				raw = cur[i : i+j]
				i += j
			}
			if bytes.IndexByte(raw, '"') >= 0 {
				return nil, start, &recordError{Line: start, Column: col, Msg: "a quote inside an unquoted field; quote the whole field and double the quote (\"\")"}
			}
			c.fields = append(c.fields, string(raw))
		}
		if i >= len(cur) {
			return c.fields, start, nil
		}
		i++ // the separator
		col++
		if i == len(cur) {
			c.fields = append(c.fields, "") // a trailing separator ends with an empty field
			return c.fields, start, nil
		}
	}
}

func invalidAt(b []byte) int {
	for i := 0; i < len(b); {
		r, size := utf8.DecodeRune(b[i:])
		if r == utf8.RuneError && size == 1 {
			return i
		}
		i += size
	}
	return 0
}
