// Package history owns catching up with the exchange: seeding the engine's
// open klines so the first live kline of every interval is complete,
// backfilling closed klines from REST into the store, and reconciling each
// closed 1m kline with the exchange's own.
package history

import (
	"context"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"golang.org/x/sync/singleflight"

	"github.com/klagg/klagg/internal/binance"
	"github.com/klagg/klagg/internal/kline"
	"github.com/klagg/klagg/internal/store"
)

// Exchange is the REST API history reads from.
type Exchange interface {
	Klines(ctx context.Context, symbol string, iv kline.Interval, start, end int64, limit int) ([]kline.Kline, error)
	AggTrades(ctx context.Context, symbol string, fromID, start int64, limit int) ([]kline.Trade, error)
}

// Engine takes seeds and corrections.
type Engine interface {
	Seed(ctx context.Context, symbol string, iv kline.Interval, k kline.Kline, through int64) error
	Correct(ctx context.Context, symbol string, iv kline.Interval, k kline.Kline) error
}

// Router anchors a symbol's live trade sequence.
type Router interface {
	// Anchor waits for a 1m kline event of symbol that its buffered trades
	// continue, and returns it.
	Anchor(ctx context.Context, symbol string) (kline.Kline, error)
	// StartAfter starts symbol after trade id last; false when the trades
	// buffered do not continue it exactly.
	StartAfter(ctx context.Context, symbol string, last int64) (bool, error)
	// StartAt starts symbol at its first trade at or after time at (ms).
	StartAt(ctx context.Context, symbol string, at int64) error
	// Start starts symbol at aggregate id next, after trades.
	Start(ctx context.Context, symbol string, next int64, trades []kline.Trade) error
}

// Streams tells when the exchange carries a symbol's streams: ingest.
type Streams interface {
	Streaming(ctx context.Context, symbol string) error
}

// Held is what klagg knows it holds: coverage.
type Held interface {
	// Wanted returns the runs of slots before end that history should
	// fetch, newest first.
	Wanted(symbol string, iv kline.Interval, end int64) []store.Span
	// Add records that the klines of a span are stored.
	Add(p store.Span) error
	// Missing returns the runs of slots in [lo, hi] not held.
	Missing(symbol string, iv kline.Interval, lo, hi int64) []store.Span
	// Ended reports whether symbol stopped trading for good.
	Ended(symbol string) bool
}

// Writer takes backfilled klines: the store's one writer, which retries
// and reports failed writes.
type Writer interface {
	// Write queues updates; stored is called once the store holds them.
	Write(ctx context.Context, updates []kline.Update, stored func()) error
	// WriteNow writes updates at once and returns once they are stored.
	WriteNow(ctx context.Context, updates []kline.Update) error
}

// History catches symbols up. Its methods may be called from several
// goroutines; REST weight is shared through the Exchange.
type History struct {
	ex       Exchange // seeds and repairs: live klines wait on these
	bulk     Exchange // backfill: history can wait
	engine   Engine
	router   Router
	streams  Streams
	held     Held
	writer   Writer
	ivs      []kline.Interval
	limit    int
	now      func() time.Time // exchange time
	log      *slog.Logger
	fills    singleflight.Group
	lastFill atomic.Int64 // when a read through last began or ended, Unix ns
	// Settle is how long after its close a kline is the exchange's final
	// one to read through (the engine's grace): the exchange's clock may
	// be behind the one klagg measured, and its last trades late.
	Settle    time.Duration
	Backfills atomic.Int64 // klines written by backfill
	Requests  atomic.Int64
	Weight    atomic.Int64 // REST weight spent
	// Seeds counts seeds by how the current minute was had: a kline
	// event ("snapshot"), REST klines of a minute without trades
	// ("quiet"), or REST aggTrades ("trades").
	Seeds struct{ Snapshot, Quiet, Trades atomic.Int64 }
}

// SnapshotWait is how long a seed waits for a 1m kline event before it
// reads the current minute from REST: Binance sends one every 250 ms for a
// symbol that has traded in the minute.
const SnapshotWait = 2 * time.Second

// StreamWait is how long a seed waits for the exchange to carry the
// symbol's streams before it reads the current minute's trades from REST.
const StreamWait = 10 * time.Second

// New returns a History for intervals ivs, backfilling at most limit klines
// per interval for a symbol the store does not have yet; now tells
// exchange time. Seeds and repairs ask ex, backfill bulk: with Binance's
// client, ex may spend the weight reserve that bulk leaves.
func New(ex, bulk Exchange, engine Engine, router Router, streams Streams, held Held, writer Writer, ivs []kline.Interval, limit int, now func() time.Time, log *slog.Logger) *History {
	return &History{ex: ex, bulk: bulk, engine: engine, router: router, streams: streams, held: held, writer: writer, ivs: ivs, limit: limit, now: now, log: log}
}

