package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/klagg/klagg/internal/binance"
	"github.com/klagg/klagg/internal/fakex"
	"github.com/klagg/klagg/internal/kline"
)

// TestNeverShort: klines asked for every symbol the moment klagg says it
// is ready, and again at once after a restart that followed 3 minutes
// down, are whole and equal to the exchange's: the klines klagg does not
// hold yet are read through to the exchange first.
func TestNeverShort(t *testing.T) {
	r := newRun(t, fakex.Config{Symbols: 20}, "")
	r.startKlagg()
	if whole, refused := r.askAll("right after ready"); refused > 0 {
		t.Errorf("%d of %d answers refused with the weight to spare", refused, whole+refused)
	}
	r.until(2 * time.Minute)
	r.kill()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := r.x.WaitUntil(ctx, r.x.Now().Add(3*time.Minute)); err != nil {
		t.Fatal(err)
	}
	r.startKlagg()
	if whole, refused := r.askAll("right after a restart that followed 3 minutes down"); refused > 0 {
		t.Errorf("%d of %d answers refused with the weight to spare", refused, whole+refused)
	}
	// The backfill goes on behind the reads through, and says when it
	// is done.
	wctx, wcancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer wcancel()
	if err := r.k.WaitLogged(wctx, "history whole"); err != nil {
		t.Error(err)
	}
	// /metrics says what the log said.
	m, err := r.k.Metrics()
	if err != nil {
		t.Fatal(err)
	}
	if m.Value("klagg_history_series") == 0 || m.Value("klagg_history_klines_held") == 0 || m.Value("klagg_history_whole") != 1 {
		t.Errorf("/metrics: history series %v, held %v, whole %v; want it whole", m.Value("klagg_history_series"),
			m.Value("klagg_history_klines_held"), m.Value("klagg_history_whole"))
	}
	r.stop()
}

// TestNeverShortWithoutWeight: with the exchange's weight spent, what
// klagg does not hold is refused with Binance's -1001, never answered
// short. Ranges deep in history, more than the budget of 100 a minute
// can fetch, are asked at once.
func TestNeverShortWithoutWeight(t *testing.T) {
	r := newRun(t, fakex.Config{Symbols: 8, WeightPerMinute: 100}, "")
	r.appendExchange(`weight_per_minute = 100`)
	r.startKlagg()
	var asks []ask
	for i := range 15 {
		at := r.liveAt.Add(-170*time.Minute + time.Duration(i)*10*time.Minute).Truncate(time.Minute)
		asks = append(asks, ask{interval: "1m", limit: 10, start: at.UnixMilli()})
	}
	whole, refused := r.askAll("right after ready, the weight spent", asks...)
	if refused == 0 {
		t.Errorf("all %d answers whole: the weight was not spent, the test proves nothing", whole)
	}
	r.stop()
}

