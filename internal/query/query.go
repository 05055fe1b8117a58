// Package query owns klagg's one read model of klines: a Querier answers
// Binance's klines query from the store and the head (the klines the store
// does not hold yet), and on a cluster's serve node from the kline stream
// while the store cannot be read, merged by interval slot. An answer is
// whole or refused with ErrIncomplete; the callers do no kline arithmetic
// of their own.
package query

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/klagg/klagg/internal/binance"
	"github.com/klagg/klagg/internal/kline"
	"github.com/klagg/klagg/internal/store"
)

// Source answers the store's query: the store itself, and the head.
type Source interface {
	Klines(ctx context.Context, q store.Query) ([]kline.Kline, error)
}

// Replayer reads a series' closed klines back from where a cluster keeps
// them for a while (its kline stream), from a time on: the last resort
// while the store cannot be read.
type Replayer interface {
	Replay(ctx context.Context, dst []kline.Kline, symbol string, iv kline.Interval, from time.Time) ([]kline.Kline, error)
}

// Held knows which klines klagg holds: coverage.
type Held interface {
	Missing(symbol string, iv kline.Interval, lo, hi int64) []store.Span
	Ended(symbol string) bool // stopped trading: the exchange has all there will be
	// Awaited tells whether closed klines in [lo, hi] that another node
	// built are on their way here.
	Awaited(symbol string, iv kline.Interval, lo, hi int64) bool
}

// AwaitWait is how long an answer waits for closed klines on their way
// from the node that builds them: at a minute's turn its new open kline
// may come a moment before the kline it closed.
const AwaitWait = 250 * time.Millisecond

// Filler reads klines klagg does not hold from the exchange, stores them
// and records them held: history.
type Filler interface {
	Fill(ctx context.Context, symbol string, iv kline.Interval, lo, hi int64, want int) error
}

// Repairs tells which symbols' klines lack trades until a repair: for
// each, the trade time before which they are complete (the router).
type Repairs interface {
	Released() map[string]int64
}

// Config sets up a Querier.
type Config struct {
	Store  Source
	Head   Source
	Replay Replayer // a cluster's kline stream; nil on a single node
	// Held, when set, says which answers are whole; what it lacks is read
	// through Fill, and an answer that stays short is refused. Without it
	// every answer is taken as whole.
	Held Held
	Fill Filler
	// Repairs, when set, refuses the klines that lack trades until their
	// symbol's repair: what klagg holds of them is not the exchange's.
	Repairs Repairs
	Now     func() time.Time // exchange time [time.Now]
	Log     *slog.Logger
}

// ErrIncomplete is returned for a query the Querier cannot answer whole.
var ErrIncomplete = errors.New("klines unavailable")

// Querier answers klines queries; it is safe for concurrent use.
type Querier struct {
	cfg Config
	// versions is the store's ClosedVersion when it has one; without it
	// every query reads the store.
	versions versioned
	tails    tails
}

// New returns a Querier over cfg's sources.
func New(cfg Config) *Querier {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	q := &Querier{cfg: cfg}
	q.versions, _ = cfg.Store.(versioned)
	return q
}

// extent is what an answer holds: n klines, the first and last opening at
// first and last.
type extent struct {
	n           int
	first, last int64
}

func extentOf(ks []kline.Kline) extent {
	if len(ks) == 0 {
		return extent{}
	}
	return extent{len(ks), ks[0].OpenTime, ks[len(ks)-1].OpenTime}
}

// claimed returns the slots [lo, hi] an answer to q with extent e says
// are all there is, as of the current slot cur: from the first asked (or
// the first there is, when fewer than the limit came) to the last asked
// (or the last given, when the limit was reached).
func claimed(q binance.KlinesQuery, e extent, cur int64) (lo, hi int64) {
	iv := q.Interval
	end := cur
	if q.End >= 0 {
		end = min(iv.Open(q.End), cur)
	}
	if q.Start >= 0 {
		lo = iv.Open(q.Start)
		if lo < q.Start {
			lo = iv.Next(lo)
		}
		if e.n >= q.Limit {
			return lo, e.last
		}
		return lo, end
	}
	if e.n >= q.Limit {
		return e.first, end
	}
	return 0, end
}

