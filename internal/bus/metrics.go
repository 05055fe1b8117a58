package bus

import (
	"io"

	"github.com/VictoriaMetrics/metrics"
)

// WritePrometheus writes the publisher's figures in Prometheus's text format.
func (p *Publisher) WritePrometheus(w io.Writer) {
	metrics.WriteCounterUint64(w, "klagg_bus_published_total", uint64(p.Published.Load()))
	metrics.WriteGaugeUint64(w, "klagg_bus_publish_pending", uint64(p.Pending()))
}

// WritePrometheus writes how many open klines went to the serve nodes.
func (o *Opens) WritePrometheus(w io.Writer) {
	metrics.WriteCounterUint64(w, "klagg_bus_open_klines_sent_total", uint64(o.Sent.Load()))
}

// WritePrometheus writes how many klines the sink committed.
func (s *Sink) WritePrometheus(w io.Writer) {
	metrics.WriteCounterUint64(w, "klagg_bus_stored_total", uint64(s.Stored.Load()))
}
