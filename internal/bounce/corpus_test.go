package bounce

import (
	"bufio"
	"encoding/json"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// corpusDir is the shared corpus of real bounces, a sibling of the repository.
const corpusDir = "../../../shared/corpus/bounces"

type expectedLine struct {
	File      string  `json:"file"`
	Index     int     `json:"index"`
	Recipient *string `json:"recipient"`
	Status    string  `json:"status"`
	Reason    string  `json:"reason"`
	Hard      *bool   `json:"hard"`
}

// TestCorpus measures the classifier on real bounces against expected.jsonl.
//
// Agreement is counted per expected line, that is per (file, index). Each line is matched to one
// of our results for that file: the result whose recipient equals the expected recipient (case
// folded), or, when the expected recipient is null, our result at the same position (index-1).
//   - recipient found: a result was matched.
//   - hard/soft/ignored agreement: a result was matched and its Hard equals the expected hard
//     (true, false, or both null).
//   - reason agreement: a result was matched and its Reason equals the expected reason.
//
// An unmatched line counts as a disagreement for all three. Every figure is over all lines.
func TestCorpus(t *testing.T) {
	f, err := os.Open(filepath.Join(corpusDir, "expected.jsonl"))
	if err != nil {
		t.Skipf("corpus not available at %s (it lives in the repository's sibling shared/): %v", corpusDir, err)
	}
	defer f.Close()

	var lines []expectedLine
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var e expectedLine
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			t.Fatalf("expected.jsonl: %v", err)
		}
		lines = append(lines, e)
	}
	if len(lines) == 0 {
		t.Fatal("expected.jsonl is empty")
	}

	reports := map[string]*Report{}
	emls, _ := filepath.Glob(filepath.Join(corpusDir, "*.eml"))
	for _, p := range emls {
		fh, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		rep, err := Parse(fh)
		fh.Close()
		if err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		reports[filepath.Base(p)] = rep
	}

	var found, hardOK, reasonOK int
	var misses []string
	for _, e := range lines {
		rep := reports[e.File]
		var got *Result
		if rep != nil {
			for i := range rep.Results {
				r := &rep.Results[i]
				if e.Recipient != nil && strings.EqualFold(r.Recipient, *e.Recipient) {
					got = r
					break
				}
			}
			if got == nil && e.Recipient == nil && e.Index-1 < len(rep.Results) {
				got = &rep.Results[e.Index-1]
			}
		}
		exp := "<nil>"
		if e.Recipient != nil {
			exp = *e.Recipient
		}
		if got == nil {
			var have []string
			if rep != nil {
				for _, r := range rep.Results {
					have = append(have, r.Recipient)
				}
			}
			misses = append(misses, "norecipient "+e.File+" want "+exp+" have "+strings.Join(have, ","))
			continue
		}
		found++
		if boolEq(got.Hard, e.Hard) {
			hardOK++
		} else {
			misses = append(misses, "hard "+e.File+" want "+e.Reason+" got "+string(got.Reason))
		}
		if string(got.Reason) == e.Reason {
			reasonOK++
		} else {
			misses = append(misses, "reason "+e.Reason+" got "+string(got.Reason)+" "+e.File+" status="+e.Status+"/"+got.Status+" diag="+got.Diagnostic)
		}
	}
	n := float64(len(lines))
	pf, ph, pr := 100*float64(found)/n, 100*float64(hardOK)/n, 100*float64(reasonOK)/n
	t.Logf("corpus: %d expected lines in %d files", len(lines), len(emls))
	t.Logf("recipient found %.1f%%, hard/soft/ignored agreement %.1f%%, reason agreement %.1f%%", pf, ph, pr)
	if testing.Verbose() || os.Getenv("BOUNCE_CORPUS_DETAIL") != "" {
		sort.Strings(misses)
		for _, m := range misses {
			if len(m) > 400 {
				m = m[:400]
			}
			t.Log(m)
		}
	}
	if pf < 98 || ph < 95 || pr < 85 {
		t.Errorf("below target: recipient found %.1f%% (≥98), hard %.1f%% (≥95), reason %.1f%% (≥85)", pf, ph, pr)
	}
}

func boolEq(a, b *bool) bool {
	if a == nil || b == nil {
		return a == nil && b == nil
	}
	return *a == *b
}
