package fakex

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strconv"
	"time"

	"github.com/klagg/klagg/internal/binance"
	"github.com/klagg/klagg/internal/kline"
)

// weightWindow is Binance's per-IP request weight over one wall-clock minute.
type weightWindow struct {
	start      time.Time
	used       int
	warned     bool // a 429 was sent in this window
	bannedTill time.Time
}

// rest wraps a handler with Binance's weight accounting and failure modes.
// A weight of -1 means the handler's weight depends on its parameters
// (klines: by limit).
func (x *Exchange) rest(weight int, h func(r *http.Request, now int64) (any, *binance.APIError)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		weight := weight
		if weight < 0 {
			weight = klinesWeight(r)
		}
		x.mu.Lock()
		x.stats.RESTRequests++
		realNow := time.Now()
		ww := &x.weight
		if realNow.Sub(ww.start) >= time.Minute {
			ww.start, ww.used, ww.warned = realNow.Truncate(time.Minute), 0, false
		}
		var fault *restFault
		if len(x.restFail) > 0 {
			fault = &x.restFail[0]
			x.restFail = x.restFail[1:]
		}
		status, retry := 0, time.Duration(0)
		switch {
		case realNow.Before(ww.bannedTill):
			status, retry = http.StatusTeapot, ww.bannedTill.Sub(realNow)
			x.stats.Banned418++
		case fault != nil:
			status, retry = fault.status, fault.retryAfter
			switch status {
			case http.StatusTeapot:
				ww.bannedTill = realNow.Add(retry)
				x.stats.Banned418++
			case http.StatusTooManyRequests:
				x.stats.Rejected429++
			default:
				x.stats.ServerErrors++
			}
		case ww.used+weight > x.cfg.WeightPerMinute:
			retry = ww.start.Add(time.Minute).Sub(realNow)
			if ww.warned {
				// Ignoring a 429 earns a ban.
				status, ww.bannedTill = http.StatusTeapot, realNow.Add(2*time.Minute)
				retry = 2 * time.Minute
				x.stats.Banned418++
			} else {
				status, ww.warned = http.StatusTooManyRequests, true
				x.stats.Rejected429++
			}
		default:
			ww.used += weight
			x.stats.Weight += weight
			x.stats.MaxWeight1M = max(x.stats.MaxWeight1M, ww.used)
		}
		used := ww.used
		now := x.nowLocked()
		x.mu.Unlock()

		w.Header().Set("X-MBX-USED-WEIGHT-1M", strconv.Itoa(used))
		w.Header().Set("Content-Type", "application/json")
		if status != 0 {
			refuse(w, status, retry, realNow, x.cfg.WeightPerMinute)
			return
		}
		v, aerr := h(r, now)
		if aerr != nil {
			w.WriteHeader(aerr.Status)
			json.NewEncoder(w).Encode(binance.ErrorBody{Code: aerr.Code, Msg: aerr.Msg})
			return
		}
		if raw, ok := v.(json.RawMessage); ok {
			w.Write(raw)
			return
		}
		json.NewEncoder(w).Encode(v)
	}
}

// refuse answers as Binance does when it will not serve a request. A
// futures 429 carries no Retry-After; a 418 says in its message until when
// the IP is banned; 403 comes from the firewall, in HTML; 503 -1008 is an
// overloaded server; 408 a backend timeout.
func refuse(w http.ResponseWriter, status int, retry time.Duration, now time.Time, limit int) {
	var body binance.ErrorBody
	switch status {
	case http.StatusTooManyRequests:
		body = binance.ErrorBody{Code: binance.CodeTooManyRequests, Msg: binance.TooManyRequestsMsg("127.0.0.1", limit)}
	case http.StatusTeapot:
		w.Header().Set("Retry-After", strconv.Itoa(int((retry+time.Second-1)/time.Second)))
		body = binance.ErrorBody{Code: binance.CodeTooManyRequests, Msg: binance.BannedMsg("127.0.0.1", now.Add(retry))}
	case http.StatusForbidden:
		w.Header().Set("Content-Type", "text/html")
		w.WriteHeader(status)
		io.WriteString(w, "<html><body><h1>403 ERROR</h1><p>The request could not be satisfied.</p></body></html>")
		return
	case http.StatusServiceUnavailable:
		body = binance.ErrorBody{Code: binance.CodeOverloaded, Msg: "Server is currently overloaded with other requests. Please try again in a few minutes."}
	case http.StatusRequestTimeout:
		body = binance.ErrorBody{Code: binance.CodeDisconnected, Msg: "Timeout waiting for response from backend server. Send status unknown; execution status unknown."}
	default:
		body = binance.ErrorBody{Code: binance.CodeDisconnected, Msg: "Internal error; unable to process your request. Please try again."}
	}
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(body)
}

