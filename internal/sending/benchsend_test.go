package sending

import (
	"bytes"
	"context"
	"math"
	"strings"
	"testing"
)

// TestBenchSendsEveryMessageAndMeasures runs Bench small: every message reaches the in-process
// sink, the figures are filled in, and the CPU profile and the execution trace cover the send.
func TestBenchSendsEveryMessageAndMeasures(t *testing.T) {
	var profile, tr bytes.Buffer
	res, err := Bench(context.Background(), BenchOptions{N: 300, CPUProfile: &profile, Trace: &tr})
	if err != nil {
		t.Fatal(err)
	}
	if res.Sent != 300 || res.MsgsPerSec <= 0 || res.CeilingMsgsPerSec <= 0 || res.Ratio <= 0 ||
		res.CeilingBeforeMsgsPerSec <= 0 || res.CeilingAfterMsgsPerSec <= 0 {
		t.Fatalf("incomplete result: %+v", res)
	}
	// The ceiling over both halves is 2N messages over both halves' time.
	if want := 600 / (300/res.CeilingBeforeMsgsPerSec + 300/res.CeilingAfterMsgsPerSec); math.Abs(res.CeilingMsgsPerSec-want) > 1e-6*want {
		t.Fatalf("ceiling %.1f msgs/s, want %.1f from its halves", res.CeilingMsgsPerSec, want)
	}
	if res.MessageBytes < 2000 || res.PeakRSSSendMB <= 0 || res.CPUSeconds <= 0 {
		t.Fatalf("message size, memory or CPU not measured: %+v", res)
	}
	// The messages pushed before the send are the size of those the engine then sent.
	if d := math.Abs(float64(res.SampleBytes - res.MessageBytes)); d > 0.02*float64(res.MessageBytes) {
		t.Fatalf("sampled messages of %d bytes, sent %d", res.SampleBytes, res.MessageBytes)
	}
	if profile.Len() == 0 {
		t.Fatal("no CPU profile written")
	}
	if !bytes.HasPrefix(tr.Bytes(), []byte("go 1.")) {
		t.Fatalf("no execution trace written (%d bytes: %.10q)", tr.Len(), tr.Bytes())
	}
	if s := res.String(); !strings.Contains(s, "msgs/s") || !strings.Contains(s, "of the ceiling") {
		t.Fatalf("String() = %q", s)
	}
}
