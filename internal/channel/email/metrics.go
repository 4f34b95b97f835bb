package email

import "github.com/prometheus/client_golang/prometheus"

var (
	descRelayUp = prometheus.NewDesc("herald_smtp_relay_up",
		"1 when the relay is taking connections, 0 while it is skipped after failing to connect.", []string{"relay"}, nil)
	descRelayConns = prometheus.NewDesc("herald_smtp_relay_connections", "Open connections to the relay (in use or idle).", []string{"relay"}, nil)
	descThrottled  = prometheus.NewDesc("herald_smtp_throttled_domains",
		"Recipient domains sent to below their configured rate after answering 421, 450 or 451.", nil, nil)
	descRelayRate = prometheus.NewDesc("herald_smtp_relay_rate_limit",
		"Messages per second this node sends to the relay at most: its rate= times the node's share, or less while the relay asks to slow down; 0 for no limit.",
		[]string{"relay"}, nil)
	descShare = prometheus.NewDesc("herald_smtp_limits_share", "This node's share of the configured rates and caps (1/n while n nodes send).", nil, nil)
)

var _ prometheus.Collector = (*Transport)(nil)

// Describe sends the descriptions of the transport's metrics, for prometheus.Registry.
func (t *Transport) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descRelayUp, descRelayConns, descRelayRate, descThrottled, descShare} {
		ch <- d
	}
}

// Collect sends the transport's metrics.
func (t *Transport) Collect(ch chan<- prometheus.Metric) {
	now := t.clock.Now()
	for _, p := range t.pools {
		p.mu.Lock()
		up := 0.0
		if !now.Before(p.downUntil) {
			up = 1
		}
		rate := p.rate.rate
		p.mu.Unlock()
		name := p.relay.String()
		ch <- prometheus.MustNewConstMetric(descRelayUp, prometheus.GaugeValue, up, name)
		ch <- prometheus.MustNewConstMetric(descRelayConns, prometheus.GaugeValue, float64(len(p.slots)), name)
		ch <- prometheus.MustNewConstMetric(descRelayRate, prometheus.GaugeValue, rate, name)
	}
	throttled, share := t.domains.throttledAndShare()
	ch <- prometheus.MustNewConstMetric(descThrottled, prometheus.GaugeValue, float64(throttled))
	ch <- prometheus.MustNewConstMetric(descShare, prometheus.GaugeValue, share)
}
