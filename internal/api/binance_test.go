package api

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/klagg/klagg/internal/binance"
	"github.com/klagg/klagg/internal/kline"
	"github.com/klagg/klagg/internal/store"
)

// header gets u and returns the status, a header and the body.
func header(t *testing.T, u, name string) (int, string, string) {
	t.Helper()
	resp, err := http.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b strings.Builder
	buf := make([]byte, 4096)
	for {
		n, err := resp.Body.Read(buf)
		b.Write(buf[:n])
		if err != nil {
			break
		}
	}
	return resp.StatusCode, resp.Header.Get(name), b.String()
}

// TestWeightHeader: every REST answer reports the caller's weight in the
// current minute, by Binance's weights.
func TestWeightHeader(t *testing.T) {
	srv, _ := newAPI(t, "", nil)
	for _, tc := range []struct {
		path string
		used string
	}{
		{"/fapi/v1/klines?symbol=BTCUSDT&interval=1m&limit=1000", "5"},
		{"/fapi/v1/klines?symbol=BTCUSDT&interval=1m&limit=1500", "15"},
		{"/fapi/v1/klines?symbol=BTCUSDT&interval=1m", "20"}, // limit 500
		{"/fapi/v1/klines?symbol=BTCUSDT&interval=1m&limit=99", "21"},
		{"/fapi/v1/time", "22"},
		{"/fapi/v1/ticker/price", "24"},
		{"/fapi/v1/klines?symbol=NOPE&interval=1m&limit=150", "26"}, // errors weigh too
	} {
		if _, got, body := header(t, srv.URL+tc.path, "X-MBX-USED-WEIGHT-1M"); got != tc.used {
			t.Errorf("%s: X-MBX-USED-WEIGHT-1M %q, want %s (%s)", tc.path, got, tc.used, body)
		}
	}
}

// TestWeightBudget: a client over server.weight_per_minute gets a 429,
// then, going on, a 418 ban with its end in the message, as on Binance;
// the next minute it is served again once the ban is over.
func TestWeightBudget(t *testing.T) {
	var mu sync.Mutex
	now := time.Date(2026, 11, 30, 12, 0, 10, 0, time.UTC)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	srv, _, _ := newAPIWith(t, source{ready: true}, Config{WeightPerMinute: 12, Now: clock})
	u := srv.URL + "/fapi/v1/klines?symbol=BTCUSDT&interval=1m&limit=1000" // weight 5
	for i, want := range []int{200, 200, 429, 418, 418} {
		code, _, body := header(t, u, "X-MBX-USED-WEIGHT-1M")
		if code != want {
			t.Fatalf("request %d: %d %s, want %d", i, code, body, want)
		}
		var e binance.ErrorBody
		if code != 200 && (json.Unmarshal([]byte(body), &e) != nil || e.Code != -1003) {
			t.Fatalf("request %d: %s, want code -1003", i, body)
		}
		if code == 418 {
			until, ok := binance.BannedUntil(e.Msg)
			if !ok || !until.Equal(now.Truncate(time.Millisecond).Add(2*time.Minute)) && i == 3 {
				t.Fatalf("ban message %q", e.Msg)
			}
		}
	}
	mu.Lock()
	now = now.Add(time.Minute) // a new minute, still banned
	mu.Unlock()
	if code, _, _ := header(t, u, ""); code != 418 {
		t.Fatalf("within the ban: %d", code)
	}
	mu.Lock()
	now = now.Add(2 * time.Minute)
	mu.Unlock()
	if code, used, body := header(t, u, "X-MBX-USED-WEIGHT-1M"); code != 200 || used != "5" {
		t.Fatalf("after the ban: %d %s %s", code, used, body)
	}
}

