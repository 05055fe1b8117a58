package ingest

import (
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"time"

	"github.com/klagg/klagg/internal/kline"
)

// This file is the sequencer: one symbol's position in its trade sequence,
// as an explicit phase moved by step, a function of the state, one message
// and the time it is given. It reads no clock and does no I/O; what the
// router must do (forward trades, fetch from an id, repair from klines,
// answer a seeder) comes back as effects. Every rule about gaps, holds,
// repairs and retention lives here, and sequence_test.go is its table.

// phase is where a symbol's trade sequence stands.
type phase uint8

const (
	// unstarted: trades are buffered, and the newest 1m kline event kept,
	// until a start says where the sequence begins.
	unstarted phase = iota
	// standby: another node owns the symbol; its last StandbyKeep of
	// trades are kept for a takeover, and no gap is waited for.
	standby
	// settling: seeded; the next trade to arrive says where the sequence
	// goes on (the trade after id after, or the first at or after at).
	settling
	// live: trades are forwarded in id order; later ones wait in pending
	// while the gap before them is filled.
	live
	// resyncing: a gap too long, too old or of unknown size; trades wait
	// until the repair from klines starts the symbol again.
	resyncing
)

var phaseNames = [...]string{"unstarted", "standby", "settling", "live", "resyncing"}

func (p phase) String() string { return phaseNames[p] }

// msgKind names a sequencer input.
type msgKind uint8

const (
	msgTrade       msgKind = iota // trade arrived on a connection
	msgSnapshot                   // a 1m kline event: snap
	msgStart                      // start at id, after trades (consecutive, possibly none)
	msgResume                     // start at id, taken over from a checkpoint written at asOf
	msgResumeQuiet                // start at the first trade after asOf, if the standby vouches for it
	msgStartAfter                 // start at the trade after trade id id (a snapshot's L)
	msgStartAt                    // start at the first trade at or after time id (ms)
	msgStandby                    // keep the trades for a takeover
	msgAnchor                     // a seeder waits for a snapshot the buffer continues
	msgLost                       // the symbol's connection is lost
	msgBack                       // the symbol's connection is back
	msgFilled                     // a REST aggTrades fill from id, asked at epoch, returned trades or err
	msgResynced                   // the repair from klines returned err
	msgTick                       // time passes; exchange time is at
)

// msg is one input to step. A struct rather than an interface, so that
// the trade on the hot path is not boxed.
type msg struct {
	kind     msgKind
	trade    kline.Trade
	received time.Time // msgTrade: when it arrived
	snap     *kline.Kline
	id       int64
	trades   []kline.Trade
	asOf     time.Time // msgResume, msgResumeQuiet: when the checkpoint was written
	epoch    int       // msgFilled
	err      error     // msgFilled, msgResynced
	// at is exchange time (ms): msgTick's present, or, for msgFilled,
	// the newest time any connection has delivered up to.
	at int64
	// invalid reports that a fill's error is the exchange refusing the ids
	// as older than it keeps.
	invalid bool
}

// rules are the sequencer's settings.
type rules struct {
	gapWait time.Duration // a gap may stand this long before REST is asked
	holdMax time.Duration // a symbol missing trades holds its klines back at most this long
	maxBuf  int           // most trades a started symbol buffers behind a gap
}

// note is a log line an effect asks for.
type note struct {
	level slog.Level
	msg   string
	args  []any
}

// effects are what one step asks the router to do. The router reuses one
// value, so a trade's step allocates nothing.
type effects struct {
	forward    []kline.Trade // to the sink, in order
	received   time.Time     // when the first forwarded trade arrived, if it came from a connection
	fetch      bool          // fetch aggTrades from fetchFrom, tagged fetchEpoch
	fetchFrom  int64
	fetchEpoch int
	resync     int64        // repair from klines from this trade time (0: none)
	anchor     *kline.Kline // answer the seeders waiting for an anchor
	answer     error        // a start's answer: errNoAnchor, errNotCovered
	notes      []note

	// Counters.
	duplicates, buffered, overflowing, filled, unfillable, fills, resyncs, released, snapshots int64
}

func (fx *effects) reset() {
	*fx = effects{forward: fx.forward[:0], notes: fx.notes[:0]}
}

func (fx *effects) log(level slog.Level, msg string, args ...any) {
	fx.notes = append(fx.notes, note{level, msg, args})
}

