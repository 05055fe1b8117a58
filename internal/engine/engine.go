// Package engine owns the live klines: one goroutine holds, for every
// symbol and interval, the open kline and the last closed one in a flat slot
// table (slot = symbol·intervals + interval), applies trades, seeds and
// corrections to them, closes them on time, and hands every changed kline to
// its sinks. Nothing else touches that table, so the hot path takes no lock.
//
// Time is whatever the last Tick said it is: the engine never reads a clock,
// so tests drive it by hand and the service feeds it exchange time.
package engine

import (
	"context"
	"fmt"
	"slices"
	"sync/atomic"
	"time"

	"github.com/klagg/klagg/internal/decimal"
	"github.com/klagg/klagg/internal/kline"
)

// Sink receives changed klines. Publish is called on the engine goroutine
// and must not block for long: the engine stalls while it runs. The slice is
// reused after Publish returns.
type Sink interface {
	Publish(updates []kline.Update)
}

// Config sets up an Engine.
type Config struct {
	Intervals []kline.Interval // sorted, shortest first
	// Grace is how long after its close time a kline without a later trade is
	// closed by the clock; trades for it arriving later still correct it.
	Grace time.Duration
	Sinks []Sink
	// Queue is the capacity of the event channel (default 1024).
	Queue int
	// Latency, if set, is told for each trade batch with a known arrival
	// time how long its first trade took from arrival to the sinks.
	Latency func(time.Duration)
}

// Stats are counters the engine keeps; read them with Engine.Stats.
type Stats struct {
	Trades     int64 // trades applied
	Duplicates int64 // trades ignored: aggregate id not above the last one seen
	Late       int64 // trades that corrected an already closed kline
	TooLate    int64 // trades older than the last closed kline; sync repairs these
	Partial    int64 // trades straddling a seed snapshot's last trade id
	Unknown    int64 // trades for a symbol the engine does not hold
	Closed     int64 // klines closed
	// Unamended counts longer-interval klines a correction came too late
	// for: the engine no longer held them, so they keep klagg's value.
	Unamended int64
}

// Engine is the single owner of the live kline table.
type Engine struct {
	ivs     []kline.Interval
	grace   int64
	sinks   []Sink
	latency func(time.Duration)
	events  chan event

	// Everything below is owned by the Run goroutine.
	index   map[string]int // symbol → symbol index
	symbols []symbol
	cur     []kline.Kline // open kline per slot; OpenTime 0 = not started
	prev    []kline.Kline // last closed kline per slot; OpenTime 0 = none
	floor   []int64       // trades with LastID ≤ floor are already in the slot (seed)
	// seeded: the slot's kline opening at iv.Open(seeded) holds every
	// trade before this time (seed), open or, once rolled, closed.
	seeded []int64
	// exact is the open time of the slot's closed kline last taken whole
	// from the exchange (a correction of it, not of a minute in it): a
	// later correction of one of its minutes is in it already.
	exact []int64
	// recent holds, per symbol, the 1m klines closed before the 1m slot's
	// prev, direct-mapped by minute, so that a reconciliation arriving
	// minutes late can still be carried into the longer intervals.
	recent []kline.Kline
	// final holds, per symbol and mapped as recent, the open times of the
	// minutes the engine held and took from the exchange's klines
	// (reconciled, repaired): they and the longer klines amended with them
	// hold every trade, so a trade of theirs arriving late goes into none.
	final      []int64
	dirty      []bool
	dirtyQ     []int32
	out        []kline.Update
	now        int64
	limit      []int64 // per symbol, the time the clock may close up to
	wasHeld    bool    // the last tick held some symbol back
	partials   int     // symbols marked partial (markPartial)
	stats      Stats
	shared     sharedStats
	free       []int
	nextSeries uint32
	loose      map[kline.Key]uint32 // series of symbols not held; see series
	started    atomic.Bool
}