// AppendKlines appends the answer to q as Binance's JSON array of kline
// arrays, with prec's decimals. What it does not hold of the answer it
// reads through to the exchange first. An answer it cannot give whole (the
// exchange unreachable or its weight spent, the store unreadable and the
// head short) is an error wrapping ErrIncomplete, with the reason.
func (r *Querier) AppendKlines(ctx context.Context, b []byte, q binance.KlinesQuery, prec kline.Precision) ([]byte, error) {
	b0 := len(b)
	for attempt := 0; ; attempt++ {
		out, e, err := r.appendOnce(ctx, b[:b0], q, prec)
		if err != nil || r.cfg.Held == nil || q.End == 0 {
			return out, err
		}
		cur := q.Interval.Open(r.cfg.Now().UnixMilli())
		lo, hi := claimed(q, e, cur)
		if lo > hi {
			return out, nil
		}
		if r.cfg.Repairs != nil {
			// A kline closing at or after since may lack trades.
			if since, ok := r.cfg.Repairs.Released()[q.Symbol]; ok && hi >= q.Interval.Open(since) {
				return nil, fmt.Errorf("%w: the klines of %s since %s lack trades the exchange has not delivered yet; klagg is repairing them from the exchange",
					ErrIncomplete, q.Symbol, timeText(q.Interval.Open(since)))
			}
		}
		// Awaited slots matter only where the answer lacks them: the
		// store may have them though the feed has not read them (its
		// link to the stream down and back).
		hole := e.n > 0 && q.Interval.Slots(e.first, e.last) != int64(e.n)
		if hole && r.cfg.Held.Awaited(q.Symbol, q.Interval, lo, hi) {
			if attempt == 2 || !r.await(ctx, q, lo, hi) {
				return nil, fmt.Errorf("%w: klines of %s %s closed by the node that builds them have not reached this node (it may have stopped; another takes the symbol over)",
					ErrIncomplete, q.Symbol, q.Interval)
			}
			continue // read again: they came
		}
		gaps := r.cfg.Held.Missing(q.Symbol, q.Interval, lo, hi)
		if len(gaps) == 0 {
			return out, nil
		}
		// The kline open now is held only while it is built: a symbol
		// starting (or not followed) waits for its seed, and the
		// exchange's weight is not spent on the rest of an answer that
		// ends now and must wait for it anyway.
		if gaps[len(gaps)-1].To >= cur && !r.cfg.Held.Ended(q.Symbol) && (q.Start < 0 || (len(gaps) == 1 && gaps[0].From >= cur)) {
			return nil, fmt.Errorf("%w: klagg is not building the klines of %s %s yet (starting, taking it over from a cluster node that stopped, or a symbol it does not follow live)", ErrIncomplete, q.Symbol, q.Interval)
		}
		if attempt == 2 || r.cfg.Fill == nil {
			return nil, fmt.Errorf("%w: klagg does not hold the klines of %s %s from %s to %s yet", ErrIncomplete,
				q.Symbol, q.Interval, timeText(gaps[0].From), timeText(gaps[len(gaps)-1].To))
		}
		r.cfg.Log.Debug("reading klines not held through to the exchange", "symbol", q.Symbol, "interval", q.Interval,
			"from", timeText(gaps[0].From), "to", timeText(gaps[len(gaps)-1].To), "runs", len(gaps), "attempt", attempt+1)
		for _, g := range gaps {
			if err := r.cfg.Fill.Fill(ctx, q.Symbol, q.Interval, g.From, g.To, q.Limit); err != nil {
				return nil, fmt.Errorf("%w: klagg does not hold the klines of %s %s from %s to %s, and reading them from the exchange failed: %w",
					ErrIncomplete, q.Symbol, q.Interval, timeText(g.From), timeText(g.To), err)
			}
		}
	}
}

