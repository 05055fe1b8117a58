package ingest

import (
	"context"
	"log/slog"
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
