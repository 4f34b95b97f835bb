package sending

import (
	"context"
	"testing"
	"time"
	"unsafe"

	"github.com/heraldhq/herald/internal/channel/email/smtptest"
	"github.com/heraldhq/herald/internal/store"
	"github.com/heraldhq/herald/internal/store/storetest"
)

// TestBatchBuiltInOneBuffer: a worker builds its batch's messages into one buffer sized from
// the first message, not one grown by appends: each growth copied the buffer while the
// messages built so far kept the old copy alive, a burst of tens of MB when the workers built
// their first batches (the 1,000,000-recipient bench's peak RSS went from 108–115 MB to up to
// 156 MB for it).
func TestBatchBuiltInOneBuffer(t *testing.T) {
	db := storetest.New(t, store.SQLite)
	f := newFixture(t, db, 200, 84*time.Hour)
	e := f.engine(t, transport(t, smtptest.Start(t, smtptest.Options{})), "n1", DefaultBatchSize)
	msgs, err := readyMessages(context.Background(), e, f.id, 200)
	if err != nil {
		t.Fatal(err)
	}
	if len(msgs) != 200 {
		t.Fatalf("%d messages built, want 200", len(msgs))
	}
	for i := 1; i < len(msgs); i++ {
		prev, cur := msgs[i-1].Data, msgs[i].Data
		if uintptr(unsafe.Pointer(unsafe.SliceData(prev)))+uintptr(len(prev)) != uintptr(unsafe.Pointer(unsafe.SliceData(cur))) {
			t.Fatalf("message %d does not follow message %d in the buffer: the buffer grew while the batch was built", i, i-1)
		}
	}
}
