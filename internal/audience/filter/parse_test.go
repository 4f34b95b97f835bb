package filter

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

// canonicalCases are filters Parse accepts, with their canonical forms.
var canonicalCases = []struct{ src, want string }{
	{`email = "a"`, `email = "a"`},
	{`email = 'it\'s'`, `email = "it's"`},
	{`email="a"AND phone="b"`, `email = "a" and phone = "b"`},
	{`email = "a" or phone = "b" and locale = "c"`, `email = "a" or phone = "b" and locale = "c"`},
	{`(email = "a" or phone = "b") and locale = "c"`, `(email = "a" or phone = "b") and locale = "c"`},
	{`((email = "a"))`, `email = "a"`},
	{`(email = "a" and phone = "b") and (locale = "c" and id = 1)`, `email = "a" and phone = "b" and locale = "c" and id = 1`},
	{`email = "a" or (phone = "b" or locale = "c")`, `email = "a" or phone = "b" or locale = "c"`},
	{`not (email = "a" or phone = "b")`, `not (email = "a" or phone = "b")`},
	{`NOT not email exists`, `not email not exists`},
	{`not email = "a"`, `not email = "a"`},
	{`attr.city = "x"`, `attributes.city = "x"`},
	{`attributes.address.city != "x"`, `attributes.address.city != "x"`},
	{`attributes."first name" = "x"`, `attributes."first name" = "x"`},
	{`attributes.'ville' = 1`, `attributes.ville = 1`},
	{`attributes.città exists`, `attributes.città exists`},
	{`attributes."a.b"."c-d".e_f2 exists`, `attributes."a.b"."c-d".e_f2 exists`},
	{`attributes.x1 exists`, `attributes.x1 exists`},
	{`id in (1,2 , 3)`, `id in (1, 2, 3)`},
	{`id NOT IN (1)`, `id not in (1)`},
	{`attributes.n in (1, 2.5)`, `attributes.n in (1, 2.5)`},
	{`attributes.x = 1.50`, `attributes.x = 1.5`},
	{`attributes.x = 2E3`, `attributes.x = 2000.0`},
	{`attributes.x = 1e21`, `attributes.x = 1e+21`},
	{`attributes.x = -0`, `attributes.x = 0`},
	{`attributes.x = -0.0`, `attributes.x = -0.0`},
	{`attributes.x <= -9223372036854775808`, `attributes.x <= -9223372036854775808`},
	{`attributes.x > 0.000001`, `attributes.x > 1e-06`},
	{`created_at > now-30d`, `created_at > now - 30d`},
	{`created_at > now -30d`, `created_at > now - 30d`},
	{`created_at > -30d`, `created_at > now - 30d`},
	{`created_at < now + 2w`, `created_at < now + 2w`},
	{`created_at < now+0h`, `created_at < now + 0h`},
	{`updated_at >= NOW`, `updated_at >= now`},
	{`created_at >= 2024-05-01`, `created_at >= 2024-05-01`},
	{`created_at >= 2024-05-01T10:00:00+02:00`, `created_at >= 2024-05-01T08:00:00Z`},
	{`created_at >= 2024-05-01T10:00:00.1239Z`, `created_at >= 2024-05-01T10:00:00.123Z`},
	{`created_at < 1969-12-31T23:59:59.5Z`, `created_at < 1969-12-31T23:59:59.5Z`},
	{`email contains "a\"b\\c\n\u00e9\t\r"`, `email contains "a\"b\\c\né\t\r"`},
	{"email contains \"\x01\"", `email contains "\u0001"`},
	{`email contains 'say "hi"'`, `email contains "say \"hi\""`},
	{`email not contains "x"`, `email not contains "x"`},
	{`email not starts_with "x" and phone not ends_with "1"`, `email not starts_with "x" and phone not ends_with "1"`},
	{`attributes.x = null or attributes.y != NULL`, `attributes.x = null or attributes.y != null`},
	{`opt_out_email = TRUE and opt_out_sms != False`, `opt_out_email = true and opt_out_sms != false`},
	{"email exists\n\tand\r\n phone exists", `email exists and phone exists`},
	{`attributes.flags in (true, false)`, `attributes.flags in (true, false)`},
	{`attributes.in exists and attributes.and = "or"`, `attributes.in exists and attributes.and = "or"`},
}

