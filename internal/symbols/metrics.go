package symbols

import (
	"fmt"
	"io"

	"github.com/VictoriaMetrics/metrics"
)

// WritePrometheus writes the symbol set's figures in Prometheus's text
// format: readiness, symbols served, symbols by state, and backfill.
func (r *Registry) WritePrometheus(w io.Writer) {
	v := r.View()
	ready := uint64(0)
	if r.Ready() {
		ready = 1
	}
	metrics.WriteGaugeUint64(w, "klagg_ready", ready)
	metrics.WriteGaugeUint64(w, "klagg_symbols", uint64(v.Counts[Live]+v.Counts[Paused]))
	for _, st := range States() {
		metrics.WriteGaugeUint64(w, fmt.Sprintf(`klagg_symbols{state=%q}`, st), uint64(v.Counts[st]))
	}
	done, total := r.Backfill()
	metrics.WriteGaugeUint64(w, "klagg_backfill_requests_done", uint64(done))
	metrics.WriteGaugeUint64(w, "klagg_backfill_requests_total", uint64(total))
}
