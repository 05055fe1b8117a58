package history

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/klagg/klagg/internal/kline"
)

// exchange serves fixed klines by interval and open time, each with the
// one after it (the exchange has closed it) unless it is still open.
type exchange struct {
	klines map[string]map[int64]kline.Kline
	mu     sync.Mutex
	open   map[int64]bool
	asked  chan int64 // if set, told of each request's start (buffered)
}

func (x *exchange) Klines(_ context.Context, _ string, iv kline.Interval, start, end int64, limit int) ([]kline.Kline, error) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.asked != nil {
		x.asked <- start
	}
	k, ok := x.klines[iv.String()][start]
	if !ok {
		return nil, nil
	}
	out := []kline.Kline{k}
	if next := iv.Next(start); limit > 1 && end >= next && !x.open[start] {
		out = append(out, kline.Empty(iv, next, k.Close))
	}
	return out, nil
}

func (x *exchange) AggTrades(context.Context, string, int64, int64, int) ([]kline.Trade, error) {
	return nil, nil
}

// corrections records what the reconciler corrects.
type corrections struct {
	mu  sync.Mutex
	got map[string]kline.Kline
	ch  chan string
}

func (c *corrections) Seed(context.Context, string, kline.Interval, kline.Kline, int64) error {
	return nil
}

func (c *corrections) Correct(_ context.Context, _ string, iv kline.Interval, k kline.Kline) error {
	c.mu.Lock()
	c.got[iv.String()] = k
	c.mu.Unlock()
	c.ch <- iv.String()
	return nil
}

// TestReconcileReachesLongerIntervals: a 1m kline that differs from the
// exchange's is corrected, and so, once it closes, is the 3m kline holding
// it, which klagg no longer held when the correction came.
func TestReconcileReachesLongerIntervals(t *testing.T) {
	rc := newReconciling()
	one, exMinute, ex3, now, r, c := rc.one, rc.exMinute, rc.ex3, &rc.now, rc.r, rc.c
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx, c) }()
	defer func() { cancel(); <-done }()

	ours := exMinute
	ours.Trades, ours.Close = 4, 10 // a hidden trade we never saw
	r.Publish([]kline.Update{{Symbol: "A", Interval: one, Kline: withClosed(ours)}})
	if iv := wait(t, c.ch); iv != "1m" {
		t.Fatalf("first correction is of %s, want 1m", iv)
	}
	now.Store(ex3.CloseTime + 1_000) // the 3m kline closes
	if iv := wait(t, c.ch); iv != "3m" {
		t.Fatalf("second correction is of %s, want 3m", iv)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if got := c.got["3m"]; got.Trades != 9 || got.Close != 11 {
		t.Errorf("3m corrected to %+v, want the exchange's", got)
	}
	if r.FieldDiffs()["trades"] != 1 {
		t.Errorf("differences counted %v, want the 1m kline's only", r.FieldDiffs())
	}
	var out strings.Builder
	r.WritePrometheus(&out)
	if !strings.Contains(out.String(), `klagg_reconcile_differences_total{field="trades"} 1`+"\n") {
		t.Errorf("the reconciler's metrics lack the difference:\n%s", out.String())
	}
}

// reconciling is a reconciler over an exchange whose minute m, inside a
// 3m kline, has 5 trades and its 3m kline 9; the clock is just after m.
type reconciling struct {
	m             int64
	one           kline.Interval
	exMinute, ex3 kline.Kline
	now           atomic.Int64
	r             *Reconciler
	c             *corrections
}

