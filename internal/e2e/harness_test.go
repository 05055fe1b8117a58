package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/klagg/klagg/internal/fakex"
	"github.com/klagg/klagg/internal/klaggproc"
	"github.com/klagg/klagg/internal/kline"
	"github.com/klagg/klagg/internal/store"
	"github.com/klagg/klagg/internal/store/postgres"
	"github.com/klagg/klagg/internal/store/sqlite"
	"github.com/klagg/klagg/internal/store/storetest"
)

// klaggBin is the real binary, built once by TestMain.
var klaggBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "klagg-e2e")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	klaggBin, err = klaggproc.Build(dir, raceEnabled)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// start is the simulated time every test's exchange starts at: a Sunday
// 23:30 UTC, so runs cross an hour, a day and a week boundary.
var start = time.Date(2026, 3, 1, 23, 30, 0, 0, time.UTC)

// testIntervals are the intervals e2e runs keep.
const testIntervals = `["1m", "3m", "5m", "15m", "1h", "4h", "1d", "1w", "1M"]`

type run struct {
	t    testing.TB
	x    *fakex.Exchange
	dir  string
	db   string
	conf string

	k      *klaggproc.Proc // the klagg running, or the last one
	liveAt time.Time       // exchange time when klagg first went live
	// hidden is set when the exchange hid trades: klagg's trade ids then
	// differ where a hidden trade was a kline's first or last, by design.
	hidden  bool
	base    string   // klagg's HTTP root, from its log
	earlier []string // the log of the test's earlier klagg runs
	bin     string   // what to run instead of klaggBin (a wrapper); optional
	pgURL   string   // klagg's database.url when it runs on PostgreSQL
}

// usePostgres makes klagg keep its klines in a PostgreSQL schema of the
// test's own (database.url) instead of SQLite.
func (r *run) usePostgres() {
	r.t.Helper()
	r.pgURL = storetest.PostgresSchema(r.t)
	data, err := os.ReadFile(r.conf)
	if err != nil {
		r.t.Fatal(err)
	}
	s := strings.Replace(string(data), "#DATABASE#", fmt.Sprintf("url = %q", r.pgURL), 1)
	if err := os.WriteFile(r.conf, []byte(s), 0o644); err != nil {
		r.t.Fatal(err)
	}
}

// klineStore is what the checks read of klagg's store.
type klineStore interface {
	Klines(ctx context.Context, q store.Query) ([]kline.Kline, error)
	Close() error
}

// openStore opens the store klagg writes: its SQLite file, or its
// PostgreSQL schema.
func (r *run) openStore() klineStore {
	r.t.Helper()
	if r.pgURL != "" {
		st, err := postgres.Open(context.Background(), r.pgURL)
		if err != nil {
			r.t.Fatal(err)
		}
		return st
	}
	st, err := sqlite.Open(r.db)
	if err != nil {
		r.t.Fatal(err)
	}
	return st
}

// newRun starts a fake exchange; extra is appended to klagg's config.
func newRun(t testing.TB, xcfg fakex.Config, extra string) *run {
	t.Helper()
	if xcfg.Symbols == 0 {
		xcfg.Symbols = 8
	}
	if xcfg.Start.IsZero() {
		xcfg.Start = start
	}
	if xcfg.Speed == 0 {
		xcfg.Speed = 60
	}
	if xcfg.MeanGap == 0 {
		xcfg.MeanGap = time.Second
	}
	if xcfg.History == 0 {
		xcfg.History = 3 * time.Hour
	}
	if xcfg.QuietEvery == 0 {
		xcfg.QuietEvery = 300 // negative: never quiet
	}
	x, err := fakex.New(xcfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(x.Close)
	dir := t.TempDir()
	r := &run{t: t, x: x, dir: dir, db: filepath.Join(dir, "klagg.db"), conf: filepath.Join(dir, "klagg.toml")}
	cfg := fmt.Sprintf(`
[exchange]
#EXCHANGE#
rest_url = %q
ws_url = %q
read_timeout = "3s"
symbols_poll = "1s"
time_sync = "300ms"
[klines]
intervals = %s
backfill_limit = 100
[reconcile]
delay = "500ms"
[database]
path = %q
#DATABASE#
[server]
listen = "127.0.0.1:0"
push_interval = "20ms"
[log]
status_interval = "2s"
%s`, x.URL(), x.WSURL(), testIntervals, r.db, extra)
	// Later tables in extra override: rewrite duplicated sections by
	// appending is not valid TOML, so extra only adds keys to new tables.
	if err := os.WriteFile(r.conf, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if r.k == nil {
			return
		}
		r.k.Kill()
		if t.Failed() {
			lines := r.k.Lines()
			t.Logf("klagg log (last 60 lines):\n%s", strings.Join(lines[max(0, len(lines)-60):], "\n"))
		}
	})
	return r
}

