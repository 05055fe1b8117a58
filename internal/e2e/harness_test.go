package e2e

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/klagg/klagg/internal/fakex"
	"github.com/klagg/klagg/internal/kline"
	"github.com/klagg/klagg/internal/store"
)

// klaggBin is the real binary, built once by TestMain.
var klaggBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "klagg-e2e")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	klaggBin = filepath.Join(dir, "klagg")
	args := []string{"build", "-o", klaggBin}
	if raceEnabled {
		args = append(args, "-race")
	}
	cmd := exec.Command("go", append(args, "../../cmd/klagg")...)
	if out, err := cmd.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building klagg: %v\n%s", err, out)
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
	t    *testing.T
	x    *fakex.Exchange
	dir  string
	db   string
	conf string

	mu     sync.Mutex
	cmd    *exec.Cmd
	lines  []string
	live   chan struct{}
	exited chan error
	liveAt time.Time // exchange time when klagg first went live
	// hidden is set when the exchange hid trades: klagg's trade ids then
	// differ where a hidden trade was a kline's first or last, by design.
	hidden bool
	base   string // klagg's HTTP root, from its log
}

// newRun starts a fake exchange; extra is appended to klagg's config.
func newRun(t *testing.T, xcfg fakex.Config, extra string) *run {
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
		r.mu.Lock()
		cmd := r.cmd
		r.mu.Unlock()
		if cmd != nil && cmd.ProcessState == nil {
			cmd.Process.Kill()
			<-r.exited
		}
		if t.Failed() {
			r.mu.Lock()
			t.Logf("klagg log (last 60 lines):\n%s", strings.Join(r.lines[max(0, len(r.lines)-60):], "\n"))
			r.mu.Unlock()
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
	st, err := store.Open(r.db)
	if err != nil {
		r.t.Fatal(err)
	}
	defer st.Close()
	ks, err := st.Klines(context.Background(), store.Query{Symbol: sym, Interval: kline.OneMinute()})
	if err != nil || len(ks) < 3 {
		r.t.Errorf("listed symbol %s has %d 1m klines (%v)", sym, len(ks), err)
	}
}

// startKlagg runs the binary and waits until it reports being live.
func (r *run) startKlagg() {
	r.t.Helper()
	cmd := exec.Command(klaggBin)
	cmd.Env = append(os.Environ(), "CONFIG_PATH="+r.conf, "LOG_LEVEL=debug")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		r.t.Fatal(err)
	}
	cmd.Stdout = io.Discard
	if err := cmd.Start(); err != nil {
		r.t.Fatal(err)
	}
	live := make(chan struct{})
	exited := make(chan error, 1)
	r.mu.Lock()
	r.cmd, r.live, r.exited = cmd, live, exited
	r.mu.Unlock()
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		once := sync.Once{}
		for sc.Scan() {
			line := sc.Text()
			r.mu.Lock()
			r.lines = append(r.lines, line)
			r.mu.Unlock()
			if _, addr, ok := strings.Cut(line, " listen="); ok && strings.Contains(line, `msg="klagg starting"`) {
				r.mu.Lock()
				r.base = strings.Fields(addr)[0]
				r.mu.Unlock()
			}
			if strings.Contains(line, `msg="caught up; live"`) {
				once.Do(func() { close(live) })
			}
		}
		exited <- cmd.Wait()
	}()
	select {
	case <-live:
		if r.liveAt.IsZero() {
			r.liveAt = r.x.Now()
		}
	case err := <-exited:
		exited <- err
		r.t.Fatalf("klagg exited before going live: %v", err)
	case <-time.After(2 * time.Minute):
		r.t.Fatal("klagg did not go live within 2 minutes")
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
	r.mu.Lock()
	cmd, exited := r.cmd, r.exited
	r.mu.Unlock()
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-exited:
		if err != nil {
			r.t.Fatalf("klagg did not exit 0 on SIGTERM: %v", err)
		}
	case <-time.After(time.Minute):
		r.t.Fatal("klagg did not exit within a minute of SIGTERM")
	}
}

// kill sends SIGKILL.
func (r *run) kill() {
	r.t.Helper()
	r.mu.Lock()
	cmd, exited := r.cmd, r.exited
	r.mu.Unlock()
	cmd.Process.Signal(syscall.SIGKILL)
	err := <-exited
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		r.t.Fatalf("klagg was not killed: %v", err)
	}
}

func (r *run) logged(s string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, l := range r.lines {
		if strings.Contains(l, s) {
			return true
		}
	}
	return false
}

// check compares every closed kline in the store with the exchange's
// reference, every field, and requires each series to be gap-free and to
// reach at least `until` (simulated, from start) for symbols still trading.
func (r *run) check(until time.Duration) {
	r.t.Helper()
	st, err := store.Open(r.db)
	if err != nil {
		r.t.Fatal(err)
	}
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
	st, err := store.Open(r.db)
	if err != nil {
		r.t.Fatal(err)
	}
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
