package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/klagg/klagg/internal/binance"
	"github.com/klagg/klagg/internal/coverage"
	"github.com/klagg/klagg/internal/decimal"
	"github.com/klagg/klagg/internal/head"
	"github.com/klagg/klagg/internal/kline"
	"github.com/klagg/klagg/internal/query"
	"github.com/klagg/klagg/internal/service"
	"github.com/klagg/klagg/internal/store"
	"github.com/klagg/klagg/internal/store/sqlite"
	"github.com/klagg/klagg/internal/stream"
)

type source struct {
	ready    bool
	storeErr error
	syms     []store.Symbol // [btc]
	// The test's wiring: closed klines of BTCUSDT 1m the store lacks, in
	// the head; a cluster's stream to read back from.
	pending []kline.Kline
	replay  query.Replayer
}

var btc = store.Symbol{Name: "BTCUSDT", Status: "TRADING", BaseAsset: "BTC", QuoteAsset: "USDT", ContractType: "PERPETUAL", PricePrecision: 1, QuantityPrecision: 3}

func (s source) Symbols() []store.Symbol {
	if s.syms != nil {
		return s.syms
	}
	return []store.Symbol{btc}
}
func (source) WritePrometheus(w io.Writer) { io.WriteString(w, "source_metric 1\n") }
func (source) Symbol(n string) (store.Symbol, bool) {
	return btc, n == "BTCUSDT"
}
func (source) Intervals() []kline.Interval {
	return []kline.Interval{kline.OneMinute(), kline.MustInterval("1h")}
}
func (source) Status() service.Status {
	return service.Status{Symbols: 1, Trades: 42}
}
func (s source) Readiness() error {
	switch {
	case s.storeErr != nil:
		return fmt.Errorf("store failing: %w", s.storeErr)
	case !s.ready:
		return errors.New("catching up")
	}
	return nil
}
func (source) ExchangeLists(context.Context) map[string][]byte {
	return map[string][]byte{store.RateLimits: []byte(`[{"rateLimitType":"REQUEST_WEIGHT","interval":"MINUTE","intervalNum":1,"limit":2400}]`)}
}
func (source) ExchangeNow() time.Time { return time.UnixMilli(1_700_000_000_000) }

const t0 = int64(1_699_999_200_000) // an hour boundary

func mk(open int64, price int64, closed bool) kline.Kline {
	k := kline.Empty(kline.OneMinute(), open, price*decimal.Unit)
	k.Trades, k.Volume, k.FirstTradeID, k.LastTradeID, k.Closed = 1, decimal.FromInt64(decimal.Unit), 1, 1, closed
	return k
}

// newAPI serves 100 stored 1m klines (the last open) from a real SQLite
// file, through a head the test publishes the newest klines to.
func newAPI(t *testing.T, token string, cors []string) (*httptest.Server, *head.Head) {
	t.Helper()
	srv, h, _ := newAPIStore(t, token, cors)
	return srv, h
}

func newAPIStore(t *testing.T, token string, cors []string) (*httptest.Server, *head.Head, *sqlite.Store) {
	t.Helper()
	return newAPIWith(t, source{ready: true}, Config{Token: token, CORS: cors})
}

