package sending

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

// TestBenchSendsEveryMessageAndMeasures runs Bench small: every message reaches the in-process
// sink, the figures are filled in and the CPU profile covers the send.
func TestBenchSendsEveryMessageAndMeasures(t *testing.T) {
	var profile bytes.Buffer
	res, err := Bench(context.Background(), BenchOptions{N: 300, CPUProfile: &profile})
	if err != nil {
		t.Fatal(err)
	}
	if res.Sent != 300 || res.MsgsPerSec <= 0 || res.CeilingMsgsPerSec <= 0 || res.Ratio <= 0 {
		t.Fatalf("incomplete result: %+v", res)
	}
	if res.MessageBytes < 2000 || res.PeakRSSSendMB <= 0 || res.CPUSeconds <= 0 {
		t.Fatalf("message size, memory or CPU not measured: %+v", res)
	}
	if profile.Len() == 0 {
		t.Fatal("no CPU profile written")
	}
	if s := res.String(); !strings.Contains(s, "msgs/s") || !strings.Contains(s, "of the ceiling") {
		t.Fatalf("String() = %q", s)
	}
}
