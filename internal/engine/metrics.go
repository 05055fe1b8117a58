package engine

import (
	"io"

	"github.com/VictoriaMetrics/metrics"
)

// WritePrometheus writes the engine's counters in Prometheus's text format.
func (e *Engine) WritePrometheus(w io.Writer) {
	st := e.Stats()
	metrics.WriteCounterUint64(w, "klagg_trades_total", uint64(st.Trades))
	metrics.WriteCounterUint64(w, "klagg_late_trades_total", uint64(st.Late))
	metrics.WriteCounterUint64(w, "klagg_trades_too_late_total", uint64(st.TooLate))
	metrics.WriteCounterUint64(w, "klagg_reconcile_unamended_total", uint64(st.Unamended))
}

// WritePrometheus writes how many series wait for the writer.
func (c *Coalescer) WritePrometheus(w io.Writer) {
	metrics.WriteGaugeUint64(w, "klagg_writer_queue_depth", uint64(c.Len()))
}