func TestParseCanonical(t *testing.T) {
	for _, tc := range canonicalCases {
		e, err := Parse(tc.src)
		if err != nil {
			t.Errorf("Parse(%q): %v", tc.src, err)
			continue
		}
		if got := e.String(); got != tc.want {
			t.Errorf("Parse(%q).String()\n got  %s\n want %s", tc.src, got, tc.want)
			continue
		}
		again, err := Parse(tc.want)
		if err != nil {
			t.Errorf("Parse(%q) of the canonical form: %v", tc.want, err)
		} else if !reflect.DeepEqual(again, e) {
			t.Errorf("canonical form %q parses to a different tree", tc.want)
		}
	}
}

func TestParseTree(t *testing.T) {
	email := Field{Name: "email"}
	cases := []struct {
		src  string
		want Expr
	}{
		{`email = "a" or email = "b" and not email = "c"`, &Or{Terms: []Expr{
			&Comparison{Field: email, Op: OpEq, Value: Text("a")},
			&And{Terms: []Expr{
				&Comparison{Field: email, Op: OpEq, Value: Text("b")},
				&Not{X: &Comparison{Field: email, Op: OpEq, Value: Text("c")}},
			}},
		}}},
		{`attr.a."b c" not in (1, 2.5)`, &Not{X: &In{Field: Field{Name: "attributes", Path: []string{"a", "b c"}},
			Values: []Value{Number{Int: 1}, Number{Float: 2.5, IsFloat: true}}}}},
		{`created_at > -30d and created_at < 2024-05-01`, &And{Terms: []Expr{
			&Comparison{Field: Field{Name: "created_at"}, Op: OpGt, Value: RelDate{Amount: -30, Unit: 'd'}},
			&Comparison{Field: Field{Name: "created_at"}, Op: OpLt, Value: Date{UnixMilli: 1714521600000, DayOnly: true}},
		}}},
	}
	for _, tc := range cases {
		got, err := Parse(tc.src)
		if err != nil {
			t.Errorf("Parse(%q): %v", tc.src, err)
			continue
		}
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("Parse(%q)\n got  %#v\n want %#v", tc.src, got, tc.want)
		}
	}
}