// errNoAnchor is msgStartAfter's answer when the trades buffered do not
// continue the snapshot exactly (one taken inside a multi-fill aggregate
// trade, or a gap).
var errNoAnchor = errors.New("the buffered trades do not continue the snapshot")

// errNotCovered is msgResumeQuiet's answer when the standby cannot vouch
// for the symbol.
var errNotCovered = errors.New("the standby did not carry the symbol since the checkpoint without a trade")

// sequence is one symbol's position in its trade sequence.
type sequence struct {
	phase    phase
	next     int64         // live: the id the sink needs next
	lastTime int64         // trade time of the last trade forwarded
	pending  []kline.Trade // trades not yet forwarded, sorted by id
	after    int64         // settling: the seed's last trade id (-1: settle by at)
	at       int64         // settling: the seed holds every trade before this time (ms)
	snap     *kline.Kline  // not live: the newest 1m kline event
	// anchoring: a seeder waits for a snapshot the buffer continues.
	anchoring bool
	since     time.Time // standby: since when

	// What may be missing from a live sequence, and the work on it.
	suspect bool      // its connection was lost: trades of unknown number may be missing
	behind  bool      // resumed at an id the stream may be past: read the trades since from REST
	down    bool      // its connection is lost
	epoch   int       // bumped on loss and return; a fill asked before cannot clear suspect
	repair  int64     // trade time a repair from klines is owed from (0: none)
	busy    bool      // a fill or a repair is out
	due     time.Time // the gap is worked on no earlier than this (zero: at once)

	// The hold: heldSince is when the symbol began holding its klines back
	// (zero: not holding); released, that it has held past holdMax. hold
	// is the trade time before which its klines are complete, while held.
	heldSince time.Time
	released  bool
	held      bool
	hold      int64
}

func newSequence() *sequence { return &sequence{after: -1} }

// step moves s by m at time now and says in fx what the router must do.
func (s *sequence) step(m *msg, now time.Time, r *rules, fx *effects) {
	switch m.kind {
	case msgTrade:
		s.take(m.trade, m.received, now, r, fx)
	case msgSnapshot:
		if s.phase != live {
			s.snap = m.snap
			fx.snapshots++
			s.offer(fx)
		}
	case msgAnchor:
		s.anchoring = true
		s.offer(fx)
	case msgStandby:
		if s.phase != live {
			s.phase, s.since = standby, now
			s.after, s.at = -1, 0
			s.due = time.Time{}
		}
	case msgStart, msgResume:
		if s.phase != live {
			s.start(m, now, r, fx)
		}
	case msgResumeQuiet:
		// A standby since before the checkpoint (a second's margin for
		// the nodes' clocks) that saw no trade: the checkpoint's klines
		// hold every trade there was.
		if s.phase != standby || len(s.pending) > 0 || s.since.IsZero() || !s.since.Before(m.asOf.Add(-time.Second)) {
			fx.answer = errNotCovered
			break
		}
		s.unstart()
		s.startAt(m.asOf.UnixMilli(), now, r, fx)
	case msgStartAfter:
		if s.phase != live {
			s.unstart()
			fx.answer = s.startAfter(m.id, now, r, fx)
		}
	case msgStartAt:
		if s.phase != live {
			s.unstart()
			s.startAt(m.id, now, r, fx)
		}
	case msgLost, msgBack:
		if s.phase == live {
			s.suspect, s.down = true, m.kind == msgLost
			s.epoch++
			s.due = now
		}
	case msgFilled:
		s.filled(m, now, r, fx)
	case msgResynced:
		s.busy = false
		if m.err != nil {
			fx.log(slog.LevelWarn, "resyncing from klines failed; will retry", "err", m.err)
			s.due = now.Add(resyncBackoff + r.gapWait)
		} else {
			s.repair = 0
			fx.log(slog.LevelInfo, "trade gap repaired from klines")
		}
	case msgTick:
		s.tick(m.at, now, r, fx)
	}
	s.updateHold(now, r, fx)
}

// unstart leaves whatever waited for a start: the snapshot, the seeders
// and the standby.
func (s *sequence) unstart() {
	s.snap, s.anchoring = nil, false
	if s.phase == standby {
		s.phase = unstarted
	}
	s.since = time.Time{}
}

// goLive makes s live at id next.
func (s *sequence) goLive(next int64) {
	s.phase, s.next = live, next
	s.after, s.at = -1, 0
}

