package ingest

import (
	"fmt"
	"io"
	"time"

	"github.com/VictoriaMetrics/metrics"
)

// WritePrometheus writes ingest's figures in Prometheus's text format.
func (in *Ingest) WritePrometheus(w io.Writer) {
	st := &in.stats
	metrics.WriteCounterUint64(w, "klagg_frames_total", uint64(st.Frames.Load()))
	metrics.WriteCounterUint64(w, "klagg_malformed_frames_total", uint64(st.Malformed.Load()))
	metrics.WriteCounterUint64(w, "klagg_ingest_rotations_total", uint64(st.Rotations.Load()))
	lag := 0.0
	if last := st.LastFrameMs.Load(); last > 0 {
		lag = float64(time.Now().UnixMilli()-last) / 1000
	}
	metrics.WriteGaugeFloat64(w, "klagg_exchange_lag_seconds", lag)
	conns := in.Connections()
	up := 0
	for _, c := range conns {
		if c.Connected {
			up++
		}
	}
	metrics.WriteGaugeUint64(w, "klagg_ingest_connections", uint64(len(conns)))
	metrics.WriteGaugeUint64(w, "klagg_ingest_connections_up", uint64(up))
	for _, c := range conns {
		metrics.WriteCounterUint64(w, fmt.Sprintf(`klagg_ingest_reconnects_total{connection="%d"}`, c.ID), uint64(c.Reconnects))
	}
}

// WritePrometheus writes the sequencer's figures: what it forwarded, and
// how it made up for what did not come as it should.
func (r *Router) WritePrometheus(w io.Writer) {
	st := &r.stats
	metrics.WriteCounterUint64(w, "klagg_gap_fills_total", uint64(st.Fills.Load()))
	metrics.WriteCounterUint64(w, "klagg_gap_repairs_total", uint64(st.Resyncs.Load()))
	metrics.WriteCounterUint64(w, "klagg_holds_released_total", uint64(st.Released.Load()))
	metrics.WriteGaugeUint64(w, "klagg_trades_buffered", uint64(max(st.Buffered.Load(), 0)))
	metrics.WriteCounterUint64(w, "klagg_trades_duplicate_total", uint64(st.Duplicates.Load()))
	metrics.WriteCounterUint64(w, "klagg_trades_filled_total", uint64(st.Filled.Load()))
	metrics.WriteCounterUint64(w, "klagg_trade_gaps_unfillable_total", uint64(st.Unfillable.Load()))
	metrics.WriteCounterUint64(w, "klagg_trades_overflowed_total", uint64(st.Overflowing.Load()))
}
