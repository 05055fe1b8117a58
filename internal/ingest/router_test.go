package ingest

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/klagg/klagg/internal/kline"
)

type chanSink struct{ ch chan []kline.Trade }

func (s chanSink) Trades(_ context.Context, _ string, ts []kline.Trade, _ time.Time) error {
	s.ch <- ts
	return nil
}

// history is the exchange's record, served by id like REST aggTrades.
type history struct {
	mu     sync.Mutex
	trades []kline.Trade
	calls  int
}

func (h *history) AggTrades(_ context.Context, _ string, fromID, _ int64, limit int) ([]kline.Trade, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.calls++
	var out []kline.Trade
	for _, t := range h.trades {
		if t.ID >= fromID && len(out) < limit {
			out = append(out, t)
		}
	}
	return out, nil
}

func (h *history) Calls() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.calls
}

func tr(id int64) kline.Trade { return kline.Trade{ID: id, FirstID: id, LastID: id, Time: id * 1000} }

// trf is aggregate trade id with trade ids f…l.
func trf(id, f, l int64) kline.Trade {
	return kline.Trade{ID: id, FirstID: f, LastID: l, Time: id * 1000}
}

// clock is a hand-driven clock.
type clock struct{ ns atomic.Int64 }

func (c *clock) Now() time.Time          { return time.Unix(0, c.ns.Load()) }
func (c *clock) Advance(d time.Duration) { c.ns.Add(int64(d)) }

// repairs is a Resyncer that records each repair and starts the symbol
// again at the id start gives, as History does.
type repairs struct {
	r     *Router
	ch    chan Repair
	start map[string]int64
}

func (rp *repairs) Resync(ctx context.Context, symbol string, since int64) error {
	rp.ch <- Repair{symbol, since}
	if next, ok := rp.start[symbol]; ok {
		return rp.r.Start(ctx, symbol, next, nil)
	}
	return nil
}

// rig is a running router on a hand-driven clock: time passes only when a
// test says so, and the router looks at gaps only when it ticks.
type rig struct {
	*Router
	ctx     context.Context
	out     chan []kline.Trade
	clock   *clock
	ticks   chan time.Time
	repairs *repairs
}

const testGapWait = 300 * time.Millisecond

func startRouter(t *testing.T, h *history) *rig { return startRouterHolding(t, h, time.Hour) }

// startRouterHolding starts a router whose holds are released after
// holdMax.
func startRouterHolding(t *testing.T, h *history, holdMax time.Duration) *rig {
	sink := chanSink{make(chan []kline.Trade, 100)}
	c := &clock{}
	c.ns.Store(int64(5 * time.Minute)) // the test trades are at 1 s…300 s
	ticks := make(chan time.Time)
	r := NewRouter(sink, h, RouterConfig{GapWait: testGapWait, HoldMax: holdMax, Clock: c.Now, Now: c.Now, Ticks: ticks,
		Log: slog.New(slog.DiscardHandler)})
	rp := &repairs{r: r, ch: make(chan Repair, 10), start: map[string]int64{}}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { r.Run(ctx) })
	wg.Go(func() { r.RunRepairs(ctx, rp) })
	t.Cleanup(func() { cancel(); wg.Wait() })
	return &rig{Router: r, ctx: ctx, out: sink.ch, clock: c, ticks: ticks, repairs: rp}
}

// sync returns once the router has taken everything delivered before it.
func (g *rig) sync(t *testing.T) {
	t.Helper()
	if err := g.Remove(g.ctx, "\x00none"); err != nil {
		t.Fatal(err)
	}
}

// tick lets d pass and has the router look at its gaps.
func (g *rig) tick(t *testing.T, d time.Duration) {
	t.Helper()
	g.sync(t)
	g.clock.Advance(d)
	g.ticks <- g.clock.Now()
	g.sync(t)
}

func (g *rig) deliver(symbol string, ts ...kline.Trade) {
	for _, t := range ts {
		g.Deliver(g.ctx, 1, symbol, t, g.clock.Now())
	}
}

