package profile

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/heraldhq/herald/internal/audit"
	"github.com/heraldhq/herald/internal/problem"
)

// Import limits.
const (
	// MaxImportLine is the longest CSV line accepted; a longer one is reported and skipped.
	MaxImportLine = 1 << 20
	// MaxReportedErrors is how many line errors an import lists; the count covers all.
	MaxReportedErrors = 1000
	// importBatch is how many lines are resolved and written per transaction.
	importBatch = 5000
)

// LineError is one rejected CSV line: where, and why.
type LineError struct {
	Line    int    `json:"line"`
	Column  int    `json:"column,omitempty"`
	Field   string `json:"field,omitempty"`
	Message string `json:"message"`
}

func (e LineError) String() string {
	switch {
	case e.Column > 0 && e.Field != "":
		return fmt.Sprintf("line %d, column %d (%s): %s", e.Line, e.Column, e.Field, e.Message)
	case e.Column > 0:
		return fmt.Sprintf("line %d, column %d: %s", e.Line, e.Column, e.Message)
	}
	return fmt.Sprintf("line %d: %s", e.Line, e.Message)
}

// ImportResult counts what an import did with each data line: read = created + updated +
// unchanged + rejected.
type ImportResult struct {
	Read      int         `json:"read"`
	Created   int         `json:"created"`
	Updated   int         `json:"updated"`
	Unchanged int         `json:"unchanged"`
	Rejected  int         `json:"rejected"`
	Errors    []LineError `json:"errors"`
	// ErrorsTruncated is set when more lines were rejected than Errors lists.
	ErrorsTruncated bool    `json:"errors_truncated,omitempty"`
	Seconds         float64 `json:"seconds"`
}

// ImportOptions tune an import.
type ImportOptions struct {
	// Progress, when set, is called after each batch with the counts so far and the bytes read.
	Progress func(r ImportResult, bytesRead int64)
}

// column says where a CSV column goes.
type column struct {
	name  string // as in the header
	field string // a profile field, or "" for an attribute
	attr  string
	kind  string // attribute type: string, number, bool, date
}

var fieldAliases = map[string]string{
	"email": "email", "e-mail": "email", "email_address": "email",
	"phone": "phone", "mobile": "phone", "phone_number": "phone",
	"time_zone": "time_zone", "timezone": "time_zone", "tz": "time_zone",
	"locale": "locale", "language": "locale",
	"external_id": "external_id", "externalid": "external_id",
	"opt_out_email": "opt_out_email", "opt_out_sms": "opt_out_sms", "opt_out_push": "opt_out_push",
	"push_token": "push_tokens", "push_tokens": "push_tokens",
}

// parseHeader maps header names to fields. Known names (and a few common aliases) are
// profile fields; `attributes.x` or any other name is the attribute x, optionally typed with
// a suffix: `age:number`, `vip:bool`, `birthday:date` (default string).
func parseHeader(names []string) ([]column, error) {
	cols := make([]column, len(names))
	seen := map[string]int{}
	hasKey := false
	for i, raw := range names {
		name := strings.TrimSpace(strings.TrimPrefix(raw, "\uFEFF"))
		where := fmt.Sprintf("line 1, column %d", i+1)
		if name == "" {
			return nil, fmt.Errorf("%s: the header has an empty column name", where)
		}
		base, kind, typed := strings.Cut(name, ":")
		lower := strings.ToLower(strings.TrimSpace(base))
		c := column{name: name, kind: "string"}
		if f, ok := fieldAliases[lower]; ok && !typed {
			c.field = f
			hasKey = hasKey || f == "email" || f == "external_id"
		} else {
			c.attr = strings.TrimSpace(strings.TrimPrefix(strings.TrimPrefix(base, "attributes."), "attr."))
			if err := CheckAttributeKey(c.attr); err != nil {
				return nil, fmt.Errorf("%s: %v", where, err)
			}
			if typed {
				switch k := strings.ToLower(strings.TrimSpace(kind)); k {
				case "string", "number", "bool", "date":
					c.kind = k
				default:
					return nil, fmt.Errorf("%s: unknown type %q in %q; use string, number, bool or date", where, kind, name)
				}
			}
		}
		key := c.field
		if key == "" {
			key = "attributes." + c.attr
		}
		if j, dup := seen[key]; dup {
			return nil, fmt.Errorf("%s: %q maps to %s, as column %d already does", where, name, key, j+1)
		}
		seen[key] = i
		cols[i] = c
	}
	if !hasKey {
		return nil, fmt.Errorf("line 1: the header needs an email or external_id column to match profiles by")
	}
	return cols, nil
}