// await waits up to AwaitWait for the awaited klines of q in [lo, hi],
// and reports whether they came.
func (r *Querier) await(ctx context.Context, q binance.KlinesQuery, lo, hi int64) bool {
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	deadline := time.After(AwaitWait)
	for r.cfg.Held.Awaited(q.Symbol, q.Interval, lo, hi) {
		select {
		case <-ctx.Done():
			return false
		case <-deadline:
			return false
		case <-t.C:
		}
	}
	return true
}

func timeText(ms int64) string {
	if ms == 0 {
		return "the listing"
	}
	return time.UnixMilli(ms).UTC().Format("2006-01-02 15:04")
}

// appendOnce appends the answer to q from what klagg holds, and says what
// it holds.
func (r *Querier) appendOnce(ctx context.Context, b []byte, q binance.KlinesQuery, prec kline.Precision) ([]byte, extent, error) {
	// The head is read first: a kline it drops once the store has it is
	// then in the store when the store is read.
	head, err := r.cfg.Head.Klines(ctx, store.Query{Symbol: q.Symbol, Interval: q.Interval})
	if err != nil {
		return nil, extent{}, fmt.Errorf("read the newest klines: %w", err)
	}
	if q.Start < 0 && q.End < 0 && r.versions != nil {
		out, e, err := r.appendLatest(ctx, b, q, prec, head)
		if err == nil {
			return out, e, nil
		}
		if !errors.Is(err, errStale) {
			return r.withoutStore(ctx, b, q, prec, head, err)
		}
	}
	ks, err := r.read(ctx, q, head)
	if err != nil {
		return r.withoutStore(ctx, b, q, prec, head, err)
	}
	return appendArray(b, ks, prec), extentOf(ks), nil
}

