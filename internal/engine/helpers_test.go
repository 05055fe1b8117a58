package engine

import (
	"context"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/klagg/klagg/internal/kline"
)

// collector is a Sink keeping the newest version of every kline and how
// many times closed versions were published.
type collector struct {
	mu     sync.Mutex
	latest map[kline.Key]kline.Update
}

func newCollector() *collector { return &collector{latest: map[kline.Key]kline.Update{}} }

func (c *collector) Publish(us []kline.Update) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, u := range us {
		c.latest[u.Key()] = u
	}
}

func (c *collector) get(k kline.Key) kline.Update {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.latest[k]
}

// series returns the newest klines of symbol and interval, by open time.
func (c *collector) series(symbol, iv string) []kline.Kline {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []kline.Kline
	for k, u := range c.latest {
		if k.Symbol == symbol && k.Interval == iv {
			out = append(out, u.Kline)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].OpenTime < out[j].OpenTime })
	return out
}

// harness runs an engine and lets a test wait until it has processed
// everything sent so far, without sleeping: Snapshot is answered in order.
type harness struct {
	t      testing.TB
	e      *Engine
	c      *collector
	ctx    context.Context
	cancel context.CancelFunc
	done   chan error
}

func newHarness(t testing.TB, ivs []kline.Interval, grace time.Duration) *harness {
	t.Helper()
	c := newCollector()
	e, err := New(Config{Intervals: ivs, Grace: grace, Sinks: []Sink{c}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	h := &harness{t: t, e: e, c: c, ctx: ctx, cancel: cancel, done: make(chan error, 1)}
	go func() { h.done <- e.Run(ctx) }()
	t.Cleanup(h.stop)
	return h
}

func (h *harness) stop() {
	h.cancel()
	<-h.done
	h.done <- nil // allow stop twice
}

// sync waits until every event sent before it was processed.
func (h *harness) sync() {
	h.t.Helper()
	if _, err := h.e.Snapshot(context.Background(), ""); err != nil {
		h.t.Fatal(err)
	}
}

func (h *harness) add(sym string) {
	h.t.Helper()
	if err := h.e.AddSymbol(context.Background(), sym); err != nil {
		h.t.Fatal(err)
	}
}

func (h *harness) trades(sym string, ts []kline.Trade) {
	h.t.Helper()
	if err := h.e.Trades(context.Background(), sym, ts, time.Time{}); err != nil {
		h.t.Fatal(err)
	}
}

func (h *harness) tick(ms int64) {
	h.t.Helper()
	if err := h.e.Tick(context.Background(), time.UnixMilli(ms), nil, nil); err != nil {
		h.t.Fatal(err)
	}
}
