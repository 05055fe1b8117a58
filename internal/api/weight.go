package api

import (
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/klagg/klagg/internal/binance"
)

// weights is the API's side of binance.WeightMeter: what a request weighs
// and how a refusal reads.
type weights struct {
	meter *binance.WeightMeter
	limit int
	now   func() time.Time
}

func newWeights(limit int, now func() time.Time) *weights {
	return &weights{meter: binance.NewWeightMeter(limit), limit: limit, now: now}
}

// requestWeight is Binance's weight of a REST request.
func requestWeight(r *http.Request) int {
	switch path := r.URL.Path; {
	case path == "/fapi/v1/klines" || path == "/fapi/v1/continuousKlines":
		limit := 500
		if n, err := strconv.Atoi(r.URL.Query().Get("limit")); err == nil && n > 0 {
			limit = n
		}
		return binance.KlinesWeight(limit)
	case strings.HasSuffix(path, "/ticker/price") && r.URL.Query().Get("symbol") == "":
		return binance.WeightTickerPriceAll
	}
	return binance.WeightDefault
}

// weigh charges r to its client, sets X-MBX-USED-WEIGHT-1M, and answers a
// client over its budget as Binance does; it reports whether to serve r.
// A client is an IP address, as on Binance.
func (s *Server) weigh(w http.ResponseWriter, r *http.Request) bool {
	ip, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		ip = r.RemoteAddr
	}
	now := s.weights.now()
	used, status, retry := s.weights.meter.Charge(ip, requestWeight(r), now)
	w.Header().Set("X-MBX-USED-WEIGHT-1M", strconv.Itoa(used))
	switch status {
	case http.StatusTooManyRequests:
		w.Header().Set("Retry-After", strconv.Itoa(int((retry+time.Second-1)/time.Second)))
		writeError(w, &binance.APIError{Status: status, Code: binance.CodeTooManyRequests, Msg: binance.TooManyRequestsMsg(ip, s.weights.limit)})
		return false
	case http.StatusTeapot:
		w.Header().Set("Retry-After", strconv.Itoa(int((retry+time.Second-1)/time.Second)))
		writeError(w, &binance.APIError{Status: status, Code: binance.CodeTooManyRequests, Msg: binance.BannedMsg(ip, now.Add(retry))})
		return false
	}
	return true
}
