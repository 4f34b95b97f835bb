package tracking

import (
	"runtime"
	"sync"
)

// writerProcs serialises the changes of GOMAXPROCS made for event writers (Recorder.run).
var writerProcs sync.Mutex

// addWriterProc raises GOMAXPROCS by one while an event writer runs; releaseWriterProc undoes
// it. Go code holds a P for as long as it runs: a writer busy with a large batch of SQLite
// writes would otherwise leave the HTTP handlers one P fewer than there are CPUs, and on a
// 2-core machine their tail latency under load doubles (issue 6: p99 2.5× a bare handler's,
// 1.1–1.4× in most runs with the extra P). With it the handlers keep a P per CPU and the kernel shares the
// CPUs between their threads and the writer's.
//
// The writer's thread is deliberately not given a lower priority: Go's runtime assumes its
// threads run alike, and a low-priority thread descheduled while the runtime needs it (a
// stop-the-world, a runtime lock) stalls every handler — measured as a worse p99 than with
// equal priorities. Setting GOMAXPROCS stops the runtime's own updates of it from the CPU quota.
func addWriterProc() {
	writerProcs.Lock()
	defer writerProcs.Unlock()
	runtime.GOMAXPROCS(runtime.GOMAXPROCS(0) + 1)
}

// releaseWriterProc gives back the P added by addWriterProc.
func releaseWriterProc() {
	writerProcs.Lock()
	defer writerProcs.Unlock()
	runtime.GOMAXPROCS(max(1, runtime.GOMAXPROCS(0)-1))
}
