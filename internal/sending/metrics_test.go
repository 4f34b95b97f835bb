package sending

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/heraldhq/herald/internal/channel/email/smtptest"
	"github.com/heraldhq/herald/internal/store"
	"github.com/heraldhq/herald/internal/store/storetest"
)

// gather collects c's metrics as "name{label=value}" → value.
func gather(t *testing.T, c prometheus.Collector) map[string]float64 {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(c)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, l.GetName()+"="+l.GetValue())
			}
			name := mf.GetName()
			if len(labels) > 0 {
				name += "{" + strings.Join(labels, ",") + "}"
			}
			switch {
			case m.Counter != nil:
				out[name] = m.Counter.GetValue()
			case m.Gauge != nil:
				out[name] = m.Gauge.GetValue()
			}
		}
	}
	return out
}

// TestMetrics: the engine counts messages by outcome, the batches handed to the channel and the
// live nodes, and says nothing is in flight once the batches are written back.
func TestMetrics(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		f := newFixture(t, db, 5, 84*time.Hour)
		srv := smtptest.Start(t, smtptest.Options{})
		srv.Script(f.addrs[0], smtptest.Always(smtptest.Action{Code: 550, Enhanced: "5.1.1", Text: "no such user"}))
		srv.Script(f.addrs[1], smtptest.Always(smtptest.Action{Code: 451, Enhanced: "4.3.0", Text: "busy"}))
		srv.Script(f.addrs[2], smtptest.Always(smtptest.Action{Stage: smtptest.AtData, Drop: smtptest.DropBeforeReply}))
		e := f.engine(t, transport(t, srv), "n1", 10)
		if err := e.heartbeat(context.Background()); err != nil {
			t.Fatal(err)
		}
		drain(t, e)
		got := gather(t, e)
		want := map[string]float64{
			"herald_sending_messages_total{outcome=sent}":      2,
			"herald_sending_messages_total{outcome=hard_fail}": 1,
			"herald_sending_messages_total{outcome=soft_fail}": 1,
			"herald_sending_messages_total{outcome=unknown}":   1,
			"herald_sending_messages_total{outcome=deferred}":  0,
			"herald_sending_messages_total{outcome=not_built}": 0,
			"herald_sending_batches_total":                     1,
			"herald_sending_batch_errors_total":                0,
			"herald_sending_messages_in_flight":                0,
			"herald_sending_live_nodes":                        1,
		}
		for k, v := range want {
			if g, ok := got[k]; !ok || g != v {
				t.Errorf("%s = %v (present %v), want %v", k, g, ok, v)
			}
		}
	})
}
