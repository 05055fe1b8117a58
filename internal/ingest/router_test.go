package ingest

import (
	"context"
	"log/slog"
	"runtime"
	"slices"
	"sync"
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

func tr(id int64) kline.Trade { return kline.Trade{ID: id, FirstID: id, LastID: id, Time: id * 1000} }

func startRouter(t *testing.T, h *history) (*Router, chan []kline.Trade, context.Context) {
	sink := chanSink{make(chan []kline.Trade, 100)}
	r := NewRouter(sink, h, RouterConfig{GapWait: time.Millisecond, HoldMax: time.Hour, Log: slog.New(slog.DiscardHandler)})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return r, sink.ch, ctx
}

// collect reads forwarded trades until it has n ids.
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

func TestRouterOrdersDedupesAndFills(t *testing.T) {
	h := &history{}
	for id := int64(100); id < 120; id++ {
		h.trades = append(h.trades, tr(id))
	}
	r, out, ctx := startRouter(t, h)
	// Delivered before the start: held until then.
	r.Deliver(ctx, 1, "X", tr(103), time.Now())
	if err := r.Start(ctx, "X", 0, []kline.Trade{tr(100), tr(101)}); err != nil {
		t.Fatal(err)
	}
	// 102 never arrives on the stream: filled from history. 103 repeats;
	// 105 comes twice from two connections; 104 comes late.
	r.Deliver(ctx, 1, "X", tr(103), time.Now())
	r.Deliver(ctx, 2, "X", tr(105), time.Now())
	r.Deliver(ctx, 1, "X", tr(105), time.Now())
	r.Deliver(ctx, 1, "X", tr(104), time.Now())
	r.Deliver(ctx, 1, "X", tr(106), time.Now())
	ids := collect(t, out, 7)
	for i, id := range ids[:7] {
		if id != int64(100+i) {
			t.Fatalf("forwarded %v, want 100…106 in order", ids)
		}
	}
	if r.Stats().Duplicates.Load() < 2 {
		t.Errorf("duplicates = %d", r.Stats().Duplicates.Load())
	}
}

func TestRouterHoldsClockAcrossLoss(t *testing.T) {
	h := &history{}
	for id := int64(1); id <= 10; id++ {
		h.trades = append(h.trades, tr(id))
	}
	r, out, ctx := startRouter(t, h)
	r.Start(ctx, "X", 0, []kline.Trade{tr(1), tr(2)})
	collect(t, out, 2)
	r.Lost(ctx, 1, []string{"X"})
	if hold, ok := r.Holds()["X"]; !ok || hold != 2000 {
		t.Fatalf("hold = %d, %v; want the last trade's time while the connection is down", hold, ok)
	}
	r.Reconnected(ctx, 1, []string{"X"})
	ids := collect(t, out, 8) // 3…10 from REST
	if ids[0] != 3 || ids[7] != 10 {
		t.Fatalf("fill after reconnect: %v", ids)
	}
	deadline := time.After(10 * time.Second)
	for {
		if _, ok := r.Holds()["X"]; !ok {
			break
		}
		select {
		case <-deadline:
			t.Fatal("clock still held after the fill caught up")
		case <-time.After(time.Millisecond):
		}
	}
}

// trf is aggregate trade id with trade ids f…l.
func trf(id, f, l int64) kline.Trade {
	return kline.Trade{ID: id, FirstID: f, LastID: l, Time: id * 1000}
}

type resyncs struct{ ch chan string }

func (r resyncs) Resync(_ context.Context, symbol string, _ int64) error {
	r.ch <- symbol
	return nil
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
			rs := resyncs{make(chan string, 1)}
			r, out, ctx := startRouter(t, &history{})
			r.ResyncWith(rs)
			for _, tr := range c.buffered {
				r.Deliver(ctx, 1, "X", tr, time.Now())
			}
			ok, err := r.StartAfter(ctx, "X", 20)
			if err != nil || ok != c.started {
				t.Fatalf("StartAfter = %v, %v; want %v", ok, err, c.started)
			}
			for _, tr := range c.later {
				r.Deliver(ctx, 1, "X", tr, time.Now())
			}
			if c.resync {
				select {
				case <-rs.ch:
				case <-time.After(10 * time.Second):
					t.Fatal("no resync")
				}
				return
			}
			if got := collect(t, out, len(c.want)); len(c.want) > 0 && !slices.Equal(got, c.want) {
				t.Fatalf("forwarded %v, want %v", got, c.want)
			}
		})
	}
}

