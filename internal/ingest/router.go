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
//
// Each symbol's place in its sequence is a state machine (sequence.go): a
// phase moved by a pure step function, which the router goroutine (Router)
// feeds with what arrives and whose effects it carries out; the
// connections are conn.go's.
package ingest

import (
	"context"
	"errors"
	"log/slog"
	"maps"
	"sync"
	"sync/atomic"
	"time"

	"github.com/klagg/klagg/internal/binance"
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

// retentionMs is how far back REST aggTrades reaches: since 2026-08
// Binance keeps 48 hours. An hour's margin covers clock skew and the time
// a fill takes.
const retentionMs = 47 * 60 * 60_000

// resyncBackoff is the pause after a failed resync before the next.
const resyncBackoff = 5 * time.Second

// fillIDs is the most missing aggregate ids the router fills trade by
// trade: one aggTrades page (weight 20). A resync from klines costs a few
// weight whatever the gap, so anything larger, and any gap of unknown size
// (a lost connection), is repaired from klines.
const fillIDs = 1000

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
	Snapshots   atomic.Int64 // 1m kline events taken as seeds
	Released    atomic.Int64 // holds released by their bound: klines closed by the clock, repaired later
}

// item is a trade, a 1m kline snapshot (snap), or with symbol "" a sign
// of life, from connection conn; at is the exchange time (ms) up to which
// conn has delivered everything.
type item struct {
	symbol   string
	conn     int
	at       int64
	trade    kline.Trade
	received time.Time
	snap     *kline.Kline
}

// batch is one symbol's trades forwarded since the last flush.
type batch struct {
	symbol   string
	trades   []kline.Trade
	received time.Time // when the first of them with a known arrival arrived
}

// result is a fill's or a repair's outcome, back on the router goroutine.
type result struct {
	symbol string
	m      msg
}

// control is a request from another goroutine: a message for one
// symbol's sequence, or a connection lost or back for several.
type control struct {
	m       msg
	symbol  string
	conn    int
	symbols []string // msgLost, msgBack
	remove  bool
	anchor  chan kline.Kline // msgAnchor: the usable snapshot, when there is one
	done    chan error
}

// A Repair asks for Symbol to be restarted from the exchange's klines,
// correcting every kline from the one holding trade time Since.
type Repair struct {
	Symbol string
	Since  int64
}

// Router is the single owner of every symbol's sequence position. Its Run
// goroutine only does I/O: it reads deliveries, controls, fill and repair
// results and ticks, steps the symbol's sequence (sequence.go), and
// carries out the effects.
type Router struct {
	sink    Sink
	filler  Filler
	log     *slog.Logger
	in      chan item
	results chan result
	repairs chan Repair
	ctl     chan control
	rules   rules
	stats   RouterStats
	now     func() time.Time // exchange time
	clock   func() time.Time // local time, for waits and holds
	ticks   <-chan time.Time
	wg      sync.WaitGroup // fills in flight

	// watermark is the exchange time (ms) up to which every connected
	// connection has delivered everything: the min over them of their last
	// trade time, or of exchange time at their last pong when idle. holds
	// maps each symbol that may be missing trades (a gap being filled, a
	// connection down, a start not yet anchored) to the trade time before
	// which its klines are complete, for at most holdMax. Together they tell
	// the engine's clock how far it may close klines: one connection's fault
	// holds back only its own symbols, and only for a while.
	watermark atomic.Int64
	holds     atomic.Pointer[map[string]int64]
	// released maps each symbol that held past holdMax, and whose klines
	// close by the clock without trades it lacks, to the trade time
	// before which they are complete; until its repair.
	released atomic.Pointer[map[string]int64]

	// Owned by Run.
	syms    map[string]*sequence
	anchors map[string][]chan kline.Kline
	held    map[string]int64 // what holds publishes, when changed
	rel     map[string]int64 // what released publishes, when changed
	heldNew bool
	fx      effects
	owed    []Repair // repairs not yet taken by RunRepairs
	out     map[string]*batch
	queue   []*batch      // the batches in out holding trades, in arrival order
	alive   map[int]int64 // connected connection → last sign of life
	down    map[int]bool  // connections lost and not back
}

