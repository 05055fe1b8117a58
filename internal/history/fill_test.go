package history

import (
	"context"
	"path/filepath"
	"reflect"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/klagg/klagg/internal/coverage"
	"github.com/klagg/klagg/internal/kline"
	"github.com/klagg/klagg/internal/store"
	"github.com/klagg/klagg/internal/store/sqlite"
)

const min1 = int64(60_000)

// minutes is an exchange of one symbol's 1m klines, one a minute from
// listing on, with Binance's klines rules: from startTime when given,
// else the newest up to endTime.
type minutes struct {
	listing int64
	gate    chan struct{} // when set, each request says it came, then waits for a value
	mu      sync.Mutex
	asked   [][2]int64 // start, end of each request
}

func (x *minutes) Klines(_ context.Context, _ string, iv kline.Interval, start, end int64, limit int) ([]kline.Kline, error) {
	if x.gate != nil {
		x.gate <- struct{}{}
		<-x.gate
	}
	x.mu.Lock()
	x.asked = append(x.asked, [2]int64{start, end})
	x.mu.Unlock()
	var out []kline.Kline
	if start > 0 {
		for t := max(start, x.listing); t <= end && len(out) < limit; t += min1 {
			out = append(out, kline.Kline{OpenTime: t, CloseTime: t + min1 - 1, Trades: 1})
		}
		return out, nil
	}
	for t := iv.Open(end); t >= x.listing && len(out) < limit; t -= min1 {
		out = append(out, kline.Kline{OpenTime: t, CloseTime: t + min1 - 1, Trades: 1})
	}
	slices.Reverse(out)
	return out, nil
}

func (x *minutes) AggTrades(context.Context, string, int64, int64, int) ([]kline.Trade, error) {
	return nil, nil
}

// written collects what history writes.
type written struct {
	mu    sync.Mutex
	opens []int64
}

func (w *written) Write(ctx context.Context, us []kline.Update, stored func()) error {
	w.WriteNow(ctx, us)
	if stored != nil {
		stored()
	}
	return nil
}

func (w *written) WriteNow(_ context.Context, us []kline.Update) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, u := range us {
		if !u.Kline.Closed {
			panic("an open kline written as history")
		}
		w.opens = append(w.opens, u.Kline.OpenTime)
	}
	return nil
}