// klinesWeight is Binance's weight of a klines request, by its limit.
func klinesWeight(r *http.Request) int {
	limit := 500
	if s := r.URL.Query().Get("limit"); s != "" {
		if n, err := strconv.Atoi(s); err == nil {
			limit = n
		}
	}
	return binance.KlinesWeight(limit)
}

func (x *Exchange) handlePing(*http.Request, int64) (any, *binance.APIError) { return struct{}{}, nil }

func (x *Exchange) handleTime(_ *http.Request, now int64) (any, *binance.APIError) {
	return map[string]int64{"serverTime": now}, nil
}

func (x *Exchange) handleExchangeInfo(_ *http.Request, now int64) (any, *binance.APIError) {
	x.mu.Lock()
	defer x.mu.Unlock()
	syms := []binance.SymbolInfo{}
	for _, s := range x.symbols {
		base := s.name[:len(s.name)-4]
		syms = append(syms, binance.SymbolInfo{
			Symbol: s.name, Pair: s.name, ContractType: s.contract, DeliveryDate: 4133404800000,
			OnboardDate: s.onboard, Status: x.statusLocked(s, now), BaseAsset: base, QuoteAsset: "USDT", MarginAsset: "USDT",
			PricePrecision: s.prec.Price, QuantityPrecision: s.prec.Qty,
		})
	}
	// A quarterly contract and a coin-quoted one, which klagg must leave out.
	syms = append(syms,
		binance.SymbolInfo{Symbol: "BTCUSDT_261225", Pair: "BTCUSDT", ContractType: "CURRENT_QUARTER", Status: "TRADING", BaseAsset: "BTC", QuoteAsset: "USDT", PricePrecision: 1, QuantityPrecision: 3},
		binance.SymbolInfo{Symbol: "ETHBTC", Pair: "ETHBTC", ContractType: "PERPETUAL", Status: "TRADING", BaseAsset: "ETH", QuoteAsset: "BTC", PricePrecision: 6, QuantityPrecision: 3})
	info, err := exchangeInfo(now, x.cfg.WeightPerMinute, syms)
	if err != nil {
		return nil, &binance.APIError{Status: http.StatusInternalServerError, Code: binance.CodeDisconnected, Msg: err.Error()}
	}
	return info, nil
}

func (x *Exchange) lookup(r *http.Request) (*symbol, *binance.APIError) {
	name := r.URL.Query().Get("symbol")
	if name == "" {
		return nil, binance.Mandatory("symbol")
	}
	x.mu.Lock()
	s := x.bySym[name]
	x.mu.Unlock()
	if s == nil {
		return nil, binance.BadRequest(-1121, "Invalid symbol.")
	}
	return s, nil
}

func intParam(r *http.Request, name string, def int64) (int64, *binance.APIError) {
	s := r.URL.Query().Get(name)
	if s == "" {
		return def, nil
	}
	v, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 0, binance.BadRequest(-1100, fmt.Sprintf("Illegal characters found in parameter '%s'; legal range is '^[0-9]{1,20}$'.", name))
	}
	return v, nil
}