// TestRouterStartsAtATime: a symbol seeded from a minute without trades
// starts at its first trade at or after that minute.
func TestRouterStartsAtATime(t *testing.T) {
	r, out, ctx := startRouter(t, &history{})
	r.Deliver(ctx, 1, "X", tr(4), time.Now()) // 4000 ms: in the seed's closed klines
	r.Deliver(ctx, 1, "X", tr(5), time.Now())
	if err := r.StartAt(ctx, "X", 5000); err != nil {
		t.Fatal(err)
	}
	r.Deliver(ctx, 1, "X", tr(6), time.Now())
	if got := collect(t, out, 2); !slices.Equal(got, []int64{5, 6}) {
		t.Fatalf("forwarded %v, want [5 6]", got)
	}
}

// TestRouterAnchorsOnAContinuedSnapshot: Anchor answers with a snapshot
// only once the buffered trades reach back to the trade after its last.
func TestRouterAnchorsOnAContinuedSnapshot(t *testing.T) {
	r, _, ctx := startRouter(t, &history{})
	r.Deliver(ctx, 1, "X", trf(9, 30, 30), time.Now())
	r.Snapshot(ctx, 1, "X", kline.Kline{OpenTime: 60_000, Trades: 5, FirstTradeID: 16, LastTradeID: 20})
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if _, err := r.Anchor(short, "X"); err == nil {
		t.Fatal("a snapshot the buffer does not continue was handed out")
	}
	r.Snapshot(ctx, 1, "X", kline.Kline{OpenTime: 60_000, Trades: 15, FirstTradeID: 16, LastTradeID: 30})
	k, err := r.Anchor(ctx, "X")
	if err != nil || k.LastTradeID != 30 {
		t.Fatalf("Anchor = %+v, %v; want the snapshot ending at 30", k, err)
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
	r, out, ctx := startRouter(t, h)
	if err := r.Resume(ctx, "QUIET", 105, time.Now()); err != nil {
		t.Fatal(err)
	}
	if _, held := r.Holds()["QUIET"]; !held {
		t.Fatal("a resumed symbol is not held while the trades since are read")
	}
	if ids := collect(t, out, 5); !slices.Equal(ids, []int64{105, 106, 107, 108, 109}) {
		t.Fatalf("forwarded %v, want 105…109 from REST", ids)
	}
	for { // the fill's result is handled after the trades it forwards
		if _, held := r.Holds()["QUIET"]; !held {
			break
		}
		if err := r.Remove(ctx, "NONE"); err != nil { // a round trip through the router
			t.Fatal(err)
		}
	}

	calls := h.calls
	r.Deliver(ctx, 1, "BUSY", tr(205), time.Now())
	if err := r.Resume(ctx, "BUSY", 205, time.Now()); err != nil {
		t.Fatal(err)
	}
	r.Deliver(ctx, 1, "BUSY", tr(206), time.Now())
	if ids := collect(t, out, 2); !slices.Equal(ids, []int64{205, 206}) {
		t.Fatalf("forwarded %v, want 205, 206", ids)
	}
	if _, held := r.Holds()["BUSY"]; held || h.calls != calls {
		t.Fatalf("resumed where the stream went on: held %v, %d REST calls", held, h.calls-calls)
	}
}

// TestRouterStandby: a standby symbol keeps its last one to two minutes of
// trades and holds nothing back; resumed at a checkpoint inside them it
// goes on from the buffer without REST, and resumed right after its last
// trade it knows nothing is missing.
func TestRouterStandby(t *testing.T) {
	h := &history{}
	r, out, ctx := startRouter(t, h)
	if err := r.Standby(ctx, "X"); err != nil {
		t.Fatal(err)
	}
	if err := r.Standby(ctx, "Y"); err != nil {
		t.Fatal(err)
	}
	if err := r.Start(ctx, "Z", 1, nil); err != nil {
		t.Fatal(err)
	}
	r.Deliver(ctx, 1, "Y", tr(7), time.Now())
	for id := int64(1); id <= 200; id++ { // a trade a second
		r.Deliver(ctx, 1, "X", tr(id), time.Now())
	}
	// Deliveries are taken in order: once Z's is forwarded, X's are in.
	r.Deliver(ctx, 1, "Z", tr(1), time.Now())
	if ids := collect(t, out, 1); ids[0] != 1 {
		t.Fatalf("forwarded %v", ids)
	}
	// Trimmed at 122 s (to 62…122) and 183 s (to 123…183): 123…200 kept.
	if n := r.Stats().Buffered.Load(); n != 79 {
		t.Fatalf("%d trades buffered, want 79: X's 123…200 and Y's one", n)
	}
	if _, held := r.Holds()["X"]; held {
		t.Fatal("a standby symbol holds the clock")
	}
	if err := r.Resume(ctx, "X", 190, time.Now()); err != nil {
		t.Fatal(err)
	}
	if ids := collect(t, out, 11); ids[0] != 190 || ids[10] != 200 {
		t.Fatalf("forwarded %v, want 190…200 from the standby buffer", ids)
	}
	if err := r.Resume(ctx, "Y", 8, time.Now()); err != nil {
		t.Fatal(err)
	}
	if _, held := r.Holds()["Y"]; held || h.calls != 0 {
		t.Fatalf("resumed after the standby's own last trade: held %v, %d REST calls", held, h.calls)
	}
	// A standby since before the checkpoint that saw no trade: nothing
	// to read; one that became a standby after it: REST is asked.
	if err := r.Standby(ctx, "Q"); err != nil {
		t.Fatal(err)
	}
	if err := r.Resume(ctx, "Q", 50, time.Now().Add(2*time.Second)); err != nil {
		t.Fatal(err)
	}
	if _, held := r.Holds()["Q"]; held {
		t.Fatal("a quiet standby since before the checkpoint is held")
	}
	if err := r.Standby(ctx, "Q2"); err != nil {
		t.Fatal(err)
	}
	if ok, err := r.ResumeQuiet(ctx, "Q2", time.Now().Add(2*time.Second)); !ok || err != nil {
		t.Fatalf("a quiet standby since before a checkpoint without an id: %v %v", ok, err)
	}
	after := kline.Trade{ID: 77, FirstID: 77, LastID: 77, Time: time.Now().Add(3 * time.Second).UnixMilli()}
	r.Deliver(ctx, 1, "Q2", after, time.Now())
	if ids := collect(t, out, 1); ids[0] != 77 {
		t.Fatalf("forwarded %v, want the first trade after the checkpoint", ids)
	}
	if ok, err := r.ResumeQuiet(ctx, "NEVER", time.Now()); ok || err != nil {
		t.Fatalf("a symbol never stood by for vouched for: %v %v", ok, err)
	}
	if err := r.Standby(ctx, "R"); err != nil {
		t.Fatal(err)
	}
	if err := r.Resume(ctx, "R", 50, time.Now().Add(-time.Minute)); err != nil {
		t.Fatal(err)
	}
	if _, held := r.Holds()["R"]; !held {
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
	r, out, ctx := startRouter(t, h)
	if err := r.Standby(ctx, "X"); err != nil {
		t.Fatal(err)
	}
	for id := int64(200); id <= 300; id++ {
		r.Deliver(ctx, 1, "X", tr(id), time.Now())
	}
	for r.Stats().Buffered.Load() < 61 {
		runtime.Gosched()
	}
	if err := r.Resume(ctx, "X", 150, time.Now()); err != nil {
		t.Fatal(err)
	}
	ids := collect(t, out, 151)
	for i, id := range ids {
		if id != int64(150+i) {
			t.Fatalf("forwarded %v, want 150…300", ids)
		}
	}
	r.Deliver(ctx, 1, "X", tr(301), time.Now())
	if ids := collect(t, out, 1); ids[0] != 301 {
		t.Fatalf("then %v", ids)
	}
}
