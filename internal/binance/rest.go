package binance

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/klagg/klagg/internal/decimal"
	"github.com/klagg/klagg/internal/kline"
)

// Client calls Binance's USDⓈ-M REST API within a request-weight budget.
type Client struct {
	base   string
	http   *http.Client
	log    *slog.Logger
	weight *Weight
	urgent bool // may use the weight reserve
	// backoff is the first wait before retrying a failed request; a 403
	// waits 20 times as long.
	backoff time.Duration
}

// NewClient returns a client for the REST root base (https://fapi.binance.com)
// using hc for transport and budget weight per minute.
func NewClient(base string, hc *http.Client, budget int, log *slog.Logger) *Client {
	return &Client{base: strings.TrimRight(base, "/"), http: hc, log: log, weight: NewWeight(budget), backoff: 250 * time.Millisecond}
}

// Urgent returns a client sharing c's budget whose requests may also spend
// the reserve that others leave: a time sync or a trade-gap fill keeps the
// live klines exact and must not wait minutes behind a backfill.
func (c *Client) Urgent() *Client {
	u := *c
	u.urgent = true
	return &u
}

// Weight returns the client's weight accounting.
func (c *Client) Weight() *Weight { return c.weight }

// APIError is an error answer from Binance.
type APIError struct {
	Status int    `json:"-"`
	Code   int    `json:"code"`
	Msg    string `json:"msg"`
}

func (e *APIError) Error() string {
	return fmt.Sprintf("binance answered %d: %s (code %d)", e.Status, e.Msg, e.Code)
}

// Weight keeps klagg within Binance's per-IP request weight per minute.
//
// Binance counts weight in fixed wall-clock minutes and reports the minute's
// total in X-MBX-USED-WEIGHT-1M. A token bucket (golang.org/x/time/rate)
// would allow a full burst at the end of one minute and again at the start
// of the next while still over-running a fixed window; this small
// fixed-window counter mirrors the server's own rule instead.
type Weight struct {
	mu      sync.Mutex
	budget  int
	window  time.Time // start of the current minute
	used    int       // reserved or reported, whichever is higher
	blocked time.Time // no requests before this (429 / 418)
	total   int64
	now     func() time.Time
}

// NewWeight returns a budget of n weight per minute.
func NewWeight(n int) *Weight { return &Weight{budget: n, now: time.Now} }

