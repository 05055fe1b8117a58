package history

import (
	"fmt"
	"io"
	"maps"
	"slices"

	"github.com/VictoriaMetrics/metrics"
)

// WritePrometheus writes the reconciler's figures in Prometheus's text
// format: klines checked against the exchange, and differences by field.
func (r *Reconciler) WritePrometheus(w io.Writer) {
	metrics.WriteCounterUint64(w, "klagg_reconcile_checked_total", uint64(r.Checked.Load()))
	diffs := r.FieldDiffs()
	for _, f := range slices.Sorted(maps.Keys(diffs)) {
		metrics.WriteCounterUint64(w, fmt.Sprintf(`klagg_reconcile_differences_total{field=%q}`, f), uint64(diffs[f]))
	}
}