type symbol struct {
	name   string
	lastID int64  // highest aggregate id applied
	series uint32 // Update.Series of its first interval; the others follow
	active bool
	// partial is the trade time before which the symbol's klines are
	// complete while it is missing trades past its hold (0: whole): a
	// kline closing at or after it goes out Partial. repaired is the
	// partial time a seed has since made whole (the repair reseeds, then
	// corrects what closed before), which the router still reports until
	// the repair is done.
	partial, repaired int64
}

type eventKind uint8

const (
	evTrades eventKind = iota
	evAdd
	evRemove
	evSeed
	evCorrect
	evTick
	evSnapshot
	evStates
	evDrop
)

type event struct {
	kind     eventKind
	symbol   string
	trades   []kline.Trade
	interval kline.Interval
	kline    kline.Kline
	now      int64            // tick
	holds    map[string]int64 // tick: symbols closed only up to their time
	released map[string]int64 // tick: symbols closed by the clock though missing trades
	through  int64            // seed
	received time.Time
	reply    chan<- []kline.Update
	names    []string       // states
	states   chan<- []State // states
}

// New returns an engine; start it with Run.
func New(cfg Config) (*Engine, error) {
	if len(cfg.Intervals) == 0 {
		return nil, fmt.Errorf("engine: no intervals configured")
	}
	q := cfg.Queue
	if q <= 0 {
		q = 1024
	}
	e := &Engine{
		ivs:        append([]kline.Interval(nil), cfg.Intervals...),
		grace:      cfg.Grace.Milliseconds(),
		sinks:      cfg.Sinks,
		latency:    cfg.Latency,
		events:     make(chan event, q),
		index:      map[string]int{},
		nextSeries: 1,
		loose:      map[kline.Key]uint32{},
	}
	return e, nil
}

// Intervals returns the engine's intervals, shortest first.
func (e *Engine) Intervals() []kline.Interval { return e.ivs }

// Stats returns the counters as of the end of the last event processed.
func (e *Engine) Stats() Stats {
	return Stats{
		Trades: e.shared.trades.Load(), Duplicates: e.shared.duplicates.Load(),
		Late: e.shared.late.Load(), TooLate: e.shared.tooLate.Load(),
		Partial: e.shared.partial.Load(), Unknown: e.shared.unknown.Load(),
		Closed: e.shared.closed.Load(), Unamended: e.shared.unamended.Load(),
	}
}

// sharedStats mirrors Stats for readers on other goroutines; the engine
// stores into it after each event, so the hot path counts in plain fields.
type sharedStats struct {
	trades, duplicates, late, tooLate, partial, unknown, closed, unamended atomic.Int64
}

// Trades hands a batch of one symbol's trades, in aggregate-id order, to the
// engine, which keeps the slice. received is when the first of them reached
// klagg (zero if unknown); Config.Latency is told how long it took from
// there to the sinks. It blocks while the event queue is full.
func (e *Engine) Trades(ctx context.Context, symbol string, trades []kline.Trade, received time.Time) error {
	return e.send(ctx, event{kind: evTrades, symbol: symbol, trades: trades, received: received})
}

// AddSymbol starts keeping klines for symbol. Adding a held symbol is a no-op.
func (e *Engine) AddSymbol(ctx context.Context, symbol string) error {
	return e.send(ctx, event{kind: evAdd, symbol: symbol})
}

// RemoveSymbol closes symbol's open klines and stops keeping it.
func (e *Engine) RemoveSymbol(ctx context.Context, symbol string) error {
	return e.send(ctx, event{kind: evRemove, symbol: symbol})
}

// Seed replaces symbol's open kline of iv with k, a snapshot that already
// holds every trade up to k.LastTradeID (from a kline stream event or from
// history), and, if through is not 0, every trade before exchange time
// through; later trades continue it without counting any twice, and
// corrections of minutes before through are not carried into it again.
func (e *Engine) Seed(ctx context.Context, symbol string, iv kline.Interval, k kline.Kline, through int64) error {
	return e.send(ctx, event{kind: evSeed, symbol: symbol, interval: iv, kline: k, through: through})
}