// klines asks for the klines of iv opening in [start, end) with the
// smallest limit that covers them, which is the cheapest in weight.
func (h *History) klines(ctx context.Context, symbol string, iv kline.Interval, start, end int64) ([]kline.Kline, error) {
	return h.klinesFrom(ctx, h.ex, symbol, iv, start, end)
}

func (h *History) klinesFrom(ctx context.Context, ex Exchange, symbol string, iv kline.Interval, start, end int64) ([]kline.Kline, error) {
	n := 0
	for t := start; t < end && n < 1000; t = iv.Next(t) {
		n++
	}
	if n == 0 {
		return nil, nil
	}
	ks, err := ex.Klines(ctx, symbol, iv, start, end-1, n)
	h.Requests.Add(1)
	h.Weight.Add(int64(binance.KlinesWeight(n)))
	return ks, err
}

const (
	minute = int64(60_000)
	hour   = 60 * minute
	day    = 24 * hour
)

// piece is a time range [from, to) covered by klines of one granularity.
type piece struct {
	g        int64 // 1m, 1h or 1d in ms
	from, to int64
}

// decompose covers [s, e) with as few 1d, 1h and 1m klines as possible.
func decompose(s, e int64) []piece {
	var out []piece
	for p := s; p < e; {
		switch {
		case p%day == 0 && p+day <= e:
			q := e - e%day
			out = append(out, piece{day, p, q})
			p = q
		case p%hour == 0 && p+hour <= e:
			q := e - e%hour
			out = append(out, piece{hour, p, q})
			p = q
		default:
			q := min(p-p%hour+hour, e)
			out = append(out, piece{minute, p, q})
			p = q
		}
	}
	return out
}

var granularity = map[int64]kline.Interval{
	minute: kline.MustInterval("1m"), hour: kline.MustInterval("1h"), day: kline.MustInterval("1d"),
}

// Seed makes the engine's open kline of every interval of symbol exact as
// of the latest trade, and starts the router's sequence after it. It returns
// the open time m0 of the current minute (0 if the symbol never traded):
// klines opening before iv.Open(m0) are history's to backfill, later ones
// the engine's.
//
// An open kline is the exchange's closed 1d, 1h and 1m klines covering
// [open, m0), asked with the smallest limits (weight 1 each, three requests
// whatever the intervals), merged with the current minute, which costs
// nothing where the 1m kline stream has sent an event: its L is the last
// trade it holds, and the router goes on with the next. A minute without
// trades is read from REST klines too; only a snapshot the buffered trades
// cannot continue falls back to REST aggTrades (weight 20 a page).
func (h *History) Seed(ctx context.Context, symbol string) (int64, error) {
	// A minute without trades can only be continued by its next trade if
	// the stream carried the symbol before REST was asked.
	sctx, cancel := context.WithTimeout(ctx, StreamWait)
	err := h.streams.Streaming(sctx, symbol)
	cancel()
	if err != nil {
		if ctx.Err() != nil {
			return 0, ctx.Err()
		}
		h.log.Debug("seed: the stream does not carry the symbol yet; reading trades", "symbol", symbol, "err", err)
		return h.seedFromTrades(ctx, symbol)
	}
	actx, cancel := context.WithTimeout(ctx, SnapshotWait)
	snap, err := h.router.Anchor(actx, symbol)
	cancel()
	if err == nil {
		m0 := snap.OpenTime
		if err := h.seedOpen(ctx, symbol, m0, snap, snap.Open); err != nil {
			return 0, err
		}
		ok, err := h.router.StartAfter(ctx, symbol, snap.LastTradeID)
		if err != nil {
			return 0, err
		}
		if ok {
			h.Seeds.Snapshot.Add(1)
			return m0, nil
		}
		h.log.Debug("seed: the buffered trades do not continue the kline event; reading trades", "symbol", symbol)
		return h.seedFromTrades(ctx, symbol)
	}
	if ctx.Err() != nil {
		return 0, ctx.Err()
	}
	// No event: most likely no trade this minute. The REST kline of the
	// current minute says.
	m0 := kline.OneMinute().Open(h.now().UnixMilli())
	ks, err := h.klines(ctx, symbol, kline.OneMinute(), m0-minute, m0+minute)
	if err != nil {
		return 0, fmt.Errorf("seed %s: current minute: %w", symbol, err)
	}
	if n := len(ks); n > 0 && ks[n-1].OpenTime == m0 && ks[n-1].Trades > 0 {
		return h.seedFromTrades(ctx, symbol) // traded, yet no event came
	}
	// A minute without trades so far (or none for two minutes, or never):
	// the trades that come are all new.
	if err := h.seedOpen(ctx, symbol, m0, kline.Kline{}, 0); err != nil {
		return 0, err
	}
	h.Seeds.Quiet.Add(1)
	return m0, h.router.StartAt(ctx, symbol, m0)
}

