// Package ingest owns klagg's market-data input: the WebSocket connections
// that carry the aggTrade streams (sharded, kept alive, rotated before
// Binance's 24 h cut, reconnected with backoff) and the router that turns
// what they deliver into one gap-free, duplicate-free trade sequence per
// symbol.
//
// The router relies on Binance's aggregate ids being consecutive per symbol:
// a trade is forwarded only when it is the next id. Anything earlier is a
// duplicate (overlapping connections, replays); anything later waits while
// the gap is filled from REST aggTrades. This one rule makes reconnects,
// rotations, stalls and dropped frames lose nothing and count nothing twice.
package ingest

import (
	"context"
	"log/slog"
	"sort"
	"sync/atomic"
	"time"

	"github.com/klagg/klagg/internal/kline"
)

// Sink takes each symbol's trades in id order: the engine.
type Sink interface {
	// received is when the first of trades arrived (zero if unknown).
	Trades(ctx context.Context, symbol string, trades []kline.Trade, received time.Time) error
}

// Filler fetches trades by aggregate id: the REST client.
type Filler interface {
	AggTrades(ctx context.Context, symbol string, fromID, start int64, limit int) ([]kline.Trade, error)
}

// Resyncer restarts a symbol from the exchange's klines after a gap too
// long to fill trade by trade: History. It corrects every kline from the
// one holding trade time since on, seeds the open ones and calls Start.
type Resyncer interface {
	Resync(ctx context.Context, symbol string, since int64) error
}

// longGapMs is the span of missing trades, left after a full page of them,
// beyond which the router resyncs from klines: a busy symbol trades a
// thousand times in well under a minute, and an aggTrades page costs as
// much REST weight as the few kline requests of a resync.
const longGapMs = 2 * 60_000

// RouterStats are the router's counters.
type RouterStats struct {
	Forwarded   atomic.Int64 // trades handed to the sink
	Duplicates  atomic.Int64 // trades already forwarded (overlap, replays)
	Fills       atomic.Int64 // REST fills requested
	Filled      atomic.Int64 // trades that came from REST fills
	Unfillable  atomic.Int64 // gaps the exchange could not fill
	Buffered    atomic.Int64 // trades waiting for a gap or a start
	Overflowing atomic.Int64 // trades dropped from full buffers (refilled from REST)
	Resyncs     atomic.Int64 // gaps repaired from klines instead of trades
}

// item is a trade, or with symbol "" a sign of life, from connection conn;
// at is the exchange time (ms) up to which conn has delivered everything.
type item struct {
	symbol   string
	conn     int
	at       int64
	trade    kline.Trade
	received time.Time
}

// batch is one symbol's trades forwarded since the last flush.
type batch struct {
	symbol   string
	trades   []kline.Trade
	received time.Time // when the first of them with a known arrival arrived
}

type fillResult struct {
	symbol string
	from   int64
	epoch  int
	trades []kline.Trade
	err    error
}

type control struct {
	symbol  string
	start   bool     // else: remove
	suspect []string // else: symbols whose connection was lost or is back
	down    bool     // with suspect: lost (true) or back (false)
	next    int64
	trades  []kline.Trade
	done    chan struct{}
}

// symState is one symbol's position in its trade sequence.
type symState struct {
	next     int64         // id the sink needs next; -1 until Start
	lastTime int64         // trade time of the last trade forwarded
	pending  []kline.Trade // later trades, sorted by id
	suspect  bool          // may have missed trades (reconnect): fill from REST
	down     bool          // its connection is lost
	epoch    int           // bumped on loss and return; older fills cannot clear suspect
	filling  bool
	resync   int64     // trade time to resync from (0: none needed)
	gapAt    time.Time // when the current gap was first seen
}

// Router is the single owner of every symbol's sequence position.
type Router struct {
	sink     Sink
	filler   Filler
	log      *slog.Logger
	in       chan item
	fills    chan fillResult
	resyncs  chan resyncResult
	resyncer Resyncer
	ctl      chan control
	gapWait  time.Duration
	maxBuf   int
	stats    RouterStats

	// watermark is the exchange time (ms) up to which every connection has
	// delivered everything: the min over connections of their last trade
	// time, or of exchange time at their last pong when idle; hold is the trade time before which a symbol waiting
	// on a gap may have missing trades (0: none waiting). Together they
	// tell the engine's clock how far it may close klines.
	watermark atomic.Int64
	hold      atomic.Int64

	// Owned by Run.
	syms  map[string]*symState
	out   map[string]*batch
	queue []*batch      // the batches in out holding trades, in arrival order
	alive map[int]int64 // connection → last sign of life
}

