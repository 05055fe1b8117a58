// Package head owns klagg's newest klines: what the store does not hold
// yet, in one place. Per series it keeps the newest kline (open, or the
// one that closed last) and every closed kline the store has not been
// confirmed to hold: on a single node the writer confirms what it
// committed; on a cluster's serve node the feed hands on each closed kline
// with its sequence on the kline stream, and the sinks' acknowledgement
// floor confirms it. It also keeps each symbol's last trade, for prices.
//
// The Head is an engine sink and a consumer of the engine's trades, and
// answers the store's query, so that one querier (package query) merges it
// with the store as Prometheus's fanout querier merges its head block with
// the blocks on disk.
package head

import (
	"cmp"
	"context"
	"io"
	"slices"
	"sync"

	"github.com/VictoriaMetrics/metrics"

	"github.com/klagg/klagg/internal/kline"
	"github.com/klagg/klagg/internal/store"
)

// MaxPending bounds the closed klines kept unconfirmed while nothing
// confirms any (the sinks of a cluster stopped, the disk full): an hour of
// the whole market's closed klines (2,000 symbols, 13 intervals) is about
// 160,000. Beyond it the oldest go, and readers lack them until the store
// has them.
const MaxPending = 500_000

// Config sets up a Head.
type Config struct {
	// Confirmed says that something tells the head what the store holds
	// (Stored or StoredThrough). Without it the head keeps each series'
	// newest kline and newest closed kline only, as nothing would ever
	// release the others.
	Confirmed bool
}

// Head keeps the newest klines of every series and the last trade of every
// symbol. It is safe for concurrent use.
type Head struct {
	confirmed bool

	mu       sync.RWMutex
	series   map[seriesKey]*series
	bySeries []*series // by kline.Update.Series, a cache of series
	pending  int       // entries pending over all series

	tmu  sync.RWMutex
	last map[string]*lastTrade // by symbol
}

type seriesKey struct{ symbol, interval string }

// series is one symbol and interval's newest kline and, before it, the
// closed klines the store has not confirmed, by open time. The newest is
// kept inline: changing it is the engine's hot path, one write where a
// slice would be another pointer to chase.
type series struct {
	newest  entry
	has     bool
	pending []entry
}

// entry is one kline version, and the sequence of the kline stream it was
// read at (0 if it came from this node's engine).
type entry struct {
	k   kline.Kline
	seq uint64
}

// New returns an empty head.
func New(cfg Config) *Head {
	return &Head{confirmed: cfg.Confirmed, series: map[seriesKey]*series{}, last: map[string]*lastTrade{}}
}

// Publish implements the engine's Sink: the node's own klines, or those a
// cluster's feed hands on.
func (h *Head) Publish(us []kline.Update) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for i := range us {
		h.put(h.seriesOf(&us[i]), &us[i].Kline, 0)
	}
	h.bound()
}

// Streamed takes closed klines read from a cluster's kline stream, at the
// given sequences: kept until StoredThrough passes them.
func (h *Head) Streamed(us []kline.Update, seqs []uint64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for i := range us {
		h.put(h.seriesOf(&us[i]), &us[i].Kline, seqs[i])
	}
	h.bound()
}

