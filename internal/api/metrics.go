package api

import (
	"net/http"

	"github.com/VictoriaMetrics/metrics"
)

// writeMetrics serves /metrics in Prometheus's text format: the figures
// each part of the service writes, the streams', the API's own, and the
// Go runtime's and process's.
func (s *Server) writeMetrics(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; version=0.0.4")
	if l := s.cfg.Conns; l != nil {
		metrics.WriteGaugeUint64(w, "klagg_http_connections", uint64(l.Open()))
		metrics.WriteCounterUint64(w, "klagg_http_connections_refused_total", uint64(l.Refused()))
		metrics.WriteCounterUint64(w, "klagg_http_connections_evicted_total", uint64(l.Evicted()))
	}
	s.cfg.Source.WritePrometheus(w)
	s.cfg.Streams.WritePrometheus(w)
	s.metrics.WritePrometheus(w)
	metrics.WriteProcessMetrics(w)
}
