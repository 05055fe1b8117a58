// Package coverage owns what klagg knows it holds: per symbol and interval,
// the spans of interval slots whose klines it holds exactly (store.Span),
// from live ingest, backfill and reads through to the exchange. A query
// asks it whether an answer is whole; backfill asks it what is missing.
// Spans are kept in the store, so a restart knows them too.
//
// A series built live holds every kline from the slot its seed made
// exact on, the newest in the head until the store has it; what the store
// is known to hold of it is recorded every few seconds and when klagg
// stops, so after a crash the spans claim no more than the store has.
package coverage

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/klagg/klagg/internal/kline"
	"github.com/klagg/klagg/internal/store"
)

// Store keeps the spans.
type Store interface {
	AddSpans(spans []store.Span) error
	CompactSpans(ctx context.Context) ([]store.Span, error)
}

// FlushEvery is how often what the store holds of the live spans is
// recorded.
const FlushEvery = 10 * time.Second

// Set is the spans held of every series; it is safe for concurrent use.
type Set struct {
	st    Store
	ivs   []kline.Interval // built live
	depth int              // klines per interval history should reach back
	now   func() time.Time // exchange time, for the figures
	log   *slog.Logger

	mu     sync.RWMutex
	series map[key]*series
	ended  map[string]bool // symbols that stopped trading for good
}

type key struct {
	symbol string
	iv     kline.Interval
}

// series is what is held of one symbol and interval.
type series struct {
	spans []store.Span // merged, oldest first
	// live is the first slot of the span built live (-1: none): every
	// kline from it on is in the store or the head. stored is the newest
	// closed kline of it the store holds, recorded is the newest recorded
	// in the store's spans (-1: none).
	live, stored, recorded int64
	// partial holds the open times of the closed klines of the live span
	// stored while they lacked trades (kline.Update.Partial) and not yet
	// corrected: the span is confirmed only up to the first of them.
	partial map[int64]bool
	// want is the oldest slot history should reach (-1: none asked).
	want int64
}

// confirmed returns the newest slot of the live span the store holds
// whole, -1 if none.
func (s *series) confirmed(iv kline.Interval) int64 {
	to := s.stored
	for open := range s.partial {
		to = min(to, iv.Prev(open))
	}
	if to < s.live {
		return -1
	}
	return to
}

// New returns an empty Set over st of symbols built live in intervals
// ivs; history is whole when each series built live holds depth klines
// before its live span. now tells exchange time [time.Now].
func New(st Store, ivs []kline.Interval, depth int, now func() time.Time, log *slog.Logger) *Set {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if now == nil {
		now = time.Now
	}
	return &Set{st: st, ivs: ivs, depth: depth, now: now, log: log, series: map[key]*series{}, ended: map[string]bool{}}
}

func (c *Set) get(k key) *series {
	s := c.series[k]
	if s == nil {
		s = &series{live: -1, stored: -1, recorded: -1, want: -1}
		c.series[k] = s
	}
	return s
}