// NewRouter returns a router into sink that fills gaps through filler.
// gapWait is how long a gap may stand before REST is asked (another
// connection may still deliver it).
func NewRouter(sink Sink, filler Filler, gapWait time.Duration, log *slog.Logger) *Router {
	return &Router{
		sink: sink, filler: filler, log: log, gapWait: gapWait, maxBuf: 200_000,
		in: make(chan item, 1<<16), fills: make(chan fillResult, 64), resyncs: make(chan resyncResult, 64), ctl: make(chan control),
		syms: map[string]*symState{}, out: map[string]*batch{}, alive: map[int]int64{},
	}
}

// Watermark returns the exchange time (ms) up to which every connection has
// delivered its trades; 0 before the first.
func (r *Router) Watermark() int64 { return r.watermark.Load() }

// Hold returns the exchange time before which some symbol may still be
// missing trades (a gap being filled), and whether there is one.
func (r *Router) Hold() (int64, bool) {
	h := r.hold.Load()
	return h, h > 0
}

// Stats returns the router's counters.
func (r *Router) Stats() *RouterStats { return &r.stats }

// Deliver queues one trade that arrived on connection conn at received.
func (r *Router) Deliver(ctx context.Context, conn int, symbol string, t kline.Trade, received time.Time) {
	it := item{symbol: symbol, conn: conn, at: t.Time, trade: t, received: received}
	// The one-case select is a plain channel send; the two-case one below
	// locks both channels, which at a million trades a second shows.
	select {
	case r.in <- it:
		return
	default:
	}
	select {
	case r.in <- it:
	case <-ctx.Done():
	}
}

// Alive records that connection conn has delivered everything up to
// exchange time at (a pong, or an idle connection).
func (r *Router) Alive(ctx context.Context, conn int, at int64) {
	select {
	case r.in <- item{conn: conn, at: at}:
	case <-ctx.Done():
	}
}

// Start anchors symbol's sequence: trades (consecutive, possibly empty)
// are forwarded first, and next is the id expected after them. Trades
// delivered before Start wait. It returns once the router has taken it.
func (r *Router) Start(ctx context.Context, symbol string, next int64, trades []kline.Trade) error {
	return r.control(ctx, control{symbol: symbol, start: true, next: next, trades: trades})
}

// Lost tells the router that symbols' connection is lost: they may miss
// trades even where no later trade shows a gap, so the engine's clock is
// held at their last trade until they are back and filled from REST.
func (r *Router) Lost(ctx context.Context, symbols []string) error {
	return r.control(ctx, control{suspect: symbols, down: true})
}

// Reconnected tells the router that symbols' connection is back: each is
// filled from REST up to the exchange's present, which releases the clock.
func (r *Router) Reconnected(ctx context.Context, symbols []string) error {
	return r.control(ctx, control{suspect: symbols})
}

// Remove forgets symbol.
func (r *Router) Remove(ctx context.Context, symbol string) error {
	return r.control(ctx, control{symbol: symbol})
}

func (r *Router) control(ctx context.Context, c control) error {
	c.done = make(chan struct{})
	select {
	case r.ctl <- c:
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case <-c.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Run routes until ctx ends.
func (r *Router) Run(ctx context.Context) error {
	tick := time.NewTicker(r.gapWait / 2)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case it := <-r.in:
			r.take(it)
			// Drain what is already queued, so bursts reach the sink as
			// batches while a lone trade goes out at once.
			for n := 0; n < 4096; n++ {
				select {
				case it := <-r.in:
					r.take(it)
					continue
				default:
				}
				break
			}
			r.updateWatermark()
		case f := <-r.fills:
			r.filled(ctx, f)
		case f := <-r.resyncs:
			r.resynced(ctx, f)
		case c := <-r.ctl:
			r.apply(c)
			close(c.done)
		case <-tick.C:
			r.checkGaps(ctx)
		}
		if err := r.flush(ctx); err != nil {
			return nil
		}
	}
}

func (r *Router) state(symbol string) *symState {
	s := r.syms[symbol]
	if s == nil {
		s = &symState{next: -1}
		r.syms[symbol] = s
	}
	return s
}