func (x *Exchange) handleKlines(r *http.Request, now int64) (any, *binance.APIError) {
	q, aerr := binance.ParseKlinesQuery(r.URL.Query())
	if aerr != nil {
		return nil, aerr
	}
	x.mu.Lock()
	s := x.bySym[q.Symbol]
	x.mu.Unlock()
	if s == nil {
		return nil, binance.BadRequest(binance.CodeInvalidSymbol, "Invalid symbol.")
	}
	iv, limit, start, end := q.Interval, int64(q.Limit), q.Start, q.End
	if end < 0 {
		end = now
	}
	end = min(end, now)
	x.mu.Lock()
	x.generateLocked(now)
	trades := s.history()
	prec := s.prec
	x.mu.Unlock()
	var ks []kline.Kline
	if start >= 0 {
		if start > end {
			return nil, binance.BadRequest(-1023, "Start time is greater than end time.")
		}
		// Klines are identified by their open time: the first is the
		// first opening at or after startTime, not the one holding it.
		if first := iv.Open(start); first < start {
			start = iv.Next(first)
		}
		// Only the first limit klines from start are needed.
		to := end
		if d := iv.Duration(); d > 0 && start+d.Milliseconds()*limit < to {
			to = start + d.Milliseconds()*(limit+1)
		}
		ks = Reference(trades, iv, start, min(to, end))
		ks = ks[:min(len(ks), int(limit))]
	} else {
		from := end - iv.Duration().Milliseconds()*(limit+1)
		ks = Reference(trades, iv, from, end)
		ks = ks[max(0, len(ks)-int(limit)):]
	}
	buf := []byte{'['}
	for i := range ks {
		if i > 0 {
			buf = append(buf, ',')
		}
		buf = binance.AppendKlineArray(buf, &ks[i], prec)
	}
	return json.RawMessage(append(buf, ']')), nil
}

func (x *Exchange) handleAggTrades(r *http.Request, now int64) (any, *binance.APIError) {
	s, aerr := x.lookup(r)
	if aerr != nil {
		return nil, aerr
	}
	limit, aerr := intParam(r, "limit", 500)
	if aerr != nil {
		return nil, aerr
	}
	if limit <= 0 || limit > 1000 {
		return nil, binance.BadRequest(-1130, "Data sent for parameter 'limit' is not valid.")
	}
	fromID, aerr := intParam(r, "fromId", -1)
	if aerr != nil {
		return nil, aerr
	}
	start, aerr := intParam(r, "startTime", -1)
	if aerr != nil {
		return nil, aerr
	}
	end, aerr := intParam(r, "endTime", -1)
	if aerr != nil {
		return nil, aerr
	}
	x.mu.Lock()
	x.generateLocked(now)
	trades := s.trades
	prec := s.prec
	x.mu.Unlock()
	// Binance keeps aggregate trades for 48 hours only (since 2026-08).
	oldest := now - x.cfg.Retention.Milliseconds()
	kept := sort.Search(len(trades), func(i int) bool { return trades[i].Time >= oldest })
	var sel []kline.Trade
	switch {
	case fromID >= 0:
		if kept > 0 && fromID <= trades[kept-1].ID {
			return nil, binance.BadRequest(binance.CodeInvalidParameter, "Data sent for parameter 'fromId' is not valid.")
		}
		i := sort.Search(len(trades), func(i int) bool { return trades[i].ID >= fromID })
		sel = trades[i:min(len(trades), i+int(limit))]
	case start >= 0 || end >= 0:
		if start < 0 {
			start = end - time.Hour.Milliseconds()
		}
		if end < 0 {
			end = start + time.Hour.Milliseconds()
		}
		if end-start > time.Hour.Milliseconds() {
			return nil, binance.BadRequest(-1127, "More than 1 hours between startTime and endTime.")
		}
		if start < oldest {
			return nil, binance.BadRequest(binance.CodeInvalidParameter, "Data sent for parameter 'startTime' is not valid.")
		}
		i := sort.Search(len(trades), func(i int) bool { return trades[i].Time >= start })
		j := i
		for j < len(trades) && trades[j].Time <= end && j-i < int(limit) {
			j++
		}
		sel = trades[i:j]
	default:
		sel = trades[max(0, len(trades)-int(limit)):]
	}
	out := make([]binance.AggTradeJSON, len(sel))
	for i := range sel {
		out[i] = binance.AggTradeRow(&sel[i], prec)
	}
	return out, nil
}