func newFilling(t *testing.T, x *minutes, depth int, now int64) (*History, *coverage.Set, *written) {
	t.Helper()
	st, err := sqlite.Open(filepath.Join(t.TempDir(), "k.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	ivs := []kline.Interval{kline.OneMinute()}
	clock := func() time.Time { return time.UnixMilli(now) }
	held := coverage.New(coverage.Config{Store: st, Intervals: ivs, Depth: depth, Now: clock})
	w := &written{}
	h := New(x, x, nil, nil, nil, held, w, ivs, depth, clock, nil)
	return h, held, w
}

// TestBackfillNewestFirst: backfill fetches what is not held before the
// live span, newest first, and records it held, the exchange's own gap
// before the listing included.
func TestBackfillNewestFirst(t *testing.T) {
	x := &minutes{listing: 800 * min1}
	h, held, _ := newFilling(t, x, 2700, 3000*min1)
	held.Live("X", 3000*min1)
	if err := held.Add(store.Span{Symbol: "X", Interval: kline.OneMinute(), From: 1500 * min1, To: 1999 * min1}); err != nil {
		t.Fatal(err)
	}
	if err := h.Backfill(context.Background(), "X", 3000*min1, nil); err != nil {
		t.Fatal(err)
	}
	want := [][2]int64{{2000 * min1, 3000*min1 - 1}, {500 * min1, 1500*min1 - 1}, {300 * min1, 500*min1 - 1}}
	if !reflect.DeepEqual(x.asked, want) {
		t.Errorf("asked %v, want %v", x.asked, want)
	}
	if miss := held.Missing("X", kline.OneMinute(), 0, 4000*min1); !reflect.DeepEqual(miss, []store.Span{{Symbol: "X", Interval: kline.OneMinute(), From: 0, To: 299 * min1}}) {
		t.Errorf("missing after the backfill: %v", miss)
	}
	if f := held.Figures(); !f.Whole {
		t.Errorf("history not whole after the backfill: %+v", f)
	}
}

// TestFill: a read through stores what the exchange has of the run asked,
// never the kline open now, and records the run held; from the listing
// when the exchange has fewer klines than asked. Clients asking for the
// same run at once wait for one request.
func TestFill(t *testing.T) {
	x := &minutes{listing: 100 * min1, gate: make(chan struct{})}
	now := 200*min1 + 30_000
	h, held, w := newFilling(t, x, 1000, now)
	iv := kline.OneMinute()
	ctx := context.Background()
	var wg sync.WaitGroup
	fill := func() {
		if err := h.Fill(ctx, "X", iv, 150*min1, 250*min1, 10); err != nil {
			t.Error(err)
		}
	}
	wg.Go(fill)
	<-x.gate // the first request is on its way: two more clients ask
	wg.Go(fill)
	wg.Go(fill)
	x.gate <- struct{}{}
	wg.Wait() // they shared it, or came after it and found the run held
	if len(x.asked) != 1 {
		t.Fatalf("%d requests for one run, want 1", len(x.asked))
	}
	if w.opens[len(w.opens)-1] != 199*min1 || len(w.opens) != 50 {
		t.Errorf("stored %d klines up to %d, want 50 up to the last closed (199)", len(w.opens), w.opens[len(w.opens)-1]/min1)
	}
	if !held.Holds("X", iv, 150*min1, 199*min1) || held.Holds("X", iv, 150*min1, 200*min1) {
		t.Errorf("held after the fill: missing %v", held.Missing("X", iv, 0, 300*min1))
	}
	// The newest 500 up to 120: the exchange has 21, so everything
	// before them is held too.
	x.gate = nil
	if err := h.Fill(ctx, "X", iv, 0, 120*min1, 500); err != nil {
		t.Fatal(err)
	}
	if !held.Holds("X", iv, 0, 120*min1) {
		t.Errorf("held after a fill from the listing: missing %v", held.Missing("X", iv, 0, 300*min1))
	}
}

// TestFillSettles: a kline closed less than Settle ago (exchange time) is
// read through only once it has been closed that long: the exchange may
// still be adding its last trades.
func TestFillSettles(t *testing.T) {
	x := &minutes{listing: 100 * min1}
	st, err := sqlite.Open(filepath.Join(t.TempDir(), "k.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ivs := []kline.Interval{kline.OneMinute()}
	// Half a second after 199 closed; each reading of the clock moves it
	// on by 400 ms, as the exchange's time runs while the fill waits.
	var now atomic.Int64
	now.Store(200*min1 + 500)
	var asked atomic.Int64
	clock := func() time.Time { return time.UnixMilli(now.Add(400)) }
	held := coverage.New(coverage.Config{Store: st, Intervals: ivs, Depth: 1000, Now: clock})
	w := &written{}
	h := New(askedAt{x, &now, &asked}, x, nil, nil, nil, held, w, ivs, 1000, clock, nil)
	h.Settle = 2 * time.Second
	if err := h.Fill(context.Background(), "X", kline.OneMinute(), 150*min1, 199*min1, 50); err != nil {
		t.Fatal(err)
	}
	if at := asked.Load(); at < 200*min1+2000 {
		t.Errorf("the exchange was asked %d ms after 199 closed; want it settled 2 s", at-200*min1)
	}
	if len(w.opens) != 50 || w.opens[49] != 199*min1 {
		t.Errorf("stored %d klines, want the 50 up to 199", len(w.opens))
	}
}

// askedAt notes the clock when klines are asked for.
type askedAt struct {
	*minutes
	now, at *atomic.Int64
}

func (a askedAt) Klines(ctx context.Context, symbol string, iv kline.Interval, start, end int64, limit int) ([]kline.Kline, error) {
	a.at.Store(a.now.Load())
	return a.minutes.Klines(ctx, symbol, iv, start, end, limit)
}
