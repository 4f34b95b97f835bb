package store

import (
	"strconv"
	"strings"
)

// Engine names the database engine behind a DB. Herald writes one SQL text for both engines
// wherever it can: both accept $1-style positional parameters, ON CONFLICT upserts, RETURNING
// and the ->> JSON operator. The differences that remain are decided by Engine, in one place.
type Engine string

// The engines Herald runs on.
const (
	SQLite   Engine = "sqlite"
	Postgres Engine = "postgres"
)

// sqliteAllocatorPins are the sizes of two texts bound to bulk inserts on SQLite, to keep the
// pure-Go SQLite's allocator from mapping and unmapping memory on every B-tree page split.
// That allocator (modernc.org/memory) hands blocks of 8 and 16 KiB out of 64 KiB slabs and
// unmaps a slab as soon as its last block is freed; a page split takes and frees such a block
// as scratch, so each split of a large insert into an indexed table mapped and unmapped a slab
// (measured: half the insert's CPU). A text bound to the statement comes from the same
// allocator and lives until the statement ends, so the slab stays mapped and the splits reuse
// it. If the driver ever allocates otherwise, the pins only stop helping.
var sqliteAllocatorPins = []int{12 << 10, 6 << 10}

// AllocatorPins returns a condition to AND to a bulk insert's WHERE, with its arguments: on
// SQLite, the pins above as parameters $first and $first+1 (or as ? when first is 0); on
// PostgreSQL, nothing. See sqliteAllocatorPins for why.
func AllocatorPins(eng Engine, first int) (cond string, args []any) {
	if eng != SQLite {
		return "", nil
	}
	for i, n := range sqliteAllocatorPins {
		p := "?"
		if first > 0 {
			p = "$" + strconv.Itoa(first+i)
		}
		cond += " AND " + p + " IS NOT NULL"
		args = append(args, strings.Repeat(" ", n))
	}
	return cond, args
}