// Correct replaces a closed kline with the exchange's value (reconciliation).
// It changes the engine's copy if it still holds that kline, and is passed on
// to the sinks either way.
func (e *Engine) Correct(ctx context.Context, symbol string, iv kline.Interval, k kline.Kline) error {
	return e.send(ctx, event{kind: evCorrect, symbol: symbol, interval: iv, kline: k})
}

// Tick tells the engine the time (exchange time, ms); klines whose close
// time plus grace has passed are closed, except that a symbol in holds is
// closed only up to its time there: it may still be missing trades. The
// engine reads holds during the call's event only; it must not change.
func (e *Engine) Tick(ctx context.Context, now time.Time, holds, released map[string]int64) error {
	return e.send(ctx, event{kind: evTick, now: now.UnixMilli(), holds: holds, released: released})
}

// Snapshot returns the open kline of every interval of symbol, and the last
// closed one where the engine holds it, in interval order (closed first).
func (e *Engine) Snapshot(ctx context.Context, symbol string) ([]kline.Update, error) {
	reply := make(chan []kline.Update, 1)
	if err := e.send(ctx, event{kind: evSnapshot, symbol: symbol, reply: reply}); err != nil {
		return nil, err
	}
	select {
	case r := <-reply:
		return r, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// State is where a symbol stands in its trades: the last aggregate id
// applied and the open kline of every interval holding every trade up to
// it. It is enough to go on from elsewhere: seed the open klines and start
// the trades after LastID (a cluster's checkpoint).
type State struct {
	Symbol string
	LastID int64         // -1: no trade applied yet
	Open   []kline.Kline // by interval, shortest first; OpenTime 0: not started
}

// States returns the states of the named symbols the engine keeps; others
// are left out.
func (e *Engine) States(ctx context.Context, symbols []string) ([]State, error) {
	reply := make(chan []State, 1)
	if err := e.send(ctx, event{kind: evStates, names: symbols, states: reply}); err != nil {
		return nil, err
	}
	select {
	case r := <-reply:
		return r, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Drop stops keeping symbol without closing its open klines: another
// owner goes on with them.
func (e *Engine) Drop(ctx context.Context, symbol string) error {
	return e.send(ctx, event{kind: evDrop, symbol: symbol})
}

func (e *Engine) send(ctx context.Context, ev event) error {
	select {
	case e.events <- ev:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Run processes events until ctx ends. Events already queued when ctx ends
// are processed first, so a caller that stops its producers and then cancels
// loses nothing.
func (e *Engine) Run(ctx context.Context) error {
	if e.started.Swap(true) {
		return fmt.Errorf("engine: Run called twice")
	}
	for {
		select {
		case ev := <-e.events:
			e.handle(ev)
		case <-ctx.Done():
			for {
				select {
				case ev := <-e.events:
					e.handle(ev)
				default:
					return nil
				}
			}
		}
	}
}

func (e *Engine) handle(ev event) {
	switch ev.kind {
	case evTrades:
		if si, ok := e.index[ev.symbol]; ok && e.symbols[si].active {
			e.applyTrades(si, ev.trades)
		} else {
			e.stats.Unknown += int64(len(ev.trades))
		}
	case evAdd:
		e.addSymbol(ev.symbol)
	case evRemove:
		e.removeSymbol(ev.symbol)
	case evSeed:
		e.seed(ev.symbol, ev.interval, ev.kline, ev.through)
	case evCorrect:
		e.correct(ev.symbol, ev.interval, ev.kline)
	case evTick:
		e.markPartial(ev.released)
		e.tick(ev.now, ev.holds)
	case evSnapshot:
		ev.reply <- e.snapshot(ev.symbol)
		return
	case evStates:
		ev.states <- e.statesOf(ev.names)
		return
	case evDrop:
		e.drop(ev.symbol)
	}
	e.flush()
	if e.latency != nil && !ev.received.IsZero() {
		e.latency(time.Since(ev.received))
	}
}

func (e *Engine) addSymbol(name string) {
	if si, ok := e.index[name]; ok {
		e.symbols[si].active = true
		return
	}
	n := len(e.ivs)
	var si int
	if len(e.free) > 0 {
		si, e.free = e.free[len(e.free)-1], e.free[:len(e.free)-1]
		for s := si * n; s < (si+1)*n; s++ {
			e.cur[s], e.prev[s], e.floor[s], e.seeded[s], e.exact[s] = kline.Kline{}, kline.Kline{}, 0, 0, 0
		}
		clear(e.recent[si*recentMinutes : (si+1)*recentMinutes])
		clear(e.final[si*recentMinutes : (si+1)*recentMinutes])
	} else {
		si = len(e.symbols)
		e.symbols = append(e.symbols, symbol{})
		e.recent = append(e.recent, make([]kline.Kline, recentMinutes)...)
		e.final = append(e.final, make([]int64, recentMinutes)...)
		for range n {
			e.cur = append(e.cur, kline.Kline{})
			e.prev = append(e.prev, kline.Kline{})
			e.floor = append(e.floor, 0)
			e.seeded = append(e.seeded, 0)
			e.exact = append(e.exact, 0)
			e.dirty = append(e.dirty, false)
		}
	}
	e.symbols[si] = symbol{name: name, lastID: -1, active: true, series: e.nextSeries}
	e.nextSeries += uint32(n)
	e.index[name] = si
}

func (e *Engine) removeSymbol(name string) {
	si, ok := e.index[name]
	if !ok {
		return
	}
	n := len(e.ivs)
	for s := si * n; s < (si+1)*n; s++ {
		if k := &e.cur[s]; k.OpenTime != 0 && k.Trades > 0 {
			// A delisted symbol's last kline will never see another trade.
			k.Closed = true
			e.stats.Closed++
			e.emit(si, s, k)
		}
	}
	e.forget(si, name)
}

func (e *Engine) drop(name string) {
	// Slots already marked dirty are not emitted: flush skips inactive
	// symbols.
	if si, ok := e.index[name]; ok {
		e.forget(si, name)
	}
}

func (e *Engine) statesOf(names []string) []State {
	out := make([]State, 0, len(names))
	n := len(e.ivs)
	for _, name := range names {
		si, ok := e.index[name]
		if !ok || !e.symbols[si].active {
			continue
		}
		out = append(out, State{Symbol: name, LastID: e.symbols[si].lastID, Open: slices.Clone(e.cur[si*n : (si+1)*n])})
	}
	return out
}

// forget frees symbol si's slots; the table no longer holds name.
func (e *Engine) forget(si int, name string) {
	n := len(e.ivs)
	for j, iv := range e.ivs {
		// Later corrections must share the series of what was just emitted.
		e.loose[kline.Key{Symbol: name, Interval: iv.String()}] = e.slotSeries(si*n + j)
	}
	// Cleared, or the clock would go on rolling the slots under no name.
	clear(e.cur[si*n : (si+1)*n])
	clear(e.prev[si*n : (si+1)*n])
	delete(e.index, name)
	e.symbols[si] = symbol{}
	e.free = append(e.free, si)
}

// applyTrades is the hot path: every trade touches every interval's slot.
func (e *Engine) applyTrades(si int, trades []kline.Trade) {
	n := len(e.ivs)
	base := si * n
	sym := &e.symbols[si]
	cur := e.cur[base : base+n]
	floor := e.floor[base : base+n]
	applied := int64(0)
	for i := range trades {
		t := &trades[i]
		if t.ID <= sym.lastID {
			e.stats.Duplicates++
			continue
		}
		sym.lastID = t.ID
		applied++
		if one := cur[0].OpenTime; t.Time < one && e.isOneMinute(base) {
			if m := t.Time - t.Time%60_000; e.final[si*recentMinutes+int(m/60_000%recentMinutes)] == m {
				e.stats.TooLate++ // its minute, and the klines holding it, are the exchange's already
				continue
			}
		}
		pq := decimal.Mul(t.Price, t.Qty)
		for j := range cur {
			k := &cur[j]
			if t.Time > k.CloseTime || t.Time < k.OpenTime {
				e.misfit(si, base+j, t, pq)
				continue
			}
			if t.FirstID <= floor[j] {
				if t.LastID > floor[j] {
					e.stats.Partial++
				}
				continue
			}
			k.AddProduct(t, pq)
		}
	}
	e.stats.Trades += applied
	if applied > 0 {
		for s := base; s < base+n; s++ {
			e.markDirty(s)
		}
	}
}

// misfit handles a trade outside the open kline's range: the first trade of
// a slot, a trade that closes the open kline, or a late one. A late trade
// goes into its 1m kline where the engine still holds it, so that a longer
// kline taking it holds what its minutes hold: a correction of the minute
// moves the longer kline by what the minute lacked, once. A minute it no
// longer holds is corrected without touching the longer klines, which
// keep the trade.
func (e *Engine) misfit(si, s int, t *kline.Trade, pq decimal.U128) {
	iv := e.ivs[s%len(e.ivs)]
	k := &e.cur[s]
	switch {
	case k.OpenTime == 0:
		*k = kline.Empty(iv, iv.Open(t.Time), t.Price)
		k.AddProduct(t, pq)
	case t.Time > k.CloseTime:
		e.roll(si, s, iv, iv.Open(t.Time))
		k.AddProduct(t, pq)
	default:
		p := &e.prev[s]
		if p.OpenTime != 0 && t.Time >= p.OpenTime && t.Time <= p.CloseTime {
			if e.exact[s] == p.OpenTime {
				return // taken whole from the exchange: it holds the trade
			}
			p.AddProduct(t, pq)
			e.stats.Late++
			e.emit(si, s, p)
			e.followPrev(s, iv)
			return
		}
		if e.isOneMinute(s) {
			// A minute closed earlier (its symbol's hold ran out while
			// its trades were read).
			if r := e.recentAt(si, iv.Open(t.Time)); r.OpenTime == iv.Open(t.Time) {
				r.AddProduct(t, pq)
				e.stats.Late++
				e.emit(si, s, r)
				return
			}
		}
		if s%len(e.ivs) == 0 { // a trade, counted once
			e.stats.TooLate++
		}
	}
}

// roll closes slot s's open kline and every empty one after it, up to the
// kline opening at open, which becomes the open kline.
func (e *Engine) roll(si, s int, iv kline.Interval, open int64) {
	k := &e.cur[s]
	oneMinute := e.isOneMinute(s)
	for k.OpenTime < open {
		k.Closed = true
		e.stats.Closed++
		e.emit(si, s, k)
		if p := &e.prev[s]; oneMinute && p.OpenTime != 0 {
			*e.recentAt(si, p.OpenTime) = *p
		}
		e.prev[s] = *k
		*k = kline.Empty(iv, iv.Next(k.OpenTime), k.Close)
		// seeded stays: a correction of a minute the seed held must not
		// reach the kline once it has closed either.
		e.floor[s] = 0
	}
	e.markDirty(s)
}

func (e *Engine) tick(now int64, holds map[string]int64) {
	if now < e.now || now == e.now && len(holds) == 0 && !e.wasHeld {
		return
	}
	e.now, e.wasHeld = now, len(holds) > 0
	if cap(e.limit) < len(e.symbols) {
		e.limit = make([]int64, len(e.symbols))
	}
	limit := e.limit[:len(e.symbols)]
	for i := range limit {
		limit[i] = now
	}
	for name, h := range holds {
		if si, ok := e.index[name]; ok {
			limit[si] = min(now, h)
		}
	}
	n := len(e.ivs)
	for s := range e.cur {
		k := &e.cur[s]
		if k.OpenTime == 0 || limit[s/n] <= k.CloseTime+e.grace {
			continue
		}
		iv := e.ivs[s%n]
		e.roll(s/n, s, iv, iv.Open(limit[s/n]-e.grace))
	}
}

func (e *Engine) seed(name string, iv kline.Interval, k kline.Kline, through int64) {
	s, ok := e.slot(name, iv)
	if !ok {
		return
	}
	if sym := &e.symbols[s/len(e.ivs)]; sym.partial != 0 {
		sym.repaired, sym.partial = sym.partial, 0
	}
	c := &e.cur[s]
	switch {
	case c.OpenTime == k.OpenTime || c.OpenTime == 0:
	case c.OpenTime < k.OpenTime:
		e.roll(s/len(e.ivs), s, iv, k.OpenTime)
	default:
		// The clock rolled the slot past the seed while the symbol was
		// missing trades (its hold ran out): what it closed since lacks
		// them. The seed holds every trade up to its last, and the trades
		// after it follow, so the slot goes back to the seed and rolls
		// forward again, re-emitting each kline it closes, now whole.
		if p := &e.prev[s]; p.OpenTime >= k.OpenTime {
			*p = kline.Kline{}
		}
	}
	k.Closed = false
	k.CloseTime = iv.CloseTime(k.OpenTime)
	*c = k
	e.floor[s] = k.LastTradeID
	e.seeded[s] = through
	e.markDirty(s)
}

func (e *Engine) correct(name string, iv kline.Interval, k kline.Kline) {
	k.Closed = true
	k.CloseTime = iv.CloseTime(k.OpenTime)
	if s, ok := e.slot(name, iv); ok {
		var held *kline.Kline
		switch {
		case e.prev[s].OpenTime == k.OpenTime:
			held = &e.prev[s]
		case e.isOneMinute(s):
			if r := e.recentAt(s/len(e.ivs), k.OpenTime); r.OpenTime == k.OpenTime {
				held = r
			}
		}
		if held != nil {
			old := *held
			*held = k
			e.followPrev(s, iv)
			if e.isOneMinute(s) {
				// The longer klines now hold the exchange's minute: a
				// trade of it coming later is in them already. (A minute
				// the engine does not hold moves no longer kline, and
				// they still take such a trade.)
				e.final[s/len(e.ivs)*recentMinutes+int(k.OpenTime/60_000%recentMinutes)] = k.OpenTime
				e.amendLonger(s, &old, &k)
			} else {
				e.exact[s] = k.OpenTime
			}
		}
		if e.isOneMinute(s) {
			e.followClose(s/len(e.ivs), k.OpenTime, k.Close)
		}
	}
	e.out = append(e.out, kline.Update{Symbol: name, Interval: iv, Series: e.series(name, iv), Kline: k})
}

// followClose carries the close of symbol si's minute m, just taken from
// the exchange (with trades or flat, whether the engine held it or not),
// into the klines after it without a trade, which stand flat at the close
// before them: the minutes the engine holds up to the first with a trade,
// and the longer klines opening before that one. Those already closed
// are sent again.
func (e *Engine) followClose(si int, m, price int64) {
	n := len(e.ivs)
	s := si * n
	until := int64(1<<63 - 1) // the first minute after m with a trade
	for mm := m + 60_000; mm <= e.cur[s].OpenTime; mm += 60_000 {
		k := e.minute(si, s, mm)
		if k == nil {
			until = mm // not held: its trades are not known
			break
		}
		if k.Trades != 0 {
			until = mm
			break
		}
		e.flatten(si, s, k, price)
	}
	for sj := s + 1; sj < s+n; sj++ {
		for _, k := range []*kline.Kline{&e.prev[sj], &e.cur[sj]} {
			if k.OpenTime > m && k.OpenTime < until && k.Trades == 0 {
				e.flatten(si, sj, k, price)
			}
		}
	}
}

// flatten sets the kline k of slot s, which has no trade, flat at price,
// sending it again if it closed.
func (e *Engine) flatten(si, s int, k *kline.Kline, price int64) {
	if k.Close == price && k.Open == price {
		return
	}
	k.Open, k.High, k.Low, k.Close = price, price, price, price
	if k.Closed {
		e.emit(si, s, k)
	} else {
		e.markDirty(s)
	}
}

// series returns the Update.Series of name and iv: its slot's while the
// engine holds the symbol, else one kept for corrections to symbols it no
// longer holds (delisted), so that every version of a kline shares one.
func (e *Engine) series(name string, iv kline.Interval) uint32 {
	if s, ok := e.slot(name, iv); ok {
		return e.slotSeries(s)
	}
	key := kline.Key{Symbol: name, Interval: iv.String()}
	id, ok := e.loose[key]
	if !ok {
		id = e.nextSeries
		e.nextSeries++
		e.loose[key] = id
	}
	return id
}

// isOneMinute tells whether slot s is its symbol's 1m slot, the one whose
// closed klines the engine remembers and whose corrections reach the
// longer intervals.
func (e *Engine) isOneMinute(s int) bool {
	return s%len(e.ivs) == 0 && e.ivs[0].Duration() == time.Minute
}

// recentMinutes is how many closed 1m klines per symbol the engine keeps
// for late reconciliation: corrections up to about a quarter of an hour
// late still reach the longer intervals.
const recentMinutes = 16

func (e *Engine) recentAt(si int, open int64) *kline.Kline {
	return &e.recent[si*recentMinutes+int(open/60_000%recentMinutes)]
}

// minute returns symbol si's 1m kline opening at open where the engine
// still holds it (slot s is the symbol's 1m slot).
func (e *Engine) minute(si, s int, open int64) *kline.Kline {
	switch {
	case e.cur[s].OpenTime == open:
		return &e.cur[s]
	case e.prev[s].OpenTime == open:
		return &e.prev[s]
	}
	if r := e.recentAt(si, open); r.OpenTime == open {
		return r
	}
	return nil
}

// followPrev moves slot s's open kline to the previous close while it has no
// trade of its own, after that close changed.
func (e *Engine) followPrev(s int, iv kline.Interval) {
	p := &e.prev[s]
	if c := &e.cur[s]; c.Trades == 0 && c.OpenTime == iv.Next(p.OpenTime) {
		c.Open, c.High, c.Low, c.Close = p.Close, p.Close, p.Close, p.Close
		e.markDirty(s)
	}
}

// amendLonger carries a corrected 1m kline (slot s, old → ex) into the
// klines of the symbol's longer intervals that contain that minute: the open
// one, or the one that has just closed, which is re-emitted.
func (e *Engine) amendLonger(s int, old, ex *kline.Kline) {
	n := len(e.ivs)
	si := s / n
	m := ex.OpenTime
	for sj := s + 1; sj < (si+1)*n; sj++ {
		t, closed := &e.cur[sj], false
		if m >= t.OpenTime && m <= t.CloseTime && m < e.seeded[sj] {
			continue // seeded from the exchange's own klines after this minute ended
		}
		if m < t.OpenTime || m > t.CloseTime {
			t, closed = &e.prev[sj], true
			if m < t.OpenTime || m > t.CloseTime {
				e.stats.Unamended++
				continue
			}
			if m < e.seeded[sj] && t.OpenTime == e.ivs[sj%n].Open(e.seeded[sj]) {
				// Seeded from the exchange's klines after this minute
				// ended, and closed by the clock since (a repair's
				// corrections may follow its seed by seconds).
				continue
			}
			if e.exact[sj] == t.OpenTime {
				continue // taken whole from the exchange since it closed
			}
		}
		// Trade counts are exact, so the minute holds t's first trade when
		// no trade of t is earlier, and its last when none is later; the
		// later ones are in the minutes the engine still holds.
		later := int64(0)
		for mm := m + 60_000; mm <= t.CloseTime && mm <= e.cur[s].OpenTime; mm += 60_000 {
			if k := e.minute(si, s, mm); k != nil {
				later += k.Trades
			}
		}
		earlier := t.Trades - old.Trades - later
		t.Amend(old, ex, earlier == 0, later == 0)
		if ex.FirstTradeID < 0 && ex.Trades != old.Trades {
			// The minute's trade ids are unknown, so are t's.
			t.FirstTradeID, t.LastTradeID = -1, -1
		}
		if closed {
			e.emit(si, sj, t)
			e.followPrev(sj, e.ivs[sj%n])
		} else {
			e.markDirty(sj)
		}
	}
}

func (e *Engine) snapshot(name string) []kline.Update {
	si, ok := e.index[name]
	if !ok {
		return nil
	}
	n := len(e.ivs)
	var out []kline.Update
	for j, iv := range e.ivs {
		s := si*n + j
		if e.prev[s].OpenTime != 0 {
			out = append(out, kline.Update{Symbol: name, Interval: iv, Series: e.slotSeries(s), Kline: e.prev[s]})
		}
		if e.cur[s].OpenTime != 0 {
			out = append(out, kline.Update{Symbol: name, Interval: iv, Series: e.slotSeries(s), Kline: e.cur[s]})
		}
	}
	return out
}

func (e *Engine) slot(name string, iv kline.Interval) (int, bool) {
	si, ok := e.index[name]
	if !ok {
		return 0, false
	}
	for j, v := range e.ivs {
		if v.String() == iv.String() {
			return si*len(e.ivs) + j, true
		}
	}
	return 0, false
}

func (e *Engine) emit(si, s int, k *kline.Kline) {
	sym := &e.symbols[si]
	e.out = append(e.out, kline.Update{Symbol: sym.name, Interval: e.ivs[s%len(e.ivs)], Series: e.slotSeries(s), Kline: *k,
		Partial: sym.partial != 0 && k.CloseTime >= sym.partial})
}

// markPartial takes the symbols missing trades past their holds (the
// router's Released): their klines from then on go out Partial.
func (e *Engine) markPartial(released map[string]int64) {
	if len(released) == 0 && e.partials == 0 {
		return
	}
	e.partials = 0
	for si := range e.symbols {
		sym := &e.symbols[si]
		from := released[sym.name]
		if from == 0 {
			sym.repaired = 0
		}
		if from == sym.repaired {
			from = 0
		}
		sym.partial = from
		if from != 0 || sym.repaired != 0 {
			e.partials++
		}
	}
}

// slotSeries is the Update.Series of slot s.
func (e *Engine) slotSeries(s int) uint32 {
	n := len(e.ivs)
	return e.symbols[s/n].series + uint32(s%n)
}

func (e *Engine) markDirty(s int) {
	if !e.dirty[s] {
		e.dirty[s] = true
		e.dirtyQ = append(e.dirtyQ, int32(s))
	}
}

// flush hands closed klines (already in out) and the open klines of dirty
// slots to the sinks, then publishes the counters.
func (e *Engine) flush() {
	n := len(e.ivs)
	for _, s := range e.dirtyQ {
		e.dirty[s] = false
		if e.cur[s].OpenTime != 0 && e.symbols[int(s)/n].active {
			e.emit(int(s)/n, int(s), &e.cur[s])
		}
	}
	e.dirtyQ = e.dirtyQ[:0]
	if len(e.out) > 0 {
		for _, sink := range e.sinks {
			sink.Publish(e.out)
		}
		clear(e.out)
		e.out = e.out[:0]
	}
	st, sh := &e.stats, &e.shared
	sh.trades.Store(st.Trades)
	sh.duplicates.Store(st.Duplicates)
	sh.late.Store(st.Late)
	sh.tooLate.Store(st.TooLate)
	sh.unamended.Store(st.Unamended)
	sh.partial.Store(st.Partial)
	sh.unknown.Store(st.Unknown)
	sh.closed.Store(st.Closed)
}
