package api

import (
	"fmt"
	"net/http"
	"sort"

	"github.com/VictoriaMetrics/metrics"
)

// writeMetrics serves /metrics in Prometheus's text format: the service's
// figures read at scrape time, the API's request counters, and the Go
// runtime's and process's own.
func (s *Server) writeMetrics(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; version=0.0.4")
	st := s.cfg.Source.Status()
	ss := s.cfg.Streams.Stats()
	counter := func(name string, v int64) { metrics.WriteCounterUint64(w, name, uint64(max(v, 0))) }
	gauge := func(name string, v float64) { metrics.WriteGaugeFloat64(w, name, v) }
	gauge("klagg_ready", b2f(st.Ready))
	gauge("klagg_symbols", float64(st.Symbols))
	counter("klagg_frames_total", st.Frames)
	counter("klagg_malformed_frames_total", st.Malformed)
	counter("klagg_trades_total", st.Trades)
	counter("klagg_late_trades_total", st.Late)
	counter("klagg_gap_fills_total", st.GapFills)
	counter("klagg_gap_repairs_total", st.Resyncs)
	counter("klagg_holds_released_total", st.HoldsReleased)
	gauge("klagg_trades_buffered", float64(st.Buffered))
	x := st.Exactness
	counter("klagg_trades_duplicate_total", x.Duplicates)
	counter("klagg_trades_filled_total", x.Filled)
	counter("klagg_trade_gaps_unfillable_total", x.Unfillable)
	counter("klagg_trades_overflowed_total", x.Overflowed)
	counter("klagg_trades_too_late_total", x.TooLate)
	counter("klagg_ingest_rotations_total", x.Rotations)
	gauge("klagg_exchange_lag_seconds", float64(st.LagMs)/1000)
	gauge("klagg_ingest_connections", float64(st.Connections))
	gauge("klagg_ingest_connections_up", float64(st.Connected))
	for _, c := range st.ConnStates {
		counter(fmt.Sprintf(`klagg_ingest_reconnects_total{connection="%d"}`, c.ID), c.Reconnects)
	}
	counter("klagg_klines_written_total", st.KlinesWritten)
	counter("klagg_store_write_failures_total", st.WriteFailures)
	gauge("klagg_writer_queue_depth", float64(st.WriterBacklog))
	gauge("klagg_rest_weight_used_1m", float64(st.RESTWeight1M))
	counter("klagg_rest_weight_total", st.RESTWeight)
	if c := st.Cluster; c != nil {
		gauge("klagg_cluster_symbols_owned", float64(c.Owned))
		counter("klagg_cluster_takeovers_total", c.Takeovers)
		counter("klagg_cluster_rebalanced_total", c.Rebalanced)
		counter("klagg_cluster_leases_lost_total", c.Lost)
		counter("klagg_bus_published_total", c.Published)
		counter("klagg_bus_open_klines_sent_total", c.OpenSent)
		gauge("klagg_bus_publish_pending", float64(c.PublishPending))
		counter("klagg_bus_stored_total", c.Stored)
		counter("klagg_cluster_klines_fed_total", c.Fed)
	}
	counter("klagg_reconcile_checked_total", st.Reconciled)
	fields := make([]string, 0, len(st.ReconcileDiffs))
	for f := range st.ReconcileDiffs {
		fields = append(fields, f)
	}
	sort.Strings(fields)
	for _, f := range fields {
		counter(fmt.Sprintf(`klagg_reconcile_differences_total{field=%q}`, f), st.ReconcileDiffs[f])
	}
	counter("klagg_reconcile_unamended_total", st.Unamended)
	gauge("klagg_stream_clients", float64(ss.Clients.Load()))
	counter("klagg_stream_clients_accepted_total", ss.Accepted.Load())
	counter("klagg_stream_clients_dropped_total", ss.Dropped.Load())
	counter("klagg_stream_clients_rejected_total", ss.Rejected.Load())
	counter("klagg_stream_events_total", ss.Events.Load())
	if l := s.cfg.Conns; l != nil {
		gauge("klagg_http_connections", float64(l.Open()))
		counter("klagg_http_connections_refused_total", l.Refused())
		counter("klagg_http_connections_evicted_total", l.Evicted())
	}
	s.cfg.Source.WritePrometheus(w)
	s.cfg.Streams.WritePrometheus(w)
	s.metrics.WritePrometheus(w)
	metrics.WriteProcessMetrics(w)
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
