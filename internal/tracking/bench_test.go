package tracking

import (
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestBenchTrack runs the tracking benchmark briefly and checks that every hit Herald served was
// stored. It needs wrk, so CI (which does not install it) skips it; the figures are not checked,
// the machine running tests being shared.
func TestBenchTrack(t *testing.T) {
	if testing.Short() {
		t.Skip("runs wrk for several seconds")
	}
	if _, err := exec.LookPath("wrk"); err != nil {
		t.Skip("wrk is not installed (apt-get install wrk)")
	}
	res, err := BenchTrack(context.Background(), BenchTrackOptions{Duration: 2 * time.Second, Recipients: 2000})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("\n%s", res)
	for _, x := range []BenchTrackRun{res.Bare, res.Pixel, res.Click} {
		if x.Completed == 0 || x.RPS <= 0 || x.P99Ms <= 0 || x.BadStatus != 0 {
			t.Errorf("%s: %+v", x.Name, x)
		}
	}
	if !res.EventsMatch || res.Dropped == 0 && (res.Pixel.Events != res.Pixel.Served || res.Click.Events != res.Click.Served) {
		t.Errorf("events: %d stored (open %d, click %d) for %d+%d served, %d+%d completed, %d dropped",
			res.Events, res.Pixel.Events, res.Click.Events, res.Pixel.Served, res.Click.Served,
			res.Pixel.Completed, res.Click.Completed, res.Dropped)
	}
}

func TestParseWrk(t *testing.T) {
	const out = `Running 10s test @ http://127.0.0.1:41234/
  2 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.52ms    2.31ms  41.20ms   91.02%
    Req/Sec    23.10k     1.91k   27.79k    70.50%
  Latency Distribution
     50%  812.00us
     75%    1.41ms
     90%    3.20ms
     99%   12.50ms
  459870 requests in 10.00s, 62.94MB read
  Non-2xx or 3xx responses: 3
  Socket errors: connect 0, read 2, write 0, timeout 1
Requests/sec:  45986.12
Transfer/sec:      6.29MB
`
	x, err := parseWrk(out)
	if err != nil {
		t.Fatal(err)
	}
	want := BenchTrackRun{Completed: 459870, RPS: 45986.12, P50Ms: 0.812, P99Ms: 12.5, BadStatus: 3, SocketErrors: 3}
	if x != want {
		t.Errorf("parseWrk = %+v, want %+v", x, want)
	}
	if _, err := parseWrk(strings.Replace(out, "     99%   12.50ms\n", "", 1)); err == nil {
		t.Error("a report without the 99% latency was accepted")
	}
}