// Load reads the spans the store keeps, merging them there.
func (c *Set) Load(ctx context.Context) error {
	spans, err := c.st.CompactSpans(ctx)
	if err != nil {
		return fmt.Errorf("read which klines the store holds: %w", err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, p := range spans {
		s := c.get(key{p.Symbol, p.Interval})
		s.spans = append(s.spans, p)
	}
	return nil
}

// Live says symbol is built live from the minute opening at m0 on (0: from
// its first trade, which it has not had): each interval's kline opening at
// iv.Open(m0) is exact, and every later one. A span built live before ends
// where the store's confirmed holdings of it end.
func (c *Set) Live(symbol string, m0 int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.ended, symbol)
	for _, iv := range c.ivs {
		s := c.get(key{symbol, iv})
		c.endLive(symbol, iv, s)
		s.live = 0
		s.want = 0
		if m0 > 0 {
			s.live = iv.Open(m0)
			s.want = s.live
			for range c.depth {
				s.want = iv.Prev(s.want)
			}
		}
	}
}

// Stop says symbol is no longer built here (another node builds it, or
// klagg stopped following it): its live spans end where the store's
// confirmed holdings end.
func (c *Set) Stop(symbol string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for k, s := range c.series {
		if k.symbol == symbol {
			c.endLive(symbol, k.iv, s)
		}
	}
}

// End says symbol stopped trading for good: its live spans reach forever,
// as the exchange adds no kline after them, and so does what is read
// from the exchange up to now.
func (c *Set) End(symbol string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.ended[symbol] = true
	for k, s := range c.series {
		if k.symbol == symbol && s.live >= 0 {
			s.spans = merge(s.spans, store.Span{Symbol: symbol, Interval: k.iv, From: s.live, To: store.Forever})
			s.live, s.want = -1, -1
		}
	}
}

// Ended reports whether symbol stopped trading for good.
func (c *Set) Ended(symbol string) bool {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.ended[symbol]
}

// endLive turns s's live span into the span the store holds of it.
func (c *Set) endLive(symbol string, iv kline.Interval, s *series) {
	if to := s.confirmed(iv); s.live >= 0 && to >= 0 {
		s.spans = merge(s.spans, store.Span{Symbol: symbol, Interval: iv, From: s.live, To: to})
	}
	s.live, s.want, s.partial = -1, -1, nil
}

// Stored takes the klines a commit stored (the store's writer calls it):
// the live spans they extend are recorded at the next flush.
func (c *Set) Stored(us []kline.Update) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var last *series
	var lastKey key
	for i := range us {
		u := &us[i]
		if !u.Kline.Closed {
			continue
		}
		if last == nil || lastKey.symbol != u.Symbol || lastKey.iv != u.Interval {
			lastKey = key{u.Symbol, u.Interval}
			last = c.series[lastKey]
		}
		if last == nil || last.live < 0 || u.Kline.OpenTime < last.live {
			continue
		}
		last.stored = max(last.stored, u.Kline.OpenTime)
		switch {
		case u.Partial:
			if last.partial == nil {
				last.partial = map[int64]bool{}
			}
			last.partial[u.Kline.OpenTime] = true
		case last.partial != nil:
			delete(last.partial, u.Kline.OpenTime) // corrected
		}
	}
}

// Add records that every kline of the exchange in p is stored.
func (c *Set) Add(p store.Span) error {
	if err := c.st.AddSpans([]store.Span{p}); err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.get(key{p.Symbol, p.Interval})
	s.spans = merge(s.spans, p)
	return nil
}

// Flush records what the store holds of the live spans.
func (c *Set) Flush() error {
	c.mu.Lock()
	var add []store.Span
	var marks []*series
	for k, s := range c.series {
		if to := s.confirmed(k.iv); s.live >= 0 && to > s.recorded {
			add = append(add, store.Span{Symbol: k.symbol, Interval: k.iv, From: s.live, To: to})
			marks = append(marks, s)
		}
	}
	c.mu.Unlock()
	if len(add) == 0 {
		return nil
	}
	if err := c.st.AddSpans(add); err != nil {
		return fmt.Errorf("record which klines the store holds: %w", err)
	}
	c.mu.Lock()
	for i, s := range marks {
		s.recorded = max(s.recorded, add[i].To)
	}
	c.mu.Unlock()
	return nil
}

// Run records what the store holds of the live spans every FlushEvery, and
// once more when ctx ends (after the store's writer stopped, in klagg's
// stop order). A failed record is retried at the next; it costs nothing
// but a read through after a crash.
func (c *Set) Run(ctx context.Context) error {
	t := time.NewTicker(FlushEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			if err := c.Flush(); err != nil {
				c.log.Warn("the spans held were not recorded; klagg reads them again from the exchange when asked", "err", err)
			}
			return nil
		case <-t.C:
			if err := c.Flush(); err != nil {
				c.log.Warn("recording the spans held failed; retrying", "err", err)
			}
		}
	}
}