// toInput turns one record into an Input, or the problems of its cells.
func toInput(cols []column, rec []string, line int) (Input, []LineError) {
	var in Input
	var errs []LineError
	bad := func(i int, field, msg string) {
		errs = append(errs, LineError{Line: line, Column: i + 1, Field: field, Message: msg})
	}
	for i, c := range cols {
		v := strings.TrimSpace(rec[i])
		if v == "" {
			continue // an empty cell keeps the stored value
		}
		switch c.field {
		case "email":
			in.Email = &v
		case "phone":
			in.Phone = &v
		case "time_zone":
			in.TimeZone = &v
		case "locale":
			in.Locale = &v
		case "external_id":
			in.ExternalID = &v
		case "push_tokens":
			toks := strings.Fields(strings.ReplaceAll(v, ";", " "))
			in.PushTokens = &toks
		case "opt_out_email", "opt_out_sms", "opt_out_push":
			b, err := parseBool(v)
			if err != nil {
				bad(i, c.field, err.Error())
				continue
			}
			switch c.field {
			case "opt_out_email":
				in.OptOutEmail = &b
			case "opt_out_sms":
				in.OptOutSMS = &b
			default:
				in.OptOutPush = &b
			}
		default:
			val, err := attrValue(c.kind, v)
			if err != nil {
				bad(i, c.attr, err.Error())
				continue
			}
			if in.Attributes == nil {
				in.Attributes = map[string]any{}
			}
			in.Attributes[c.attr] = val
		}
	}
	return in, errs
}

func parseBool(v string) (bool, error) {
	switch strings.ToLower(v) {
	case "1", "true", "yes", "y", "t":
		return true, nil
	case "0", "false", "no", "n", "f":
		return false, nil
	}
	return false, fmt.Errorf("%q is not a yes/no value (use true/false, yes/no or 1/0)", v)
}

func attrValue(kind, v string) (any, error) {
	switch kind {
	case "number":
		f, err := strconv.ParseFloat(v, 64)
		if err != nil {
			return nil, fmt.Errorf("%q is not a number", v)
		}
		return f, nil
	case "bool":
		return parseBool(v)
	case "date":
		for _, layout := range []string{"2006-01-02", time.RFC3339, "2006-01-02 15:04:05"} {
			if t, err := time.Parse(layout, v); err == nil {
				if layout == "2006-01-02" {
					return t.Format("2006-01-02"), nil
				}
				return t.UTC().Format(time.RFC3339), nil
			}
		}
		return nil, fmt.Errorf("%q is not a date (use 2024-05-01 or 2024-05-01T10:00:00Z)", v)
	}
	return v, nil
}