// TestClusterNeverShort: a cluster's nodes answer the klines of every
// symbol, whichever node builds it, whole and equal to the exchange's or
// refused: the moment they are ready, while a killed node's symbols are
// taken over, once they are, and right after the whole cluster restarted
// from 3 minutes down.
func TestClusterNeverShort(t *testing.T) {
	r := newRun(t, fakex.Config{Symbols: 20, WeightPerMinute: clusterWeight}, "")
	r.appendExchange(fmt.Sprintf("weight_per_minute = %d", clusterWeight))
	r.usePostgres()
	url := natsServer(t)
	own := watchOwners(t, url, 1)
	nodes := r.startCluster(url, "")
	r.liveAt = r.x.Now()
	r.base = nodes[0].k.Base()
	if whole, refused := r.askAll("a cluster node right after ready"); refused > 0 {
		t.Errorf("%d of %d answers refused with the weight to spare", refused, whole+refused)
	}
	syms := r.trading()
	own.waitSplit(t, nodes, syms)
	r.until(2 * time.Minute)
	victim, _ := busiest(own.owned(), nodes)
	var survivor *node
	for _, n := range nodes {
		if n != victim {
			survivor = n
		}
	}
	victim.k.Kill()
	r.base = survivor.k.Base()
	// Until its symbols are taken over and resumed, what they lack is
	// refused, never answered short.
	r.askAll("a node while a killed node's symbols are taken over")
	var survivors []*node
	for _, n := range nodes {
		if n != victim {
			survivors = append(survivors, n)
		}
	}
	// Once the survivors took the symbols over, nothing is refused. (On
	// two loaded cores a node now and then misses a heartbeat, another
	// takes its symbols, and they are refused for a moment, honestly:
	// asked once more after the owners settled again.)
	settled := func(nodes []*node, when string) {
		t.Helper()
		for attempt := 0; ; attempt++ {
			own.waitSplit(t, nodes, syms)
			r.until(r.x.Now().Sub(r.liveAt) + time.Minute)
			whole, refused := r.askAll(when)
			if refused == 0 {
				return
			}
			if attempt == 1 {
				t.Errorf("%s: %d of %d answers refused with the weight to spare", when, refused, whole+refused)
				return
			}
		}
	}
	settled(survivors, "a node after a killed node's symbols were taken over")
	for _, n := range nodes {
		if n != victim {
			if err := n.k.Stop(time.Minute); err != nil {
				t.Fatalf("%s did not exit 0 on SIGTERM: %v", n.name, err)
			}
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := r.x.WaitUntil(ctx, r.x.Now().Add(3*time.Minute)); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for _, n := range nodes {
		wg.Go(func() { r.startNode(n) })
	}
	wg.Wait()
	// Right after, the symbols still reading their trades since the stop,
	// and those moving to the node that joined last, are refused; once
	// the nodes took their shares, none.
	r.base = nodes[1].k.Base()
	r.askAll("a cluster node right after the cluster restarted from 3 minutes down")
	settled(nodes, "a cluster node a minute after the cluster restarted")
}

// ask is a klines request of every symbol: the latest limit klines, or
// with start ≥ 0 the first limit from start.
type ask struct {
	interval string
	limit    int
	start    int64
}

// latest are the requests a chart or a strategy makes first.
var latest = []ask{{"1m", 5, -1}, {"1m", 150, -1}, {"5m", 30, -1}, {"1h", 5, -1}}

// askAll makes every request of asks (by default latest) for every symbol
// at once, and requires each answer to be whole and equal to the
// exchange's, or refused with -1001. It returns how many were whole and
// how many refused.
func (r *run) askAll(when string, asks ...ask) (whole, refused int) {
	r.t.Helper()
	if len(asks) == 0 {
		asks = latest
	}
	syms := make([]string, 0)
	for s := range r.x.Symbols() {
		syms = append(syms, s)
	}
	sort.Strings(syms)
	var mu sync.Mutex
	var wg sync.WaitGroup
	var problems []string
	for _, sym := range syms {
		for _, a := range asks {
			wg.Go(func() {
				problem, ok := r.checkAnswer(sym, a)
				mu.Lock()
				defer mu.Unlock()
				switch {
				case problem != "":
					problems = append(problems, problem)
				case ok:
					whole++
				default:
					refused++
				}
			})
		}
	}
	wg.Wait()
	sort.Strings(problems)
	for _, p := range problems[:min(len(problems), 20)] {
		r.t.Errorf("%s: %s", when, p)
	}
	if len(problems) > 0 && r.k != nil {
		sym := problems[0][strings.Index(problems[0], "symbol=")+7:]
		sym = sym[:strings.Index(sym, "&")]
		for _, l := range append(r.earlier, r.k.Lines()...) {
			if strings.Contains(l, sym) {
				r.t.Log(l)
			}
		}
	}
	r.t.Logf("%s: %d answers whole, %d refused, %d wrong", when, whole, refused, len(problems))
	return whole, refused
}

// checkAnswer makes request a of sym and compares the answer with the
// exchange's: it returns what is wrong, or whether the answer was whole
// (false: refused with -1001).
func (r *run) checkAnswer(sym string, a ask) (string, bool) {
	iv := kline.MustInterval(a.interval)
	url := fmt.Sprintf("%s/fapi/v1/klines?symbol=%s&interval=%s&limit=%d", r.base, sym, iv, a.limit)
	if a.start >= 0 {
		url += fmt.Sprintf("&startTime=%d", a.start)
	}
	before := r.x.Now().UnixMilli()
	resp, err := http.Get(url)
	if err != nil {
		return fmt.Sprintf("%s: %v", url, err), false
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Sprintf("%s: %v", url, err), false
	}
	if resp.StatusCode == http.StatusServiceUnavailable {
		var e binance.ErrorBody
		if json.Unmarshal(body, &e) != nil || e.Code != -1001 || e.Msg == "" {
			return fmt.Sprintf("%s: 503 without Binance's -1001 and a reason: %s", url, body), false
		}
		r.t.Logf("refused: %s: %s", url, e.Msg)
		if os.Getenv("KLAGG_E2E_DEBUG") != "" && r.k != nil {
			for _, l := range r.k.Lines() {
				if strings.Contains(l, sym) {
					r.t.Log(l)
				}
			}
		}
		return "", false
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Sprintf("%s: %d %s", url, resp.StatusCode, body), false
	}
	var rows [][]json.RawMessage
	if err := json.Unmarshal(body, &rows); err != nil || len(rows) == 0 {
		return fmt.Sprintf("%s: %v %s", url, err, body), false
	}
	got := make([]kline.Kline, len(rows))
	for i, row := range rows {
		if got[i], _, err = binance.ParseKlineArray(row); err != nil {
			return fmt.Sprintf("%s: row %d: %v", url, i, err), false
		}
	}
	// The exchange's klines up to the last given, which is the open one,
	// or the first from start.
	last := got[len(got)-1].OpenTime
	want := r.x.ReferenceKlines(sym, iv, 0, last)
	if a.start >= 0 {
		want = r.x.ReferenceKlines(sym, iv, a.start, last)
		want = want[:min(len(want), a.limit)]
	} else {
		want = want[max(0, len(want)-a.limit):]
	}
	if len(want) == 0 {
		return fmt.Sprintf("%s: %d klines from %s, the exchange has none", url, len(got), ms(got[0].OpenTime)), false
	}
	// The latest klines end at the kline open then: a few slots of 1m
	// behind at most, since at 60 simulated seconds a second a cluster
	// judges a silent node dead after 2 s, two simulated minutes.
	if stale := iv.Open(before) - 3*iv.Duration().Milliseconds(); a.start < 0 && last < stale && r.x.Symbols()[sym] == "TRADING" {
		return fmt.Sprintf("%s: stale: the last kline opens at %s, the exchange was at %s", url, ms(last), ms(before)), false
	}
	if len(got) != len(want) || got[0].OpenTime != want[0].OpenTime {
		var holes []string
		for i := 1; i < len(got); i++ {
			if got[i].OpenTime != iv.Next(got[i-1].OpenTime) {
				holes = append(holes, ms(got[i-1].OpenTime)+"…"+ms(got[i].OpenTime))
			}
		}
		return fmt.Sprintf("%s: short: %d klines from %s to %s (holes %v), the exchange has %d from %s", url, len(got), ms(got[0].OpenTime),
			ms(last), holes, len(want), ms(want[0].OpenTime)), false
	}
	for i := range got[:len(got)-1] {
		g, w := got[i], want[i]
		if g.OpenTime != w.OpenTime || g.Open != w.Open || g.High != w.High || g.Low != w.Low || g.Close != w.Close ||
			g.Volume != w.Volume || g.QuoteVolume != w.QuoteVolume || g.Trades != w.Trades || g.TakerVolume != w.TakerVolume {
			return fmt.Sprintf("%s: the kline at %s is %+v, the exchange's %+v", url, ms(g.OpenTime), g, w), false
		}
	}
	return "", true
}

// closings follows sym's 1m kline stream on klagg and collects each
// closing event until klagg closes the connection; the returned func
// waits for that and returns them in the order they came.
func (r *run) closings(t *testing.T, sym string) func() []kline.Kline {
	t.Helper()
	c := dialStream(t, r, "/ws/"+strings.ToLower(sym)+"@kline_1m")
	var got []kline.Kline
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			_, b, err := c.Read(context.Background())
			if err != nil {
				return // klagg stopped
			}
			ev, err := binance.ParseKlineEvent(b)
			if err != nil {
				t.Errorf("a frame on %s's kline stream: %v", sym, err)
				return
			}
			if k, err := ev.K.Kline(); err != nil {
				t.Errorf("a kline event of %s: %v", sym, err)
			} else if k.Closed {
				got = append(got, k)
			}
		}
	}()
	return func() []kline.Kline {
		<-done
		return got
	}
}