func (r *Router) apply(c control) {
	if c.suspect != nil {
		for _, sym := range c.suspect {
			if s := r.syms[sym]; s != nil && s.next >= 0 {
				s.suspect, s.down = true, c.down
				s.epoch++
				s.gapAt = time.Now().Add(-r.gapWait)
			}
		}
		r.updateHold()
		return
	}
	if !c.start {
		if s := r.syms[c.symbol]; s != nil {
			r.stats.Buffered.Add(-int64(len(s.pending)))
		}
		delete(r.syms, c.symbol)
		if b := r.out[c.symbol]; b != nil {
			*b = batch{} // flush skips it
		}
		delete(r.out, c.symbol)
		r.updateHold()
		return
	}
	s := r.state(c.symbol)
	if s.next >= 0 {
		return // already started
	}
	s.next = c.next
	if len(c.trades) > 0 {
		s.next = c.trades[0].ID
	}
	for _, t := range c.trades {
		r.accept(c.symbol, s, t, time.Time{})
	}
	// Drop what the start already covers, then release what follows.
	r.release(c.symbol, s)
}

// take handles one delivered item.
func (r *Router) take(it item) {
	r.alive[it.conn] = max(r.alive[it.conn], it.at)
	if it.symbol == "" {
		return
	}
	s := r.state(it.symbol)
	if s.next < 0 {
		r.buffer(s, it.trade)
		return
	}
	r.accept(it.symbol, s, it.trade, it.received)
}

func (r *Router) updateWatermark() {
	w := int64(0)
	for _, at := range r.alive {
		if w == 0 || at < w {
			w = at
		}
	}
	r.watermark.Store(w)
}

// updateHold recomputes the hold over symbols waiting on a gap or a start.
func (r *Router) updateHold() {
	h := int64(0)
	for _, s := range r.syms {
		if len(s.pending) == 0 && !s.suspect {
			continue
		}
		t := s.lastTime
		if (s.next < 0 || t == 0) && len(s.pending) > 0 {
			t = s.pending[0].Time - 1
		}
		if t <= 0 {
			t = 1 // nothing known yet: hold everything
		}
		if h == 0 || t < h {
			h = t
		}
	}
	r.hold.Store(h)
}

// accept forwards t if it is next, buffers it if later, drops it if earlier.
func (r *Router) accept(symbol string, s *symState, t kline.Trade, received time.Time) {
	switch {
	case t.ID < s.next:
		r.stats.Duplicates.Add(1)
	case t.ID == s.next:
		r.forward(symbol, t, received)
		s.next++
		s.lastTime = t.Time
		if len(s.pending) > 0 {
			r.release(symbol, s)
		}
	default:
		r.buffer(s, t)
	}
}

func (r *Router) buffer(s *symState, t kline.Trade) {
	n := len(s.pending)
	if n > 0 && s.pending[n-1].ID >= t.ID {
		i := sort.Search(n, func(i int) bool { return s.pending[i].ID >= t.ID })
		if s.pending[i].ID == t.ID {
			r.stats.Duplicates.Add(1)
			return
		}
		s.pending = append(s.pending, kline.Trade{})
		copy(s.pending[i+1:], s.pending[i:])
		s.pending[i] = t
	} else {
		if n >= r.maxBuf {
			// Keep the oldest: the newest will come again from a fill.
			r.stats.Overflowing.Add(1)
			return
		}
		s.pending = append(s.pending, t)
	}
	r.stats.Buffered.Add(1)
	if s.gapAt.IsZero() {
		s.gapAt = time.Now()
		r.updateHold() // before anything lets the clock pass the gap
	}
}

// release forwards the consecutive run at the head of pending.
func (r *Router) release(symbol string, s *symState) {
	i := 0
	for ; i < len(s.pending); i++ {
		t := s.pending[i]
		if t.ID < s.next {
			r.stats.Duplicates.Add(1)
			continue
		}
		if t.ID != s.next {
			break
		}
		r.forward(symbol, t, time.Time{})
		s.next++
		s.lastTime = t.Time
	}
	if i > 0 {
		r.stats.Buffered.Add(-int64(i))
		s.pending = append(s.pending[:0], s.pending[i:]...)
	}
	if len(s.pending) == 0 && !s.suspect && !s.gapAt.IsZero() {
		s.gapAt = time.Time{}
		r.updateHold()
	}
}

func (r *Router) checkGaps(ctx context.Context) {
	now := time.Now()
	for sym, s := range r.syms {
		if s.resync != 0 && !s.filling && now.Sub(s.gapAt) >= r.gapWait {
			s.filling = true
			r.stats.Resyncs.Add(1)
			go func(sym string, since int64) {
				err := r.resyncer.Resync(ctx, sym, since)
				select {
				case r.resyncs <- resyncResult{sym, err}:
				case <-ctx.Done():
				}
			}(sym, s.resync)
			continue
		}
		if s.next < 0 || s.filling || (len(s.pending) == 0 && !s.suspect) || now.Sub(s.gapAt) < r.gapWait {
			continue
		}
		s.filling = true
		r.stats.Fills.Add(1)
		go func(sym string, from int64, epoch int) {
			ts, err := r.filler.AggTrades(ctx, sym, from, -1, 1000)
			select {
			case r.fills <- fillResult{sym, from, epoch, ts, err}:
			case <-ctx.Done():
			}
		}(sym, s.next, s.epoch)
	}
}