// countingReader counts the bytes an import has read, for progress.
type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// Import reads profiles from CSV, streamed in constant memory, and upserts them. The first
// line is the header. Every bad line is reported with its line number, column and reason
// while the good lines are kept; a bad header stops the import before anything is written.
// A re-import of the same file changes nothing.
func (s *Service) Import(ctx context.Context, actor audit.Actor, r io.Reader, opts ImportOptions) (ImportResult, error) {
	start := time.Now()
	res := ImportResult{Errors: []LineError{}}
	cr := &countingReader{r: r}
	rd := newCSVReader(cr, MaxImportLine)
	header, _, err := rd.read()
	var recErr *recordError
	switch {
	case err == io.EOF:
		return res, problem.Invalidf("file", "the file is empty: it needs a header line naming the columns")
	case errors.As(err, &recErr):
		return res, problem.Invalidf("file", "the header is not valid CSV: %v", recErr)
	case err != nil:
		return res, fmt.Errorf("read the import: %w", err)
	}
	cols, err := parseHeader(header)
	if err != nil {
		return res, problem.Invalidf("file", "%v", err)
	}

	addErr := func(e LineError) {
		res.Rejected++
		if len(res.Errors) < MaxReportedErrors {
			res.Errors = append(res.Errors, e)
		} else {
			res.ErrorsTruncated = true
		}
	}

	// Reading and validating overlaps with writing the previous batch.
	type job struct {
		batch []pending
		errs  []LineError // lines rejected while reading, in order among the batch's lines
	}
	jobs := make(chan job, 2)
	readErr := make(chan error, 1)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		defer close(jobs)
		cur := job{}
		flush := func() bool {
			select {
			case jobs <- cur:
				cur = job{}
				return true
			case <-ctx.Done():
				return false
			}
		}
		for {
			rec, line, err := rd.read()
			if err == io.EOF {
				break
			}
			if errors.As(err, &recErr) {
				cur.errs = append(cur.errs, LineError{Line: recErr.Line, Column: recErr.Column, Message: recErr.Msg})
				continue
			}
			if err != nil {
				readErr <- fmt.Errorf("read the import: %w", err)
				return
			}
			if len(rec) != len(cols) {
				cur.errs = append(cur.errs, LineError{Line: line, Message: fmt.Sprintf("the line has %d columns; the header has %d", len(rec), len(cols))})
				continue
			}
			in, errs := toInput(cols, rec, line)
			if len(errs) == 0 {
				n, ferrs := normalize(in)
				for _, fe := range ferrs {
					errs = append(errs, LineError{Line: line, Column: columnOf(cols, fe.Field), Field: fe.Field, Message: fe.Message})
				}
				if len(errs) == 0 {
					if !n.matchable {
						errs = append(errs, LineError{Line: line, Message: "the line has neither an email nor an external id"})
					} else {
						cur.batch = append(cur.batch, pending{line: line, n: n})
					}
				}
			}
			if len(errs) > 0 {
				cur.errs = append(cur.errs, errs[0])
				for _, e := range errs[1:] {
					cur.errs[len(cur.errs)-1].Message += "; " + e.String()
				}
			}
			if len(cur.batch) >= importBatch {
				if !flush() {
					return
				}
			}
		}
		if len(cur.batch) > 0 || len(cur.errs) > 0 {
			flush()
		}
		readErr <- nil
	}()

	for j := range jobs {
		for _, e := range j.errs {
			res.Read++
			addErr(e)
		}
		if len(j.batch) == 0 {
			continue
		}
		var br *batchResult
		// A batch that meets profiles another import or request created or changed meanwhile
		// (PostgreSQL) is resolved and written again: the second time it reads them as they are.
		err := retryRaced(func() error {
			return inBatchTx(ctx, s.db, func(conn *sql.Conn, tx *sql.Tx) error {
				var err error
				if br, err = resolve(ctx, s.db.Engine, tx, j.batch, s.clock.Now()); err != nil {
					return err
				}
				return write(ctx, s.db, conn, tx, br, false)
			})
		})
		if err != nil {
			return res, fmt.Errorf("import lines %d to %d: %w", j.batch[0].line, j.batch[len(j.batch)-1].line, err)
		}
		for i, o := range br.outcomes {
			res.Read++
			switch o {
			case outCreated:
				res.Created++
			case outUpdated:
				res.Updated++
			case outUnchanged:
				res.Unchanged++
			case outRejected:
				field := ""
				for _, c := range br.conflict {
					if c.index == i {
						field = c.field
					}
				}
				addErr(LineError{Line: j.batch[i].line, Column: columnOf(cols, field), Field: field, Message: br.errs[i].Error()})
			}
		}
		if opts.Progress != nil {
			opts.Progress(res, cr.n)
		}
	}
	if err := <-readErr; err != nil {
		return res, err
	}
	res.Seconds = time.Since(start).Seconds()
	summary := map[string]any{"read": res.Read, "created": res.Created, "updated": res.Updated, "unchanged": res.Unchanged, "rejected": res.Rejected}
	if err := s.db.InTx(ctx, func(tx *sql.Tx) error {
		return audit.Record(ctx, tx, s.clock.Now(), actor, "profile.import", "profile", "", nil, summary)
	}); err != nil {
		return res, err
	}
	return res, nil
}

// columnOf returns the 1-based CSV column of a field, or 0.
func columnOf(cols []column, field string) int {
	for i, c := range cols {
		if (c.field != "" && c.field == field) || (c.field == "" && (c.attr == field || "attributes."+c.attr == field)) {
			return i + 1
		}
	}
	return 0
}
