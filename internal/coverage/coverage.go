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
//
// In a cluster the store is shared: each node records what it holds, and
// reads what the others recorded again every few seconds. A symbol another
// node builds is held, by the cluster's store and kline stream, from the
// minute its owners have built it live since, as their checkpoints say
// (Remote), up to now while its owner lives and has resumed it, else up to
// the minute the owner's last checkpoint stood at.
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
	Spans(ctx context.Context) ([]store.Span, error)
}

// FlushEvery is how often what the store holds of the live spans is
// recorded (and, in a cluster, what the other nodes recorded is read).
const FlushEvery = 10 * time.Second

// Config sets up a Set.
type Config struct {
	Store     Store
	Intervals []kline.Interval // built live
	// Depth is how many klines per interval history should reach back:
	// history is whole when each series built live holds them.
	Depth int
	Now   func() time.Time // exchange time [time.Now]
	// Shared says other nodes record spans in the store too (a cluster):
	// they are read again every FlushEvery.
	Shared bool
	// Alive, in a cluster, tells whether the node named lives; nil: none
	// does but this one.
	Alive func(node string) bool
	// Unchecked, in a cluster, is how long before a checkpoint its owner
	// may have closed 1m klines it has not checked against the exchange's
	// yet: while no live owner has resumed the symbol, those are held no
	// more than what comes after them.
	Unchecked time.Duration
	Log       *slog.Logger
}

// Set is the spans held of every series; it is safe for concurrent use.
type Set struct {
	cfg Config

	mu     sync.RWMutex
	series map[key]*series
	ended  map[string]bool   // symbols that stopped trading for good
	since  map[string]int64  // symbols built live here: the minute they are built from
	remote map[string]remote // symbols other nodes build, by their checkpoints
	// awaited are, per series another node builds, the slots whose closed
	// klines this node has not read yet though it read a later open one
	// (Awaiting).
	awaited map[key][2]int64
	// ended live spans, to record at the next flush
	unrecorded []store.Span
}