func (g *rig) held(t *testing.T, symbol string) (int64, bool) {
	t.Helper()
	g.sync(t)
	h, ok := g.Holds()[symbol]
	return h, ok
}

// collect reads forwarded trades until it has n ids. The deadline is a
// failsafe for a broken router, not a wait for it.
func collect(t *testing.T, ch chan []kline.Trade, n int) []int64 {
	t.Helper()
	var ids []int64
	timeout := time.After(10 * time.Second)
	for len(ids) < n {
		select {
		case ts := <-ch:
			for _, x := range ts {
				ids = append(ids, x.ID)
			}
		case <-timeout:
			t.Fatalf("got %v, want %d trades", ids, n)
		}
	}
	return ids
}

func (g *rig) repaired(t *testing.T) Repair {
	t.Helper()
	select {
	case rp := <-g.repairs.ch:
		return rp
	case <-time.After(10 * time.Second):
		t.Fatal("no repair from klines")
		return Repair{}
	}
}

func TestRouterOrdersDedupesAndFills(t *testing.T) {
	h := &history{}
	for id := int64(100); id < 120; id++ {
		h.trades = append(h.trades, tr(id))
	}
	g := startRouter(t, h)
	// Delivered before the start: held until then.
	g.deliver("X", tr(103))
	if err := g.Start(g.ctx, "X", 0, []kline.Trade{tr(100), tr(101)}); err != nil {
		t.Fatal(err)
	}
	// 102 never arrives on the stream: filled from history. 103 repeats;
	// 105 comes twice from two connections; 104 comes late.
	g.deliver("X", tr(103))
	g.Deliver(g.ctx, 2, "X", tr(105), g.clock.Now())
	g.deliver("X", tr(105), tr(104), tr(106))
	if ids := collect(t, g.out, 2); !slices.Equal(ids, []int64{100, 101}) {
		t.Fatalf("forwarded %v before the gap was filled", ids)
	}
	g.tick(t, testGapWait/2)
	if h.Calls() != 0 {
		t.Fatal("REST asked before the gap stood for GapWait")
	}
	g.tick(t, testGapWait/2)
	ids := collect(t, g.out, 5)
	if !slices.Equal(ids[:5], []int64{102, 103, 104, 105, 106}) {
		t.Fatalf("forwarded %v, want 102…106 in order", ids)
	}
	if g.Stats().Duplicates.Load() < 2 {
		t.Errorf("duplicates = %d", g.Stats().Duplicates.Load())
	}
	var m strings.Builder
	g.WritePrometheus(&m)
	for _, want := range []string{"klagg_gap_fills_total 1\n", fmt.Sprintf("klagg_trades_filled_total %d\n", g.Stats().Filled.Load())} {
		if !strings.Contains(m.String(), want) {
			t.Errorf("the router's metrics lack %q:\n%s", want, m.String())
		}
	}
}

// TestRouterRepairsALostConnection: while its connection is down a symbol
// holds its klines at its last trade and waits; once it is back, the trades
// it may have missed, of unknown number, are repaired from klines.
func TestRouterRepairsALostConnection(t *testing.T) {
	g := startRouter(t, &history{})
	g.Start(g.ctx, "X", 0, []kline.Trade{tr(1), tr(2)})
	collect(t, g.out, 2)
	g.Lost(g.ctx, 1, []string{"X"})
	if hold, ok := g.held(t, "X"); !ok || hold != 2000 {
		t.Fatalf("hold = %d, %v; want the last trade's time while the connection is down", hold, ok)
	}
	g.tick(t, time.Second)
	select {
	case rp := <-g.repairs.ch:
		t.Fatalf("repair %v while the connection is down", rp)
	default:
	}
	g.repairs.start["X"] = 11
	g.Reconnected(g.ctx, 1, []string{"X"})
	g.tick(t, 0)
	if rp := g.repaired(t); rp != (Repair{"X", 2000}) {
		t.Fatalf("repair %+v, want X from its last trade", rp)
	}
	g.deliver("X", tr(11))
	if ids := collect(t, g.out, 1); ids[0] != 11 {
		t.Fatalf("after the repair: %v", ids)
	}
	for { // the repair's result follows the Start it made
		if _, ok := g.held(t, "X"); !ok {
			break
		}
	}
	if n := g.Stats().Resyncs.Load(); n != 1 {
		t.Fatalf("%d repairs counted", n)
	}
}

