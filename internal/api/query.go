package api

import (
	"fmt"
	"net/http"
	"net/url"
	"strconv"

	"github.com/klagg/klagg/internal/kline"
)

// MaxLimit is the most klines one /fapi/v1/klines request returns, as on
// Binance.
const MaxLimit = 1500

// Error is a Binance REST error: its HTTP status and the body
// {"code":-1121,"msg":"Invalid symbol."}.
type Error struct {
	Status int    `json:"-"`
	Code   int    `json:"code"`
	Msg    string `json:"msg"`
}

func (e *Error) Error() string { return fmt.Sprintf("%d %s", e.Code, e.Msg) }

func badParam(code int, msg string) *Error { return &Error{http.StatusBadRequest, code, msg} }

func mandatory(name string) *Error {
	return badParam(-1102, fmt.Sprintf("Mandatory parameter '%s' was not sent, was empty/null, or malformed.", name))
}

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
// intervals klagg keeps; the handler checks those.
func ParseKlinesQuery(q url.Values) (KlinesQuery, *Error) {
	var kq KlinesQuery
	for _, name := range []string{"symbol", "interval", "startTime", "endTime", "limit"} {
		if len(q[name]) > 1 {
			return kq, badParam(-1101, fmt.Sprintf("Duplicate values for parameter '%s'.", name))
		}
	}
	kq.Symbol = q.Get("symbol")
	if kq.Symbol == "" {
		return kq, mandatory("symbol")
	}
	if len(kq.Symbol) > 32 {
		return kq, badParam(-1121, "Invalid symbol.")
	}
	ivs := q.Get("interval")
	if ivs == "" {
		return kq, mandatory("interval")
	}
	iv, err := kline.ParseInterval(ivs)
	if err != nil {
		return kq, badParam(-1120, "Invalid interval.")
	}
	kq.Interval = iv
	var perr *Error
	if kq.Start, perr = timeParam(q, "startTime"); perr != nil {
		return kq, perr
	}
	if kq.End, perr = timeParam(q, "endTime"); perr != nil {
		return kq, perr
	}
	if kq.Start >= 0 && kq.End >= 0 && kq.Start > kq.End {
		return kq, badParam(-1023, "Start time is greater than end time.")
	}
	kq.Limit = 500
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil {
			return kq, badParam(-1100, "Illegal characters found in parameter 'limit'; legal range is '^[0-9]{1,20}$'.")
		}
		if n < 1 || n > MaxLimit {
			return kq, badParam(-1130, fmt.Sprintf("Data sent for parameter 'limit' is not valid: %d is outside 1..%d.", n, MaxLimit))
		}
		kq.Limit = n
	}
	return kq, nil
}

func timeParam(q url.Values, name string) (int64, *Error) {
	s := q.Get(name)
	if s == "" {
		return -1, nil
	}
	v, err := strconv.ParseInt(s, 10, 64)
	if err != nil || v < 0 {
		return -1, badParam(-1100, fmt.Sprintf("Illegal characters found in parameter '%s'; legal range is '^[0-9]{1,20}$'.", name))
	}
	return v, nil
}