// appendExchange sets a key of the config's [exchange] table.
func (r *run) appendExchange(line string) {
	r.t.Helper()
	data, err := os.ReadFile(r.conf)
	if err != nil {
		r.t.Fatal(err)
	}
	key := strings.TrimSpace(strings.SplitN(line, "=", 2)[0])
	var kept []string
	for _, l := range strings.Split(string(data), "\n") {
		if !strings.HasPrefix(l, key+" =") {
			kept = append(kept, l)
		}
	}
	s := strings.Replace(strings.Join(kept, "\n"), "#EXCHANGE#", line+"\n#EXCHANGE#", 1)
	if err := os.WriteFile(r.conf, []byte(s), 0o644); err != nil {
		r.t.Fatal(err)
	}
}

// checkListed requires a symbol listed mid-run to have live klines.
func (r *run) checkListed(sym string) {
	r.t.Helper()
	st := r.openStore()
	defer st.Close()
	ks, err := st.Klines(context.Background(), store.Query{Symbol: sym, Interval: kline.OneMinute()})
	if err != nil || len(ks) < 3 {
		r.t.Errorf("listed symbol %s has %d 1m klines (%v)", sym, len(ks), err)
	}
}

// startKlagg runs the binary and waits until it reports being live. The
// log of an earlier run of this test's klagg stays readable by logged.
func (r *run) startKlagg() {
	r.t.Helper()
	prev := r.k
	bin := klaggBin
	if r.bin != "" {
		bin = r.bin
	}
	k, err := klaggproc.Start(bin, r.conf, "LOG_LEVEL=debug")
	if err != nil {
		r.t.Fatal(err)
	}
	r.k = k
	if prev != nil {
		r.earlier = append(r.earlier, prev.Lines()...)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := k.WaitReady(ctx); err != nil {
		r.t.Fatal(err)
	}
	r.base = k.Base()
	if r.liveAt.IsZero() {
		r.liveAt = r.x.Now()
	}
}

// until waits until the exchange's simulated clock is d past the moment
// klagg first went live.
func (r *run) until(d time.Duration) {
	r.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if err := r.x.WaitUntil(ctx, r.liveAt.Add(d)); err != nil {
		r.t.Fatalf("waiting for exchange time %s: %v", r.liveAt.Add(d), err)
	}
}

// stop sends SIGTERM and requires a clean exit.
func (r *run) stop() {
	r.t.Helper()
	if err := r.k.Stop(time.Minute); err != nil {
		r.t.Fatalf("klagg did not exit 0 on SIGTERM: %v", err)
	}
}

// kill sends SIGKILL.
func (r *run) kill() {
	r.t.Helper()
	if !r.k.Kill() {
		r.t.Fatal("klagg was not running to be killed")
	}
}

// logged reports whether any klagg of this test logged s.
func (r *run) logged(s string) bool {
	for _, l := range r.earlier {
		if strings.Contains(l, s) {
			return true
		}
	}
	return r.k.Logged(s)
}

// check compares every closed kline in the store with the exchange's
// reference, every field, and requires each series to be gap-free and to
// reach at least `until` (simulated, from start) for symbols still trading.
func (r *run) check(until time.Duration) {
	r.t.Helper()
	st := r.openStore()
	defer st.Close()
	ivs, err := kline.ParseIntervals(strings.Trim(strings.ReplaceAll(testIntervals, `"`, ""), "[]"))
	if err != nil {
		r.t.Fatal(err)
	}
	ctx := context.Background()
	compared, symbols := 0, 0
	for sym, status := range r.x.Symbols() {
		symbols++
		trades := r.x.Trades(sym)
		for _, iv := range ivs {
			ks, err := st.Klines(ctx, store.Query{Symbol: sym, Interval: iv})
			if err != nil {
				r.t.Fatal(err)
			}
			var closed []kline.Kline
			for _, k := range ks {
				if k.Closed {
					closed = append(closed, k)
				}
			}
			if len(closed) == 0 {
				if iv.String() == "1m" && status != "SETTLING" {
					r.t.Errorf("%s %s: no closed klines stored (status %s)", sym, iv, status)
				}
				continue
			}
			ref := fakex.Reference(trades, iv, closed[0].OpenTime, closed[len(closed)-1].OpenTime)
			byOpen := map[int64]kline.Kline{}
			for _, k := range ref {
				byOpen[k.OpenTime] = k
			}
			for i, k := range closed {
				if i > 0 && k.OpenTime != iv.Next(closed[i-1].OpenTime) {
					r.t.Errorf("%s %s: gap between %s and %s", sym, iv, ms(closed[i-1].OpenTime), ms(k.OpenTime))
				}
				w, ok := byOpen[k.OpenTime]
				if !ok {
					r.t.Errorf("%s %s %s: stored but the exchange has no such kline", sym, iv, ms(k.OpenTime))
					continue
				}
				if (k.FirstTradeID < 0 && k.Trades > 0) || r.hidden { // from REST: no trade ids
					w.FirstTradeID, w.LastTradeID = k.FirstTradeID, k.LastTradeID
				}
				w.Closed = true
				if k != w {
					r.t.Errorf("%s %s %s differs:\n got %+v\nwant %+v", sym, iv, ms(k.OpenTime), k, w)
				}
				compared++
			}
			if iv.String() == "1m" && status == "TRADING" {
				if last := closed[len(closed)-1].CloseTime; last < r.liveAt.Add(until).UnixMilli()-3*60_000 {
					r.t.Errorf("%s 1m: closed klines end at %s, want them near %s", sym, ms(last), r.liveAt.Add(until).UTC())
				}
			}
		}
	}
	if r.t.Failed() {
		return
	}
	r.t.Logf("%d closed klines of %d symbols equal the exchange's", compared, symbols)
}

// checkSnapshot requires the store to hold one consistent state per
// symbol: every stored kline, open ones included, equals the exchange's
// klines built from the trades up to the last trade id the store holds.
// It shows that a stop flushed every kline the engine changed.
func (r *run) checkSnapshot() {
	r.t.Helper()
	st := r.openStore()
	defer st.Close()
	ivs, _ := kline.ParseIntervals(strings.Trim(strings.ReplaceAll(testIntervals, `"`, ""), "[]"))
	ctx := context.Background()
	open := 0
	for sym := range r.x.Symbols() {
		ones, err := st.Klines(ctx, store.Query{Symbol: sym, Interval: kline.OneMinute()})
		if err != nil {
			r.t.Fatal(err)
		}
		if len(ones) == 0 {
			if r.x.Symbols()[sym] != "SETTLING" {
				r.t.Errorf("%s: no 1m klines", sym)
			}
			continue
		}
		last := int64(-1)
		for _, k := range ones {
			last = max(last, k.LastTradeID)
		}
		var trades []kline.Trade
		for _, t := range r.x.Trades(sym) {
			if t.LastID <= last {
				trades = append(trades, t)
			}
		}
		for _, iv := range ivs {
			ks, _ := st.Klines(ctx, store.Query{Symbol: sym, Interval: iv, Limit: 3, FromEnd: true})
			for _, k := range ks {
				ref := fakex.Reference(trades, iv, k.OpenTime, k.OpenTime)
				if len(ref) != 1 {
					r.t.Errorf("%s %s %s: no reference kline", sym, iv, ms(k.OpenTime))
					continue
				}
				w := ref[0]
				w.Closed = k.Closed
				if k.FirstTradeID < 0 && k.Trades > 0 {
					w.FirstTradeID, w.LastTradeID = k.FirstTradeID, k.LastTradeID
				}
				if !k.Closed {
					open++
				}
				if k != w {
					r.t.Errorf("%s %s %s (closed=%v) not flushed consistently:\n got %+v\nwant %+v", sym, iv, ms(k.OpenTime), k.Closed, k, w)
				}
			}
		}
	}
	r.t.Logf("stored open klines consistent with the last stored trade: %d checked", open)
}

func ms(t int64) string { return time.UnixMilli(t).UTC().Format("2006-01-02 15:04") }
