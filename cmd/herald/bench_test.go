package main

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
)

// TestBenchSendRuns: `herald bench send --runs 2` runs the bench twice, each on a fresh
// database, and sums the runs up; it refuses a SQLite file it could only create once.
func TestBenchSendRuns(t *testing.T) {
	out, err := run(t, "", "", "bench", "send", "--n", "200", "--runs", "2", "--json")
	if err != nil {
		t.Fatalf("bench send --runs 2: %v\n%s", err, out)
	}
	var sum struct {
		Runs []struct {
			Sent  int64   `json:"sent"`
			Ratio float64 `json:"ratio"`
		} `json:"runs"`
		Ratio struct {
			Mean, Min, Max float64
		} `json:"ratio"`
	}
	if err := json.Unmarshal([]byte(out[strings.Index(out, "{"):]), &sum); err != nil {
		t.Fatalf("output is not the summary's JSON: %v\n%s", err, out)
	}
	if len(sum.Runs) != 2 || sum.Runs[0].Sent != 200 || sum.Runs[1].Sent != 200 {
		t.Fatalf("runs %+v, want two of 200 messages", sum.Runs)
	}
	lo, hi := min(sum.Runs[0].Ratio, sum.Runs[1].Ratio), max(sum.Runs[0].Ratio, sum.Runs[1].Ratio)
	if lo <= 0 || sum.Ratio.Min != lo || sum.Ratio.Max != hi || sum.Ratio.Mean < lo || sum.Ratio.Mean > hi {
		t.Fatalf("ratio summary %+v of runs %+v", sum.Ratio, sum.Runs)
	}
	db := filepath.Join(t.TempDir(), "bench.db")
	if out, err := run(t, "", "", "bench", "send", "--n", "200", "--runs", "2", "--db", db); err == nil || !strings.Contains(out, "--db names one SQLite file") {
		t.Fatalf("--runs with a SQLite --db: %v\n%s", err, out)
	}
}
