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
	"errors"
	"fmt"
	"log/slog"
	"sort"
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

type fillResult struct {
	symbol string
	from   int64
	epoch  int
	trades []kline.Trade
	err    error
}

type controlKind uint8

const (
	ctlStart      controlKind = iota // from aggregate id next, after trades
	ctlStartAfter                    // after trade id next (a snapshot's L)
	ctlStartAt                       // at the first trade at or after time next
	ctlRemove
	ctlLost // conn and its symbols are down
	ctlBack // conn and its symbols are back
	ctlAnchor
	ctlResume // from aggregate id next, after trades, with trades since perhaps missed
	ctlStandby
	ctlResumeQuiet
)

type control struct {
	asOf    time.Time // ctlResume: when the checkpoint was written
	kind    controlKind
	symbol  string
	conn    int
	symbols []string
	next    int64
	trades  []kline.Trade
	anchor  chan kline.Kline // ctlAnchor: the usable snapshot, when there is one
	done    chan error
}

// symState is one symbol's position in its trade sequence.
type symState struct {
	next     int64         // id the sink needs next; -1 until Start
	lastTime int64         // trade time of the last trade forwarded
	pending  []kline.Trade // later trades, sorted by id
	suspect  bool          // may have missed trades (reconnect): repair from klines
	behind   bool          // resumed at an id the stream may be past: fill from REST aggTrades
	standby  bool          // not started: keeps only its last StandbyKeep of trades, for a takeover
	since    time.Time     // when it became a standby
	down     bool          // its connection is lost
	epoch    int           // bumped on loss and return; older fills cannot clear suspect
	filling  bool
	resync   int64     // trade time to resync from (0: none needed)
	gapAt    time.Time // when the current gap was first seen
	// heldSince is when the symbol began holding its klines back (zero:
	// not holding); the hold is released holdMax later.
	heldSince time.Time
	unheld    bool // the hold ran past holdMax and was released
	// after is a snapshot's last trade id while waiting for the trade that
	// follows it (-1: not waiting); at, likewise, a time (0: not waiting).
	after, at int64
	snap      *kline.Kline // newest 1m kline event, while not started
	anchors   []chan kline.Kline
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
	holdMax  time.Duration
	maxBuf   int
	stats    RouterStats
	now      func() time.Time // exchange time
	wg       sync.WaitGroup   // fills and resyncs in flight

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

	// Owned by Run.
	syms  map[string]*symState
	out   map[string]*batch
	queue []*batch      // the batches in out holding trades, in arrival order
	alive map[int]int64 // connected connection → last sign of life
	down  map[int]bool  // connections lost and not back
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
	Log     *slog.Logger
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
	return &Router{
		sink: sink, filler: filler, log: cfg.Log, gapWait: cfg.GapWait, holdMax: cfg.HoldMax, now: cfg.Now, maxBuf: 200_000,
		in: make(chan item, 1<<16), fills: make(chan fillResult, 64), resyncs: make(chan resyncResult, 64), ctl: make(chan control),
		syms: map[string]*symState{}, out: map[string]*batch{}, alive: map[int]int64{}, down: map[int]bool{},
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
	return r.control(ctx, control{kind: ctlStart, symbol: symbol, next: next, trades: trades})
}

// Resume starts symbol at aggregate id next, for a sequence taken over
// from elsewhere (a cluster's checkpoint, written at asOf): trades from
// next on may have happened before the stream carried the symbol, so
// unless the stream's first trade is next, they are read from REST
// aggTrades, and the symbol's klines are held until they are. A standby
// (see Standby) that holds the trade before next, or that carried the
// symbol since before asOf and saw no trade, has missed nothing.
func (r *Router) Resume(ctx context.Context, symbol string, next int64, asOf time.Time) error {
	return r.control(ctx, control{kind: ctlResume, symbol: symbol, next: next, asOf: asOf})
}

// errNotCovered is ResumeQuiet's answer when the standby cannot vouch for
// the symbol.
var errNotCovered = errors.New("the standby did not carry the symbol since the checkpoint without a trade")

// ResumeQuiet starts symbol, taken over from a checkpoint written at asOf
// that knows no aggregate id (no trade since its seed), at its next trade,
// if this node has stood by for it since before asOf and seen no trade: the
// checkpoint's klines then hold every trade there was. It reports false,
// starting nothing, otherwise.
func (r *Router) ResumeQuiet(ctx context.Context, symbol string, asOf time.Time) (bool, error) {
	err := r.control(ctx, control{kind: ctlResumeQuiet, symbol: symbol, asOf: asOf})
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
	return r.control(ctx, control{kind: ctlStandby, symbol: symbol})
}

// Anchor waits until symbol, not yet started, has a 1m kline snapshot that
// its buffered trades continue without a gap, and returns it; ctx bounds
// the wait. Start the symbol with StartAfter(snapshot.LastTradeID) once
// the engine holds the seed.
func (r *Router) Anchor(ctx context.Context, symbol string) (kline.Kline, error) {
	ch := make(chan kline.Kline, 1)
	if err := r.control(ctx, control{kind: ctlAnchor, symbol: symbol, anchor: ch}); err != nil {
		return kline.Kline{}, err
	}
	select {
	case k := <-ch:
		return k, nil
	case <-ctx.Done():
		return kline.Kline{}, ctx.Err()
	}
}

// errNoAnchor is startAfter's answer when the trades buffered do not
// continue the snapshot exactly (one taken inside a multi-fill aggregate
// trade, or a gap).
var errNoAnchor = errors.New("the buffered trades do not continue the snapshot")

// StartAfter starts symbol at the trade that follows trade id last, the
// last trade of the seed the engine holds. It reports false, starting
// nothing, when the trades buffered do not continue the seed exactly; the
// caller then seeds from REST trades.
func (r *Router) StartAfter(ctx context.Context, symbol string, last int64) (bool, error) {
	err := r.control(ctx, control{kind: ctlStartAfter, symbol: symbol, next: last})
	if errors.Is(err, errNoAnchor) {
		return false, nil
	}
	return err == nil, err
}

// StartAt starts symbol at its first trade at or after exchange time at
// (ms): the seed holds every trade before it and none after.
func (r *Router) StartAt(ctx context.Context, symbol string, at int64) error {
	return r.control(ctx, control{kind: ctlStartAt, symbol: symbol, next: at})
}

// Lost tells the router that connection conn is lost: its symbols may miss
// trades even where no later trade shows a gap, so their klines are held
// at their last trade (for a bounded time) until they are back and
// repaired; the other connections no longer wait for conn.
func (r *Router) Lost(ctx context.Context, conn int, symbols []string) error {
	return r.control(ctx, control{kind: ctlLost, conn: conn, symbols: symbols})
}

// Reconnected tells the router that connection conn is back: each of its
// symbols is repaired up to the exchange's present, which releases them.
func (r *Router) Reconnected(ctx context.Context, conn int, symbols []string) error {
	return r.control(ctx, control{kind: ctlBack, conn: conn, symbols: symbols})
}

// Remove forgets symbol.
func (r *Router) Remove(ctx context.Context, symbol string) error {
	return r.control(ctx, control{kind: ctlRemove, symbol: symbol})
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

// Run routes until ctx ends, and waits for the fills and resyncs it
// started.
func (r *Router) Run(ctx context.Context) error {
	defer r.wg.Wait()
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
			// A control sees every trade delivered before it was sent:
			// those are among what the queue holds now.
			for n := len(r.in); n > 0; n-- {
				r.take(<-r.in)
			}
			r.updateWatermark()
			c.done <- r.apply(c)
		case <-tick.C:
			r.checkGaps(ctx)
			r.updateHold()
		}
		if err := r.flush(ctx); err != nil {
			return nil
		}
	}
}

