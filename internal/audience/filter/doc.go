// Package filter is Herald's audience filter language: a small query language over profiles,
// parsed into a tree (Parse) and compiled to a parameterised SQL WHERE fragment for SQLite or
// PostgreSQL (Compile). User text never reaches the SQL: every literal and every attribute
// key is passed as a bound parameter, and the only words written into the SQL are Herald's own.
//
// A filter reads like this:
//
//	email ends_with "@example.com" and not opt_out_email = true
//	attributes.city in ("Paris", "Lyon") or attributes.address.zip starts_with "75"
//	created_at >= now - 30d and attributes.score > 4.5
//	attributes.vip exists and updated_at < 2024-05-01T10:00:00Z
//
// # Grammar
//
// Keywords (and, or, not, in, exists, contains, starts_with, ends_with, true, false, null, now)
// are case-insensitive; field names are not. Whitespace separates tokens and is otherwise
// ignored.
//
//	filter     = or .
//	or         = and { "or" and } .
//	and        = unary { "and" unary } .
//	unary      = "not" unary | "(" or ")" | predicate .
//	predicate  = field ( op value
//	                   | [ "not" ] ( "contains" | "starts_with" | "ends_with" ) string
//	                   | [ "not" ] "in" "(" value { "," value } ")"
//	                   | [ "not" ] "exists" ) .
//	op         = "=" | "!=" | "<" | "<=" | ">" | ">=" .
//	field      = column | ( "attributes" | "attr" ) "." key { "." key } .
//	column     = "id" | "email" | "email_domain" | "phone" | "time_zone" | "locale"
//	           | "external_id" | "opt_out_email" | "opt_out_sms" | "opt_out_push"
//	           | "created_at" | "updated_at" .
//	key        = letter_or_digit { letter_or_digit }   (Unicode letters, digits, "_")
//	           | string .                              (any other key, quoted)
//	value      = string | number | "true" | "false" | "null" | date | reldate .
//	string     = '"' { char } '"' | "'" { char } "'" .
//	number     = [ "-" ] digits [ "." digits ] [ ( "e" | "E" ) [ "+" | "-" ] digits ] .
//	date       = YYYY "-" MM "-" DD [ "T" hh ":" mm ":" ss [ "." fraction ] ( "Z" | ( "+" | "-" ) hh ":" mm ) ] .
//	reldate    = "now" [ ( "+" | "-" ) duration ] | "-" duration .
//	duration   = digits ( "s" | "m" | "h" | "d" | "w" ) .
//
// Strings take the escapes \" \' \\ \n \r \t and \uXXXX; NUL and invalid UTF-8 are refused.
// "-30d" alone is short for "now - 30d"; units are seconds, minutes, hours, days and weeks
// (months and years have no fixed length and are left out). "attr" is short for "attributes".
// An attribute key must not contain '"', '\' or control characters, and must not read as a
// whole number ("0", "-1"): PostgreSQL would take such a key as an array index where SQLite
// would not, and the two engines must agree.
//
// Precedence, loosest first: or, and, not, then the predicate. "x not in (...)",
// "x not exists" and "x not contains ..." mean "not x in (...)" and so on.
//
// # Meaning
//
// The meaning is the same on both engines; the compiled SQL is written so that it is.
//
//   - Text compares ignoring ASCII case, for every operator (=, !=, <, in, contains, ...):
//     email = "Bob@Example.com" matches bob@example.com. Only ASCII letters fold ("É" and "é"
//     differ), because SQLite's lower() folds ASCII only; ordering (<, >) is by Unicode code
//     point. contains, starts_with and ends_with take the value literally: % _ and \ in it
//     are not wildcards.
//   - Columns take values of their own type: text columns strings, id whole numbers,
//     opt_out_* true or false, created_at and updated_at dates. A date without a time is the
//     whole UTC day: created_at = 2024-05-01 matches that day, <= includes it, > starts the
//     day after. Relative dates are counted from the now given to Compile.
//   - An attribute comparison matches only when the attribute holds a JSON value of the
//     literal's type: a string for a string literal (compared as text), a number for a number
//     literal (compared numerically), a boolean for true or false. A missing attribute, a JSON
//     null or a value of another type matches no comparison, not even != — so
//     attributes.city != "Paris" leaves out profiles without a city, and
//     not attributes.city = "Paris" includes them. Attributes do not compare with dates;
//     store dates in attributes as ISO 8601 strings and compare them as strings.
//   - x exists is true when x is present and not null (for a column: not NULL). x = null
//     means not x exists, and x != null means x exists.
//   - Every predicate is either true or false, never SQL NULL, so not always means the
//     complement.
//
// # Limits
//
// A filter is at most MaxSourceLen bytes, nests at most MaxDepth parentheses and nots, lists
// at most MaxInValues values in one in (...) and at most MaxValues values in all.
package filter