// TestContinuousKlines: the perpetual's continuous klines are its klines.
func TestContinuousKlines(t *testing.T) {
	srv, _ := newAPI(t, "", nil)
	for _, q := range []string{"interval=1m&limit=7", "interval=1m&startTime=" + itoa(t0+5*60_000) + "&limit=3", "interval=1m&endTime=" + itoa(t0+90*60_000)} {
		_, want := get(t, srv.URL+"/fapi/v1/klines?symbol=BTCUSDT&"+q)
		code, got := get(t, srv.URL+"/fapi/v1/continuousKlines?pair=BTCUSDT&contractType=PERPETUAL&"+q)
		if code != 200 || got != want {
			t.Errorf("%s: %d\n%s\nwant\n%s", q, code, got, want)
		}
	}
	for q, want := range map[string]string{
		"pair=BTCUSDT&interval=1m":                                   `"code":-1102`,
		"contractType=PERPETUAL&interval=1m":                         `"code":-1102`,
		"pair=BTCUSDT&contractType=CURRENT_QUARTER&interval=1m":      `"code":-1130`,
		"pair=NOPEUSDT&contractType=PERPETUAL&interval=1m":           `"code":-1121`,
		"pair=BTCUSDT&contractType=PERPETUAL&interval=1m&limit=2000": `"code":-1130`,
	} {
		if code, body := get(t, srv.URL+"/fapi/v1/continuousKlines?"+q); code != 400 || !strings.Contains(body, want) {
			t.Errorf("%s: %d %s, want %s", q, code, body, want)
		}
	}
}

// TestTickerPrice: ticker/price (v1 and v2) is the newest trade.
func TestTickerPrice(t *testing.T) {
	srv, h := newAPI(t, "", nil)
	h.Trades("BTCUSDT", []kline.Trade{{ID: 1, Price: 100_10000000, Qty: 1, Time: t0 + 5}, {ID: 2, Price: 100_20000000, Qty: 1, Time: t0 + 9}})
	for _, v := range []string{"v1", "v2"} {
		code, body := get(t, srv.URL+"/fapi/"+v+"/ticker/price?symbol=BTCUSDT")
		if want := `{"symbol":"BTCUSDT","price":"100.2","time":` + itoa(t0+9) + "}\n"; code != 200 || body != want {
			t.Errorf("%s one: %d %s, want %s", v, code, body, want)
		}
		code, body = get(t, srv.URL+"/fapi/"+v+"/ticker/price")
		if want := `[{"symbol":"BTCUSDT","price":"100.2","time":` + itoa(t0+9) + "}]\n"; code != 200 || body != want {
			t.Errorf("%s all: %d %s, want %s", v, code, body, want)
		}
	}
	if code, body := get(t, srv.URL+"/fapi/v1/ticker/price?symbol=NOPE"); code != 400 || !strings.Contains(body, "-1121") {
		t.Errorf("unknown symbol: %d %s", code, body)
	}
}

// TestEndTimeZero: endTime=0 asks for the klines opening at or before the
// epoch (none), not for "no bound".
func TestEndTimeZero(t *testing.T) {
	srv, _ := newAPI(t, "", nil)
	if ks := klines(t, srv.URL, "symbol=BTCUSDT&interval=1m&endTime=0"); len(ks) != 0 {
		t.Fatalf("endTime=0: %d klines", len(ks))
	}
	if ks := klines(t, srv.URL, "symbol=BTCUSDT&interval=1m&startTime=0&endTime=0"); len(ks) != 0 {
		t.Fatalf("startTime=0&endTime=0: %d klines", len(ks))
	}
}

// TestExchangeInfoAsGiven: a symbol's object and the rate limits are the
// exchange's, filters and all.
func TestExchangeInfoAsGiven(t *testing.T) {
	raw := `{"symbol":"BTCUSDT","pair":"BTCUSDT","contractType":"PERPETUAL","status":"TRADING","filters":[{"filterType":"PRICE_FILTER","tickSize":"0.10"}],"underlyingType":"COIN"}`
	withInfo := btc
	withInfo.Info = []byte(raw)
	srv, _, _ := newAPIWith(t, source{ready: true, syms: []store.Symbol{withInfo}}, Config{})
	code, body := get(t, srv.URL+"/fapi/v1/exchangeInfo")
	var out struct {
		RateLimits []map[string]any  `json:"rateLimits"`
		Symbols    []json.RawMessage `json:"symbols"`
	}
	if err := json.Unmarshal([]byte(body), &out); code != 200 || err != nil {
		t.Fatalf("%d %s: %v", code, body, err)
	}
	if len(out.RateLimits) != 1 || out.RateLimits[0]["limit"] != float64(2400) {
		t.Errorf("rateLimits %v", out.RateLimits)
	}
	if len(out.Symbols) != 1 || string(out.Symbols[0]) != raw {
		t.Errorf("symbols %s, want %s", out.Symbols, raw)
	}
}

