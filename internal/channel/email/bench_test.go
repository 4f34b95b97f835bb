package email

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/heraldhq/herald/internal/channel"
	"github.com/heraldhq/herald/internal/channel/email/smtptest"
)

// benchMessages returns n ready-made messages of about 2 KB.
func benchMessages(n int) []channel.Message {
	line := bytes.Repeat([]byte("Lorem ipsum dolor sit amet, consectetur adipiscing elit. "), 1)
	msgs := make([]channel.Message, n)
	for i := range msgs {
		var b bytes.Buffer
		fmt.Fprintf(&b, "From: <news@herald.test>\r\nTo: <user%d@example.com>\r\nSubject: Bench %d\r\n\r\n", i, i)
		for b.Len() < 2000 {
			b.Write(line)
			b.WriteString("\r\n")
		}
		msgs[i] = channel.Message{ID: int64(i), To: fmt.Sprintf("user%d@example.com", i), From: "bounces@herald.test", Data: b.Bytes(), Plain: true}
	}
	return msgs
}

// BenchmarkPipelinedSend pushes ready-made ~2 KB messages over 8 pipelined
// connections into the smtptest sink (or, with HERALD_BENCH_SMTP=host:port,
// into another server such as Postfix's smtp-sink), in batches of 500.
func BenchmarkPipelinedSend(b *testing.B) {
	addr := os.Getenv("HERALD_BENCH_SMTP")
	if addr == "" {
		s := smtptest.Start(b, smtptest.Options{Sink: true})
		addr = s.Addr()
	}
	tr, err := New(Options{Relays: []Relay{{Addr: addr, TLS: TLSNone, MaxConns: 8}}, HelloName: "bench.herald.test"})
	if err != nil {
		b.Fatal(err)
	}
	defer tr.Close()
	const batch = 500
	msgs := benchMessages(batch)
	out := make([]channel.Outcome, batch)
	ctx := context.Background()
	tr.Send(ctx, msgs[:8], out) // open the connections
	b.SetBytes(int64(len(msgs[0].Data)))
	b.ResetTimer()
	start := time.Now()
	for sent := 0; sent < b.N; sent += batch {
		n := min(batch, b.N-sent)
		if err := tr.Send(ctx, msgs[:n], out[:n]); err != nil {
			b.Fatal(err)
		}
		for i := range n {
			if out[i].Status != channel.Sent {
				b.Fatalf("message %d: %+v", i, out[i])
			}
		}
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "msgs/s")
}
