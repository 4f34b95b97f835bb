package sending

import (
	"fmt"
	"slices"
	"strings"
)

// RatioTarget is issue 5's target for the send's ratio to the ceiling at 100,000 messages.
const RatioTarget = 0.75

// BenchSummary sums up several Bench runs: a single run's ratio varies by several hundredths on
// a shared machine, so whether a target holds "reliably" is read over many.
type BenchSummary struct {
	Runs []BenchResult `json:"runs"`
	// Ratio and MsgsPerSec are the runs' ratios and end-to-end rates summed up.
	Ratio      Spread `json:"ratio"`
	MsgsPerSec Spread `json:"msgs_per_sec"`
	// AtTarget is how many runs reached RatioTarget.
	AtTarget int `json:"runs_at_ratio_target"`
}

// Spread is the mean, median and range of a figure over runs.
type Spread struct {
	Mean   float64 `json:"mean"`
	Median float64 `json:"median"`
	Min    float64 `json:"min"`
	Max    float64 `json:"max"`
}

func spreadOf(v []float64) Spread {
	if len(v) == 0 {
		return Spread{}
	}
	s := slices.Sorted(slices.Values(v))
	var sum float64
	for _, x := range s {
		sum += x
	}
	med := s[len(s)/2]
	if len(s)%2 == 0 {
		med = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return Spread{Mean: sum / float64(len(s)), Median: med, Min: s[0], Max: s[len(s)-1]}
}

// Summarize sums up runs.
func Summarize(runs []BenchResult) BenchSummary {
	ratios, rates := make([]float64, len(runs)), make([]float64, len(runs))
	sum := BenchSummary{Runs: runs}
	for i, r := range runs {
		ratios[i], rates[i] = r.Ratio, r.MsgsPerSec
		if r.Ratio >= RatioTarget {
			sum.AtTarget++
		}
	}
	sum.Ratio, sum.MsgsPerSec = spreadOf(ratios), spreadOf(rates)
	return sum
}

// String formats s for a terminal: a line a run, then the spread.
func (s BenchSummary) String() string {
	var b strings.Builder
	for i, r := range s.Runs {
		fmt.Fprintf(&b, "run %-3d ratio %.3f  %6.0f msgs/s  ceiling %6.0f msgs/s  cpu %4.1f µs/msg  peak rss %3.0f MB\n",
			i+1, r.Ratio, r.MsgsPerSec, r.CeilingMsgsPerSec, r.CPUMicrosPerMsg, r.PeakRSSSendMB)
	}
	fmt.Fprintf(&b, "ratio             mean %.3f, median %.3f, %.3f to %.3f over %d runs; %d of %d at %.2f or more\n",
		s.Ratio.Mean, s.Ratio.Median, s.Ratio.Min, s.Ratio.Max, len(s.Runs), s.AtTarget, len(s.Runs), RatioTarget)
	fmt.Fprintf(&b, "end to end        mean %.0f msgs/s, %.0f to %.0f\n", s.MsgsPerSec.Mean, s.MsgsPerSec.Min, s.MsgsPerSec.Max)
	return b.String()
}