// TestStoreFailing: while the store cannot write, REST answers stay exact
// from what the head keeps until the writer confirms it, and /readyz says
// the store is failing.
func TestStoreFailing(t *testing.T) {
	held := []kline.Kline{mk(t0+99*60_000, 500, true), mk(t0+100*60_000, 501, true), mk(t0+101*60_000, 502, true)}
	srv, h, _ := newAPIWith(t, source{ready: true, storeErr: errors.New("disk full"), pending: held}, Config{})
	h.Publish([]kline.Update{{Symbol: "BTCUSDT", Interval: kline.OneMinute(), Kline: mk(t0+102*60_000, 503, false)}})
	ks := klines(t, srv.URL, "symbol=BTCUSDT&interval=1m&limit=5")
	if len(ks) != 5 {
		t.Fatalf("%d klines", len(ks))
	}
	for i, want := range []int64{t0 + 98*60_000, t0 + 99*60_000, t0 + 100*60_000, t0 + 101*60_000, t0 + 102*60_000} {
		if ks[i].OpenTime != want {
			t.Fatalf("kline %d opens at %d, want %d", i, ks[i].OpenTime, want)
		}
	}
	if ks[1].Open != held[0].Open || ks[2].Open != held[1].Open || ks[3].Open != held[2].Open {
		t.Fatalf("held-back klines not served: %+v", ks[1:3])
	}
	ranged := klines(t, srv.URL, "symbol=BTCUSDT&interval=1m&startTime="+itoa(t0+100*60_000)+"&endTime="+itoa(t0+101*60_000))
	if len(ranged) != 2 || ranged[0].Open != held[1].Open || ranged[1].Open != held[2].Open {
		t.Fatalf("range over held-back klines: %+v", ranged)
	}
	if code, body := get(t, srv.URL+"/readyz"); code != 503 || !strings.Contains(body, "store failing: disk full") {
		t.Fatalf("readyz while the store fails: %d %s", code, body)
	}
}