// TestRouterReleasesAHold: a symbol held past HoldMax is released, and
// said so with the time before which its klines are complete, until its
// repair.
func TestRouterReleasesAHold(t *testing.T) {
	g := startRouterHolding(t, &history{}, 5*time.Second)
	g.Start(g.ctx, "X", 0, []kline.Trade{tr(1), tr(2)})
	collect(t, g.out, 2)
	g.Lost(g.ctx, 1, []string{"X"})
	if _, released := g.Released()["X"]; released {
		t.Fatal("released at once")
	}
	g.tick(t, 6*time.Second)
	if _, held := g.Holds()["X"]; held {
		t.Fatal("still held past HoldMax")
	}
	if since, ok := g.Released()["X"]; !ok || since != 2000 {
		t.Fatalf("released = %d, %v; want complete before the last trade's time", since, ok)
	}
	g.repairs.start["X"] = 11
	g.Reconnected(g.ctx, 1, []string{"X"})
	g.tick(t, 0)
	if rp := g.repaired(t); rp != (Repair{"X", 2000}) {
		t.Fatalf("repair %+v", rp)
	}
	g.deliver("X", tr(11))
	collect(t, g.out, 1)
	g.sync(t)
	if _, released := g.Released()["X"]; released {
		t.Fatal("still released after the repair")
	}
}

// TestRouterStartsAfterASnapshot is the table of how a symbol seeded from a
// kline event (its last trade id L = 20) starts: from the trades buffered
// before the start, or from the first that arrives after it.
func TestRouterStartsAfterASnapshot(t *testing.T) {
	cases := []struct {
		name     string
		buffered []kline.Trade // delivered before StartAfter
		started  bool          // StartAfter's answer
		later    []kline.Trade // delivered after it
		want     []int64       // aggregate ids forwarded
		resync   bool          // the start cannot be continued: repair from klines
	}{
		{"the buffer holds the trade ending at L", []kline.Trade{trf(5, 19, 20), trf(6, 21, 22)}, true, []kline.Trade{trf(7, 23, 23)}, []int64{6, 7}, false},
		{"the buffer begins right after L", []kline.Trade{trf(6, 21, 22)}, true, []kline.Trade{trf(7, 23, 23)}, []int64{6, 7}, false},
		{"a trade straddles L", []kline.Trade{trf(5, 19, 22)}, false, nil, nil, false},
		{"nothing buffered, the next follows L", nil, true, []kline.Trade{trf(6, 21, 22), trf(7, 23, 23)}, []int64{6, 7}, false},
		{"nothing buffered, a repeat first", nil, true, []kline.Trade{trf(5, 19, 20), trf(6, 21, 22)}, []int64{6}, false},
		{"nothing buffered, trades went unseen", nil, true, []kline.Trade{trf(9, 30, 30)}, nil, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			g := startRouter(t, &history{})
			g.deliver("X", c.buffered...)
			ok, err := g.StartAfter(g.ctx, "X", 20)
			if err != nil || ok != c.started {
				t.Fatalf("StartAfter = %v, %v; want %v", ok, err, c.started)
			}
			g.deliver("X", c.later...)
			if c.resync {
				g.tick(t, 0)
				if rp := g.repaired(t); rp != (Repair{"X", 9000}) {
					t.Fatalf("repair %+v, want X from its first trade", rp)
				}
				return
			}
			if got := collect(t, g.out, len(c.want)); len(c.want) > 0 && !slices.Equal(got, c.want) {
				t.Fatalf("forwarded %v, want %v", got, c.want)
			}
		})
	}
}

