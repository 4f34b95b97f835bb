package filter

import (
	"errors"
	"fmt"
	"sort"
	"strings"
)

// attributesName is the column holding the profile's free attributes as JSON.
const attributesName = "attributes"

// kind is what a field holds, which decides the literals and operators it takes.
type kind int

const (
	kindText kind = iota + 1
	kindInt
	kindBool
	kindTime
	kindAttribute
)

// columns are the profile columns a filter may name, with what they hold.
var columns = map[string]kind{
	"id":            kindInt,
	"email":         kindText,
	"email_domain":  kindText,
	"phone":         kindText,
	"time_zone":     kindText,
	"locale":        kindText,
	"external_id":   kindText,
	"opt_out_email": kindBool,
	"opt_out_sms":   kindBool,
	"opt_out_push":  kindBool,
	"created_at":    kindTime,
	"updated_at":    kindTime,
}

// validFields lists the field names for error messages, sorted, with the attribute form last.
var validFields = func() string {
	names := make([]string, 0, len(columns))
	for n := range columns {
		names = append(names, n)
	}
	sort.Strings(names)
	return strings.Join(names, ", ") + " and attributes.<key>"
}()

// errUnknownField is wrapped by the error for a field name that is not in the list.
var errUnknownField = errors.New("unknown field")

// fieldKind gives the kind of f, or an error naming f and the valid fields.
func fieldKind(f Field) (kind, error) {
	if f.Name == attributesName {
		if len(f.Path) == 0 {
			return 0, fmt.Errorf("attributes needs a key, as in attributes.city")
		}
		for _, k := range f.Path {
			if err := checkKey(k); err != nil {
				return 0, err
			}
		}
		return kindAttribute, nil
	}
	k, ok := columns[f.Name]
	if !ok {
		return 0, fmt.Errorf("%w %q; valid fields are %s", errUnknownField, f.Name, validFields)
	}
	if len(f.Path) > 0 {
		return 0, fmt.Errorf("%s has no keys; only attributes does, as in attributes.city", f.Name)
	}
	return k, nil
}

// maxKeyLen bounds one attribute key, in bytes.
const maxKeyLen = 256

// checkKey refuses attribute keys the two engines would read differently (see the package doc).
func checkKey(k string) error {
	switch {
	case k == "":
		return fmt.Errorf("an attribute key may not be empty")
	case len(k) > maxKeyLen:
		return fmt.Errorf("an attribute key may be at most %d bytes long", maxKeyLen)
	case strings.ContainsAny(k, "\"\\"):
		return fmt.Errorf("an attribute key may not contain '\"' or '\\'")
	case strings.IndexFunc(k, func(r rune) bool { return r < 0x20 || r == 0x7f }) >= 0:
		return fmt.Errorf("an attribute key may not contain control characters")
	case isIntegerKey(k):
		return fmt.Errorf("an attribute key may not be a whole number like %q", k)
	}
	return nil
}

// isIntegerKey reports whether PostgreSQL's #> would read k as an array index: optional
// leading whitespace, an optional sign, then digits only.
func isIntegerKey(k string) bool {
	k = strings.TrimLeft(k, " \t\n\r\v\f")
	k = strings.TrimPrefix(strings.TrimPrefix(k, "-"), "+")
	if k == "" {
		return false
	}
	for i := 0; i < len(k); i++ {
		if k[i] < '0' || k[i] > '9' {
			return false
		}
	}
	return true
}

// typeName names a literal's type for error messages.
func typeName(v Value) string {
	switch v := v.(type) {
	case Text:
		return "a string"
	case Number:
		if v.IsFloat {
			return "a decimal number"
		}
		return "a number"
	case Bool:
		return "a boolean"
	case Null:
		return "null"
	case Date:
		return "a date"
	case RelDate:
		return "a relative date"
	case nil:
		return "nothing"
	}
	return fmt.Sprintf("%T", v)
}

// checkValue reports whether field f (of kind k) may be compared with v using op.
// The message is meant for the person who wrote the filter.
func checkValue(f Field, k kind, op Op, v Value) error {
	if v == nil {
		return fmt.Errorf("%s %s needs a value", f, op)
	}
	if _, ok := v.(Null); ok {
		if op != OpEq && op != OpNe {
			return fmt.Errorf("null compares only with = and !=, not %s", op)
		}
		return nil
	}
	if op.isWordOp() {
		if k != kindText && k != kindAttribute {
			return fmt.Errorf("%s works on text; %s is %s", op, f, kindDesc(k))
		}
		if _, ok := v.(Text); !ok {
			return fmt.Errorf("%s needs a string, not %s", op, typeName(v))
		}
		return nil
	}
	ordered := op == OpLt || op == OpLe || op == OpGt || op == OpGe
	switch k {
	case kindText:
		if _, ok := v.(Text); ok {
			return nil
		}
	case kindInt:
		if n, ok := v.(Number); ok {
			if n.IsFloat {
				return fmt.Errorf("%s compares with whole numbers, not %s", f, n)
			}
			return nil
		}
	case kindBool:
		if _, ok := v.(Bool); ok {
			if ordered {
				return fmt.Errorf("%s is true or false and compares only with = and !=", f)
			}
			return nil
		}
	case kindTime:
		switch v.(type) {
		case Date, RelDate:
			return nil
		}
	case kindAttribute:
		switch v.(type) {
		case Text, Number:
			return nil
		case Bool:
			if ordered {
				return fmt.Errorf("true and false compare only with = and !=, not %s", op)
			}
			return nil
		case Date, RelDate:
			return fmt.Errorf("attributes do not compare with dates; store dates as ISO 8601 strings and compare with a quoted string such as \"2024-05-01\"")
		}
	}
	return fmt.Errorf("%s is %s and does not compare with %s", f, kindDesc(k), typeName(v))
}

// checkIn reports whether the values of an in list suit field f.
func checkIn(f Field, k kind, vs []Value) error {
	if len(vs) == 0 {
		return fmt.Errorf("in needs at least one value")
	}
	if len(vs) > MaxInValues {
		return fmt.Errorf("an in list may hold at most %d values", MaxInValues)
	}
	for i, v := range vs {
		if err := checkInValue(f, k, vs[:i], v); err != nil {
			return err
		}
	}
	return nil
}

// checkInValue reports whether v may follow the values before it in an in list on f.
func checkInValue(f Field, k kind, before []Value, v Value) error {
	if k == kindTime {
		return fmt.Errorf("in does not work on dates; use comparisons such as %s >= 2024-05-01", f)
	}
	if _, ok := v.(Null); ok {
		return fmt.Errorf("null cannot be in an in list; use %s exists", f)
	}
	if err := checkValue(f, k, OpEq, v); err != nil {
		return err
	}
	if len(before) > 0 && valueClass(v) != valueClass(before[0]) {
		return fmt.Errorf("the values of an in list must be of one type; found %s and %s", typeName(before[0]), typeName(v))
	}
	return nil
}

// valueClass groups literals that compare with one another: whole and decimal numbers are
// one class.
func valueClass(v Value) string {
	if _, ok := v.(Number); ok {
		return "number"
	}
	return typeName(v)
}

func kindDesc(k kind) string {
	switch k {
	case kindText:
		return "text"
	case kindInt:
		return "a whole number"
	case kindBool:
		return "true or false"
	case kindTime:
		return "a date"
	case kindAttribute:
		return "an attribute"
	}
	return "unknown"
}
