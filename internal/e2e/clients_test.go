package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/klagg/klagg/internal/binance"
	"github.com/klagg/klagg/internal/decimal"
	"github.com/klagg/klagg/internal/fakex"
	"github.com/klagg/klagg/internal/kline"
)

// dialStream opens a stream connection on klagg at path, and sends a
// SUBSCRIBE of subscribe when there is one.
func dialStream(t *testing.T, r *run, path string, subscribe ...string) *websocket.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(r.base, "http")+path, nil)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	c.SetReadLimit(1 << 20)
	t.Cleanup(func() { c.CloseNow() })
	if len(subscribe) > 0 {
		if err := c.Write(ctx, websocket.MessageText, binance.StreamRequest("SUBSCRIBE", subscribe, 1)); err != nil {
			t.Fatal(err)
		}
	}
	return c
}

// restKline is the kline opening at open from klagg's REST path (klines
// or continuousKlines), with query naming the series.
func restKline(t *testing.T, r *run, path, query string, open int64) kline.Kline {
	t.Helper()
	resp, err := http.Get(fmt.Sprintf("%s%s?%s&interval=1m&startTime=%d&limit=1", r.base, path, query, open))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var rows [][]json.RawMessage
	if err := json.Unmarshal(body, &rows); err != nil || len(rows) != 1 {
		t.Fatalf("%s %s: %s (%v)", path, query, body, err)
	}
	k, _, err := binance.ParseKlineArray(rows[0])
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// sameAsRow compares what a REST row carries of two klines.
func sameAsRow(a, b kline.Kline) bool {
	return a.OpenTime == b.OpenTime && a.CloseTime == b.CloseTime && a.Open == b.Open && a.High == b.High && a.Low == b.Low &&
		a.Close == b.Close && a.Volume == b.Volume && a.QuoteVolume == b.QuoteVolume && a.Trades == b.Trades &&
		a.TakerVolume == b.TakerVolume && a.TakerQuoteVolume == b.TakerQuoteVolume
}

// TestStreamTypes runs at the exchange's real speed, so that event times
// mean what they say. For each stream type klagg serves, on a combined
// connection, a closing event equals the REST kline of its series and the
// exchange's reference, and comes within grace + 100 ms of the kline's
// close on the exchange clock; the aggTrade stream carries exactly the
// minute's trades. Every other URL form connects and serves.
func TestStreamTypes(t *testing.T) {
	const grace = 2 * time.Second // klines.grace's default
	r := newRun(t, fakex.Config{Speed: 1, Symbols: 4, MeanGap: 200 * time.Millisecond, History: 20 * time.Minute, QuietEvery: -1}, "")
	r.startKlagg()
	const sym = "S001USDT"
	combined := dialStream(t, r, "/market/stream?streams=s001usdt@kline_1m/s001usdt_perpetual@continuousKline_1m/s001usdt@aggTrade")
	others := map[string]*websocket.Conn{
		"/market/ws/0 + SUBSCRIBE":    dialStream(t, r, "/market/ws/0", "s001usdt@kline_1m"),
		"/market/ws/<stream>":         dialStream(t, r, "/market/ws/s001usdt@kline_1m"),
		"/public/stream + SUBSCRIBE":  dialStream(t, r, "/public/stream", "s001usdt@kline_1m"),
		"/private/stream + SUBSCRIBE": dialStream(t, r, "/private/stream", "s001usdt@kline_1m"),
		"/ws/<stream>":                dialStream(t, r, "/ws/s001usdt@kline_1m"),
		"/stream?streams=":            dialStream(t, r, "/stream?streams=s001usdt@kline_1m"),
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	// Trades are kept from the first full minute on: its closing events
	// are the ones compared.
	var minute int64
	closing := map[string]binance.KlineEvent{}
	var trades []kline.Trade
	for len(closing) < 2 {
		_, b, err := combined.Read(ctx)
		if err != nil {
			t.Fatalf("combined stream: %v (closing events so far: %v)", err, closing)
		}
		var env struct {
			Stream string          `json:"stream"`
			Data   json.RawMessage `json:"data"`
		}
		if err := json.Unmarshal(b, &env); err != nil || env.Stream == "" {
			t.Fatalf("not a combined event: %s", b)
		}
		if env.Stream == "s001usdt@aggTrade" {
			_, tr, err := binance.ParseAggTrade(env.Data)
			if err != nil {
				t.Fatalf("aggTrade event %s: %v", env.Data, err)
			}
			if minute == 0 {
				minute = tr.Time - tr.Time%60_000 + 60_000
			}
			if tr.Time >= minute && tr.Time < minute+60_000 {
				trades = append(trades, tr)
			}
			continue
		}
		ev, err := binance.ParseKlineEvent(env.Data)
		if err != nil {
			t.Fatalf("%s: %v", env.Stream, err)
		}
		if minute != 0 && ev.K.Closed && ev.K.OpenTime == minute {
			closing[env.Stream] = ev
		}
	}
	ref := r.x.ReferenceKlines(sym, kline.OneMinute(), minute, minute)[0]
	for name, ev := range closing {
		got, err := ev.K.Kline()
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		got.Closed = true
		if !sameAsRow(got, ref) || got.FirstTradeID != ref.FirstTradeID || got.LastTradeID != ref.LastTradeID {
			t.Errorf("%s closing event\n got %+v\nwant %+v", name, got, ref)
		}
		path, query := "/fapi/v1/klines", "symbol="+sym
		if ev.EventType == "continuous_kline" {
			path, query = "/fapi/v1/continuousKlines", "pair="+sym+"&contractType=PERPETUAL"
			if ev.Pair != sym || ev.ContractType != "PERPETUAL" || ev.K.Symbol != "" {
				t.Errorf("%s: ps %q ct %q k.s %q", name, ev.Pair, ev.ContractType, ev.K.Symbol)
			}
		}
		if rest := restKline(t, r, path, query, minute); !sameAsRow(got, rest) {
			t.Errorf("%s closing event differs from %s\n got %+v\nrest %+v", name, path, got, rest)
		}
		if late := ev.EventTime - ev.K.CloseTime; late > (grace + 100*time.Millisecond).Milliseconds() {
			t.Errorf("%s: closing event E − T = %d ms, over grace + 100 ms", name, late)
		} else {
			t.Logf("%s: closing event E − T = %d ms", name, late)
		}
	}
	n, qty := int64(0), int64(0)
	for i, tr := range trades {
		if i > 0 && tr.ID != trades[i-1].ID+1 {
			t.Errorf("aggTrade %d follows %d", tr.ID, trades[i-1].ID)
		}
		n += tr.LastID - tr.FirstID + 1
		qty += tr.Qty
	}
	if len(trades) == 0 || n != ref.Trades || trades[0].FirstID != ref.FirstTradeID || trades[len(trades)-1].LastID != ref.LastTradeID ||
		ref.Volume != decimal.FromInt64(qty) {
		t.Errorf("the minute's aggTrade events (%d, %d trades, qty %d) are not its kline's (%d trades, %d..%d)",
			len(trades), n, qty, ref.Trades, ref.FirstTradeID, ref.LastTradeID)
	}
	for form, c := range others {
		for {
			_, b, err := c.Read(ctx)
			if err != nil {
				t.Fatalf("%s: %v", form, err)
			}
			if strings.Contains(string(b), `"e":"kline"`) && strings.Contains(string(b), `"s":"S001USDT"`) {
				break
			}
		}
	}
	r.stop()
}

// clientsDir holds the pinned npm client libraries (scripts/clients).
func clientsDir(t *testing.T) string {
	dir, err := filepath.Abs("clients")
	if err != nil {
		t.Fatal(err)
	}
	_, errNode := exec.LookPath("node")
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "ccxt")); err != nil || errNode != nil {
		msg := "ccxt is not installed: run ./scripts/clients (needs Node.js and npm)"
		if os.Getenv("CI") != "" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return dir
}

// TestCCXT points ccxt (binanceusdm, pinned) at klagg as a user would:
// loadMarkets reads tick and lot sizes from the filters klagg passes on,
// fetchOHLCV pages through history, and ccxt pro's watchOHLCV follows a
// candle until it closes; all equal the exchange's reference.
func TestCCXT(t *testing.T) {
	dir := clientsDir(t)
	r := newRun(t, fakex.Config{MeanGap: 300 * time.Millisecond}, "")
	r.startKlagg()
	const sym = "S001USDT"
	r.ccxtRightAfterReady(dir, sym)
	r.until(3 * time.Minute)
	since := r.x.Now().Add(-90 * time.Minute).UnixMilli()
	out := r.ccxt(dir, 3*time.Minute, sym, since, "3", "25")
	var res struct {
		Markets int `json:"markets"`
		Market  struct {
			Symbol    string `json:"symbol"`
			Precision struct {
				Price  float64 `json:"price"`
				Amount float64 `json:"amount"`
			} `json:"precision"`
		} `json:"market"`
		OHLCV      [][]float64 `json:"ohlcv"`
		Closed     []float64   `json:"closed"`
		ClosedREST []float64   `json:"closedREST"`
	}
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("ccxt's output %s: %v", out, err)
	}
	prec := r.x.Precision(sym)
	if res.Market.Symbol != "S001/USDT:USDT" || res.Market.Precision.Price != unit(prec.Price) || res.Market.Precision.Amount != unit(prec.Qty) {
		t.Errorf("ccxt market %+v, want S001/USDT:USDT with tick %v and lot %v from the filters", res.Market, unit(prec.Price), unit(prec.Qty))
	}
	if len(res.OHLCV) != 75 {
		t.Errorf("ccxt paged %d candles, want 3 pages of 25", len(res.OHLCV))
	}
	check := func(what string, c []float64) {
		t.Helper()
		if len(c) != 6 {
			t.Fatalf("%s: %v", what, c)
		}
		ref := r.x.ReferenceKlines(sym, kline.OneMinute(), int64(c[0]), int64(c[0]))
		if len(ref) != 1 {
			t.Fatalf("%s: no reference kline at %d", what, int64(c[0]))
		}
		k := ref[0]
		want := []float64{float64(k.OpenTime), num(prec.AppendPrice(nil, k.Open)), num(prec.AppendPrice(nil, k.High)),
			num(prec.AppendPrice(nil, k.Low)), num(prec.AppendPrice(nil, k.Close)), num(prec.AppendQty(nil, k.Volume))}
		if fmt.Sprint(c) != fmt.Sprint(want) {
			t.Errorf("%s: ccxt %v, exchange %v", what, c, want)
		}
	}
	for i, c := range res.OHLCV {
		if i > 0 && int64(c[0]) != int64(res.OHLCV[i-1][0])+60_000 {
			t.Errorf("candle %d opens at %d after %d", i, int64(c[0]), int64(res.OHLCV[i-1][0]))
		}
		check(fmt.Sprintf("fetchOHLCV candle %d", i), c)
	}
	check("watchOHLCV's closed candle", res.Closed)
	if fmt.Sprint(res.Closed) != fmt.Sprint(res.ClosedREST) {
		t.Errorf("watchOHLCV's closed candle %v, fetchOHLCV's %v", res.Closed, res.ClosedREST)
	}
	t.Logf("ccxt: %d markets, %d candles paged, closed candle %v", res.Markets, len(res.OHLCV), res.Closed)
	r.stop()
}