// TestRouterStartsAtATime: a symbol seeded from a minute without trades
// starts at its first trade at or after that minute.
func TestRouterStartsAtATime(t *testing.T) {
	g := startRouter(t, &history{})
	g.deliver("X", tr(4), tr(5)) // 4000 ms: in the seed's closed klines
	if err := g.StartAt(g.ctx, "X", 5000); err != nil {
		t.Fatal(err)
	}
	g.deliver("X", tr(6))
	if got := collect(t, g.out, 2); !slices.Equal(got, []int64{5, 6}) {
		t.Fatalf("forwarded %v, want [5 6]", got)
	}
}

// TestRouterAnchorsOnAContinuedSnapshot: Anchor answers with a snapshot
// only once the buffered trades reach back to the trade after its last.
func TestRouterAnchorsOnAContinuedSnapshot(t *testing.T) {
	g := startRouter(t, &history{})
	g.deliver("X", trf(9, 30, 30))
	g.Snapshot(g.ctx, 1, "X", kline.Kline{OpenTime: 60_000, Trades: 5, FirstTradeID: 16, LastTradeID: 20})
	g.sync(t)
	type answer struct {
		k   kline.Kline
		err error
	}
	ch := make(chan answer, 1)
	go func() {
		k, err := g.Anchor(g.ctx, "X")
		ch <- answer{k, err}
	}()
	// The snapshot ending at 20 is not continued by trade 30; the next,
	// ending at 30, is: Anchor answers with that one.
	g.Snapshot(g.ctx, 1, "X", kline.Kline{OpenTime: 60_000, Trades: 15, FirstTradeID: 16, LastTradeID: 30})
	if a := <-ch; a.err != nil || a.k.LastTradeID != 30 {
		t.Fatalf("Anchor = %+v, %v; want the snapshot ending at 30", a.k, a.err)
	}
}

// TestRouterResumes: a sequence resumed at an id (another node's
// checkpoint) with a quiet stream reads the trades since from REST at once
// and holds the symbol until it has; resumed where the stream goes on, it
// asks REST nothing.
func TestRouterResumes(t *testing.T) {
	h := &history{}
	for id := int64(100); id < 110; id++ {
		h.trades = append(h.trades, tr(id))
	}
	g := startRouter(t, h)
	if err := g.Resume(g.ctx, "QUIET", 105, g.clock.Now()); err != nil {
		t.Fatal(err)
	}
	if _, held := g.Holds()["QUIET"]; !held {
		t.Fatal("a resumed symbol is not held while the trades since are read")
	}
	g.tick(t, 0)
	if ids := collect(t, g.out, 5); !slices.Equal(ids, []int64{105, 106, 107, 108, 109}) {
		t.Fatalf("forwarded %v, want 105…109 from REST", ids)
	}
	for { // the fill's result is handled after the trades it forwards
		if _, held := g.held(t, "QUIET"); !held {
			break
		}
	}

	calls := h.Calls()
	g.deliver("BUSY", tr(205))
	if err := g.Resume(g.ctx, "BUSY", 205, g.clock.Now()); err != nil {
		t.Fatal(err)
	}
	g.deliver("BUSY", tr(206))
	if ids := collect(t, g.out, 2); !slices.Equal(ids, []int64{205, 206}) {
		t.Fatalf("forwarded %v, want 205, 206", ids)
	}
	g.tick(t, time.Second)
	if _, held := g.held(t, "BUSY"); held || h.Calls() != calls {
		t.Fatalf("resumed where the stream went on: held %v, %d REST calls", held, h.Calls()-calls)
	}
}

