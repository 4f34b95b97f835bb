package store

// Engine names the database engine behind a DB. Herald writes one SQL text for both engines
// wherever it can: both accept $1-style positional parameters, ON CONFLICT upserts, RETURNING
// and the ->> JSON operator. The differences that remain are decided by Engine, in one place.
type Engine string

// The engines Herald runs on.
const (
	SQLite   Engine = "sqlite"
	Postgres Engine = "postgres"
)