func (r *Router) state(symbol string) *symState {
	s := r.syms[symbol]
	if s == nil {
		s = &symState{next: -1, after: -1}
		r.syms[symbol] = s
	}
	return s
}

func (r *Router) apply(c control) error {
	switch c.kind {
	case ctlLost, ctlBack:
		down := c.kind == ctlLost
		if down {
			r.down[c.conn] = true
			delete(r.alive, c.conn)
		} else {
			delete(r.down, c.conn)
		}
		for _, sym := range c.symbols {
			if s := r.syms[sym]; s != nil && s.next >= 0 {
				s.suspect, s.down = true, down
				s.epoch++
				s.gapAt = time.Now().Add(-r.gapWait)
			}
		}
		r.updateWatermark()
		r.updateHold()
		return nil
	case ctlRemove:
		if s := r.syms[c.symbol]; s != nil {
			r.stats.Buffered.Add(-int64(len(s.pending)))
		}
		delete(r.syms, c.symbol)
		if b := r.out[c.symbol]; b != nil {
			*b = batch{} // flush skips it
		}
		delete(r.out, c.symbol)
		r.updateHold()
		return nil
	case ctlAnchor:
		s := r.state(c.symbol)
		s.anchors = append(s.anchors, c.anchor)
		r.offerSnapshot(s)
		return nil
	case ctlResumeQuiet:
		s := r.state(c.symbol)
		if s.next >= 0 || !s.standby || len(s.pending) > 0 || s.since.IsZero() || !s.since.Before(c.asOf.Add(-time.Second)) {
			return errNotCovered
		}
		s.snap, s.anchors, s.standby, s.since = nil, nil, false, time.Time{}
		r.startAt(c.symbol, s, c.asOf.UnixMilli())
		return nil
	case ctlStandby:
		if s := r.state(c.symbol); s.next < 0 {
			s.standby, s.since = true, time.Now()
			s.gapAt = time.Time{}
			r.updateHold()
		}
		return nil
	}
	s := r.state(c.symbol)
	if s.next >= 0 {
		return nil // already started
	}
	s.snap, s.anchors, s.standby = nil, nil, false
	defer func() { s.since = time.Time{} }()
	switch c.kind {
	case ctlStartAfter:
		return r.startAfter(c.symbol, s, c.next)
	case ctlStartAt:
		r.startAt(c.symbol, s, c.next)
		return nil
	}
	// A standby that holds the checkpoint's own last trade has carried the
	// symbol since: nothing after it can be missing. So has one that
	// carried it since before the checkpoint (a second's margin for the
	// nodes' clocks) and saw no trade.
	covered := false
	for _, t := range s.pending {
		covered = covered || t.ID == c.next-1
	}
	if c.kind == ctlResume && len(s.pending) == 0 && !s.since.IsZero() && s.since.Before(c.asOf.Add(-time.Second)) {
		covered = true
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
	switch {
	case c.kind == ctlResume && s.next == c.next && len(s.pending) == 0 && !covered:
		s.behind = true
		s.gapAt = time.Now().Add(-r.gapWait)
		r.updateHold()
	case len(s.pending) > 0 && s.gapAt.IsZero():
		// Kept as a standby, which waits for no gap: the gap to the
		// buffer is filled now, the symbol held meanwhile.
		s.gapAt = time.Now().Add(-r.gapWait)
		r.updateHold()
	}
	if c.kind == ctlResume {
		first := int64(-1)
		if len(s.pending) > 0 {
			first = s.pending[0].ID
		}
		// from_buffer: the standby's buffer continued the checkpoint
		// (or vouched that nothing followed it), so no REST is needed.
		r.log.Info("symbol resumed from a checkpoint", "symbol", c.symbol, "from_id", c.next, "next", s.next,
			"from_buffer", covered || s.next > c.next, "behind", s.behind, "pending", len(s.pending), "first_pending", first)
	}
	return nil
}

// offerSnapshot answers those waiting for s's anchor when its snapshot is
// usable: it holds trades, and the buffered trades reach back to the one
// after its last without one of them straddling it.
func (r *Router) offerSnapshot(s *symState) {
	k := s.snap
	if len(s.anchors) == 0 || k == nil || k.Trades == 0 || k.LastTradeID < 0 {
		return
	}
	for _, t := range s.pending {
		if t.FirstID <= k.LastTradeID && t.LastID > k.LastTradeID {
			return // taken inside this aggregate trade; wait for a later one
		}
	}
	if len(s.pending) > 0 && s.pending[0].FirstID > k.LastTradeID+1 {
		return // trades between the snapshot and the buffer are unseen
	}
	for _, ch := range s.anchors {
		ch <- *k
	}
	s.anchors = nil
}

// startAfter starts s at the trade after trade id last. The aggregate
// trade that ends at last gives the exact id to go on from; failing that,
// the next trade must begin right after last.
func (r *Router) startAfter(symbol string, s *symState, last int64) error {
	i := 0
	for i < len(s.pending) && s.pending[i].LastID <= last {
		i++
	}
	switch {
	case i > 0 && s.pending[i-1].LastID == last:
		s.next = s.pending[i-1].ID + 1
	case i < len(s.pending) && s.pending[i].FirstID == last+1:
		s.next = s.pending[i].ID
	case len(s.pending) == 0:
		s.after = last // the next trade to arrive settles it
		return nil
	default:
		return errNoAnchor
	}
	r.release(symbol, s)
	return nil
}

// startAt starts s at its first trade at or after time at: those before it
// are in the closed klines the seed was built from.
func (r *Router) startAt(symbol string, s *symState, at int64) {
	i := 0
	for i < len(s.pending) && s.pending[i].Time < at {
		i++
	}
	switch {
	case i > 0:
		s.next = s.pending[i-1].ID + 1
	case i < len(s.pending):
		s.next = s.pending[i].ID
	default:
		s.at = at
		return
	}
	r.release(symbol, s)
}

// take handles one delivered item.
func (r *Router) take(it item) {
	if len(r.down) == 0 || !r.down[it.conn] { // a lost connection's last items do not count
		r.alive[it.conn] = max(r.alive[it.conn], it.at)
	}
	if it.symbol == "" {
		return
	}
	s := r.state(it.symbol)
	if it.snap != nil {
		if s.next < 0 {
			s.snap = it.snap
			r.stats.Snapshots.Add(1)
			r.offerSnapshot(s)
		}
		return
	}
	if s.next < 0 {
		if !r.settle(it.symbol, s, it.trade) {
			r.buffer(s, it.trade)
			r.offerSnapshot(s)
			return
		}
	}
	r.accept(it.symbol, s, it.trade, it.received)
}

// settle starts s, waiting for its first trade after a seed, when t is
// that trade; it reports whether s is started.
func (r *Router) settle(symbol string, s *symState, t kline.Trade) bool {
	switch {
	case s.after >= 0 && t.LastID <= s.after:
		s.next = t.ID + 1 // already in the seed: the next one follows
	case s.after >= 0 && t.FirstID == s.after+1:
		s.next = t.ID
	case s.after >= 0:
		// The seed's trade was inside t, or trades went unseen between:
		// the seed cannot be continued exactly; repair from klines.
		r.log.Info("first trade does not continue the seed; resyncing from klines", "symbol", symbol, "seed_last", s.after, "first", t.FirstID)
		s.resync, s.gapAt = max(t.Time, 1), time.Now().Add(-r.gapWait)
		s.after = -1
		return false
	case s.at > 0 && t.Time >= s.at:
		s.next = t.ID
	default:
		return false
	}
	s.after, s.at = -1, 0
	return true
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

// updateHold recomputes the holds of symbols that may be missing trades:
// waiting on a gap, a lost connection, a resync, or a start. A hold older
// than holdMax is released: that symbol's klines close by the clock and
// are corrected when its gap is repaired.
func (r *Router) updateHold() {
	now := time.Now()
	holds := map[string]int64{}
	for sym, s := range r.syms {
		// A symbol waiting for its first trade after a seed is not held:
		// its seed is whole, and the watermark covers what is in flight.
		if len(s.pending) == 0 && !s.suspect && !s.behind && s.resync == 0 || s.standby {
			s.heldSince, s.unheld = time.Time{}, false
			continue
		}
		if s.heldSince.IsZero() {
			s.heldSince = now
		}
		if now.Sub(s.heldSince) > r.holdMax {
			if !s.unheld {
				s.unheld = true
				r.stats.Released.Add(1)
				r.log.Warn("symbol still missing trades; its klines close by the clock and are corrected on repair",
					"symbol", sym, "held_for", r.holdMax)
			}
			continue
		}
		t := s.lastTime
		if (s.next < 0 || t == 0) && len(s.pending) > 0 {
			t = s.pending[0].Time - 1
		}
		if t <= 0 {
			t = 1 // nothing known yet: hold everything
		}
		holds[sym] = t
	}
	r.holds.Store(&holds)
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
		if s.behind && !s.filling {
			// The sequence goes on from where it resumed: nothing was missed.
			s.behind = false
			r.updateHold()
		}
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
	} else if s.standby {
		// Only the last StandbyKeep: what a checkpoint a few seconds old
		// needs, bounded however long the symbol stands by. Trimmed once
		// the oldest is twice that old, so that each trade does not move
		// the whole buffer.
		keep := StandbyKeep.Milliseconds()
		i := 0
		for n > 0 && s.pending[0].Time < t.Time-2*keep && i < n && s.pending[i].Time < t.Time-keep {
			i++
		}
		if i > 0 {
			r.stats.Buffered.Add(-int64(i))
			s.pending = append(s.pending[:0], s.pending[i:]...)
		}
		s.pending = append(s.pending, t)
	} else {
		if n >= r.maxBuf {
			// Keep the oldest: the newest will come again from a fill.
			r.stats.Overflowing.Add(1)
			return
		}
		s.pending = append(s.pending, t)
	}
	r.stats.Buffered.Add(1)
	if s.gapAt.IsZero() && !s.standby {
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
		if len(s.pending) == 0 && cap(s.pending) > 32 {
			// A start or a gap buffered many; keeping that room for every
			// symbol that ever waited held hundreds of MB at 1M trades/s.
			s.pending = nil
		}
	}
	if len(s.pending) == 0 && !s.suspect && !s.behind && !s.gapAt.IsZero() {
		s.gapAt = time.Time{}
		r.updateHold()
	}
}

func (r *Router) checkGaps(ctx context.Context) {
	now := time.Now()
	for sym, s := range r.syms {
		if s.filling || now.Sub(s.gapAt) < r.gapWait {
			continue
		}
		if s.resync == 0 && s.next >= 0 && !s.down && r.resyncer != nil && r.needsKlines(s) {
			// Lost trades of unknown number, a gap of more than a page, or
			// older than aggTrades keeps: klines repair it for a few weight.
			r.toResync(sym, s, "gap")
		}
		if s.resync != 0 {
			if s.down {
				continue // the repair needs the stream back
			}
			s.filling = true
			r.stats.Resyncs.Add(1)
			// The repair starts: its symbol is held afresh, so that the
			// clock does not close klines the repair is about to seed.
			s.heldSince, s.unheld = time.Time{}, false
			since := s.resync
			r.wg.Go(func() {
				err := r.resyncer.Resync(ctx, sym, since)
				select {
				case r.resyncs <- resyncResult{sym, err}:
				case <-ctx.Done():
				}
			})
			continue
		}
		if s.next < 0 || s.down || (len(s.pending) == 0 && !s.suspect && !s.behind) {
			continue // nothing to fill, or nothing to gain before the stream is back
		}
		s.filling = true
		r.stats.Fills.Add(1)
		from, epoch := s.next, s.epoch
		r.wg.Go(func() {
			ts, err := r.filler.AggTrades(ctx, sym, from, -1, fillIDs)
			select {
			case r.fills <- fillResult{sym, from, epoch, ts, err}:
			case <-ctx.Done():
			}
		})
	}
}

// needsKlines tells whether s's gap is repaired from klines rather than
// trade by trade.
func (r *Router) needsKlines(s *symState) bool {
	switch {
	case s.suspect:
		return true // a lost connection: how many trades are missing is unknown
	case len(s.pending) == 0:
		return false
	case s.pending[0].ID-s.next > fillIDs:
		return true
	}
	return s.lastTime > 0 && r.now().UnixMilli()-s.lastTime > retentionMs
}

// toResync marks s for a repair from klines from its last trade on: not
// started again until the resync calls Start; what arrives meanwhile waits,
// and the hold keeps its klines from closing early.
func (r *Router) toResync(symbol string, s *symState, why string) {
	r.log.Info("repairing a trade gap from klines", "symbol", symbol, "why", why,
		"from", time.UnixMilli(s.lastTime).UTC())
	s.resync, s.next, s.suspect = max(s.lastTime, 1), -1, false
	s.snap, s.after, s.at = nil, -1, 0
	s.gapAt = time.Now().Add(-r.gapWait)
	r.updateHold()
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
		s.gapAt = time.Now().Add(resyncBackoff)
		return
	}
	s.resync = 0
	r.log.Info("trade gap repaired from klines", "symbol", f.symbol)
	r.updateHold()
}

func (r *Router) filled(ctx context.Context, f fillResult) {
	s := r.syms[f.symbol]
	if s == nil {
		return
	}
	s.filling = false
	if f.err != nil && binance.IsInvalidParameter(f.err) && r.resyncer != nil {
		// Older than the exchange keeps aggregate trades (48 h).
		r.toResync(f.symbol, s, "trades no longer kept")
		return
	}
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
	if missing := r.missingMs(s); len(f.trades) == fillIDs && r.resyncer != nil && missing > longGapMs {
		r.toResync(f.symbol, s, fmt.Sprintf("%s of trades still missing after a page", time.Duration(missing)*time.Millisecond))
		return
	}
	if len(f.trades) < fillIDs && !s.down && f.epoch == s.epoch {
		// The exchange had nothing more since the connection came back:
		// the symbol is caught up.
		s.suspect, s.behind = false, false
	}
	r.release(f.symbol, s)
	switch {
	case s.down:
		s.gapAt = time.Now() // filled what it could; again after gapWait
	case len(s.pending) > 0 || s.suspect || s.behind:
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
