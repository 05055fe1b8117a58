package binance

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strconv"

	"github.com/klagg/klagg/internal/kline"
)

// MaxKlinesLimit is the most klines one /fapi/v1/klines request returns.
const MaxKlinesLimit = 1500

// BadRequest is Binance's answer to a request it refuses: HTTP 400 with
// code and msg.
func BadRequest(code int, msg string) *APIError {
	return &APIError{Status: http.StatusBadRequest, Code: code, Msg: msg}
}

// Mandatory is Binance's answer to a request without the parameter name.
func Mandatory(name string) *APIError {
	return BadRequest(CodeMandatoryParam, fmt.Sprintf("Mandatory parameter '%s' was not sent, was empty/null, or malformed.", name))
}

// This file is the server side of the klines request, shared by klagg's
// API and the fake exchange.

// KlinesQuery is a parsed /fapi/v1/klines request.
type KlinesQuery struct {
	Symbol   string
	Interval kline.Interval
	Start    int64 // -1: none
	End      int64 // -1: none
	Limit    int
}

// ParseKlinesQuery reads symbol, interval, startTime, endTime and limit with
// Binance's rules and error codes. It does not know which symbols and
// intervals the server has; the handler checks those.
func ParseKlinesQuery(q url.Values) (KlinesQuery, *APIError) {
	var kq KlinesQuery
	for _, name := range []string{"symbol", "interval", "startTime", "endTime", "limit"} {
		if len(q[name]) > 1 {
			return kq, BadRequest(-1101, fmt.Sprintf("Duplicate values for parameter '%s'.", name))
		}
	}
	kq.Symbol = q.Get("symbol")
	if kq.Symbol == "" {
		return kq, Mandatory("symbol")
	}
	if len(kq.Symbol) > 32 {
		return kq, BadRequest(-1121, "Invalid symbol.")
	}
	ivs := q.Get("interval")
	if ivs == "" {
		return kq, Mandatory("interval")
	}
	iv, err := kline.ParseInterval(ivs)
	if err != nil {
		return kq, BadRequest(-1120, "Invalid interval.")
	}
	kq.Interval = iv
	var perr *APIError
	if kq.Start, perr = timeParam(q, "startTime"); perr != nil {
		return kq, perr
	}
	if kq.End, perr = timeParam(q, "endTime"); perr != nil {
		return kq, perr
	}
	if kq.Start >= 0 && kq.End >= 0 && kq.Start > kq.End {
		return kq, BadRequest(-1023, "Start time is greater than end time.")
	}
	kq.Limit = 500
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil {
			return kq, BadRequest(-1100, "Illegal characters found in parameter 'limit'; legal range is '^[0-9]{1,20}$'.")
		}
		if n < 1 || n > MaxKlinesLimit {
			return kq, BadRequest(-1130, fmt.Sprintf("Data sent for parameter 'limit' is not valid: %d is outside 1..%d.", n, MaxKlinesLimit))
		}
		kq.Limit = n
	}
	return kq, nil
}

func timeParam(q url.Values, name string) (int64, *APIError) {
	s := q.Get(name)
	if s == "" {
		return -1, nil
	}
	v, err := strconv.ParseInt(s, 10, 64)
	if err != nil || v < 0 {
		return -1, BadRequest(-1100, fmt.Sprintf("Illegal characters found in parameter '%s'; legal range is '^[0-9]{1,20}$'.", name))
	}
	return v, nil
}

// ExchangeInfoAnswer is /fapi/v1/exchangeInfo's answer as a server writes
// it: the exchange's lists and each symbol's object as they are to be
// sent.
type ExchangeInfoAnswer struct {
	Timezone        string            `json:"timezone"`
	ServerTime      int64             `json:"serverTime"`
	FuturesType     string            `json:"futuresType"`
	RateLimits      json.RawMessage   `json:"rateLimits"`
	ExchangeFilters json.RawMessage   `json:"exchangeFilters"`
	Assets          []any             `json:"assets"`
	Symbols         []json.RawMessage `json:"symbols"`
}

// NewExchangeInfoAnswer is the answer at server time now (ms) with the
// exchange's rate limits and filters (JSON arrays; empty: none).
func NewExchangeInfoAnswer(now int64, rateLimits, exchangeFilters json.RawMessage) ExchangeInfoAnswer {
	list := func(v json.RawMessage) json.RawMessage {
		if len(v) == 0 {
			return json.RawMessage("[]")
		}
		return v
	}
	return ExchangeInfoAnswer{Timezone: "UTC", ServerTime: now, FuturesType: "U_MARGINED",
		RateLimits: list(rateLimits), ExchangeFilters: list(exchangeFilters), Assets: []any{}, Symbols: []json.RawMessage{}}
}
