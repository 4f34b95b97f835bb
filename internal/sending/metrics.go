package sending

import (
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/heraldhq/herald/internal/channel"
)

// metrics are the engine's counters, moved once per batch.
type metrics struct {
	outcomes [channel.Deferred + 1]atomic.Int64 // by channel.Status
	notBuilt atomic.Int64                       // rows that failed before sending (render, build)
	batches  atomic.Int64                       // batches handed to the Sender
	errors   atomic.Int64                       // batch steps that failed (logged)
	inFlight atomic.Int64                       // messages handed to the Sender, not yet answered
}

var (
	descMessages = prometheus.NewDesc("herald_sending_messages_total",
		"Messages by what the channel said of them: sent, unknown (handed over, unanswered: sent and marked ambiguous), soft_fail, hard_fail, deferred (not attempted), or not_built (failed before sending).",
		[]string{"outcome"}, nil)
	descBatches   = prometheus.NewDesc("herald_sending_batches_total", "Batches handed to the channel.", nil, nil)
	descErrors    = prometheus.NewDesc("herald_sending_batch_errors_total", "Batches that failed to be claimed, prepared or written back (each is logged; its rows return to the queue).", nil, nil)
	descInFlight  = prometheus.NewDesc("herald_sending_messages_in_flight", "Messages handed to the channel and not yet answered.", nil, nil)
	descLiveNodes = prometheus.NewDesc("herald_sending_live_nodes", "Live nodes on this database (this one included), counted at this node's last heartbeat.", nil, nil)
)

var _ prometheus.Collector = (*Engine)(nil)

// Describe sends the descriptions of the engine's metrics, for prometheus.Registry.
func (e *Engine) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descMessages, descBatches, descErrors, descInFlight, descLiveNodes} {
		ch <- d
	}
}

// Collect sends the engine's metrics.
func (e *Engine) Collect(ch chan<- prometheus.Metric) {
	m := &e.metrics
	for s := range m.outcomes {
		ch <- prometheus.MustNewConstMetric(descMessages, prometheus.CounterValue, float64(m.outcomes[s].Load()), channel.Status(s).String())
	}
	ch <- prometheus.MustNewConstMetric(descMessages, prometheus.CounterValue, float64(m.notBuilt.Load()), "not_built")
	ch <- prometheus.MustNewConstMetric(descBatches, prometheus.CounterValue, float64(m.batches.Load()))
	ch <- prometheus.MustNewConstMetric(descErrors, prometheus.CounterValue, float64(m.errors.Load()))
	ch <- prometheus.MustNewConstMetric(descInFlight, prometheus.GaugeValue, float64(m.inFlight.Load()))
	ch <- prometheus.MustNewConstMetric(descLiveNodes, prometheus.GaugeValue, float64(e.LiveNodes()))
}

// countSent adds a batch's outcomes to the counters.
func (m *metrics) countSent(out []channel.Outcome) {
	var n [len(m.outcomes)]int64
	for i := range out {
		if s := out[i].Status; int(s) < len(n) {
			n[s]++
		}
	}
	for s, c := range n {
		if c > 0 {
			m.outcomes[s].Add(c)
		}
	}
}