// RouterConfig sets up a Router.
type RouterConfig struct {
	// GapWait is how long a gap may stand before REST is asked (another
	// connection may still deliver it) [300ms].
	GapWait time.Duration
	// HoldMax bounds how long a symbol missing trades holds its klines
	// back; after it they close by the clock and are corrected when the
	// gap is repaired [5s].
	HoldMax time.Duration
	Now     func() time.Time // exchange time [time.Now]
	// Clock is the local time gaps and holds are timed by [time.Now];
	// Ticks, when gaps and holds are looked at [every GapWait/2].
	Clock func() time.Time
	Ticks <-chan time.Time
	Log   *slog.Logger
}

// NewRouter returns a router into sink that fills gaps through filler.
func NewRouter(sink Sink, filler Filler, cfg RouterConfig) *Router {
	if cfg.GapWait <= 0 {
		cfg.GapWait = 300 * time.Millisecond
	}
	if cfg.HoldMax <= 0 {
		cfg.HoldMax = 5 * time.Second
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	return &Router{
		sink: sink, filler: filler, log: cfg.Log, now: cfg.Now, clock: cfg.Clock, ticks: cfg.Ticks,
		rules: rules{gapWait: cfg.GapWait, holdMax: cfg.HoldMax, maxBuf: 200_000},
		in:    make(chan item, 1<<16), results: make(chan result, 64), repairs: make(chan Repair), ctl: make(chan control),
		syms: map[string]*sequence{}, anchors: map[string][]chan kline.Kline{}, held: map[string]int64{}, rel: map[string]int64{},
		out: map[string]*batch{}, alive: map[int]int64{}, down: map[int]bool{},
	}
}

// Watermark returns the exchange time (ms) up to which every connected
// connection has delivered its trades; 0 before the first.
func (r *Router) Watermark() int64 { return r.watermark.Load() }

// Holds returns, for each symbol that may be missing trades, the exchange
// time before which its klines are complete. The map is not to be changed.
func (r *Router) Holds() map[string]int64 {
	if h := r.holds.Load(); h != nil {
		return *h
	}
	return nil
}

// Released returns, for each symbol that held its klines back past
// holdMax and is not repaired yet, the trade time before which its klines
// are complete: those closing later lack trades until the repair corrects
// them. The map is not to be changed.
func (r *Router) Released() map[string]int64 {
	if h := r.released.Load(); h != nil {
		return *h
	}
	return nil
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

// Snapshot passes symbol's newest 1m kline event, from connection conn.
func (r *Router) Snapshot(ctx context.Context, conn int, symbol string, k kline.Kline) {
	select {
	case r.in <- item{symbol: symbol, conn: conn, snap: &k}:
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
	return r.control(ctx, control{symbol: symbol, m: msg{kind: msgStart, id: next, trades: trades}})
}

// Resume starts symbol at aggregate id next, for a sequence taken over
// from elsewhere (a cluster's checkpoint, written at asOf): trades from
// next on may have happened before the stream carried the symbol, so
// unless the stream's first trade is next, they are read from REST
// aggTrades, and the symbol's klines are held until they are. A standby
// (see Standby) that holds the trade before next, or that carried the
// symbol since before asOf and saw no trade, has missed nothing.
func (r *Router) Resume(ctx context.Context, symbol string, next int64, asOf time.Time) error {
	return r.control(ctx, control{symbol: symbol, m: msg{kind: msgResume, id: next, asOf: asOf}})
}

// ResumeQuiet starts symbol, taken over from a checkpoint written at asOf
// that knows no aggregate id (no trade since its seed), at its next trade,
// if this node has stood by for it since before asOf and seen no trade: the
// checkpoint's klines then hold every trade there was. It reports false,
// starting nothing, otherwise.
func (r *Router) ResumeQuiet(ctx context.Context, symbol string, asOf time.Time) (bool, error) {
	err := r.control(ctx, control{symbol: symbol, m: msg{kind: msgResumeQuiet, asOf: asOf}})
	if errors.Is(err, errNotCovered) {
		return false, nil
	}
	return err == nil, err
}

// StandbyKeep is how much of a standby symbol's trades the router keeps.
const StandbyKeep = time.Minute

// Standby makes symbol, not started, a standby of another node's: its
// trades are kept for StandbyKeep (trade time) and not waited for, so
// that Resume, when the other node dies, finds the trades since its
// checkpoint here rather than on REST.
func (r *Router) Standby(ctx context.Context, symbol string) error {
	return r.control(ctx, control{symbol: symbol, m: msg{kind: msgStandby}})
}

// Anchor waits until symbol, not yet started, has a 1m kline snapshot that
// its buffered trades continue without a gap, and returns it; ctx bounds
// the wait. Start the symbol with StartAfter(snapshot.LastTradeID) once
// the engine holds the seed.
func (r *Router) Anchor(ctx context.Context, symbol string) (kline.Kline, error) {
	ch := make(chan kline.Kline, 1)
	if err := r.control(ctx, control{symbol: symbol, m: msg{kind: msgAnchor}, anchor: ch}); err != nil {
		return kline.Kline{}, err
	}
	select {
	case k := <-ch:
		return k, nil
	case <-ctx.Done():
		return kline.Kline{}, ctx.Err()
	}
}

// StartAfter starts symbol at the trade that follows trade id last, the
// last trade of the seed the engine holds. It reports false, starting
// nothing, when the trades buffered do not continue the seed exactly; the
// caller then seeds from REST trades.
func (r *Router) StartAfter(ctx context.Context, symbol string, last int64) (bool, error) {
	err := r.control(ctx, control{symbol: symbol, m: msg{kind: msgStartAfter, id: last}})
	if errors.Is(err, errNoAnchor) {
		return false, nil
	}
	return err == nil, err
}

// StartAt starts symbol at its first trade at or after exchange time at
// (ms): the seed holds every trade before it and none after.
func (r *Router) StartAt(ctx context.Context, symbol string, at int64) error {
	return r.control(ctx, control{symbol: symbol, m: msg{kind: msgStartAt, id: at}})
}

// Lost tells the router that connection conn is lost: its symbols may miss
// trades even where no later trade shows a gap, so their klines are held
// at their last trade (for a bounded time) until they are back and
// repaired; the other connections no longer wait for conn.
func (r *Router) Lost(ctx context.Context, conn int, symbols []string) error {
	return r.control(ctx, control{conn: conn, symbols: symbols, m: msg{kind: msgLost}})
}

// Reconnected tells the router that connection conn is back: each of its
// symbols is repaired up to the exchange's present, which releases them.
func (r *Router) Reconnected(ctx context.Context, conn int, symbols []string) error {
	return r.control(ctx, control{conn: conn, symbols: symbols, m: msg{kind: msgBack}})
}

// Remove forgets symbol.
func (r *Router) Remove(ctx context.Context, symbol string) error {
	return r.control(ctx, control{symbol: symbol, remove: true})
}

func (r *Router) control(ctx context.Context, c control) error {
	c.done = make(chan error, 1)
	select {
	case r.ctl <- c:
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-c.done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// RunRepairs carries out the router's repairs from klines through rs, each
// on a goroutine of its own, until ctx ends, and waits for them. The
// router asks for them (Repair) and RunRepairs tells it how each went;
// until it runs, gaps that need klines wait.
func (r *Router) RunRepairs(ctx context.Context, rs Resyncer) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		select {
		case <-ctx.Done():
			return nil
		case req := <-r.repairs:
			wg.Go(func() {
				err := rs.Resync(ctx, req.Symbol, req.Since)
				select {
				case r.results <- result{req.Symbol, msg{kind: msgResynced, err: err}}:
				case <-ctx.Done():
				}
			})
		}
	}
}

// Run routes until ctx ends, and waits for the fills it started.
func (r *Router) Run(ctx context.Context) error {
	defer r.wg.Wait()
	ticks := r.ticks
	if ticks == nil {
		t := time.NewTicker(r.rules.gapWait / 2)
		defer t.Stop()
		ticks = t.C
	}
	for {
		var repairs chan Repair
		var owed Repair
		if len(r.owed) > 0 {
			repairs, owed = r.repairs, r.owed[0]
		}
		select {
		case <-ctx.Done():
			return nil
		case it := <-r.in:
			now := r.clock()
			r.take(ctx, it, now)
			// Drain what is already queued, so bursts reach the sink as
			// batches while a lone trade goes out at once.
			for n := 0; n < 4096; n++ {
				select {
				case it := <-r.in:
					r.take(ctx, it, now)
					continue
				default:
				}
				break
			}
		case res := <-r.results:
			if s := r.syms[res.symbol]; s != nil {
				if res.m.kind == msgFilled {
					res.m.at = r.latest()
				}
				r.step(ctx, res.symbol, s, &res.m, r.clock())
			}
		case c := <-r.ctl:
			// A control sees every trade delivered before it was sent:
			// those are among what the queue holds now.
			now := r.clock()
			for n := len(r.in); n > 0; n-- {
				r.take(ctx, <-r.in, now)
			}
			err := r.apply(ctx, c, now)
			// What the control changed is published before its answer: a
			// symbol resumed is held as Resume returns.
			r.publishHolds()
			r.updateWatermark()
			c.done <- err
		case repairs <- owed:
			r.owed = r.owed[1:]
		case <-ticks:
			now := r.clock()
			m := msg{kind: msgTick, at: r.now().UnixMilli()}
			for sym, s := range r.syms {
				r.step(ctx, sym, s, &m, now)
			}
		}
		r.publishHolds()
		r.updateWatermark()
		if err := r.flush(ctx); err != nil {
			return nil
		}
	}
}

// step moves symbol's sequence by m and carries out the effects.
func (r *Router) step(ctx context.Context, symbol string, s *sequence, m *msg, now time.Time) {
	fx := &r.fx
	fx.reset()
	held, hold, released := s.held, s.hold, s.released
	s.step(m, now, &r.rules, fx)
	if len(fx.forward) > 0 {
		r.forward(symbol, fx.forward, fx.received)
	}
	if s.held != held || s.hold != hold {
		if s.held {
			r.held[symbol] = s.hold
		} else {
			delete(r.held, symbol)
		}
		r.heldNew = true
	}
	if s.released != released {
		if s.released {
			r.rel[symbol] = max(s.hold, 1) // the last hold: complete before it
		} else {
			delete(r.rel, symbol)
		}
		r.heldNew = true
	}
	if fx.fetch {
		from, epoch := fx.fetchFrom, fx.fetchEpoch
		r.wg.Go(func() {
			ts, err := r.filler.AggTrades(ctx, symbol, from, -1, fillIDs)
			m := msg{kind: msgFilled, id: from, epoch: epoch, trades: ts, err: err, invalid: binance.IsInvalidParameter(err)}
			select {
			case r.results <- result{symbol, m}:
			case <-ctx.Done():
			}
		})
	}
	if fx.resync != 0 {
		r.owed = append(r.owed, Repair{symbol, fx.resync})
	}
	if fx.anchor != nil {
		for _, ch := range r.anchors[symbol] {
			ch <- *fx.anchor
		}
		delete(r.anchors, symbol)
	} else if len(r.anchors) > 0 && !s.anchoring {
		delete(r.anchors, symbol) // started without the snapshot
	}
	if len(fx.notes) > 0 && ctx.Err() == nil {
		for _, n := range fx.notes {
			r.log.Log(ctx, n.level, n.msg, append([]any{"symbol", symbol}, n.args...)...)
		}
	}
	// A trade forwarded in order, every step but a few, counts nothing:
	// it costs one test, not a look at each counter.
	if fx.duplicates|fx.buffered|fx.overflowing|fx.filled|fx.unfillable|fx.fills|fx.resyncs|fx.released|fx.snapshots != 0 {
		r.count(fx)
	}
}

// count adds one step's counters to the stats.
func (r *Router) count(fx *effects) {
	for _, c := range []struct {
		n int64
		v *atomic.Int64
	}{
		{fx.duplicates, &r.stats.Duplicates}, {fx.buffered, &r.stats.Buffered}, {fx.overflowing, &r.stats.Overflowing},
		{fx.filled, &r.stats.Filled}, {fx.unfillable, &r.stats.Unfillable}, {fx.fills, &r.stats.Fills},
		{fx.resyncs, &r.stats.Resyncs}, {fx.released, &r.stats.Released}, {fx.snapshots, &r.stats.Snapshots},
	} {
		if c.n != 0 {
			c.v.Add(c.n)
		}
	}
}

func (r *Router) sequence(symbol string) *sequence {
	s := r.syms[symbol]
	if s == nil {
		s = newSequence()
		r.syms[symbol] = s
	}
	return s
}

func (r *Router) apply(ctx context.Context, c control, now time.Time) error {
	switch {
	case c.remove:
		if s := r.syms[c.symbol]; s != nil {
			r.stats.Buffered.Add(-int64(len(s.pending)))
		}
		delete(r.syms, c.symbol)
		delete(r.anchors, c.symbol)
		if _, ok := r.held[c.symbol]; ok {
			delete(r.held, c.symbol)
			r.heldNew = true
		}
		if _, ok := r.rel[c.symbol]; ok {
			delete(r.rel, c.symbol)
			r.heldNew = true
		}
		if b := r.out[c.symbol]; b != nil {
			*b = batch{} // flush skips it
		}
		delete(r.out, c.symbol)
		return nil
	case c.m.kind == msgLost || c.m.kind == msgBack:
		if c.m.kind == msgLost {
			r.down[c.conn] = true
			delete(r.alive, c.conn)
		} else {
			delete(r.down, c.conn)
		}
		for _, sym := range c.symbols {
			if s := r.syms[sym]; s != nil {
				r.step(ctx, sym, s, &c.m, now)
			}
		}
		return nil
	}
	if c.anchor != nil {
		r.anchors[c.symbol] = append(r.anchors[c.symbol], c.anchor)
	}
	r.step(ctx, c.symbol, r.sequence(c.symbol), &c.m, now)
	return r.fx.answer
}

// take handles one delivered item.
func (r *Router) take(ctx context.Context, it item, now time.Time) {
	if len(r.down) == 0 || !r.down[it.conn] { // a lost connection's last items do not count
		r.alive[it.conn] = max(r.alive[it.conn], it.at)
	}
	if it.symbol == "" {
		return
	}
	m := msg{kind: msgTrade, trade: it.trade, received: it.received}
	if it.snap != nil {
		m = msg{kind: msgSnapshot, snap: it.snap}
	}
	r.step(ctx, it.symbol, r.sequence(it.symbol), &m, now)
}

// latest is the newest exchange time any connection has delivered up to.
func (r *Router) latest() int64 {
	l := int64(0)
	for _, at := range r.alive {
		l = max(l, at)
	}
	return l
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

// publishHolds publishes the holds when they changed: before the watermark
// or the flushed trades let the engine's clock pass a gap.
func (r *Router) publishHolds() {
	if !r.heldNew && r.holds.Load() != nil {
		return
	}
	h := make(map[string]int64, len(r.held))
	maps.Copy(h, r.held)
	rel := make(map[string]int64, len(r.rel))
	maps.Copy(rel, r.rel)
	r.released.Store(&rel)
	r.holds.Store(&h)
	r.heldNew = false
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

// forward adds trades to symbol's next batch for the sink.
func (r *Router) forward(symbol string, trades []kline.Trade, received time.Time) {
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
	b.trades = append(b.trades, trades...)
}