// withoutStore answers q from head alone, or with a cluster's kline
// stream under it, where they hold every kline of the answer, after the
// store failed with cause. While the store cannot be read (a cluster's
// PostgreSQL down), every closed kline it may lack is in the head, each in
// its newest version, and the stream holds every version the cluster
// published in its retention; so an answer whose every interval slot is
// there is the one the store would give, and any other is refused rather
// than given with a hole.
func (r *Querier) withoutStore(ctx context.Context, b []byte, q binance.KlinesQuery, prec kline.Precision, head []kline.Kline, cause error) ([]byte, extent, error) {
	refuse := fmt.Errorf("%w: reading the store failed: %w", ErrIncomplete, cause)
	if len(head) == 0 || q.End == 0 {
		return nil, extent{}, refuse
	}
	newest := head[len(head)-1].OpenTime
	if sel, ok := answer(head, q, newest); ok {
		return appendArray(b, sel, prec), extentOf(sel), nil
	}
	if r.cfg.Replay == nil {
		return nil, extent{}, refuse
	}
	// The first slot the answer may hold: a kline is published when it
	// closes, after its open time.
	iv := q.Interval
	from := iv.Open(max(q.Start, 0))
	if q.Start < 0 {
		from = newest
		if q.End >= 0 {
			from = min(from, iv.Open(q.End))
		}
		for range q.Limit - 1 {
			from = iv.Prev(from)
		}
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	old, err := r.cfg.Replay.Replay(ctx, nil, q.Symbol, iv, time.UnixMilli(from))
	if err != nil {
		return nil, extent{}, fmt.Errorf("%w; reading them back from the cluster's stream too: %w", refuse, err)
	}
	sel, ok := answer(merge(old, head), q, newest)
	if !ok {
		return nil, extent{}, refuse
	}
	r.cfg.Log.Debug("answered without the store", "symbol", q.Symbol, "interval", iv, "err", cause)
	return appendArray(b, sel, prec), extentOf(sel), nil
}

// answer selects the answer to q from ks, klines by open time, the newest
// of which opens at newest, and reports whether ks held all of it.
func answer(ks []kline.Kline, q binance.KlinesQuery, newest int64) ([]kline.Kline, bool) {
	iv := q.Interval
	if q.End >= 0 { // klines opening after End are not asked for
		ks = ks[:openingFrom(ks, q.End+1)]
	}
	if len(ks) == 0 {
		return nil, false
	}
	// The answer holds the first Limit klines from Start, or the last Limit
	// up to End (or the newest); the store may have the rest.
	var sel []kline.Kline
	if q.Start >= 0 {
		first := iv.Open(q.Start)
		if first < q.Start {
			first = iv.Next(first)
		}
		i := openingFrom(ks, first)
		if i == len(ks) || ks[i].OpenTime != first {
			return nil, false
		}
		sel = ks[i:min(len(ks), i+q.Limit)]
	} else {
		if len(ks) < q.Limit {
			return nil, false
		}
		sel = ks[len(ks)-q.Limit:]
	}
	for i := 1; i < len(sel); i++ {
		if sel[i].OpenTime != iv.Next(sel[i-1].OpenTime) {
			return nil, false
		}
	}
	// Nothing is missing after the last: the limit reached from Start, the
	// last slot before End, or the live kline.
	last := sel[len(sel)-1].OpenTime
	if !((q.Start >= 0 && len(sel) == q.Limit) || (q.End >= 0 && iv.Next(last) > q.End) || last == newest) {
		return nil, false
	}
	return sel, true
}

// read answers q from the store with head, read before it, laid over.
func (r *Querier) read(ctx context.Context, q binance.KlinesQuery, head []kline.Kline) ([]kline.Kline, error) {
	if q.End == 0 {
		return nil, nil // the klines opening at or before the epoch: none
	}
	sq := store.Query{Symbol: q.Symbol, Interval: q.Interval, Limit: q.Limit}
	switch {
	case q.Start >= 0:
		sq.Start = max(q.Start, 1)
		if q.End >= 0 {
			sq.End = q.End
		}
	case q.End >= 0:
		sq.End, sq.FromEnd = q.End, true
	default:
		sq.FromEnd = true
	}
	ks, err := r.cfg.Store.Klines(ctx, sq)
	if err != nil {
		return nil, err
	}
	lo, hi := 0, len(head)
	if q.Start >= 0 {
		lo = openingFrom(head, q.Start)
	}
	if q.End >= 0 {
		hi = openingFrom(head, q.End+1)
	}
	if lo < hi {
		ks = merge(ks, head[lo:hi])
	}
	if len(ks) > q.Limit {
		if sq.FromEnd {
			ks = ks[len(ks)-q.Limit:]
		} else {
			ks = ks[:q.Limit]
		}
	}
	return ks, nil
}

// merge lays head, klines by open time, over stored, klines by open time:
// of two versions of a kline, a closed one wins over an open one (a head
// behind the store: a symbol another node builds now), else the head's.
func merge(stored, head []kline.Kline) []kline.Kline {
	out := make([]kline.Kline, 0, len(stored)+len(head))
	i, j := 0, 0
	for i < len(stored) || j < len(head) {
		switch {
		case j == len(head) || (i < len(stored) && stored[i].OpenTime < head[j].OpenTime):
			out = append(out, stored[i])
			i++
		case i == len(stored) || head[j].OpenTime < stored[i].OpenTime:
			out = append(out, head[j])
			j++
		default:
			if stored[i].Closed && !head[j].Closed {
				out = append(out, stored[i])
			} else {
				out = append(out, head[j])
			}
			i, j = i+1, j+1
		}
	}
	return out
}

// openingFrom returns the index of the first of ks (by open time) opening
// at or after t.
func openingFrom(ks []kline.Kline, t int64) int {
	i, _ := slices.BinarySearchFunc(ks, t, func(k kline.Kline, t int64) int { return cmp.Compare(k.OpenTime, t) })
	return i
}

// appendArray appends ks as Binance's JSON array of kline arrays.
func appendArray(b []byte, ks []kline.Kline, prec kline.Precision) []byte {
	b = append(b, '[')
	for i := range ks {
		if i > 0 {
			b = append(b, ',')
		}
		b = binance.AppendKlineArray(b, &ks[i], prec)
	}
	return append(b, ']')
}