// errorCases are filters Parse refuses, with the exact message.
var errorCases = []struct{ src, want string }{
	{``, `at 1:1: the filter is empty; expected a condition such as email ends_with "@example.com"`},
	{`   `, `at 1:4: the filter is empty; expected a condition such as email ends_with "@example.com"`},
	{`attributes.city = )`, `at 1:19: expected a value after 'attributes.city =' but found ')'`},
	{`attr.city = )`, `at 1:13: expected a value after 'attr.city =' but found ')'`},
	{`emial = "x"`, `at 1:1: unknown field "emial"; valid fields are created_at, email, email_domain, external_id, id, locale, opt_out_email, opt_out_push, opt_out_sms, phone, time_zone, updated_at and attributes.<key>`},
	{`Email = "x"`, `at 1:1: unknown field "Email"; valid fields are created_at, email, email_domain, external_id, id, locale, opt_out_email, opt_out_push, opt_out_sms, phone, time_zone, updated_at and attributes.<key>`},
	{"email = \"x\"\nand phone = ", `at 2:13: expected a value after 'phone =' but found the end of the filter`},
	{"email = \"é\" and\n  émail = 1", `at 2:3: unexpected character 'é'`},
	{`email = "abc`, `at 1:9: string is not closed; expected " before the end of input`},
	{`email = 'abc\'`, `at 1:9: string is not closed; expected ' before the end of input`},
	{`email == "x"`, `at 1:8: expected a value after 'email =' but found '='`},
	{`email = "x" phone = "y"`, `at 1:13: expected 'and', 'or' or the end of the filter but found 'phone'`},
	{`(email = "x"`, `at 1:13: expected 'and', 'or' or ')' to close the '(' at 1:1 but found the end of the filter`},
	{`email = "x")`, `at 1:12: found ')' with no '(' to close`},
	{`()`, `at 1:2: expected a condition inside '(' but found ')'`},
	{`email ~ "x"`, `at 1:7: unexpected character '~'`},
	{`email ! "x"`, `at 1:7: expected '=' after '!'`},
	{`email = "\q"`, `at 1:10: unknown escape \q; use \" \' \\ \n \r \t or \uXXXX`},
	{`email = "\u12"`, `at 1:10: \u needs four hex digits`},
	{`email = "\ud800"`, `at 1:10: \ud800 is a UTF-16 surrogate, not a character`},
	{`email = "a\u0000"`, `at 1:11: a string may not contain NUL (\u0000)`},
	{"email = \"a\x00\"", `at 1:11: a string may not contain NUL`},
	{"email = \"\xff\"", `at 1:10: invalid UTF-8 in string`},
	{"email = \xff", `at 1:9: invalid UTF-8`},
	{`id = 1.5`, `at 1:6: id compares with whole numbers, not 1.5`},
	{`email = 5`, `at 1:9: email is text and does not compare with a number`},
	{`email = true`, `at 1:9: email is text and does not compare with a boolean`},
	{`created_at > 5`, `at 1:14: created_at is a date and does not compare with a number`},
	{`created_at > "2024-01-01"`, `at 1:14: created_at is a date and does not compare with a string`},
	{`created_at > 2024-13-01`, `at 1:14: invalid date '2024-13-01'; write a date as 2024-05-01 or 2024-05-01T10:00:00Z`},
	{`created_at > 2024-05-01T10:00`, `at 1:14: invalid date '2024-05-01T10:00'; write a date as 2024-05-01 or 2024-05-01T10:00:00Z`},
	{`created_at > 2024-05-01x`, `at 1:14: invalid date '2024-05-01'; write a date as 2024-05-01 or 2024-05-01T10:00:00Z`},
	{`created_at > 30d`, `at 1:14: a duration needs now before it, as in now + 30d or now - 30d`},
	{`created_at > now - 5`, `at 1:20: expected a duration such as 30d after 'now -' but found '5'`},
	{`created_at > now - -5d`, `at 1:20: expected a duration such as 30d after 'now -' but found '-5d'`},
	{`created_at > now - 30y`, `at 1:20: invalid number '30y'; durations are written 30d, with s, m, h, d or w`},
	{`created_at > now - 99999999d`, `at 1:20: duration '99999999d' is too long; relative dates reach at most 10000 years`},
	{`created_at in (now)`, `at 1:16: in does not work on dates; use comparisons such as created_at >= 2024-05-01`},
	{`attributes.x > true`, `at 1:16: true and false compare only with = and !=, not >`},
	{`attributes.x < null`, `at 1:16: null compares only with = and !=, not <`},
	{`attributes.x = 2024-01-01`, `at 1:16: attributes do not compare with dates; store dates as ISO 8601 strings and compare with a quoted string such as "2024-05-01"`},
	{`attributes.0 exists`, `at 1:12: an attribute key may not be a whole number like "0"`},
	{`attributes." -1" exists`, `at 1:12: an attribute key may not be a whole number like " -1"`},
	{`attributes."a\"b" exists`, `at 1:12: an attribute key may not contain '"' or '\'`},
	{`attributes."" exists`, `at 1:12: an attribute key may not be empty`},
	{`attributes. = 1`, `at 1:12: expected a key after 'attributes.'; quote keys that hold other characters, as in attributes."first name"`},
	{`attributes.a-b = 1`, `at 1:13: expected an operator (= != < <= > >= contains starts_with ends_with in exists) after 'attributes.a' but found '-'`},
	{`attributes exists`, `at 1:1: attributes needs a key, as in attributes.city`},
	{`email.x = 1`, `at 1:1: email has no keys; only attributes does, as in attributes.city`},
	{`id in ()`, `at 1:8: expected a value after 'id in (' but found ')'`},
	{`id in 1`, `at 1:7: expected '(' after 'id in' but found '1'`},
	{`id in (1, "a")`, `at 1:11: id is a whole number and does not compare with a string`},
	{`attributes.x in (1, "a")`, `at 1:21: the values of an in list must be of one type; found a number and a string`},
	{`attributes.x in ("a", null)`, `at 1:23: null cannot be in an in list; use attributes.x exists`},
	{`id in (1,)`, `at 1:10: expected a value after ',' but found ')'`},
	{`id in (1 2)`, `at 1:10: expected ',' or ')' in the in list but found '2'`},
	{`email not = "x"`, `at 1:11: expected in, exists, contains, starts_with or ends_with after 'email not' but found '='`},
	{`not`, `at 1:4: expected a field, 'not' or '(' but found the end of the filter`},
	{`email`, `at 1:6: expected an operator (= != < <= > >= contains starts_with ends_with in exists) after 'email' but found the end of the filter`},
	{`email contains 5`, `at 1:16: contains needs a string, not a number`},
	{`opt_out_email > true`, `at 1:17: opt_out_email is true or false and compares only with = and !=`},
	{`opt_out_email = 1`, `at 1:17: opt_out_email is true or false and does not compare with a number`},
	{`id starts_with "1"`, `at 1:16: starts_with works on text; id is a whole number`},
	{`attributes.x = 99999999999999999999`, `at 1:16: number '99999999999999999999' is out of range for a whole number; write it with a decimal point to compare approximately`},
	{`attributes.x = 1e999`, `at 1:16: number '1e999' is out of range`},
	{`attributes.x = 1.`, `at 1:16: invalid number '1.'; durations are written 30d, with s, m, h, d or w`},
	{`attributes.x = 12abc`, `at 1:16: invalid number '12abc'; durations are written 30d, with s, m, h, d or w`},
	{`email = "a" "` + strings.Repeat("é", 40) + `"`, `at 1:13: expected 'and', 'or' or the end of the filter but found the string '"ééééééééééééééé…'`},
	{`email = "x" and`, `at 1:16: expected a field, 'not' or '(' but found the end of the filter`},
	{`and = 1`, `at 1:1: expected a field, 'not' or '(' but found 'and'`},
	{`email = "x" or or`, `at 1:16: expected a field, 'not' or '(' but found 'or'`},
	{`email = now`, `at 1:9: email is text and does not compare with a relative date`},
	{`email = "` + strings.Repeat("x", 40) + `" x`, `at 1:52: expected 'and', 'or' or the end of the filter but found 'x'`},
	{`email = x`, `at 1:9: expected a value after 'email =' but found 'x'`},
	{`email = "` + strings.Repeat("ab", 20) + `" or email = "a" "b"`, `at 1:67: expected 'and', 'or' or the end of the filter but found the string '"b"'`},
	{`email = "ab" or email = "` + strings.Repeat("é", 40) + `"` + ` "x"`, `at 1:68: expected 'and', 'or' or the end of the filter but found the string '"x"'`},
	{strings.Repeat("(", MaxDepth+1) + `email exists` + strings.Repeat(")", MaxDepth+1), `at 1:51: the filter nests more than 50 levels of parentheses and 'not'`},
	{strings.Repeat("not ", MaxDepth+1) + `email exists`, `at 1:201: the filter nests more than 50 levels of parentheses and 'not'`},
	{`id in (` + strings.Repeat("1, ", MaxInValues) + `1)`, `at 1:3008: an in list may hold at most 1000 values`},
	{strings.Repeat(`id in (`+strings.TrimSuffix(strings.Repeat("1,", MaxInValues), ",")+`) or `, MaxValues/MaxInValues) + `id = 1`, `at 1:10061: a filter may hold at most 5000 values`},
	{`email = "` + strings.Repeat("x", MaxSourceLen) + `"`, `at 1:1: a filter may be at most 65536 bytes long; this one is 65546`},
	{`created_at > 0000-01-01T00:00:00+01:00`, `at 1:14: date '0000-01-01T00:00:00+01:00' is out of range; dates run from year 0000 to 9999 in UTC`},
	{`created_at > 9999-12-31T23:00:00-02:00`, `at 1:14: date '9999-12-31T23:00:00-02:00' is out of range; dates run from year 0000 to 9999 in UTC`},
}

func TestParseErrors(t *testing.T) {
	for _, tc := range errorCases {
		e, err := Parse(tc.src)
		var se *SyntaxError
		if !errors.As(err, &se) {
			t.Errorf("Parse(%.60q) = %v, %v; want a *SyntaxError", tc.src, e, err)
			continue
		}
		if got := err.Error(); got != tc.want {
			t.Errorf("Parse(%.60q)\n got  %s\n want %s", tc.src, got, tc.want)
		}
		if se.Pos < 0 || se.Pos > len(tc.src) {
			t.Errorf("Parse(%.60q): position %d outside the source", tc.src, se.Pos)
		}
	}
}
