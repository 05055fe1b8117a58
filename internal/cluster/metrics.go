package cluster

import (
	"io"

	"github.com/VictoriaMetrics/metrics"
)

// WritePrometheus writes the leases' figures in Prometheus's text format.
func (l *Leases) WritePrometheus(w io.Writer) {
	metrics.WriteGaugeUint64(w, "klagg_cluster_symbols_owned", uint64(l.Held()))
	metrics.WriteCounterUint64(w, "klagg_cluster_takeovers_total", uint64(l.Takeovers.Load()))
	metrics.WriteCounterUint64(w, "klagg_cluster_rebalanced_total", uint64(l.Rebalanced.Load()))
	metrics.WriteCounterUint64(w, "klagg_cluster_leases_lost_total", uint64(l.Lost.Load()))
}

// WritePrometheus writes how many klines the feed handed on.
func (f *Feed) WritePrometheus(w io.Writer) {
	metrics.WriteCounterUint64(w, "klagg_cluster_klines_fed_total", uint64(f.Klines.Load()))
}