// TestStoreUnreadable: while the store cannot be read (a cluster's
// PostgreSQL down), an answer whose every kline is in memory is given from
// memory, exactly; one that needs a kline only the store has is refused
// with Binance's -1001, never given with a hole.
func TestStoreUnreadable(t *testing.T) {
	m := func(i int64) int64 { return t0 + i*60_000 }
	for _, c := range []struct {
		held  []int64 // closed klines in memory, by minute (the live one is 102)
		query string
		want  []int64 // nil: refused
	}{
		{[]int64{99, 100, 101}, "limit=3", []int64{100, 101, 102}},
		{[]int64{99, 100, 101}, "limit=4", []int64{99, 100, 101, 102}},
		{[]int64{99, 100, 101}, "limit=5", nil}, // 98 is in the store only
		{[]int64{99, 101}, "limit=2", []int64{101, 102}},
		{[]int64{99, 101}, "limit=3", nil}, // 100 is in the store only
		{[]int64{99, 100, 101}, "startTime=" + itoa(m(100)), []int64{100, 101, 102}},
		{[]int64{99, 100, 101}, "startTime=" + itoa(m(100)-1) + "&limit=2", []int64{100, 101}},
		{[]int64{99, 100, 101}, "startTime=" + itoa(m(98)), nil},
		{[]int64{99, 100, 101}, "startTime=" + itoa(m(99)) + "&endTime=" + itoa(m(100)), []int64{99, 100}},
		{[]int64{99, 101}, "startTime=" + itoa(m(99)) + "&endTime=" + itoa(m(101)), nil},
		{[]int64{99, 100, 101}, "endTime=" + itoa(m(101)+1) + "&limit=2", []int64{100, 101}},
		{[]int64{99, 101}, "endTime=" + itoa(m(100)+1) + "&limit=1", nil}, // 100 is the last before endTime
	} {
		var held []kline.Kline
		for _, i := range c.held {
			held = append(held, mk(m(i), 500+i, true))
		}
		srv, h, st := newAPIWith(t, source{ready: true, storeErr: errors.New("connection refused"), pending: held}, Config{})
		h.Publish([]kline.Update{{Symbol: "BTCUSDT", Interval: kline.OneMinute(), Kline: mk(m(102), 602, false)}})
		st.Close()
		query := "symbol=BTCUSDT&interval=1m&" + c.query
		if c.want == nil {
			if code, body := get(t, srv.URL+"/fapi/v1/klines?"+query); code != 503 || !strings.Contains(body, "-1001") {
				t.Errorf("held %v, %s: %d %s; want 503 and -1001", c.held, c.query, code, body)
			}
			continue
		}
		ks := klines(t, srv.URL, query)
		var got []int64
		for _, k := range ks {
			got = append(got, (k.OpenTime-t0)/60_000)
			if k.Open != mk(k.OpenTime, 500+(k.OpenTime-t0)/60_000, true).Open {
				t.Errorf("held %v, %s: kline %+v is not memory's", c.held, c.query, k)
			}
		}
		if !slices.Equal(got, c.want) {
			t.Errorf("held %v, %s: klines of minutes %v, want %v", c.held, c.query, got, c.want)
		}
	}
}

// replayer is a cluster's kline stream holding some closed klines.
type replayer struct {
	ks   []kline.Kline
	err  error
	from []time.Time // asked for
}

func (r *replayer) Replay(_ context.Context, dst []kline.Kline, symbol string, iv kline.Interval, from time.Time) ([]kline.Kline, error) {
	r.from = append(r.from, from)
	for _, k := range r.ks {
		if k.OpenTime >= from.UnixMilli() {
			dst = append(dst, k)
		}
	}
	return dst, r.err
}

// TestStoreUnreadableReplay: on a cluster's node, while the store cannot
// be read, what memory lacks is read back from the kline stream, from the
// first slot the answer may hold; memory's version of a kline wins, and
// an answer the stream and memory do not hold whole is still refused.
func TestStoreUnreadableReplay(t *testing.T) {
	m := func(i int64) int64 { return t0 + i*60_000 }
	for _, c := range []struct {
		streamed []int64 // closed klines in the stream (100 and 101 in memory too)
		fail     bool    // the stream cannot be read
		query    string
		from     int64 // the minute asked from the stream
		want     []int64
	}{
		{[]int64{96, 97, 98, 99, 100, 101}, false, "limit=5", 98, []int64{98, 99, 100, 101, 102}},
		{[]int64{96, 97, 99, 100, 101}, false, "limit=5", 98, nil}, // 98 is in the store only
		{[]int64{96, 97, 98, 99, 100, 101}, true, "limit=5", 98, nil},
		{[]int64{96, 97, 98, 99}, false, "startTime=" + itoa(m(97)) + "&limit=3", 97, []int64{97, 98, 99}},
		{[]int64{96, 97, 98, 99}, false, "startTime=" + itoa(m(97)-1) + "&endTime=" + itoa(m(98)), 96, []int64{97, 98}},
		{[]int64{96, 97, 98, 99}, false, "endTime=" + itoa(m(99)+1) + "&limit=3", 97, []int64{97, 98, 99}},
	} {
		held := []kline.Kline{mk(m(100), 600, true), mk(m(101), 601, true)}
		rep := &replayer{}
		if c.fail {
			rep.err = errors.New("nats: timeout")
		}
		for _, i := range c.streamed {
			rep.ks = append(rep.ks, mk(m(i), 400+i, true))
		}
		srv, h, st := newAPIWith(t, source{ready: true, storeErr: errors.New("connection refused"), pending: held, replay: rep}, Config{})
		h.Publish([]kline.Update{{Symbol: "BTCUSDT", Interval: kline.OneMinute(), Kline: mk(m(102), 602, false)}})
		st.Close()
		query := "symbol=BTCUSDT&interval=1m&" + c.query
		code, body := get(t, srv.URL+"/fapi/v1/klines?"+query)
		if len(rep.from) != 1 || rep.from[0].UnixMilli() != m(c.from) {
			t.Errorf("%v, %s: asked the stream from %v, want minute %d", c.streamed, c.query, rep.from, c.from)
		}
		if c.want == nil {
			if code != 503 || !strings.Contains(body, "-1001") {
				t.Errorf("%v, %s: %d %s; want 503 and -1001", c.streamed, c.query, code, body)
			}
			continue
		}
		var got []int64
		for _, k := range klines(t, srv.URL, query) {
			i := (k.OpenTime - t0) / 60_000
			got = append(got, i)
			price := 400 + i // the stream's
			if i >= 100 {
				price = 500 + i // memory's
			}
			if k.Open != mk(k.OpenTime, price, true).Open {
				t.Errorf("%v, %s: kline %d opens at %d, want %d", c.streamed, c.query, i, k.Open, price)
			}
		}
		if !slices.Equal(got, c.want) {
			t.Errorf("%v, %s: klines of minutes %v, want %v", c.streamed, c.query, got, c.want)
		}
	}
}