// ccxt runs ccxt.mjs against klagg for sym from since with the mode
// arguments, and returns what it printed.
func (r *run) ccxt(dir string, within time.Duration, sym string, since int64, mode ...string) []byte {
	r.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	cmd := exec.CommandContext(ctx, "node", append([]string{"ccxt.mjs", r.base, sym, strconv.FormatInt(since, 10)}, mode...)...)
	cmd.Dir = dir
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		r.t.Fatalf("ccxt %v: %v", mode, err)
	}
	return out
}

// ccxtRightAfterReady asks ccxt for the latest candles the moment klagg
// is ready, as a user's first call does: they must be whole and the
// exchange's, not the few klagg had built by then.
func (r *run) ccxtRightAfterReady(dir, sym string) {
	t := r.t
	since := r.x.Now().Add(-90 * time.Minute).Truncate(time.Minute).UnixMilli()
	out := r.ccxt(dir, time.Minute, sym, since, "latest", "5")
	var res struct {
		Latest1m [][]float64 `json:"latest1m"`
		Latest1h [][]float64 `json:"latest1h"`
		Since    [][]float64 `json:"since"`
	}
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("ccxt's output %s: %v", out, err)
	}
	prec := r.x.Precision(sym)
	for _, c := range []struct {
		what    string
		iv      kline.Interval
		candles [][]float64
		from    int64 // -1: the latest
		n       int
	}{
		{"fetchOHLCV(1m, limit 5)", kline.OneMinute(), res.Latest1m, -1, 5},
		{"fetchOHLCV(1h, limit 5)", kline.MustInterval("1h"), res.Latest1h, -1, 5},
		{"fetchOHLCV(1m, since, limit 10)", kline.OneMinute(), res.Since, since, 10},
	} {
		if len(c.candles) == 0 {
			t.Errorf("ccxt right after ready: %s gave nothing", c.what)
			continue
		}
		last := int64(c.candles[len(c.candles)-1][0])
		var want []kline.Kline
		if c.from >= 0 {
			want = r.x.ReferenceKlines(sym, c.iv, c.from, last)
			want = want[:min(len(want), c.n)]
		} else {
			want = r.x.ReferenceKlines(sym, c.iv, 0, last)
			want = want[max(0, len(want)-c.n):]
		}
		if len(c.candles) != len(want) {
			t.Errorf("ccxt right after ready: %s gave %d candles, the exchange has %d", c.what, len(c.candles), len(want))
			continue
		}
		for i, k := range want[:len(want)-1] { // the last may be open
			w := []float64{float64(k.OpenTime), num(prec.AppendPrice(nil, k.Open)), num(prec.AppendPrice(nil, k.High)),
				num(prec.AppendPrice(nil, k.Low)), num(prec.AppendPrice(nil, k.Close)), num(prec.AppendQty(nil, k.Volume))}
			if fmt.Sprint(c.candles[i]) != fmt.Sprint(w) {
				t.Errorf("ccxt right after ready: %s candle %d: %v, the exchange's %v", c.what, i, c.candles[i], w)
			}
		}
	}
}

func num(b []byte) float64 {
	v, err := strconv.ParseFloat(string(b), 64)
	if err != nil {
		panic(err)
	}
	return v
}

// unit is 10^-places as a float, as ccxt gives tick and lot sizes.
func unit(places int) float64 { return num([]byte("1e-" + strconv.Itoa(places))) }
