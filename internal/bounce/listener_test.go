package bounce

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/smtp"
	"os"
	"strings"
	"sync"
	"testing"
)

// TestListenerOverSMTP sends real DSNs to the listener over SMTP with the standard library's
// client and checks what reaches the Receiver.
func TestListenerOverSMTP(t *testing.T) {
	var mu sync.Mutex
	var got []*Report
	var gotTo [][]string
	fail := false
	recv := ReceiverFunc(func(ctx context.Context, to []string, rep *Report) error {
		mu.Lock()
		defer mu.Unlock()
		if fail {
			return errors.New("database is down")
		}
		got, gotTo = append(got, rep), append(gotTo, to)
		return nil
	})
	l := NewListener("Bounces.Example.com", recv, slog.New(slog.DiscardHandler))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go l.Serve(ln)
	t.Cleanup(func() { _ = l.Shutdown(context.Background()) })

	dsn, err := os.ReadFile("testdata/dsn-postfix.eml")
	if err != nil {
		t.Fatal(err)
	}
	if err := smtp.SendMail(ln.Addr().String(), nil, "", []string{"b+42.abc@bounces.example.com"}, dsn); err != nil {
		t.Fatalf("send a DSN: %v", err)
	}
	mu.Lock()
	if len(got) != 1 || gotTo[0][0] != "b+42.abc@bounces.example.com" || got[0].Kind != KindDSN || len(got[0].Results) != 2 {
		t.Fatalf("received %d reports: %+v to %v", len(got), got, gotTo)
	}
	if r := got[0].Results[0]; r.Reason != ReasonUserUnknown || r.Hard == nil || !*r.Hard {
		t.Fatalf("first result = %+v", r)
	}
	mu.Unlock()

	// Not a relay: another domain is refused at RCPT.
	err = smtp.SendMail(ln.Addr().String(), nil, "", []string{"someone@elsewhere.example"}, dsn)
	if err == nil || !strings.Contains(err.Error(), "550") {
		t.Fatalf("relaying: %v", err)
	}
	// A receiver failure answers 451, so the sender keeps the bounce and retries.
	mu.Lock()
	fail = true
	mu.Unlock()
	err = smtp.SendMail(ln.Addr().String(), nil, "", []string{"b+43.abc@bounces.example.com"}, dsn)
	if err == nil || !strings.Contains(err.Error(), "451") {
		t.Fatalf("receiver failure: %v", err)
	}
}