// take handles a trade from a connection.
func (s *sequence) take(t kline.Trade, received, now time.Time, r *rules, fx *effects) {
	if s.phase == settling && s.settle(t, now, fx) {
		s.accept(t, received, now, r, fx)
		return
	}
	if s.phase == live {
		s.accept(t, received, now, r, fx)
		return
	}
	s.buffer(t, now, r, fx)
	s.offer(fx)
}

// settle starts a settling s when t is the trade that says where it goes
// on; it reports whether s is live.
func (s *sequence) settle(t kline.Trade, now time.Time, fx *effects) bool {
	switch {
	case s.after >= 0 && t.LastID <= s.after:
		s.goLive(t.ID + 1) // already in the seed: the next one follows
	case s.after >= 0 && t.FirstID == s.after+1:
		s.goLive(t.ID)
	case s.after >= 0:
		// The seed's trade was inside t, or trades went unseen between:
		// the seed cannot be continued exactly; repair from klines.
		fx.log(slog.LevelInfo, "first trade does not continue the seed; resyncing from klines", "seed_last", s.after, "first", t.FirstID)
		s.phase, s.repair, s.due = resyncing, max(t.Time, 1), now
		s.after = -1
		return false
	case s.at > 0 && t.Time >= s.at:
		s.goLive(t.ID)
	default:
		return false
	}
	return true
}

// offer answers the seeders waiting for s's anchor when its snapshot is
// usable: it holds trades, and the buffered trades reach back to the one
// after its last without one of them straddling it.
func (s *sequence) offer(fx *effects) {
	k := s.snap
	if !s.anchoring || k == nil || k.Trades == 0 || k.LastTradeID < 0 {
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
	fx.anchor, s.anchoring = k, false
}

// start starts s at m.id after m.trades (msgStart), or at m.id taken over
// from a checkpoint (msgResume).
func (s *sequence) start(m *msg, now time.Time, r *rules, fx *effects) {
	// A standby that holds the checkpoint's own last trade has carried the
	// symbol since: nothing after it can be missing. So has one that
	// carried it since before the checkpoint (a second's margin for the
	// nodes' clocks) and saw no trade.
	covered := false
	for _, t := range s.pending {
		covered = covered || t.ID == m.id-1
	}
	if m.kind == msgResume && len(s.pending) == 0 && !s.since.IsZero() && s.since.Before(m.asOf.Add(-time.Second)) {
		covered = true
	}
	s.unstart()
	next := m.id
	if len(m.trades) > 0 {
		next = m.trades[0].ID
	}
	s.goLive(next)
	for _, t := range m.trades {
		s.accept(t, time.Time{}, now, r, fx)
	}
	// Drop what the start already covers, then release what follows.
	s.release(fx)
	switch {
	case m.kind == msgResume && s.next == m.id && len(s.pending) == 0 && !covered:
		s.behind, s.due = true, now
	case len(s.pending) > 0 && s.due.IsZero():
		// Kept as a standby, which waits for no gap: the gap to the
		// buffer is filled now, the symbol held meanwhile.
		s.due = now
	}
	if m.kind == msgResume {
		first := int64(-1)
		if len(s.pending) > 0 {
			first = s.pending[0].ID
		}
		// from_buffer: the standby's buffer continued the checkpoint
		// (or vouched that nothing followed it), so no REST is needed.
		fx.log(slog.LevelInfo, "symbol resumed from a checkpoint", "from_id", m.id, "next", s.next,
			"from_buffer", covered || s.next > m.id, "behind", s.behind, "pending", len(s.pending), "first_pending", first)
	}
}

// startAfter starts s at the trade after trade id last. The aggregate
// trade that ends at last gives the exact id to go on from; failing that,
// the next trade must begin right after last.
func (s *sequence) startAfter(last int64, now time.Time, r *rules, fx *effects) error {
	i := 0
	for i < len(s.pending) && s.pending[i].LastID <= last {
		i++
	}
	switch {
	case i > 0 && s.pending[i-1].LastID == last:
		s.goLive(s.pending[i-1].ID + 1)
	case i < len(s.pending) && s.pending[i].FirstID == last+1:
		s.goLive(s.pending[i].ID)
	case len(s.pending) == 0:
		s.phase, s.after, s.at = settling, last, 0 // the next trade to arrive settles it
		return nil
	default:
		return errNoAnchor
	}
	s.release(fx)
	return nil
}

// startAt starts s at its first trade at or after time at: those before it
// are in the closed klines the seed was built from.
func (s *sequence) startAt(at int64, now time.Time, r *rules, fx *effects) {
	i := 0
	for i < len(s.pending) && s.pending[i].Time < at {
		i++
	}
	switch {
	case i > 0:
		s.goLive(s.pending[i-1].ID + 1)
	case i < len(s.pending):
		s.goLive(s.pending[i].ID)
	default:
		s.phase, s.after, s.at = settling, -1, at
		return
	}
	s.release(fx)
}

// accept forwards t if it is next, buffers it if later, drops it if earlier.
func (s *sequence) accept(t kline.Trade, received, now time.Time, r *rules, fx *effects) {
	switch {
	case t.ID < s.next:
		fx.duplicates++
	case t.ID == s.next:
		if fx.received.IsZero() {
			fx.received = received
		}
		fx.forward = append(fx.forward, t)
		s.next++
		s.lastTime = t.Time
		if s.behind && !s.busy {
			s.behind = false // the sequence goes on from where it resumed: nothing was missed
		}
		if len(s.pending) > 0 {
			s.release(fx)
		}
	default:
		s.buffer(t, now, r, fx)
	}
}

// buffer keeps t, later than the sequence can forward, in id order.
func (s *sequence) buffer(t kline.Trade, now time.Time, r *rules, fx *effects) {
	n := len(s.pending)
	switch {
	case n > 0 && s.pending[n-1].ID >= t.ID:
		i := sort.Search(n, func(i int) bool { return s.pending[i].ID >= t.ID })
		if s.pending[i].ID == t.ID {
			fx.duplicates++
			return
		}
		s.pending = append(s.pending, kline.Trade{})
		copy(s.pending[i+1:], s.pending[i:])
		s.pending[i] = t
	case s.phase == standby:
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
			fx.buffered -= int64(i)
			s.pending = append(s.pending[:0], s.pending[i:]...)
		}
		s.pending = append(s.pending, t)
	case n >= r.maxBuf:
		// Keep the oldest: the newest will come again from a fill.
		fx.overflowing++
		return
	default:
		s.pending = append(s.pending, t)
	}
	fx.buffered++
	if s.due.IsZero() && s.phase != standby {
		s.due = now.Add(r.gapWait) // another connection may still deliver the gap
	}
}