// Missing returns the runs of slots in [lo, hi] of symbol and iv that are
// not held, oldest first.
func (c *Set) Missing(symbol string, iv kline.Interval, lo, hi int64) []store.Span {
	c.mu.RLock()
	defer c.mu.RUnlock()
	var out []store.Span
	s := c.series[key{symbol, iv}]
	at := lo // the first slot not yet known held
	if s != nil {
		for _, p := range s.spans {
			if at > hi || (s.live >= 0 && p.From >= s.live) {
				break // the live span holds everything from its start
			}
			if store.After(p) <= at {
				continue
			}
			if p.From > at {
				out = append(out, store.Span{Symbol: symbol, Interval: iv, From: at, To: min(iv.Prev(p.From), hi)})
			}
			at = store.After(p)
		}
		if s.live >= 0 && at <= hi && s.live <= hi {
			if s.live > at {
				out = append(out, store.Span{Symbol: symbol, Interval: iv, From: at, To: iv.Prev(s.live)})
			}
			at = store.Forever
		}
	}
	if at <= hi {
		out = append(out, store.Span{Symbol: symbol, Interval: iv, From: at, To: hi})
	}
	return out
}

// Holds reports whether every slot in [lo, hi] of symbol and iv is held.
func (c *Set) Holds(symbol string, iv kline.Interval, lo, hi int64) bool {
	return lo > hi || len(c.Missing(symbol, iv, lo, hi)) == 0
}

// Wanted returns the runs of slots of symbol and iv before end that
// history should fetch, newest first: from depth slots before end (or
// from the end of what is held, after a longer stop) on.
func (c *Set) Wanted(symbol string, iv kline.Interval, end int64) []store.Span {
	hi := iv.Prev(iv.Open(end))
	lo := iv.Open(end)
	for range c.depth {
		lo = iv.Prev(lo)
	}
	c.mu.RLock()
	if s := c.series[key{symbol, iv}]; s != nil {
		// After a stop longer than the depth, the whole stop: no hole
		// is left between what was held and what is built now.
		for _, p := range slices.Backward(s.spans) {
			if p.From <= hi {
				lo = min(lo, store.After(p))
				break
			}
		}
	}
	c.mu.RUnlock()
	gaps := c.Missing(symbol, iv, lo, hi)
	slices.Reverse(gaps)
	return gaps
}

// Figures sums up what is held, as of exchange time now.
type Figures struct {
	Series  int   `json:"series"`         // built live
	Held    int64 `json:"klines_held"`    // of those series, from the oldest wanted to now
	Missing int64 `json:"klines_missing"` // of those series, wanted and not held
	Gaps    int   `json:"gaps"`           // runs of missing klines
	Whole   bool  `json:"whole"`          // nothing wanted is missing
}

// MissingOrZero returns f's missing klines, 0 for no figures.
func (f *Figures) MissingOrZero() int64 {
	if f == nil {
		return 0
	}
	return f.Missing
}

// Figures returns what is held and missing of the series built live, in
// the depth history should reach.
func (c *Set) Figures() Figures {
	now := c.now()
	c.mu.RLock()
	type want struct {
		k  key
		lo int64
	}
	var ws []want
	for k, s := range c.series {
		if s.live >= 0 && s.want >= 0 {
			ws = append(ws, want{k, s.want})
		}
	}
	c.mu.RUnlock()
	f := Figures{Series: len(ws)}
	for _, w := range ws {
		cur := w.k.iv.Open(now.UnixMilli())
		all := w.k.iv.Slots(w.lo, cur)
		for _, g := range c.Missing(w.k.symbol, w.k.iv, w.lo, cur) {
			f.Gaps++
			f.Missing += w.k.iv.Slots(g.From, g.To)
		}
		f.Held += all
	}
	f.Held -= f.Missing
	f.Whole = f.Missing == 0
	return f
}

// merge adds p to spans, merged and oldest first.
func merge(spans []store.Span, p store.Span) []store.Span {
	return store.MergeSpans(append(spans, p))
}

// WritePrometheus writes what is held and missing in Prometheus's text
// format.
func (c *Set) WritePrometheus(w io.Writer) {
	f := c.Figures()
	metrics.WriteGaugeUint64(w, "klagg_history_series", uint64(f.Series))
	metrics.WriteGaugeUint64(w, "klagg_history_klines_held", uint64(f.Held))
	metrics.WriteGaugeUint64(w, "klagg_history_klines_missing", uint64(f.Missing))
	metrics.WriteGaugeUint64(w, "klagg_history_gaps", uint64(f.Gaps))
	whole := uint64(0)
	if f.Whole {
		whole = 1
	}
	metrics.WriteGaugeUint64(w, "klagg_history_whole", whole)
}