// newAPIWith is newAPIStore with src and the rest of cfg.
func newAPIWith(t *testing.T, src source, cfg Config) (*httptest.Server, *head.Head, *sqlite.Store) {
	t.Helper()
	st, err := sqlite.Open(filepath.Join(t.TempDir(), "k.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	var us []kline.Update
	for i := range int64(100) {
		us = append(us, kline.Update{Symbol: "BTCUSDT", Interval: kline.OneMinute(), Kline: mk(t0+i*60_000, 100+i, i < 99)})
	}
	if err := st.Upsert(us); err != nil {
		t.Fatal(err)
	}
	ss := stream.New(stream.Config{Intervals: src.Intervals(), Symbol: func(s string) (stream.Market, bool) {
		return stream.Market{Precision: kline.Precision{Price: 1, Qty: 3}, Pair: s, ContractType: "PERPETUAL"}, s == "BTCUSDT"
	}})
	h := head.New(head.Config{Confirmed: true})
	for _, k := range src.pending {
		h.Publish([]kline.Update{{Symbol: "BTCUSDT", Interval: kline.OneMinute(), Kline: k}})
	}
	cfg.Source, cfg.Streams, cfg.Prices = src, ss, h
	cfg.Klines = query.New(query.Config{Store: st, Head: h, Replay: src.replay})
	if cfg.Page == nil {
		cfg.Page = http.NotFoundHandler() // its pattern must not clash with the API's
	}
	srv := httptest.NewServer(New(cfg))
	t.Cleanup(srv.Close)
	return srv, h, st
}

// TestLatestFromTailCache checks the cached answer to "the latest klines"
// against the store's own (an endTime far ahead takes the uncached path)
// while closed klines are added and corrected underneath it.
func TestLatestFromTailCache(t *testing.T) {
	srv, h, st := newAPIStore(t, "", nil)
	same := func(when string) {
		t.Helper()
		for _, limit := range []string{"1", "2", "3", "4", "50", "100", "101", "1500"} {
			_, cached := get(t, srv.URL+"/fapi/v1/klines?symbol=BTCUSDT&interval=1m&limit="+limit)
			_, direct := get(t, srv.URL+"/fapi/v1/klines?symbol=BTCUSDT&interval=1m&endTime=9000000000000&limit="+limit)
			if cached != direct {
				t.Fatalf("%s, limit %s: cached\n%s\nstore\n%s", when, limit, cached, direct)
			}
		}
	}
	one := kline.OneMinute()
	same("at first")
	// An old closed kline corrected (reconciliation).
	fixed := mk(t0+50*60_000, 777, true)
	if err := st.Upsert([]kline.Update{{Symbol: "BTCUSDT", Interval: one, Kline: fixed}}); err != nil {
		t.Fatal(err)
	}
	same("after a correction")
	if ks := klines(t, srv.URL, "symbol=BTCUSDT&interval=1m&limit=60"); ks[10].Open != fixed.Open {
		t.Fatalf("correction not served: %+v", ks[10])
	}
	// The open kline closes and the next opens, first in memory only, then
	// in the store too.
	closed, next := mk(t0+99*60_000, 300, true), mk(t0+100*60_000, 301, false)
	h.Publish([]kline.Update{{Symbol: "BTCUSDT", Interval: one, Kline: closed}, {Symbol: "BTCUSDT", Interval: one, Kline: next}})
	same("closed in memory")
	if err := st.Upsert([]kline.Update{{Symbol: "BTCUSDT", Interval: one, Kline: closed}, {Symbol: "BTCUSDT", Interval: one, Kline: next}}); err != nil {
		t.Fatal(err)
	}
	same("closed in the store")
	// Many more closed klines than a tail keeps.
	var us []kline.Update
	for i := int64(100); i < 1700; i++ {
		us = append(us, kline.Update{Symbol: "BTCUSDT", Interval: one, Kline: mk(t0+i*60_000, 400+i%50, true)})
	}
	if err := st.Upsert(us); err != nil {
		t.Fatal(err)
	}
	same("after 1,600 more")
}

func get(t *testing.T, u string, hdr ...string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest("GET", u, nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func klines(t *testing.T, base, query string) []kline.Kline {
	t.Helper()
	code, body := get(t, base+"/fapi/v1/klines?"+query)
	if code != 200 {
		t.Fatalf("%s: %d %s", query, code, body)
	}
	var rows [][]json.RawMessage
	if err := json.Unmarshal([]byte(body), &rows); err != nil {
		t.Fatal(err)
	}
	out := make([]kline.Kline, len(rows))
	for i, r := range rows {
		k, _, err := binance.ParseKlineArray(r)
		if err != nil {
			t.Fatal(err)
		}
		out[i] = k
	}
	return out
}

func TestKlinesRanges(t *testing.T) {
	srv, h := newAPI(t, "", nil)
	u := srv.URL
	// The store's last kline is open; the live one replaces it.
	live := mk(t0+99*60_000, 500, false)
	live.Trades = 7
	h.Publish([]kline.Update{{Symbol: "BTCUSDT", Interval: kline.OneMinute(), Kline: live}})
	ks := klines(t, u, "symbol=BTCUSDT&interval=1m")
	if len(ks) != 100 || ks[99].Trades != 7 || ks[99].Open != 500*decimal.Unit {
		t.Fatalf("latest: %d klines, last %+v", len(ks), ks[len(ks)-1])
	}
	// A newer live kline goes after the stored ones; limit still holds.
	next := mk(t0+100*60_000, 600, false)
	h.Publish([]kline.Update{{Symbol: "BTCUSDT", Interval: kline.OneMinute(), Kline: next}})
	ks = klines(t, u, "symbol=BTCUSDT&interval=1m&limit=5")
	if len(ks) != 5 || ks[4].OpenTime != next.OpenTime || ks[0].OpenTime != t0+96*60_000 {
		t.Fatalf("limit 5: %d klines, %d..%d", len(ks), ks[0].OpenTime, ks[len(ks)-1].OpenTime)
	}
	// It closes and the next opens: until the store writes it (once a
	// second) the closed one comes from memory, before the open one.
	next.Closed = true
	after := mk(t0+101*60_000, 700, false)
	h.Publish([]kline.Update{{Symbol: "BTCUSDT", Interval: kline.OneMinute(), Kline: next}, {Symbol: "BTCUSDT", Interval: kline.OneMinute(), Kline: after}})
	ks = klines(t, u, "symbol=BTCUSDT&interval=1m&limit=3")
	if len(ks) != 3 || ks[0].OpenTime != t0+99*60_000 || ks[1].Open != next.Open || ks[2].Open != after.Open {
		t.Fatalf("just closed: %+v", ks)
	}
	ks = klines(t, u, "symbol=BTCUSDT&interval=1m&startTime="+itoa(t0+10*60_000)+"&limit=3")
	if len(ks) != 3 || ks[0].OpenTime != t0+10*60_000 || ks[2].OpenTime != t0+12*60_000 {
		t.Fatalf("from start: %+v", ks)
	}
	ks = klines(t, u, "symbol=BTCUSDT&interval=1m&endTime="+itoa(t0+10*60_000)+"&limit=3")
	if len(ks) != 3 || ks[2].OpenTime != t0+10*60_000 {
		t.Fatalf("to end: %+v", ks)
	}
	ks = klines(t, u, "symbol=BTCUSDT&interval=1m&startTime="+itoa(t0+5*60_000)+"&endTime="+itoa(t0+7*60_000))
	if len(ks) != 3 || !ks[2].Closed {
		t.Fatalf("range: %+v", ks)
	}
	if ks := klines(t, u, "symbol=BTCUSDT&interval=1h"); len(ks) != 0 {
		t.Fatalf("1h has nothing stored: %+v", ks)
	}
}

func itoa(v int64) string { return strconv.FormatInt(v, 10) }

func TestBinanceErrors(t *testing.T) {
	srv, _ := newAPI(t, "", nil)
	for _, tc := range []struct {
		query string
		code  int
		want  string
	}{
		{"interval=1m", 400, `{"code":-1102,`},
		{"symbol=BTCUSDT", 400, `{"code":-1102,`},
		{"symbol=NOPE&interval=1m", 400, `{"code":-1121,"msg":"Invalid symbol."}`},
		{"symbol=BTCUSDT&interval=2x", 400, `{"code":-1120,`},
		{"symbol=BTCUSDT&interval=5m", 400, `{"code":-1120,`},
		{"symbol=BTCUSDT&interval=1m&limit=0", 400, `{"code":-1130,`},
		{"symbol=BTCUSDT&interval=1m&limit=1501", 400, `{"code":-1130,`},
		{"symbol=BTCUSDT&interval=1m&limit=x", 400, `{"code":-1100,`},
		{"symbol=BTCUSDT&interval=1m&startTime=-5", 400, `{"code":-1100,`},
		{"symbol=BTCUSDT&interval=1m&startTime=9&endTime=3", 400, `{"code":-1023,"msg":"Start time is greater than end time."}`},
		{"symbol=BTCUSDT&symbol=ETHUSDT&interval=1m", 400, `{"code":-1101,`},
	} {
		code, body := get(t, srv.URL+"/fapi/v1/klines?"+tc.query)
		if code != tc.code || !strings.HasPrefix(body, tc.want) {
			t.Errorf("%s → %d %s, want %d %s", tc.query, code, body, tc.code, tc.want)
		}
	}
	// What klagg cannot answer exactly gets Binance's error shape saying
	// so, never a bare 404 page.
	for _, path := range []string{"/fapi/v1/nothing", "/fapi/v1/depth?symbol=BTCUSDT", "/fapi/v1/ticker/24hr",
		"/fapi/v1/markPriceKlines?symbol=BTCUSDT&interval=1m", "/fapi/v1/indexPriceKlines?pair=BTCUSDT&interval=1m"} {
		code, body := get(t, srv.URL+path)
		var e binance.ErrorBody
		if code != 404 || json.Unmarshal([]byte(body), &e) != nil || e.Code != -1000 || !strings.Contains(e.Msg, "klagg does not serve") {
			t.Errorf("%s → %d %s, want 404 and Binance's error shape", path, code, body)
		}
	}
	req, _ := http.NewRequest("POST", srv.URL+"/fapi/v1/order", nil)
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != 404 || resp.Header.Get("Content-Type") != "application/json" {
		t.Errorf("POST an order: %v %v", resp.StatusCode, err)
	}
}

func TestOwnEndpoints(t *testing.T) {
	srv, _ := newAPI(t, "", nil)
	for path, want := range map[string]string{
		"/fapi/v1/ping":         `{}`,
		"/fapi/v1/time":         `{"serverTime":1700000000000}`,
		"/healthz":              "ok",
		"/readyz":               "ready",
		"/fapi/v1/exchangeInfo": `"symbol":"BTCUSDT","pair":"BTCUSDT","contractType":"PERPETUAL"`,
		"/api/v1/status":        `"interval_names":["1m","1h"]`,
	} {
		if code, body := get(t, srv.URL+path); code != 200 || !strings.Contains(body, want) {
			t.Errorf("%s → %d %s, want %s", path, code, body, want)
		}
	}
	get(t, srv.URL+"/fapi/v1/klines?symbol=NOPE&interval=1m")
	_, m := get(t, srv.URL+"/metrics")
	for _, want := range []string{
		`klagg_api_requests_total{route="GET /fapi/v1/klines",code="400"} 1`, "klagg_stream_clients 0", "source_metric 1",
		"go_goroutines",
	} {
		if !strings.Contains(m, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}

func TestToken(t *testing.T) {
	srv, _ := newAPI(t, "s3cret", nil)
	u := srv.URL + "/fapi/v1/klines?symbol=BTCUSDT&interval=1m&limit=1"
	if code, body := get(t, u); code != 401 || !strings.Contains(body, `"code":-2015`) {
		t.Fatalf("no token: %d %s", code, body)
	}
	if code, _ := get(t, u, "Authorization", "Bearer wrong"); code != 401 {
		t.Fatalf("wrong token: %d", code)
	}
	// The scheme is case-insensitive: "bearer" is Bearer (RFC 9110).
	for _, ok := range [][]string{{"Authorization", "Bearer s3cret"}, {"Authorization", "bearer s3cret"}, {"Authorization", "BEARER s3cret"}, {"X-MBX-APIKEY", "s3cret"}} {
		if code, _ := get(t, u, ok...); code != 200 {
			t.Fatalf("%s: %d", ok[0], code)
		}
	}
	if code, _ := get(t, u+"&token=s3cret"); code != 200 {
		t.Fatalf("query token: %d", code)
	}
	if code, _ := get(t, srv.URL+"/healthz"); code != 200 {
		t.Fatalf("healthz needs no token: %d", code)
	}
	ws := "ws" + strings.TrimPrefix(srv.URL, "http") + "/market/ws/btcusdt@kline_1m"
	if code, _ := get(t, strings.Replace(ws, "ws", "http", 1)); code != 401 {
		t.Fatalf("stream without token: %d", code)
	}
}

func TestCORS(t *testing.T) {
	srv, _ := newAPI(t, "", []string{"https://app.example"})
	req, _ := http.NewRequest("OPTIONS", srv.URL+"/fapi/v1/klines", nil)
	req.Header.Set("Origin", "https://app.example")
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != 204 || resp.Header.Get("Access-Control-Allow-Origin") != "https://app.example" {
		t.Fatalf("preflight: %v %+v", err, resp)
	}
	req, _ = http.NewRequest("GET", srv.URL+"/fapi/v1/ping", nil)
	req.Header.Set("Origin", "https://evil.example")
	resp, _ = http.DefaultClient.Do(req)
	if resp.Header.Get("Access-Control-Allow-Origin") != "" {
		t.Fatal("CORS allowed an origin not configured")
	}
	off, _ := newAPI(t, "", nil)
	req, _ = http.NewRequest("GET", off.URL+"/fapi/v1/ping", nil)
	req.Header.Set("Origin", "https://app.example")
	resp, _ = http.DefaultClient.Do(req)
	if resp.Header.Get("Access-Control-Allow-Origin") != "" {
		t.Fatal("CORS on by default")
	}
}

func TestReadyz(t *testing.T) {
	ss := stream.New(stream.Config{Symbol: func(string) (stream.Market, bool) { return stream.Market{}, false }})
	srv := httptest.NewServer(New(Config{Source: source{}, Streams: ss}))
	defer srv.Close()
	if code, _ := get(t, srv.URL+"/readyz"); code != 503 {
		t.Fatalf("readyz while catching up: %d", code)
	}
}

// BenchmarkKlines is the handler alone on a real SQLite file: what one
// request for the latest klines costs before the network, with and
// without the check that the answer is whole (coverage).
func BenchmarkKlines(b *testing.B) {
	st, err := sqlite.Open(filepath.Join(b.TempDir(), "k.db"))
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	var us []kline.Update
	for i := range int64(2000) {
		k := mk(t0+i*60_000, 100+i%50, true)
		k.QuoteVolume = decimal.Mul(123456789, 987654321)
		us = append(us, kline.Update{Symbol: "BTCUSDT", Interval: kline.OneMinute(), Kline: k})
	}
	if err := st.Upsert(us); err != nil {
		b.Fatal(err)
	}
	held := coverage.New(coverage.Config{Store: st, Intervals: []kline.Interval{kline.OneMinute()}, Depth: 1000})
	if err := held.Add(store.Span{Symbol: "BTCUSDT", Interval: kline.OneMinute(), From: t0, To: t0 + 1999*60_000}); err != nil {
		b.Fatal(err)
	}
	now := func() time.Time { return time.UnixMilli(t0 + 1999*60_000 + 30_000) }
	ss := stream.New(stream.Config{Symbol: func(string) (stream.Market, bool) {
		return stream.Market{Precision: kline.Precision{Price: 1, Qty: 3}}, true
	}})
	hd := head.New(head.Config{Confirmed: true})
	for _, limit := range []int{500, 1500} {
		for _, checked := range []bool{false, true} {
			qc := query.Config{Store: st, Head: hd, Now: now}
			if checked {
				qc.Held = held
			}
			h := New(Config{Source: source{ready: true}, Klines: query.New(qc), Prices: hd, Streams: ss})
			req := httptest.NewRequest("GET", fmt.Sprintf("/fapi/v1/klines?symbol=BTCUSDT&interval=1m&limit=%d", limit), nil)
			b.Run(fmt.Sprintf("limit=%d/checked=%v", limit, checked), func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					w := httptest.NewRecorder()
					h.ServeHTTP(w, req)
					if w.Code != 200 {
						b.Fatal(w.Code, w.Body.String())
					}
				}
			})
		}
	}
}