// release forwards the consecutive run at the head of pending.
func (s *sequence) release(fx *effects) {
	i := 0
	for ; i < len(s.pending); i++ {
		t := s.pending[i]
		if t.ID < s.next {
			fx.duplicates++
			continue
		}
		if t.ID != s.next {
			break
		}
		fx.forward = append(fx.forward, t)
		s.next++
		s.lastTime = t.Time
	}
	if i > 0 {
		fx.buffered -= int64(i)
		s.pending = append(s.pending[:0], s.pending[i:]...)
		if len(s.pending) == 0 && cap(s.pending) > 32 {
			// A start or a gap buffered many; keeping that room for every
			// symbol that ever waited held hundreds of MB at 1M trades/s.
			s.pending = nil
		}
	}
	if len(s.pending) == 0 && !s.suspect && !s.behind {
		s.due = time.Time{}
	}
}

// tick works on s's gap when it is due: a fill from REST aggTrades, or a
// repair from klines where trades cannot do it. exchange is the exchange's
// time (ms).
func (s *sequence) tick(exchange int64, now time.Time, r *rules, fx *effects) {
	if s.busy || now.Before(s.due) {
		return
	}
	if s.repair == 0 && s.phase == live && !s.down && s.needsKlines(exchange) {
		// Lost trades of unknown number, a gap of more than a page, or
		// older than aggTrades keeps: klines repair it for a few weight.
		s.toResync("gap", now, fx)
	}
	if s.repair != 0 {
		if s.down {
			return // the repair needs the stream back
		}
		s.busy = true
		fx.resyncs++
		// The repair starts: its symbol is held afresh, so that the clock
		// does not close klines the repair is about to seed.
		s.heldSince, s.released = time.Time{}, false
		fx.resync = s.repair
		return
	}
	if s.phase != live || s.down || (len(s.pending) == 0 && !s.suspect && !s.behind) {
		return // nothing to fill, or nothing to gain before the stream is back
	}
	s.busy = true
	fx.fills++
	fx.fetch, fx.fetchFrom, fx.fetchEpoch = true, s.next, s.epoch
}