// TestListenerCap: connections beyond the cap are closed at once, and a
// closed one gives its place back.
func TestListenerCap(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := NewListener(inner, 2)
	defer ln.Close()
	accepted := make(chan net.Conn, 10)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	var clients []net.Conn
	for range 3 {
		c, err := net.Dial("tcp", inner.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		clients = append(clients, c)
	}
	first, second := <-accepted, <-accepted
	// The third is closed by the listener: its read ends.
	clients[2].SetReadDeadline(time.Now().Add(10 * time.Second))
	var ne net.Error
	if _, err := clients[2].Read(make([]byte, 1)); err == nil || errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("connection over the cap: %v", err)
	}
	if ln.Open() != 2 || ln.Refused() != 1 || ln.Evicted() != 0 {
		t.Fatalf("open %d, refused %d", ln.Open(), ln.Refused())
	}
	first.Close()
	first.Close() // twice: counted once
	c, err := net.Dial("tcp", inner.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	(<-accepted).Close()
	second.Close()
	if ln.Open() != 0 {
		t.Fatalf("open %d after closing all", ln.Open())
	}
}

// TestListenerEvictsUnfinishedRequests: connections that trickle their
// request headers do not keep their places at the cap from a client
// whose request comes whole.
func TestListenerEvictsUnfinishedRequests(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := NewListener(inner, 2)
	var clock atomic.Int64
	clock.Store(time.Now().UnixNano())
	ln.now = func() time.Time { return time.Unix(0, clock.Load()) }
	hs := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			requested(r.Context())
			w.Write([]byte("ok"))
		}),
		ConnState: ln.ConnState, ConnContext: ln.ConnContext,
	}
	go hs.Serve(ln)
	defer hs.Close()
	for range 2 {
		c, err := net.Dial("tcp", inner.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := c.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n")); err != nil { // and never the end
			t.Fatal(err)
		}
	}
	for ln.Open() < 2 {
		runtime.Gosched()
	}
	clock.Add(int64(2 * time.Second))
	hc := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := hc.Get("http://" + inner.Addr().String() + "/")
	if err != nil {
		t.Fatalf("a whole request at the cap: %v", err)
	}
	resp.Body.Close()
	if ln.Evicted() != 1 || ln.Refused() != 0 {
		t.Errorf("evicted %d, refused %d; want one unfinished request evicted", ln.Evicted(), ln.Refused())
	}
}