// Stored tells the head that the store now holds these versions (the
// writer, after each commit): they are dropped unless newer ones came.
func (h *Head) Stored(us []kline.Update) {
	if !h.confirmed {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for i := range us {
		u := &us[i]
		if !u.Closed {
			continue
		}
		s := h.series[seriesKey{u.Symbol, u.Interval.String()}]
		if s == nil {
			continue
		}
		if j, ok := s.find(u.OpenTime); ok && s.pending[j].k == u.Kline {
			s.pending = slices.Delete(s.pending, j, j+1)
			h.pending--
		}
	}
}

// StoredThrough tells the head that the store holds every kline of the
// kline stream up to sequence floor (the cluster's sinks' acknowledgement
// floor).
func (h *Head) StoredThrough(floor uint64) {
	if !h.confirmed {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, s := range h.series {
		n := len(s.pending)
		s.pending = slices.DeleteFunc(s.pending, func(e entry) bool { return e.seq != 0 && e.seq <= floor })
		h.pending -= n - len(s.pending)
	}
}

// Klines answers q from what the head holds: the newest kline and the
// closed ones the store may lack, of one series, oldest first.
func (h *Head) Klines(_ context.Context, q store.Query) ([]kline.Kline, error) {
	h.mu.RLock()
	defer h.mu.RUnlock()
	s := h.series[seriesKey{q.Symbol, q.Interval.String()}]
	if s == nil || !s.has {
		return nil, nil
	}
	in := func(t int64) bool { return (q.Start <= 0 || t >= q.Start) && (q.End <= 0 || t <= q.End) }
	lo, hi := 0, len(s.pending)
	if q.Start > 0 {
		lo, _ = s.find(q.Start)
	}
	if q.End > 0 {
		hi, _ = s.find(q.End + 1)
	}
	out := make([]kline.Kline, 0, max(hi-lo, 0)+1)
	for _, e := range s.pending[lo:max(lo, hi)] {
		out = append(out, e.k)
	}
	if in(s.newest.k.OpenTime) {
		out = append(out, s.newest.k)
	}
	if q.Limit > 0 && len(out) > q.Limit {
		if q.FromEnd {
			out = out[len(out)-q.Limit:]
		} else {
			out = out[:q.Limit]
		}
	}
	return out, nil
}

// Newest returns the newest kline of symbol and iv, open or closed.
func (h *Head) Newest(symbol string, iv kline.Interval) (kline.Kline, bool) {
	h.mu.RLock()
	defer h.mu.RUnlock()
	s := h.series[seriesKey{symbol, iv.String()}]
	if s == nil || !s.has {
		return kline.Kline{}, false
	}
	return s.newest.k, true
}

// Pending is the number of closed klines kept for the store.
func (h *Head) Pending() int {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return h.pending
}

// seriesOf returns u's series, made if new; called with mu held.
func (h *Head) seriesOf(u *kline.Update) *series {
	if int(u.Series) < len(h.bySeries) {
		// The engine never gives a series id to another symbol or interval.
		if s := h.bySeries[u.Series]; s != nil {
			return s
		}
	}
	key := seriesKey{u.Symbol, u.Interval.String()}
	s := h.series[key]
	if s == nil {
		s = &series{}
		h.series[key] = s
	}
	if u.Series != 0 && u.Series < 1<<24 {
		if n := int(u.Series) + 1; n > len(h.bySeries) {
			h.bySeries = append(h.bySeries, make([]*series, n-len(h.bySeries))...)
		}
		h.bySeries[u.Series] = s
	}
	return s
}

// find returns the index of the first pending entry opening at or after
// t, and whether it opens at t.
func (s *series) find(t int64) (int, bool) {
	return slices.BinarySearchFunc(s.pending, t, func(e entry, t int64) int { return cmp.Compare(e.k.OpenTime, t) })
}

// put takes k, read at seq, as its open time's version; called with mu
// held. The same version keeps the higher sequence, so that a kline both
// the engine and the stream handed on is released by the stream's floor.
func (h *Head) put(s *series, k *kline.Kline, seq uint64) {
	switch {
	case s.has && s.newest.k.OpenTime == k.OpenTime: // the common case: the newest changed
		if seq == 0 && s.newest.seq == 0 {
			s.newest.k = *k
		} else {
			s.newest = merged(s.newest, k, seq)
		}
		return
	case !s.has || s.newest.k.OpenTime < k.OpenTime:
		old, had := s.newest, s.has
		s.newest, s.has = entry{*k, seq}, true
		// An open kline that is no longer the newest is stale: its closed
		// version comes, or is in the store.
		if had && old.k.Closed {
			if !h.confirmed { // only the newest closed one
				h.pending -= len(s.pending)
				s.pending = s.pending[:0]
			}
			s.pending = append(s.pending, old)
			h.pending++
		}
		return
	}
	i, ok := s.find(k.OpenTime)
	switch {
	case ok:
		s.pending[i] = merged(s.pending[i], k, seq)
	case h.confirmed && k.Closed:
		// An older kline than the newest (a repair, or the stream's
		// backlog): kept until the store has it.
		s.pending = slices.Insert(s.pending, i, entry{*k, seq})
		h.pending++
	}
}

func merged(e entry, k *kline.Kline, seq uint64) entry {
	if e.k == *k {
		return entry{*k, max(e.seq, seq)}
	}
	return entry{*k, seq}
}

// bound drops the oldest half of every series' pending klines once more
// than MaxPending are kept; called with mu held.
func (h *Head) bound() {
	if h.pending <= MaxPending {
		return
	}
	for _, s := range h.series {
		drop := (len(s.pending) + 1) / 2
		s.pending = slices.Delete(s.pending, 0, drop)
		h.pending -= drop
	}
}

// WritePrometheus writes how many closed klines the head holds for want of
// the store's confirmation.
func (h *Head) WritePrometheus(w io.Writer) {
	metrics.WriteGaugeUint64(w, "klagg_head_pending_klines", uint64(h.Pending()))
}