func newReconciling() *reconciling {
	const m = int64(1_700_000_040_000)
	three := kline.MustInterval("3m")
	rc := &reconciling{m: m, one: kline.OneMinute(),
		exMinute: kline.Kline{OpenTime: m, CloseTime: m + 59_999, Open: 10, High: 12, Low: 9, Close: 11, Trades: 5, FirstTradeID: -1, LastTradeID: -1},
		ex3: kline.Kline{OpenTime: three.Open(m), CloseTime: three.CloseTime(three.Open(m)), Open: 10, High: 12, Low: 9, Close: 11, Trades: 9,
			FirstTradeID: -1, LastTradeID: -1},
		c: &corrections{got: map[string]kline.Kline{}, ch: make(chan string, 4)}}
	x := &exchange{klines: map[string]map[int64]kline.Kline{"1m": {m: rc.exMinute}, "3m": {rc.ex3.OpenTime: rc.ex3}}}
	rc.now.Store(m + 61_000)
	rc.r = NewReconciler(x, []kline.Interval{rc.one, three}, 20*time.Millisecond, func() time.Time { return time.UnixMilli(rc.now.Load()) },
		slog.New(slog.DiscardHandler))
	return rc
}

func withClosed(k kline.Kline) kline.Kline {
	k.Closed = true
	return k
}

func wait(t *testing.T, ch chan string) string {
	t.Helper()
	select {
	case s := <-ch:
		return s
	case <-time.After(10 * time.Second):
		t.Fatal("no correction")
		return ""
	}
}

// TestRecheckAfterTakeover: the minutes before a checkpoint a node took a
// symbol over from are taken from the exchange, not counted as
// differences, and the longer klines holding them follow once they close.
func TestRecheckAfterTakeover(t *testing.T) {
	rc := newReconciling()
	m, exMinute, ex3, now, r, c := rc.m, rc.exMinute, rc.ex3, &rc.now, rc.r, rc.c
	r.Recheck("A", m, m)
	if got := r.Rechecking(); !got["A"] || len(got) != 1 {
		t.Errorf("rechecking %v, want A", got)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx, c) }()
	defer func() { cancel(); <-done }()
	if iv := wait(t, c.ch); iv != "1m" {
		t.Fatalf("first correction is of %s, want 1m", iv)
	}
	now.Store(ex3.CloseTime + 1_000)
	if iv := wait(t, c.ch); iv != "3m" {
		t.Fatalf("second correction is of %s, want 3m", iv)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if got := c.got["1m"]; got.Trades != 5 || got.Close != 11 || !got.Closed && got.CloseTime != exMinute.CloseTime {
		t.Errorf("1m taken as %+v, want the exchange's", got)
	}
	if len(r.FieldDiffs()) != 0 || r.Differ.Load() != 0 {
		t.Errorf("differences counted for a recheck: %v", r.FieldDiffs())
	}
	// The 3m kline was checked a round after the minute: done with it.
	if got := r.Rechecking(); len(got) != 0 {
		t.Errorf("rechecking %v after the minute was checked", got)
	}
}

// TestReconcileWaitsForTheExchangeToClose: a kline the exchange has not
// closed yet (its clock behind klagg's) is asked for again, not taken:
// taken, it would be the exchange's value short of its last trades.
func TestReconcileWaitsForTheExchangeToClose(t *testing.T) {
	rc := newReconciling()
	x := rc.r.ex.(*exchange)
	x.open = map[int64]bool{rc.m: true}
	x.asked = make(chan int64, 1000)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- rc.r.Run(ctx, rc.c) }()
	defer func() { cancel(); <-done }()
	ours := rc.exMinute
	ours.Trades = 4
	rc.r.Publish([]kline.Update{{Symbol: "A", Interval: rc.one, Kline: withClosed(ours)}})
	<-x.asked
	<-x.asked // asked again: the first answer was not taken
	select {
	case iv := <-rc.c.ch:
		t.Fatalf("a kline the exchange has open was taken (%s)", iv)
	default:
	}
	x.mu.Lock()
	x.open, x.asked = nil, nil
	x.mu.Unlock()
	if iv := wait(t, rc.c.ch); iv != "1m" {
		t.Fatalf("correction of %s, want 1m", iv)
	}
}