// checkClosings requires every closing event to be the exchange's kline:
// klagg sends none for a kline it does not hold whole.
func (r *run) checkClosings(sym string, got []kline.Kline) {
	r.t.Helper()
	if len(got) == 0 {
		r.t.Errorf("no closing event on %s's stream", sym)
	}
	for _, k := range got {
		ref := r.x.ReferenceKlines(sym, kline.OneMinute(), k.OpenTime, k.OpenTime)
		if len(ref) != 1 || !sameAsRow(k, ref[0]) {
			r.t.Errorf("closing event of %s at %s: %+v, the exchange's %+v", sym, ms(k.OpenTime), k, ref)
		}
	}
	r.t.Logf("%d closing events of %s, each the exchange's", len(got), sym)
}

// TestHistoryImport: with [history] on, klagg imports the archive's
// days in the background once live, and answers klines days back, every
// interval derived, equal to the exchange's, from what it imported (no
// read through to the exchange for them).
func TestHistoryImport(t *testing.T) {
	r := newRun(t, fakex.Config{Symbols: 4, Deep: 5 * 24 * time.Hour, DeepGap: 30 * time.Second}, "")
	f, err := os.OpenFile(r.conf, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(f, "[history]\nenabled = true\nfrom = %q\nsince = \"listing\"\n", r.x.ArchiveURL())
	f.Close()
	r.startKlagg()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := r.k.WaitLogged(ctx, "import done"); err != nil {
		t.Fatal(err)
	}
	m, err := r.k.Metrics()
	if err != nil {
		t.Fatal(err)
	}
	if m.Value("klagg_import_running") != 0 || m.Value("klagg_import_bytes") == 0 {
		t.Errorf("/metrics after the import: running %v, bytes %v", m.Value("klagg_import_running"), m.Value("klagg_import_bytes"))
	}
	deep := start.Add(-4 * 24 * time.Hour).Truncate(24 * time.Hour).UnixMilli() // a day the archive has
	var asks []ask
	for _, iv := range []string{"1m", "15m", "1h", "4h", "1d"} {
		asks = append(asks, ask{interval: iv, limit: 100, start: deep})
	}
	if whole, refused := r.askAll("days back, after the import", asks...); refused > 0 {
		t.Errorf("%d of %d answers refused", refused, whole+refused)
	}
	for _, l := range r.k.Lines() {
		if strings.Contains(l, "reading klines not held through") && strings.Contains(l, "2026-02-2") {
			t.Errorf("imported days read through to the exchange: %s", l)
		}
	}
	r.stop()
}