// TestRouterStandby: a standby symbol keeps its last one to two minutes of
// trades and holds nothing back; resumed at a checkpoint inside them it
// goes on from the buffer without REST, and resumed right after its last
// trade it knows nothing is missing.
func TestRouterStandby(t *testing.T) {
	h := &history{}
	g := startRouter(t, h)
	for _, s := range []string{"X", "Y"} {
		if err := g.Standby(g.ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	g.deliver("Y", tr(7))
	for id := int64(1); id <= 200; id++ { // a trade a second
		g.deliver("X", tr(id))
	}
	g.sync(t)
	// Trimmed at 122 s (to 62…122) and 183 s (to 123…183): 123…200 kept.
	if n := g.Stats().Buffered.Load(); n != 79 {
		t.Fatalf("%d trades buffered, want 79: X's 123…200 and Y's one", n)
	}
	if _, held := g.held(t, "X"); held {
		t.Fatal("a standby symbol holds the clock")
	}
	if err := g.Resume(g.ctx, "X", 190, g.clock.Now()); err != nil {
		t.Fatal(err)
	}
	if ids := collect(t, g.out, 11); ids[0] != 190 || ids[10] != 200 {
		t.Fatalf("forwarded %v, want 190…200 from the standby buffer", ids)
	}
	if err := g.Resume(g.ctx, "Y", 8, g.clock.Now()); err != nil {
		t.Fatal(err)
	}
	if _, held := g.Holds()["Y"]; held || h.Calls() != 0 {
		t.Fatalf("resumed after the standby's own last trade: held %v, %d REST calls", held, h.Calls())
	}
	// A standby since before the checkpoint that saw no trade: nothing
	// to read; one that became a standby after it: REST is asked.
	if err := g.Standby(g.ctx, "Q"); err != nil {
		t.Fatal(err)
	}
	if err := g.Resume(g.ctx, "Q", 50, g.clock.Now().Add(2*time.Second)); err != nil {
		t.Fatal(err)
	}
	if _, held := g.Holds()["Q"]; held {
		t.Fatal("a quiet standby since before the checkpoint is held")
	}
	if err := g.Standby(g.ctx, "Q2"); err != nil {
		t.Fatal(err)
	}
	if ok, err := g.ResumeQuiet(g.ctx, "Q2", g.clock.Now().Add(2*time.Second)); !ok || err != nil {
		t.Fatalf("a quiet standby since before a checkpoint without an id: %v %v", ok, err)
	}
	after := kline.Trade{ID: 77, FirstID: 77, LastID: 77, Time: g.clock.Now().Add(3 * time.Second).UnixMilli()}
	g.deliver("Q2", after)
	if ids := collect(t, g.out, 1); ids[0] != 77 {
		t.Fatalf("forwarded %v, want the first trade after the checkpoint", ids)
	}
	if ok, err := g.ResumeQuiet(g.ctx, "NEVER", g.clock.Now()); ok || err != nil {
		t.Fatalf("a symbol never stood by for vouched for: %v %v", ok, err)
	}
	if err := g.Standby(g.ctx, "R"); err != nil {
		t.Fatal(err)
	}
	if err := g.Resume(g.ctx, "R", 50, g.clock.Now().Add(-time.Minute)); err != nil {
		t.Fatal(err)
	}
	if _, held := g.Holds()["R"]; !held {
		t.Fatal("a standby younger than the checkpoint, with no trade, is not held while REST is asked")
	}
}

// TestRouterStandbyShort: resumed at a checkpoint older than the standby's
// buffer, the trades between come from REST, then the buffer's.
func TestRouterStandbyShort(t *testing.T) {
	h := &history{}
	for id := int64(100); id <= 300; id++ {
		h.trades = append(h.trades, tr(id))
	}
	g := startRouter(t, h)
	if err := g.Standby(g.ctx, "X"); err != nil {
		t.Fatal(err)
	}
	for id := int64(200); id <= 300; id++ {
		g.deliver("X", tr(id))
	}
	g.sync(t)
	if err := g.Resume(g.ctx, "X", 150, g.clock.Now()); err != nil {
		t.Fatal(err)
	}
	g.tick(t, 0)
	ids := collect(t, g.out, 151)
	for i, id := range ids {
		if id != int64(150+i) {
			t.Fatalf("forwarded %v, want 150…300", ids)
		}
	}
	g.deliver("X", tr(301))
	if ids := collect(t, g.out, 1); ids[0] != 301 {
		t.Fatalf("then %v", ids)
	}
}