// Acquire waits until w weight can be spent without exceeding the budget.
// Unless urgent, it leaves a twentieth of the budget unspent for urgent
// requests.
func (wt *Weight) Acquire(ctx context.Context, w int, urgent bool) error {
	for {
		wt.mu.Lock()
		limit := wt.budget
		if !urgent {
			limit = max(w, wt.budget-wt.budget/20)
		}
		now := wt.now()
		if m := now.Truncate(time.Minute); m.After(wt.window) {
			wt.window, wt.used = m, 0
		}
		var wait time.Duration
		switch {
		case now.Before(wt.blocked):
			wait = wt.blocked.Sub(now)
		case wt.used+w > limit:
			wait = wt.window.Add(time.Minute).Sub(now) + 10*time.Millisecond
		default:
			wt.used += w
			wt.total += int64(w)
			wt.mu.Unlock()
			return nil
		}
		wt.mu.Unlock()
		if d, ok := ctx.Deadline(); ok && now.Add(wait).After(d) {
			// No use waiting: the caller gives up before then.
			return fmt.Errorf("%w until %s", ErrWeightSpent, now.Add(wait).UTC().Format("15:04:05"))
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
}

// ErrWeightSpent says a request cannot be made before its caller's
// deadline: the minute's REST weight is spent, or the exchange asked for
// a pause.
var ErrWeightSpent = errors.New("the exchange's REST request weight budget is spent")

// SetBudget changes the budget to n weight per minute: a cluster's nodes
// behind one IP address split Binance's limit between them. The count
// Binance reports for the IP in every answer bounds them all the same.
func (wt *Weight) SetBudget(n int) {
	wt.mu.Lock()
	defer wt.mu.Unlock()
	wt.budget = max(n, 1)
}

// Budget returns the budget per minute.
func (wt *Weight) Budget() int {
	wt.mu.Lock()
	defer wt.mu.Unlock()
	return wt.budget
}

// report takes the server's count for the current minute.
func (wt *Weight) report(used int) {
	wt.mu.Lock()
	defer wt.mu.Unlock()
	wt.used = max(wt.used, used)
}

// block stops all requests until now+d.
func (wt *Weight) block(now time.Time, d time.Duration) {
	wt.mu.Lock()
	defer wt.mu.Unlock()
	if t := now.Add(d); t.After(wt.blocked) {
		wt.blocked = t
	}
}

// exhaust marks the current window's budget spent: the server says so.
func (wt *Weight) exhaust() {
	wt.mu.Lock()
	defer wt.mu.Unlock()
	wt.used = max(wt.used, wt.budget)
}

// Used returns the weight used in the current minute and in total.
func (wt *Weight) Used() (minute int, total int64) {
	wt.mu.Lock()
	defer wt.mu.Unlock()
	if time.Now().Truncate(time.Minute).After(wt.window) {
		return 0, wt.total
	}
	return wt.used, wt.total
}

// get performs a GET with weight w. It answers Binance's refusals as
// Binance asks: 429 and 418 stop every request until Retry-After, the ban
// time in a 418's message, or (a futures 429 may carry neither) the next
// weight window; 403 is the web application firewall and is waited out;
// 408, 5xx and network failures are retried with backoff. Each retry is
// logged, so an exchange that does not answer is visible at once.
func (c *Client) get(ctx context.Context, path string, q url.Values, w int, dst any) error {
	u := c.base + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	backoff, firewall := c.backoff, 20*c.backoff
	for attempt := 1; ; attempt++ {
		if err := c.weight.Acquire(ctx, w, c.urgent); err != nil {
			return err
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
		if err != nil {
			return err
		}
		resp, err := c.http.Do(req)
		if err == nil {
			body, rerr := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
			resp.Body.Close()
			if used, perr := strconv.Atoi(resp.Header.Get("X-MBX-USED-WEIGHT-1M")); perr == nil {
				c.weight.report(used)
			}
			switch {
			case rerr != nil:
				err = rerr
			case resp.StatusCode == http.StatusOK:
				if err := json.Unmarshal(body, dst); err != nil {
					return fmt.Errorf("GET %s: unexpected answer: %w", path, err)
				}
				return nil
			case resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusTeapot:
				ae := apiError(resp, body)
				wait := c.weight.refused(resp, ae)
				c.log.Warn("binance rate limit: pausing REST requests", "status", resp.StatusCode, "code", ae.Code,
					"msg", ae.Msg, "retry_after", wait.Round(time.Millisecond), "path", path)
				attempt = 0 // waiting out a limit is not a failure
				continue
			case resp.StatusCode == http.StatusForbidden:
				// The firewall: no Retry-After, and hammering it prolongs
				// the block. Wait long and do not count it as a failure of
				// the request.
				c.weight.block(c.weight.now(), firewall)
				c.log.Warn("binance's firewall refused a request (403); backing off", "retry_in", firewall, "path", path)
				firewall = min(2*firewall, 5*time.Minute)
				attempt = 0
				continue
			case resp.StatusCode == http.StatusRequestTimeout || resp.StatusCode >= 500:
				err = apiError(resp, body)
			default:
				return fmt.Errorf("GET %s: %w", path, apiError(resp, body))
			}
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if attempt >= maxAttempts {
			return fmt.Errorf("GET %s failed %d times, last: %w", path, attempt, err)
		}
		c.log.Warn("binance request failed; retrying", "path", path, "err", err, "attempt", attempt, "retry_in", backoff)
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
		backoff = min(2*backoff, 10*time.Second)
	}
}

// maxAttempts bounds the tries of a request that fails with a timeout, a
// server error or a network failure; the caller decides what comes next.
const maxAttempts = 8

// apiError reads a Binance error answer, or describes one that is not.
func apiError(resp *http.Response, body []byte) *APIError {
	ae := &APIError{Status: resp.StatusCode}
	if json.Unmarshal(body, ae) != nil || ae.Msg == "" {
		ae.Msg = strings.TrimSpace(string(body))
		if ae.Msg == "" {
			ae.Msg = http.StatusText(resp.StatusCode)
		}
	}
	return ae
}

// refused blocks requests after a 429 or 418 and returns for how long:
// Retry-After when given, else the ban's end in a 418's message, else the
// rest of the current weight window (a 429) or two minutes (a 418, the
// shortest ban).
func (wt *Weight) refused(resp *http.Response, ae *APIError) time.Duration {
	now := wt.now()
	var wait time.Duration
	if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && s >= 0 {
		wait = time.Duration(s) * time.Second
	} else if until, ok := BannedUntil(ae.Msg); ok {
		wait = until.Sub(now)
	} else if resp.StatusCode == http.StatusTeapot {
		wait = 2 * time.Minute
	} else {
		wait = now.Truncate(time.Minute).Add(time.Minute).Sub(now)
	}
	wait = max(wait, time.Second)
	wt.block(now, wait)
	if resp.StatusCode == http.StatusTooManyRequests {
		wt.exhaust()
	}
	return wait
}

// ServerTime returns the exchange's clock.
func (c *Client) ServerTime(ctx context.Context) (time.Time, error) {
	var r struct {
		ServerTime int64 `json:"serverTime"`
	}
	if err := c.get(ctx, "/fapi/v1/time", nil, 1, &r); err != nil {
		return time.Time{}, err
	}
	return time.UnixMilli(r.ServerTime), nil
}

// SymbolInfo is the part of exchangeInfo klagg uses.
type SymbolInfo struct {
	Symbol            string `json:"symbol"`
	Pair              string `json:"pair"`
	ContractType      string `json:"contractType"`
	DeliveryDate      int64  `json:"deliveryDate"`
	OnboardDate       int64  `json:"onboardDate"`
	Status            string `json:"status"`
	BaseAsset         string `json:"baseAsset"`
	QuoteAsset        string `json:"quoteAsset"`
	MarginAsset       string `json:"marginAsset"`
	PricePrecision    int    `json:"pricePrecision"`
	QuantityPrecision int    `json:"quantityPrecision"`
	// Raw is the symbol's object as the exchange gave it, filters and all,
	// for klagg to pass on unchanged; empty for a SymbolInfo not read from
	// JSON.
	Raw json.RawMessage `json:"-"`
}

// UnmarshalJSON reads the fields klagg uses and keeps the whole object.
func (i *SymbolInfo) UnmarshalJSON(b []byte) error {
	type plain SymbolInfo // without this method
	var p plain
	if err := json.Unmarshal(b, &p); err != nil {
		return err
	}
	*i = SymbolInfo(p)
	i.Raw = bytes.Clone(b)
	return nil
}

// ExchangeInfo is /fapi/v1/exchangeInfo: the exchange-wide lists, kept as
// the exchange gave them, and every symbol.
type ExchangeInfo struct {
	RateLimits      json.RawMessage `json:"rateLimits"`
	ExchangeFilters json.RawMessage `json:"exchangeFilters"`
	Symbols         []SymbolInfo    `json:"symbols"`
}

// ExchangeInfo returns the exchange's rate limits, filters and symbols.
func (c *Client) ExchangeInfo(ctx context.Context) (*ExchangeInfo, error) {
	var r ExchangeInfo
	if err := c.get(ctx, "/fapi/v1/exchangeInfo", nil, 1, &r); err != nil {
		return nil, err
	}
	return &r, nil
}

// KlinesWeight is Binance's weight of a klines request with this limit.
func KlinesWeight(limit int) int {
	switch {
	case limit < 100:
		return 1
	case limit < 500:
		return 2
	case limit <= 1000:
		return 5
	}
	return 10
}

// Klines returns up to limit klines of symbol and iv with open time ≥ start
// (and ≤ end when end > 0), oldest first. REST klines carry no trade ids:
// FirstTradeID and LastTradeID are -1.
func (c *Client) Klines(ctx context.Context, symbol string, iv kline.Interval, start, end int64, limit int) ([]kline.Kline, error) {
	q := url.Values{"symbol": {symbol}, "interval": {iv.String()}, "limit": {strconv.Itoa(limit)}}
	if start > 0 {
		q.Set("startTime", strconv.FormatInt(start, 10))
	}
	if end > 0 {
		q.Set("endTime", strconv.FormatInt(end, 10))
	}
	var rows [][]json.RawMessage
	if err := c.get(ctx, "/fapi/v1/klines", q, KlinesWeight(limit), &rows); err != nil {
		return nil, err
	}
	out := make([]kline.Kline, 0, len(rows))
	for _, r := range rows {
		k, _, err := ParseKlineArray(r)
		if err != nil {
			return nil, fmt.Errorf("klines of %s %s: %w", symbol, iv, err)
		}
		out = append(out, k)
	}
	return out, nil
}

// AggTradesWeight is the weight of one aggTrades request.
const AggTradesWeight = 20

// AggTrades returns up to limit (≤ 1000) aggregated trades of symbol: from
// aggregate id fromID when fromID ≥ 0, else from time start (within an
// hour), else the most recent ones.
func (c *Client) AggTrades(ctx context.Context, symbol string, fromID, start int64, limit int) ([]kline.Trade, error) {
	q := url.Values{"symbol": {symbol}, "limit": {strconv.Itoa(limit)}}
	switch {
	case fromID >= 0:
		q.Set("fromId", strconv.FormatInt(fromID, 10))
	case start >= 0:
		q.Set("startTime", strconv.FormatInt(start, 10))
		q.Set("endTime", strconv.FormatInt(start+time.Hour.Milliseconds()-1, 10))
	}
	var rows []AggTradeJSON
	if err := c.get(ctx, "/fapi/v1/aggTrades", q, AggTradesWeight, &rows); err != nil {
		return nil, err
	}
	out := make([]kline.Trade, len(rows))
	for i, r := range rows {
		t, err := r.Trade()
		if err != nil {
			return nil, fmt.Errorf("aggTrades of %s: %w", symbol, err)
		}
		out[i] = t
	}
	return out, nil
}

// AggTradeJSON is one aggregated trade as REST aggTrades returns it (and as
// the archived JSON of that endpoint holds it).
type AggTradeJSON struct {
	A int64  `json:"a"`
	P string `json:"p"`
	Q string `json:"q"`
	F int64  `json:"f"`
	L int64  `json:"l"`
	T int64  `json:"T"`
	M bool   `json:"m"`
}

// Trade converts the row, with exact decimals.
func (r AggTradeJSON) Trade() (kline.Trade, error) {
	p, err := decimal.Parse(r.P)
	if err != nil {
		return kline.Trade{}, fmt.Errorf("price: %w", err)
	}
	q, err := decimal.Parse(r.Q)
	if err != nil {
		return kline.Trade{}, fmt.Errorf("quantity: %w", err)
	}
	return kline.Trade{ID: r.A, Price: p, Qty: q, FirstID: r.F, LastID: r.L, Time: r.T, BuyerMaker: r.M}, nil
}

// AggTradeRow renders t in REST layout with symbol precision p.
func AggTradeRow(t *kline.Trade, p kline.Precision) AggTradeJSON {
	return AggTradeJSON{A: t.ID, P: string(p.AppendPrice(nil, t.Price)), Q: string(decimal.Append(nil, t.Qty, p.Qty)),
		F: t.FirstID, L: t.LastID, T: t.Time, M: t.BuyerMaker}
}

// WritePrometheus writes the weight spent in Prometheus's text format.
func (wt *Weight) WritePrometheus(w io.Writer) {
	minute, total := wt.Used()
	metrics.WriteGaugeUint64(w, "klagg_rest_weight_used_1m", uint64(minute))
	metrics.WriteCounterUint64(w, "klagg_rest_weight_total", uint64(total))
}