// seedFromTrades seeds symbol's current minute from REST aggTrades.
func (h *History) seedFromTrades(ctx context.Context, symbol string) (int64, error) {
	latest, err := h.ex.AggTrades(ctx, symbol, -1, -1, 1)
	h.Requests.Add(1)
	h.Weight.Add(binance.AggTradesWeight)
	if err != nil {
		return 0, fmt.Errorf("seed %s: latest trade: %w", symbol, err)
	}
	if len(latest) == 0 {
		// Never traded: the sequence starts at the first trade ever.
		return 0, h.router.Start(ctx, symbol, 0, nil)
	}
	m0 := kline.OneMinute().Open(latest[0].Time)
	var trades []kline.Trade
	for from, start := int64(-1), m0; ; {
		page, err := h.ex.AggTrades(ctx, symbol, from, start, 1000)
		h.Requests.Add(1)
		h.Weight.Add(binance.AggTradesWeight)
		if err != nil {
			return 0, fmt.Errorf("seed %s: trades since %d: %w", symbol, m0, err)
		}
		for _, t := range page {
			if t.Time >= m0 && (len(trades) == 0 || t.ID == trades[len(trades)-1].ID+1) {
				trades = append(trades, t)
			}
		}
		if len(page) < 1000 {
			break
		}
		from, start = page[len(page)-1].ID+1, -1
	}
	next := latest[0].ID + 1
	first := int64(0)
	if len(trades) > 0 {
		next, first = trades[len(trades)-1].ID+1, trades[0].Price
	}
	if err := h.seedOpen(ctx, symbol, m0, kline.Kline{}, first); err != nil {
		return 0, err
	}
	h.Seeds.Trades.Add(1)
	return m0, h.router.Start(ctx, symbol, next, trades)
}

// seedOpen seeds the engine's open kline of every interval of symbol: the
// exchange's closed klines of [open, m0) merged with cur, the current
// minute so far (a zero Kline: none). first is the price to open at when
// the symbol has no earlier kline (listed this minute).
func (h *History) seedOpen(ctx context.Context, symbol string, m0 int64, cur kline.Kline, first int64) error {
	// Which klines of each granularity the open klines need.
	need := map[int64][2]int64{minute: {m0 - minute, m0}} // m0−1m gives the previous close
	pieces := make([][]piece, len(h.ivs))
	for i, iv := range h.ivs {
		pieces[i] = decompose(iv.Open(m0), m0)
		for _, p := range pieces[i] {
			r, ok := need[p.g]
			if !ok {
				r = [2]int64{p.from, p.to}
			}
			need[p.g] = [2]int64{min(r[0], p.from), max(r[1], p.to)}
		}
	}
	got := map[int64]map[int64]kline.Kline{}
	for g, r := range need {
		ks, err := h.klines(ctx, symbol, granularity[g], r[0], r[1])
		if err != nil {
			return fmt.Errorf("seed %s: %s klines: %w", symbol, granularity[g], err)
		}
		got[g] = map[int64]kline.Kline{}
		for _, k := range ks {
			got[g][k.OpenTime] = k
		}
	}
	prev, ok := got[minute][m0-minute]
	prevClose := prev.Close
	if !ok {
		prevClose = first
	}
	for i, iv := range h.ivs {
		base := kline.Empty(iv, iv.Open(m0), prevClose)
		for _, p := range pieces[i] {
			step := granularity[p.g]
			for t := p.from; t < p.to; t = step.Next(t) {
				if k, ok := got[p.g][t]; ok {
					base.Merge(&k)
				}
			}
		}
		base.Merge(&cur)
		if base.Trades == 0 {
			base.Open, base.High, base.Low, base.Close = prevClose, prevClose, prevClose, prevClose
		}
		if err := h.engine.Seed(ctx, symbol, iv, base, m0); err != nil {
			return err
		}
	}
	return nil
}

