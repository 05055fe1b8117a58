package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/adshao/go-binance/v2/futures"
	"github.com/chromedp/chromedp"

	"github.com/klagg/klagg/internal/fakex"
	"github.com/klagg/klagg/internal/kline"
	"github.com/klagg/klagg/internal/web"
)

// TestBinanceClient points an unchanged Binance client library at klagg:
// its REST klines and its @kline_1m stream must equal the fake exchange's
// reference klines.
func TestBinanceClient(t *testing.T) {
	r := newRun(t, fakex.Config{MeanGap: 300 * time.Millisecond}, "")
	r.startKlagg()
	r.until(3 * time.Minute)
	const sym = "S001USDT"
	prec := r.x.Precision(sym)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	c := futures.NewClient("", "")
	c.BaseURL = r.base
	ks, err := c.NewKlinesService().Symbol(sym).Interval("1m").Limit(30).Do(ctx)
	if err != nil {
		t.Fatalf("go-binance klines from klagg: %v", err)
	}
	if len(ks) != 30 {
		t.Fatalf("got %d klines, want 30", len(ks))
	}
	compared := 0
	for _, k := range ks[:len(ks)-1] { // the last is the open kline
		ref := r.x.ReferenceKlines(sym, kline.OneMinute(), k.OpenTime, k.OpenTime)
		if len(ref) != 1 {
			t.Fatalf("no reference kline at %d", k.OpenTime)
		}
		want := []string{fmtPrice(prec, ref[0].Open), fmtPrice(prec, ref[0].High), fmtPrice(prec, ref[0].Low),
			fmtPrice(prec, ref[0].Close), string(prec.AppendQty(nil, ref[0].Volume)), string(prec.AppendQuote(nil, ref[0].QuoteVolume)),
			string(prec.AppendQty(nil, ref[0].TakerVolume)), string(prec.AppendQuote(nil, ref[0].TakerQuoteVolume))}
		got := []string{k.Open, k.High, k.Low, k.Close, k.Volume, k.QuoteAssetVolume, k.TakerBuyBaseAssetVolume, k.TakerBuyQuoteAssetVolume}
		if fmt.Sprint(got) != fmt.Sprint(want) || k.TradeNum != ref[0].Trades || k.CloseTime != ref[0].CloseTime {
			t.Errorf("kline %d: go-binance got %v n=%d, exchange %v n=%d", k.OpenTime, got, k.TradeNum, want, ref[0].Trades)
		}
		compared++
	}

	futures.BaseWsMarketMainUrl = "ws" + strings.TrimPrefix(r.base, "http") + "/market/ws"
	events := make(chan *futures.WsKlineEvent, 1024)
	done, stop, err := futures.WsKlineServe(sym, "1m", func(ev *futures.WsKlineEvent) { events <- ev }, func(err error) { t.Logf("stream error: %v", err) })
	if err != nil {
		t.Fatalf("go-binance kline stream from klagg: %v", err)
	}
	defer func() { close(stop); <-done }()
	first, finals := true, 0
	for finals < 2 {
		var ev *futures.WsKlineEvent
		select {
		case ev = <-events:
		case <-ctx.Done():
			t.Fatal("no closing kline event within 2 minutes")
		}
		if first && ev.Kline.IsFinal {
			t.Fatal("the first event is not the open kline")
		}
		first = false
		if !ev.Kline.IsFinal {
			continue
		}
		finals++
		k := ev.Kline
		ref := r.x.ReferenceKlines(sym, kline.OneMinute(), k.StartTime, k.StartTime)[0]
		if k.Open != fmtPrice(prec, ref.Open) || k.High != fmtPrice(prec, ref.High) || k.Low != fmtPrice(prec, ref.Low) ||
			k.Close != fmtPrice(prec, ref.Close) || k.Volume != string(prec.AppendQty(nil, ref.Volume)) ||
			k.QuoteVolume != string(prec.AppendQuote(nil, ref.QuoteVolume)) || k.TradeNum != ref.Trades ||
			k.FirstTradeID != ref.FirstTradeID || k.LastTradeID != ref.LastTradeID || k.EndTime != ref.CloseTime {
			t.Errorf("closing event %d differs:\n got %+v\nwant %+v", k.StartTime, k, ref)
		}
		compared++
	}
	t.Logf("%d klines from go-binance equal the exchange's", compared)
	r.stop()
}

func fmtPrice(p kline.Precision, m int64) string { return string(p.AppendPrice(nil, m)) }

