package delivery

import (
	"github.com/heraldhq/herald/internal/store"
)

// The SQL that differs between engines, all of it, kept here and named for its engine. The
// rest of preparation is one SQL text for both.

// prepTable is the per-preparation working table: one row per targeted profile, with the
// address it would be sent to and, once a rule excludes it, the code of why (see codes). It lives in the preparation's
// transaction only.
const prepTable = "prep_target"

// sqliteCreatePrepTable makes the working table in SQLite's temp schema (a temporary file
// behind the temp schema's page cache, as the store sets temp_store, so that a million rows do
// not stay in the process's memory): rolled back with the transaction, dropped at its end.
var sqliteCreatePrepTable = []string{
	`DROP TABLE IF EXISTS temp.prep_target`,
	`CREATE TEMP TABLE prep_target (profile_id INTEGER PRIMARY KEY, address TEXT, code INTEGER)`,
}

// postgresCreatePrepTable makes a temporary table that PostgreSQL drops at commit.
var postgresCreatePrepTable = []string{
	`DROP TABLE IF EXISTS pg_temp.prep_target`,
	`CREATE TEMP TABLE prep_target (profile_id BIGINT PRIMARY KEY, address TEXT, code INTEGER) ON COMMIT DROP`,
}

// sqliteDropPrepTable drops the working table before commit (PostgreSQL's goes by itself).
const sqliteDropPrepTable = `DROP TABLE IF EXISTS temp.prep_target`

func createPrepTable(eng store.Engine) []string {
	if eng == store.Postgres {
		return postgresCreatePrepTable
	}
	return sqliteCreatePrepTable
}

// addressExpr is the expression, over profiles aliased p, of the address a channel sends to:
// the email key (domain lower-cased, as quarantine keys it), the E.164 phone, the first push
// token. The same on both engines.
func addressExpr(ch Channel) string {
	switch ch {
	case SMS:
		return "p.phone"
	case Push:
		return "(p.push_tokens ->> 0)"
	}
	return "p.email_key"
}

// optOutColumn is the profile column saying the profile opted out of ch.
func optOutColumn(ch Channel) string {
	switch ch {
	case SMS:
		return "p.opt_out_sms"
	case Push:
		return "p.opt_out_push"
	}
	return "p.opt_out_email"
}

// validAddressSQL is a condition, true when addr (an expression, never input) is a well-formed
// address for ch. Profiles are validated when written, so this catches data loaded around
// Herald's checks.
func validAddressSQL(eng store.Engine, ch Channel, addr string) string {
	switch ch {
	case SMS:
		if eng == store.Postgres {
			return postgresValidPhone(addr)
		}
		return sqliteValidPhone(addr)
	case Push:
		return "(length(" + addr + ") <= 4096 AND " + addr + " NOT LIKE '% %')"
	}
	return "(" + addr + " LIKE '_%@_%._%' AND " + addr + " NOT LIKE '% %' AND " + addr + " NOT LIKE '%@%@%')"
}

// sqliteValidPhone: E.164, + then 8 to 15 digits not starting with 0 (SQLite has GLOB, no regex).
func sqliteValidPhone(addr string) string {
	return "(" + addr + " GLOB '+[1-9]*' AND length(" + addr + ") BETWEEN 9 AND 16 AND substr(" + addr + ", 2) NOT GLOB '*[^0-9]*')"
}

// postgresValidPhone: the same rule as a POSIX regular expression.
func postgresValidPhone(addr string) string {
	return "(" + addr + ` ~ '^\+[1-9][0-9]{7,14}$')`
}

// idsFromJSON is a subquery giving the ids of a JSON array bound to $1: one parameter however
// many ids (SQLite's driver binds $N parameters in time quadratic in their number).
func idsFromJSON(eng store.Engine) string {
	if eng == store.Postgres {
		return `SELECT value::bigint FROM jsonb_array_elements_text($1::jsonb)`
	}
	return `SELECT value FROM json_each($1)`
}