// remote is a symbol another node builds live, as its newest checkpoint
// says.
type remote struct {
	owner string // "": no node builds it on from this checkpoint yet (released, or taken and not resumed)
	m0    int64  // the minute its owners have built it live since
	open  int64  // the minute the owner stood at: every kline closed before it is held
	at    int64  // when the checkpoint was written (the owner's clock), unix ms
	rel   int64  // trade time since which its klines lack trades until a repair (0: none)
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

// New returns an empty Set.
func New(cfg Config) *Set {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Set{cfg: cfg, series: map[key]*series{}, ended: map[string]bool{}, since: map[string]int64{}, remote: map[string]remote{}, awaited: map[key][2]int64{}}
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
	spans, err := c.cfg.Store.CompactSpans(ctx)
	if err != nil {
		return fmt.Errorf("read which klines the store holds: %w", err)
	}
	c.add(spans)
	return nil
}

// Refresh reads the spans the store keeps again, for what other nodes
// sharing it recorded since.
func (c *Set) Refresh(ctx context.Context) error {
	spans, err := c.cfg.Store.Spans(ctx)
	if err != nil {
		return fmt.Errorf("read which klines the store holds: %w", err)
	}
	c.add(spans)
	return nil
}

// add merges spans, sorted by series or not, into what is held.
func (c *Set) add(spans []store.Span) {
	by := map[key][]store.Span{}
	for _, p := range spans {
		k := key{p.Symbol, p.Interval}
		by[k] = append(by[k], p)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for k, ps := range by {
		s := c.get(k)
		s.spans = store.MergeSpans(append(ps, s.spans...))
	}
}

// Live says symbol is built live from the minute opening at m0 on (0: from
// its first trade, which it has not had): each interval's kline opening at
// iv.Open(m0) is exact, and every later one. A span built live before ends
// where the store's confirmed holdings of it end.
func (c *Set) Live(symbol string, m0 int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.ended, symbol)
	c.since[symbol] = m0
	for _, iv := range c.cfg.Intervals {
		s := c.get(key{symbol, iv})
		c.endLive(symbol, iv, s)
		s.live = 0
		s.want = 0
		if m0 > 0 {
			s.live = iv.Open(m0)
			s.want = s.live
			for range c.cfg.Depth {
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
	delete(c.since, symbol)
	for k, s := range c.series {
		if k.symbol == symbol {
			c.endLive(symbol, k.iv, s)
		}
	}
}

// LiveSince returns the minute from which symbol is built live here, as
// Live was told, and whether it is: a cluster's checkpoint carries it to
// the node that takes the symbol over.
func (c *Set) LiveSince(symbol string) (int64, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	m0, ok := c.since[symbol]
	return m0, ok
}

// Building reports whether symbol is built live now: here, or by a live
// node that has resumed it and lacks none of its trades.
func (c *Set) Building(symbol string) bool {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if _, ok := c.since[symbol]; ok {
		return true
	}
	r, ok := c.remote[symbol]
	return ok && r.owner != "" && r.rel == 0 && c.cfg.Alive != nil && c.cfg.Alive(r.owner)
}

// Remote says, from its newest checkpoint, written at at (unix ms), that
// node owner builds symbol live from the minute m0 on (0: from its first
// trade) and stood at the minute open, its klines lacking trades since
// rel (0: none); owner "" says no node builds it on from the checkpoint
// yet: it was released, or taken by a node that has not resumed it. A
// symbol built here is held as Live says, whatever its checkpoints say.
func (c *Set) Remote(symbol, owner string, m0, open, at, rel int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.remote[symbol] = remote{owner: owner, m0: m0, open: open, at: at, rel: rel}
}

// End says symbol stopped trading for good: its live spans reach forever,
// as the exchange adds no kline after them, and so does what is read
// from the exchange up to now.
func (c *Set) End(symbol string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.ended[symbol] = true
	delete(c.since, symbol)
	r, remoted := c.remote[symbol]
	delete(c.remote, symbol)
	for k, s := range c.series {
		from := s.live
		if from < 0 && remoted && c.cfg.Shared {
			from = 0 // its owner records it; until then, the cluster has it
			if r.m0 > 0 {
				from = k.iv.Open(r.m0)
			}
		}
		if k.symbol == symbol && from >= 0 {
			p := store.Span{Symbol: symbol, Interval: k.iv, From: from, To: store.Forever}
			s.spans = merge(s.spans, p)
			if s.live >= 0 {
				c.unrecorded = append(c.unrecorded, p)
			}
			s.live, s.want, s.partial = -1, -1, nil
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
		p := store.Span{Symbol: symbol, Interval: iv, From: s.live, To: to}
		s.spans = merge(s.spans, p)
		if to > s.recorded {
			c.unrecorded = append(c.unrecorded, p)
		}
	}
	s.recorded, s.stored = -1, -1
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
	if err := c.cfg.Store.AddSpans([]store.Span{p}); err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	k := key{p.Symbol, p.Interval}
	s := c.get(k)
	s.spans = merge(s.spans, p)
	if a, ok := c.awaited[k]; ok && p.From <= a[0] && store.After(p) > a[0] {
		// Read through from the exchange meanwhile.
		if a[0] = store.After(p); a[0] > a[1] {
			delete(c.awaited, k)
		} else {
			c.awaited[k] = a
		}
	}
	return nil
}

// Awaiting says this node has read a newer open kline of symbol and iv,
// which another node builds, than the closed ones in [from, to] (none
// when from > to): closed by that node, and not read here yet.
func (c *Set) Awaiting(symbol string, iv kline.Interval, from, to int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if from > to {
		delete(c.awaited, key{symbol, iv})
		return
	}
	c.awaited[key{symbol, iv}] = [2]int64{from, to}
}

// Awaited reports whether a slot in [lo, hi] of symbol and iv, which
// another node builds, is awaited from it (Awaiting): held by the rule
// that the owner holds all up to now, but not here.
func (c *Set) Awaited(symbol string, iv kline.Interval, lo, hi int64) bool {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if _, here := c.since[symbol]; here {
		return false
	}
	a, ok := c.awaited[key{symbol, iv}]
	return ok && a[0] <= hi && a[1] >= lo
}

// Flush records what the store holds of the live spans.
func (c *Set) Flush() error {
	c.mu.Lock()
	add := c.unrecorded
	c.unrecorded = nil
	marks := make([]*series, len(add)) // nil: an ended live span
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
	if err := c.cfg.Store.AddSpans(add); err != nil {
		c.mu.Lock()
		for i, s := range marks {
			if s == nil {
				c.unrecorded = append(c.unrecorded, add[i])
			}
		}
		c.mu.Unlock()
		return fmt.Errorf("record which klines the store holds: %w", err)
	}
	c.mu.Lock()
	for i, s := range marks {
		if s != nil {
			s.recorded = max(s.recorded, add[i].To)
		}
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
				c.cfg.Log.Warn("the spans held were not recorded; klagg reads them again from the exchange when asked", "err", err)
			}
			return nil
		case <-t.C:
			if err := c.Flush(); err != nil {
				c.cfg.Log.Warn("recording the spans held failed; retrying", "err", err)
			}
			if c.cfg.Shared {
				rctx, cancel := context.WithTimeout(ctx, FlushEvery)
				if err := c.Refresh(rctx); err != nil && ctx.Err() == nil {
					c.cfg.Log.Warn("reading what other nodes hold failed; klagg reads what it lacks from the exchange meanwhile", "err", err)
				}
				cancel()
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
	at := lo // the first slot not yet known held
	take := func(p store.Span) {
		if at > hi || store.After(p) <= at {
			return
		}
		if p.From > at {
			out = append(out, store.Span{Symbol: symbol, Interval: iv, From: at, To: min(iv.Prev(p.From), hi)})
		}
		at = store.After(p)
	}
	var spans []store.Span
	s := c.series[key{symbol, iv}]
	if s != nil {
		spans = s.spans
	}
	live, ok := c.liveSpan(symbol, iv, s)
	i := 0
	for ; i < len(spans) && (!ok || spans[i].From < live.From); i++ {
		take(spans[i])
	}
	if ok {
		take(live)
	}
	for ; i < len(spans); i++ {
		take(spans[i])
	}
	if at <= hi {
		out = append(out, store.Span{Symbol: symbol, Interval: iv, From: at, To: hi})
	}
	return out
}

// liveSpan returns the span of symbol and iv built live, here or by
// another node, if there is one.
func (c *Set) liveSpan(symbol string, iv kline.Interval, s *series) (store.Span, bool) {
	if s != nil && s.live >= 0 {
		return store.Span{Symbol: symbol, Interval: iv, From: s.live, To: store.Forever}, true
	}
	r, ok := c.remote[symbol]
	if !ok {
		return store.Span{}, false
	}
	p := store.Span{Symbol: symbol, Interval: iv, To: store.Forever}
	if r.m0 > 0 {
		p.From = iv.Open(r.m0)
	}
	if r.owner == "" || c.cfg.Alive == nil || !c.cfg.Alive(r.owner) {
		// The owner is gone, or has not resumed it: the cluster holds
		// what closed before its last checkpoint (and the kline open
		// then, while it is open), less what its owner may not have
		// checked, and the symbol's next owner rebuilds and checks the
		// rest.
		p.To = iv.Prev(iv.Open(r.open - c.cfg.Unchecked.Milliseconds()))
		if cur := iv.Open(c.cfg.Now().UnixMilli()); cur == iv.Open(r.open) && c.cfg.Unchecked == 0 {
			p.To = cur
		}
	}
	return p, p.From <= p.To
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
	for range c.cfg.Depth {
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
	now := c.cfg.Now()
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