// chromium returns Debian's chromium, skipping the test where it is not
// installed (failing in CI, which installs it).
func chromium(t *testing.T) string {
	for _, p := range []string{os.Getenv("KLAGG_CHROMIUM"), "/usr/bin/chromium", "/usr/bin/chromium-browser"} {
		if p != "" {
			if _, err := exec.LookPath(p); err == nil {
				return p
			}
		}
	}
	msg := "chromium not found: install Debian's chromium (apt-get install chromium) or set KLAGG_CHROMIUM"
	if os.Getenv("CI") != "" {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return ""
}

// TestChartPage opens the chart page in headless Chromium: it must show
// the chosen symbol's candles, and its live candle must change while the
// exchange trades. The screenshot is kept in artifacts/.
func TestChartPage(t *testing.T) {
	bin := chromium(t)
	if !web.Built() {
		msg := "the chart library is not built in: run ./scripts/web (npm) first"
		if os.Getenv("CI") != "" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	r := newRun(t, fakex.Config{MeanGap: 200 * time.Millisecond}, "")
	r.startKlagg()
	r.until(2 * time.Minute)

	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(bin), chromedp.NoSandbox, chromedp.DisableGPU,
		chromedp.Flag("disable-background-networking", true), chromedp.Flag("disable-quic", true),
		chromedp.UserDataDir(t.TempDir()), chromedp.WindowSize(1280, 720))
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancelAlloc()
	bctx, cancelBrowser := chromedp.NewContext(actx)
	defer cancelBrowser()
	ctx, cancel := context.WithTimeout(bctx, 2*time.Minute)
	defer cancel()

	// The busiest symbol of the last simulated minutes, so that its live
	// candle moves within the test.
	sym, most := "", 0
	for name := range r.x.Symbols() {
		n := 0
		for _, tr := range r.x.Trades(name) {
			if tr.Time > r.x.Now().Add(-2*time.Minute).UnixMilli() {
				n++
			}
		}
		if n > most {
			sym, most = name, n
		}
	}
	wait := func(expr string, d time.Duration) {
		t.Helper()
		if _, err := chromedp.Run(ctx, chromedp.Poll[bool](expr, chromedp.WithPollingTimeout(d))); err != nil {
			state, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`JSON.stringify(window.klagg)`))
			t.Fatalf("chart page: waiting for %s: %v (page state %s)", expr, err, state)
		}
	}
	eval := func(expr string) string {
		t.Helper()
		v, err := chromedp.Run(ctx, chromedp.Evaluate[string](expr))
		if err != nil {
			t.Fatalf("chart page: %s: %v", expr, err)
		}
		return v
	}
	if _, err := chromedp.Run(ctx, chromedp.Navigate(r.base+"/?symbol="+sym+"&interval=1m")); err != nil {
		t.Fatal(err)
	}
	wait(`window.klagg && window.klagg.candles > 0 && window.klagg.last !== null`, time.Minute)
	candles := eval(`String(window.klagg.candles)`)
	chosen := eval(`document.getElementById("symbol").value`)
	before := eval(`JSON.stringify(window.klagg.last)`)
	// The live candle changes: a trade moves its volume (in place or in a
	// new candle).
	wait(fmt.Sprintf(`window.klagg.updates > 0 && window.klagg.last.volume > 0 && JSON.stringify(window.klagg.last) !== %q`, before), time.Minute)
	after := eval(`JSON.stringify(window.klagg.last)`)
	wait(`document.getElementById("st-symbols").textContent !== "–"`, 30*time.Second)
	symbols := eval(`document.getElementById("st-symbols").textContent`)
	canvases := eval(`String(document.querySelectorAll("#chart canvas").length)`)
	if canvases == "0" {
		t.Error("the chart drew nothing")
	}
	if n, _ := strconv.Atoi(candles); chosen != sym || n < 100 {
		t.Errorf("page shows %q with %s candles, want %s with its history", chosen, candles, sym)
	}
	if symbols != "8" {
		t.Errorf("status panel shows %q symbols, want 8", symbols)
	}
	t.Logf("%s candles; live candle went from %s to %s", candles, before, after)

	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatal(err)
	}
	dir := os.Getenv("KLAGG_ARTIFACTS")
	if dir == "" {
		dir = filepath.Join("..", "..", "artifacts")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "chart.png")
	if err := os.WriteFile(path, png, 0o644); err != nil {
		t.Fatal(err)
	}
	abs, _ := filepath.Abs(path)
	t.Logf("screenshot: %s", abs)
	r.stop()
}