// ResyncWith sets where long gaps are repaired; call it before Run.
func (r *Router) ResyncWith(rs Resyncer) { r.resyncer = rs }

type resyncResult struct {
	symbol string
	err    error
}

// missingMs is the exchange time from s's last forwarded trade to the
// first it holds, or to the newest sign of life of any connection.
func (r *Router) missingMs(s *symState) int64 {
	if len(s.pending) > 0 {
		return s.pending[0].Time - s.lastTime
	}
	latest := int64(0)
	for _, at := range r.alive {
		latest = max(latest, at)
	}
	return latest - s.lastTime
}

func (r *Router) resynced(ctx context.Context, f resyncResult) {
	s := r.syms[f.symbol]
	if s == nil {
		return
	}
	s.filling = false
	if f.err != nil {
		if ctx.Err() == nil {
			r.log.Warn("resyncing from klines failed; will retry", "symbol", f.symbol, "err", f.err)
		}
		s.gapAt = time.Now()
		return
	}
	s.resync = 0
	r.updateHold()
}

func (r *Router) filled(ctx context.Context, f fillResult) {
	s := r.syms[f.symbol]
	if s == nil {
		return
	}
	s.filling = false
	if f.err != nil {
		if ctx.Err() == nil {
			r.log.Warn("filling a trade gap from REST failed; will retry", "symbol", f.symbol, "from_id", f.from, "err", f.err)
		}
		s.gapAt = time.Now()
		return
	}
	if len(f.trades) == 0 || f.trades[0].ID > s.next {
		// The exchange has no trades with these ids: skip to what it has.
		to := int64(-1)
		if len(f.trades) > 0 {
			to = f.trades[0].ID
		} else if len(s.pending) > 0 {
			to = s.pending[0].ID
		}
		if to > s.next {
			r.stats.Unfillable.Add(1)
			r.log.Warn("trade ids missing on the exchange; skipping them", "symbol", f.symbol, "from_id", s.next, "to_id", to)
			s.next = to
		}
	}
	for _, t := range f.trades {
		if t.ID >= s.next {
			r.stats.Filled.Add(1)
		}
		r.accept(f.symbol, s, t, time.Time{})
	}
	if missing := r.missingMs(s); len(f.trades) == 1000 && r.resyncer != nil && missing > longGapMs {
		r.log.Info("trade gap too long to fill trade by trade; resyncing from klines", "symbol", f.symbol,
			"from", time.UnixMilli(s.lastTime).UTC(), "missing", time.Duration(missing)*time.Millisecond)
		// Not started again until the resync calls Start; what arrives
		// meanwhile waits, and the hold keeps klines from closing early.
		s.resync, s.next, s.suspect = max(s.lastTime, 1), -1, false
		s.gapAt = time.Now().Add(-r.gapWait)
		r.updateHold()
		return
	}
	if len(f.trades) < 1000 && !s.down && f.epoch == s.epoch {
		// The exchange had nothing more since the connection came back:
		// the symbol is caught up.
		s.suspect = false
	}
	r.release(f.symbol, s)
	switch {
	case s.down:
		s.gapAt = time.Now() // filled what it could; again after gapWait
	case len(s.pending) > 0 || s.suspect:
		s.gapAt = time.Now().Add(-r.gapWait) // more to fill: go again at once
	default:
		r.updateHold()
	}
}

// flush hands the forwarded trades to the sink, one batch per symbol.
func (r *Router) flush(ctx context.Context) error {
	for i, b := range r.queue {
		if len(b.trades) == 0 {
			continue
		}
		if err := r.sink.Trades(ctx, b.symbol, b.trades, b.received); err != nil {
			r.queue = append(r.queue[:0], r.queue[i:]...)
			return err
		}
		r.stats.Forwarded.Add(int64(len(b.trades)))
		*b = batch{symbol: b.symbol} // the sink owns the trades now
	}
	clear(r.queue)
	r.queue = r.queue[:0]
	return nil
}

// forward adds t to symbol's next batch for the sink.
func (r *Router) forward(symbol string, t kline.Trade, received time.Time) {
	b := r.out[symbol]
	if b == nil {
		b = &batch{symbol: symbol}
		r.out[symbol] = b
	}
	if len(b.trades) == 0 {
		r.queue = append(r.queue, b)
	}
	if b.received.IsZero() {
		b.received = received
	}
	b.trades = append(b.trades, t)
}