// Resync restarts symbol after a gap in its trades too long to fill trade
// by trade. The open klines are seeded afresh, which makes the engine close
// the ones the gap interrupted, and then every kline from the one holding
// trade time since up to the new open one is replaced with the exchange's
// through the engine, so that the store sees them after the engine's own
// partial versions. The engine leaves the freshly seeded open klines alone
// when these corrections arrive: the seed already holds those minutes.
func (h *History) Resync(ctx context.Context, symbol string, since int64) error {
	m0, err := h.Seed(ctx, symbol)
	if err != nil {
		return err
	}
	for _, iv := range h.ivs {
		end := iv.Open(m0)
		for start := iv.Open(since); start < end; {
			ks, err := h.klines(ctx, symbol, iv, start, end)
			if err != nil {
				return fmt.Errorf("resync %s %s: %w", symbol, iv, err)
			}
			for _, k := range ks {
				if k.OpenTime >= end {
					break
				}
				k.Closed = true
				if err := h.engine.Correct(ctx, symbol, iv, k); err != nil {
					return err
				}
			}
			if len(ks) < 1000 {
				break
			}
			start = iv.Next(ks[len(ks)-1].OpenTime)
		}
	}
	return nil
}

// Backfill stores symbol's closed klines of every interval that open before
// iv.Open(m0) and are not held: the last limit klines, or everything since
// what is held ends after a longer stop; newest first. progress, if set,
// is called after each request.
func (h *History) Backfill(ctx context.Context, symbol string, m0 int64, progress func()) error {
	if m0 == 0 {
		return nil
	}
	per := h.BackfillRequests() / len(h.ivs)
	for _, iv := range h.ivs {
		n := 0
		err := h.backfill(ctx, symbol, iv, iv.Open(m0), func() {
			if n++; n <= per && progress != nil {
				progress()
			}
		})
		if err != nil {
			return err
		}
		// Progress counts what BackfillRequests estimated, so that it
		// ends at the total when an interval needed fewer requests (a
		// restart's short gap) or more.
		for ; n < per && progress != nil; n++ {
			progress()
		}
	}
	return nil
}

func (h *History) backfill(ctx context.Context, symbol string, iv kline.Interval, end int64, progress func()) error {
	for _, gap := range h.held.Wanted(symbol, iv, end) {
		// Newest first, so that what clients ask for most is held soonest.
		for hi := gap.To; hi >= gap.From; {
			if err := h.yield(ctx); err != nil {
				return err
			}
			lo, n := hi, 1
			for ; n < 1000 && iv.Prev(lo) >= gap.From; n++ {
				lo = iv.Prev(lo)
			}
			if err := h.fetch(ctx, h.bulk, symbol, iv, lo, hi, n); err != nil {
				return fmt.Errorf("backfill %s %s: %w", symbol, iv, err)
			}
			if progress != nil {
				progress()
			}
			hi = iv.Prev(lo)
		}
	}
	return nil
}

// fetch stores the exchange's closed klines of iv opening in [lo, hi], at
// most n slots, and records them held.
func (h *History) fetch(ctx context.Context, ex Exchange, symbol string, iv kline.Interval, lo, hi int64, n int) error {
	ups, err := h.closedIn(ctx, ex, symbol, iv, lo, hi, n)
	if err != nil {
		return err
	}
	span := store.Span{Symbol: symbol, Interval: iv, From: lo, To: hi}
	if len(ups) == 0 {
		return h.held.Add(span) // the exchange has none there
	}
	h.Backfills.Add(int64(len(ups)))
	// Held once stored, and not before: a crash between the two must not
	// leave a span claiming klines the store lacks.
	return h.writer.Write(ctx, ups, func() {
		if err := h.held.Add(span); err != nil {
			h.log.Warn("recording backfilled klines held failed; they are read again when asked for", "symbol", symbol, "interval", iv, "err", err)
		}
	})
}

// closedIn asks ex for the klines of iv opening in [lo, hi], at most n
// slots, and returns them as closed updates.
func (h *History) closedIn(ctx context.Context, ex Exchange, symbol string, iv kline.Interval, lo, hi int64, n int) ([]kline.Update, error) {
	ks, err := ex.Klines(ctx, symbol, iv, lo, iv.CloseTime(hi), n)
	h.Requests.Add(1)
	h.Weight.Add(int64(binance.KlinesWeight(n)))
	if err != nil {
		return nil, err
	}
	ups := make([]kline.Update, 0, len(ks))
	for _, k := range ks {
		if k.OpenTime >= lo && k.OpenTime <= hi {
			k.Closed = true
			ups = append(ups, kline.Update{Symbol: symbol, Interval: iv, Kline: k})
		}
	}
	return ups, nil
}

// BackfillRequests estimates the requests Backfill makes for one symbol that
// has nothing stored, for progress bars.
func (h *History) BackfillRequests() int {
	return len(h.ivs) * ((h.limit + 999) / 1000)
}