// needsKlines tells whether s's gap is repaired from klines rather than
// trade by trade.
func (s *sequence) needsKlines(exchange int64) bool {
	switch {
	case s.suspect:
		return true // a lost connection: how many trades are missing is unknown
	case len(s.pending) == 0:
		return false
	case s.pending[0].ID-s.next > fillIDs:
		return true
	}
	return s.lastTime > 0 && exchange-s.lastTime > retentionMs
}

// toResync owes s a repair from klines from its last trade on: not live
// again until the repair starts it; what arrives meanwhile waits, and the
// hold keeps its klines from closing early.
func (s *sequence) toResync(why string, now time.Time, fx *effects) {
	fx.log(slog.LevelInfo, "repairing a trade gap from klines", "why", why, "from", time.UnixMilli(s.lastTime).UTC())
	s.phase, s.repair, s.next, s.suspect = resyncing, max(s.lastTime, 1), -1, false
	s.snap, s.after, s.at = nil, -1, 0
	s.due = now
}

// filled takes the result of a fill from REST aggTrades.
func (s *sequence) filled(m *msg, now time.Time, r *rules, fx *effects) {
	s.busy = false
	if s.phase != live {
		return // repaired from klines meanwhile
	}
	if m.err != nil && m.invalid {
		s.toResync("trades no longer kept", now, fx) // older than the exchange keeps them (48 h)
		return
	}
	if m.err != nil {
		fx.log(slog.LevelWarn, "filling a trade gap from REST failed; will retry", "from_id", m.id, "err", m.err)
		s.due = now.Add(r.gapWait)
		return
	}
	if len(m.trades) == 0 || m.trades[0].ID > s.next {
		// The exchange has no trades with these ids: skip to what it has.
		to := int64(-1)
		if len(m.trades) > 0 {
			to = m.trades[0].ID
		} else if len(s.pending) > 0 {
			to = s.pending[0].ID
		}
		if to > s.next {
			fx.unfillable++
			fx.log(slog.LevelWarn, "trade ids missing on the exchange; skipping them", "from_id", s.next, "to_id", to)
			s.next = to
		}
	}
	for _, t := range m.trades {
		if t.ID >= s.next {
			fx.filled++
		}
		s.accept(t, time.Time{}, now, r, fx)
	}
	missing := m.at - s.lastTime // to the newest any connection has delivered
	if len(s.pending) > 0 {
		missing = s.pending[0].Time - s.lastTime
	}
	if len(m.trades) == fillIDs && missing > longGapMs {
		s.toResync(fmt.Sprintf("%s of trades still missing after a page", time.Duration(missing)*time.Millisecond), now, fx)
		return
	}
	if len(m.trades) < fillIDs && !s.down && m.epoch == s.epoch {
		// The exchange had nothing more since the connection came back:
		// the symbol is caught up.
		s.suspect, s.behind = false, false
	}
	s.release(fx)
	switch {
	case s.down:
		s.due = now.Add(r.gapWait) // filled what it could; again later
	case len(s.pending) > 0 || s.suspect || s.behind:
		s.due = now // more to fill: go again at once
	}
}

// missing tells whether s may be missing trades: waiting on a gap, a lost
// connection, a repair or a start. A standby waits for nothing.
func (s *sequence) missing() bool {
	if s.phase == standby {
		return false
	}
	return len(s.pending) > 0 || s.suspect || s.behind || s.repair != 0
}

// updateHold sets whether s holds its klines back, and before what time.
// A symbol waiting for its first trade after a seed is not held: its seed
// is whole, and the watermark covers what is in flight. A hold older than
// holdMax is released: the symbol's klines close by the clock and are
// corrected when its gap is repaired.
func (s *sequence) updateHold(now time.Time, r *rules, fx *effects) {
	if !s.missing() {
		s.heldSince, s.released, s.held = time.Time{}, false, false
		return
	}
	if s.heldSince.IsZero() {
		s.heldSince = now
	}
	if now.Sub(s.heldSince) > r.holdMax {
		if !s.released {
			s.released = true
			fx.released++
			fx.log(slog.LevelWarn, "symbol still missing trades; its klines close by the clock and are corrected on repair", "held_for", r.holdMax)
		}
		s.held = false
		return
	}
	t := s.lastTime
	if (s.phase != live || t == 0) && len(s.pending) > 0 {
		t = s.pending[0].Time - 1
	}
	if t <= 0 {
		t = 1 // nothing known yet: hold everything
	}
	s.held, s.hold = true, t
}
