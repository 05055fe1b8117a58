package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"hash/fnv"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/sync/errgroup"

	"github.com/klagg/klagg/internal/engine"
	"github.com/klagg/klagg/internal/kline"
)

// Engine tells where this node's symbols stand: the engine.
type Engine interface {
	States(ctx context.Context, symbols []string) ([]engine.State, error)
}

// Published tells when the closed klines queued so far are acknowledged on
// the kline stream: the bus publisher.
type Published interface {
	Mark() uint64
	WaitAcked(ctx context.Context, mark uint64) error
}

// Registry keeps the symbols this node owns, and those it stands by for:
// the symbol registry.
type Registry interface {
	Own(ctx context.Context, symbol string, owned bool) error
	Standby(ctx context.Context, symbol string, on bool) error
	Settled(ctx context.Context) error
}

// Config sets up Leases.
type Config struct {
	Node      string
	Ingest    bool          // the node takes symbols; else it only watches
	Roles     []string      // announced in the membership bucket
	Staleness time.Duration // a node not heard of for this long is dead [3s]
	// CheckpointEvery is how often owned symbols' checkpoints are written [1s].
	CheckpointEvery time.Duration
	Intervals       []kline.Interval
	Log             *slog.Logger
	// IngestNodes, if set, is told the number of live ingest nodes when
	// it changes: they share the IP's REST weight.
	IngestNodes func(n int)
	// Standby makes the node carry the trades of the symbols it would
	// take over if their owner died, so that it resumes them without REST.
	Standby bool
	// LiveSince, if set, tells the minute from which the node builds an
	// owned symbol live (coverage), and Released the symbols whose klines
	// lack trades until a repair, since when (the router): checkpoints
	// carry both to the other nodes.
	LiveSince func(symbol string) (int64, bool)
	Released  func() map[string]int64
	// Holds, if set, tells the symbols missing trades now (the router):
	// a symbol taken over is written as resumed, its first checkpoint of
	// this node's, only once it misses none. So does Rechecking, the
	// symbols whose minutes before the takeover are still to check
	// against the exchange's (the reconciler).
	Holds      func() map[string]int64
	Rechecking func() map[string]bool
}

// Leases is this node's side of the symbol leases: it keeps the node in the
// membership bucket, takes symbols whose owner is gone (or, once it has
// stood by for them, whose owner lives but joined before it) when
// rendezvous hashing over the live ingest nodes picks this node, writes
// the owned symbols' checkpoints, and drops a symbol at once when another
// node writes its lease. It tells the registry what it owns.
type Leases struct {
	cfg     Config
	nc      *nats.Conn
	b       Buckets
	engine  Engine
	pub     Published
	reg     Registry
	want    atomic.Pointer[[]string]
	healthy atomic.Int64                         // unix ns since which the node's own link has worked; 0: not now
	through atomic.Int64                         // see membership.Through
	seen    atomic.Pointer[map[string]time.Time] // a copy of members' seen, for Alive

	mu    sync.Mutex
	held  map[string]*lease // symbols this node owns, by name
	taken map[string]Resume // checkpoints of symbols taken, until seeded

	// Owned by Run's decide loop.
	members map[string]member
	leases  map[string]view      // by key
	standby map[string]time.Time // symbols the registry was told this node stands by for, since when

	Takeovers  atomic.Int64 // symbols taken over from a dead or departed owner
	Rebalanced atomic.Int64 // symbols taken from a live owner, which rendezvous hashing gives this node
	Lost       atomic.Int64 // symbols dropped because another node took them
}

// Resume is the checkpoint of a symbol taken over, to resume it from.
type Resume struct {
	State engine.State
	AsOf  time.Time // when the checkpoint was written
	// M0 is the minute the symbol's owners have built it live since.
	M0 int64
}

type lease struct {
	key     string
	rev     uint64
	lastID  int64 // as last written
	open    int64 // 1m open time as last written
	rel     int64 // Rel as last written
	mine    bool  // a checkpoint of this node's own written since it took the lease
	written time.Time
}

type member struct {
	seen    time.Time // local time its key was last seen to change
	rev     uint64
	roles   []string
	through int64 // its membership's Through
}

// membership is a node's value in the membership bucket.
type membership struct {
	Roles []string `json:"roles"`
	// Through is when (unix ms) the node last took its engine's states
	// and then wrote every changed one: a symbol whose checkpoint is
	// older had no trade applied between the two.
	Through int64 `json:"through,omitempty"`
}

type view struct {
	owner string
	rev   uint64
	value []byte
}

// NewLeases returns the leases of node cfg.Node; start them with Run.
// pub may be nil on a node that does not ingest.
func NewLeases(nc *nats.Conn, b Buckets, cfg Config, eng Engine, pub Published) *Leases {
	if cfg.Staleness <= 0 {
		cfg.Staleness = 3 * time.Second
	}
	if cfg.CheckpointEvery <= 0 {
		cfg.CheckpointEvery = time.Second
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	l := &Leases{cfg: cfg, nc: nc, b: b, engine: eng, pub: pub,
		held: map[string]*lease{}, taken: map[string]Resume{}, members: map[string]member{}, leases: map[string]view{}, standby: map[string]time.Time{}}
	l.want.Store(&[]string{})
	return l
}

// Want implements the registry's Owner: the symbols there are to keep.
func (l *Leases) Want(symbols []string) { l.want.Store(&symbols) }

// Taken returns, once, the checkpoint of a symbol this node has just taken
// over, for its seed.
func (l *Leases) Taken(symbol string) (Resume, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	t, ok := l.taken[symbol]
	delete(l.taken, symbol)
	return t, ok
}

// Alive reports whether node is a live member of the cluster: this node
// while its link works, another heard from within the staleness.
func (l *Leases) Alive(node string) bool {
	if node == l.cfg.Node {
		return l.nc.IsConnected()
	}
	seen := l.seen.Load()
	if seen == nil {
		return false
	}
	at, ok := (*seen)[node]
	return ok && time.Since(at) < l.cfg.Staleness
}

// Owns reports whether this node holds symbol's lease.
func (l *Leases) Owns(symbol string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.held[symbol] != nil
}

// Held returns the number of symbols this node owns.
func (l *Leases) Held() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.held)
}

// Run keeps the node's membership and leases until ctx ends, telling reg
// which symbols the node owns.
func (l *Leases) Run(ctx context.Context, reg Registry) error {
	l.reg = reg
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { l.heartbeat(ctx); return nil })
	g.Go(func() error { return l.decideLoop(ctx) })
	if l.cfg.Ingest {
		g.Go(func() error { l.checkpointLoop(ctx); return nil })
	}
	return g.Wait()
}

// healthyFor reports whether the node's own link to NATS has worked for
// at least d: only then may it judge others dead, since while its own link
// is down (a broker election, a partition) everyone looks silent.
func (l *Leases) healthyFor(now time.Time, d time.Duration) bool {
	since := l.healthy.Load()
	return since != 0 && l.nc.IsConnected() && now.Sub(time.Unix(0, since)) >= d
}

func (l *Leases) heartbeat(ctx context.Context) {
	t := time.NewTicker(l.cfg.Staleness / 4)
	defer t.Stop()
	for {
		body, _ := json.Marshal(membership{Roles: l.cfg.Roles, Through: l.through.Load()})
		pctx, cancel := context.WithTimeout(ctx, l.cfg.Staleness/2)
		_, err := l.b.Nodes.Put(pctx, l.cfg.Node, body)
		cancel()
		switch {
		case err == nil:
			l.healthy.CompareAndSwap(0, time.Now().UnixNano())
		case ctx.Err() == nil:
			if l.healthy.Swap(0) != 0 {
				l.cfg.Log.Warn("cannot refresh this node's membership; taking over no symbol until it works", "err", err)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// decideLoop follows both buckets and takes the symbols this node should.
func (l *Leases) decideLoop(ctx context.Context) error {
	nodes, err := l.b.Nodes.WatchAll(ctx)
	if err != nil {
		return err
	}
	defer nodes.Stop()
	live, err := l.b.Live.WatchAll(ctx)
	if err != nil {
		return err
	}
	defer live.Stop()
	t := time.NewTicker(max(l.cfg.Staleness/8, 50*time.Millisecond))
	defer t.Stop()
	settled := false
	ingest := 0
	for {
		select {
		case <-ctx.Done():
			return nil
		case e, ok := <-nodes.Updates():
			if !ok {
				return errors.New("cluster: the membership watch ended")
			}
			if e == nil {
				continue // the initial values are in
			}
			if e.Operation() != jetstream.KeyValuePut {
				delete(l.members, e.Key()) // left the cluster
				continue
			}
			var m membership
			if err := json.Unmarshal(e.Value(), &m); err != nil {
				// Alive all the same: it refreshed its key.
				l.cfg.Log.Warn("a node's membership cannot be read; taking it as a node of no role", "node", e.Key(), "err", err)
			}
			l.members[e.Key()] = member{seen: time.Now(), rev: e.Revision(), roles: m.Roles, through: m.Through}
		case e, ok := <-live.Updates():
			if !ok {
				return errors.New("cluster: the lease watch ended")
			}
			if e == nil {
				continue
			}
			if e.Operation() != jetstream.KeyValuePut {
				delete(l.leases, e.Key())
				continue
			}
			c := checkpointHead(e.Value())
			l.leases[e.Key()] = view{owner: c.Owner, rev: e.Revision(), value: e.Value()}
			if c.Owner != "" && c.Owner != l.cfg.Node && l.heldBefore(c.Symbol, e.Revision()) {
				// Another node took it: this node learns it here even if
				// the symbol is too quiet to write a checkpoint soon.
				l.lose(ctx, c.Symbol)
			}
		case <-t.C:
			now := time.Now()
			seen := make(map[string]time.Time, len(l.members))
			for name, m := range l.members {
				seen[name] = m.seen
			}
			l.seen.Store(&seen)
			// A full staleness of working link first: every live node has
			// been heard from by then.
			if !l.healthyFor(now, l.cfg.Staleness) {
				continue
			}
			if l.cfg.Ingest {
				l.decide(ctx, now)
				if l.cfg.Standby {
					l.standBy(ctx, now)
				}
			}
			if n := len(l.liveIngest(now)); n != ingest && l.cfg.IngestNodes != nil {
				ingest = n
				l.cfg.IngestNodes(n)
			}
			if !settled {
				settled = true
				if err := l.reg.Settled(ctx); err != nil {
					return nil
				}
			}
		}
	}
}

// liveIngest returns the ingest nodes heard from within the staleness.
func (l *Leases) liveIngest(now time.Time) []string {
	var out []string
	if l.cfg.Ingest {
		out = append(out, l.cfg.Node)
	}
	for name, m := range l.members {
		if name != l.cfg.Node && now.Sub(m.seen) < l.cfg.Staleness && slices.Contains(m.roles, "ingest") {
			out = append(out, name)
		}
	}
	return out
}

func (l *Leases) alive(node string, now time.Time) bool {
	m, ok := l.members[node]
	return ok && now.Sub(m.seen) < l.cfg.Staleness
}

// confirm reads the membership key of every node that looks dead from the
// bucket itself: a watch can fall behind (its consumer is recreated when
// the bucket's leader moves), and a node whose key has moved on since is
// alive. A node whose key cannot be read is taken as alive this round.
func (l *Leases) confirm(ctx context.Context, now time.Time) {
	for name, m := range l.members {
		if name == l.cfg.Node || now.Sub(m.seen) < l.cfg.Staleness {
			continue
		}
		gctx, cancel := context.WithTimeout(ctx, l.cfg.Staleness/2)
		e, err := l.b.Nodes.Get(gctx, name)
		cancel()
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
			delete(l.members, name) // it left
		case err != nil:
			m.seen = now.Add(-l.cfg.Staleness / 2)
			l.members[name] = m
		case e.Revision() != m.rev:
			m.seen, m.rev = now, e.Revision()
			l.members[name] = m
		}
	}
}

// Pick is the node rendezvous hashing gives symbol among nodes: the one
// with the highest hash of node and symbol, so that a node's death moves
// only its own symbols.
func Pick(symbol string, nodes []string) string {
	best, bestScore := "", uint64(0)
	for _, n := range nodes {
		h := fnv.New64a()
		h.Write([]byte(n))
		h.Write([]byte{0})
		h.Write([]byte(symbol))
		if s := h.Sum64(); best == "" || s > bestScore || s == bestScore && n < best {
			best, bestScore = n, s
		}
	}
	return best
}

// rebalanceEvery is how many symbols a node takes from live owners in one
// round of decide, so that a node joining a large cluster moves its share
// over some seconds rather than all at once.
const rebalanceEvery = 8

func (l *Leases) decide(ctx context.Context, now time.Time) {
	l.confirm(ctx, now)
	nodes := l.liveIngest(now)
	moved := 0
	for _, sym := range *l.want.Load() {
		if l.Owns(sym) || Pick(sym, nodes) != l.cfg.Node {
			continue
		}
		v, ok := l.leases[Key(sym)]
		rebalance := ok && v.owner != "" && v.owner != l.cfg.Node && l.alive(v.owner, now)
		if rebalance {
			// The owner lives, and rendezvous hashing gives the symbol
			// to this node, which joined since. It takes the symbol
			// over like a dead owner's, but only once it has stood by
			// long enough to resume from its own buffer: then the move
			// costs no REST weight. The owner sees the lease written
			// (or its next checkpoint refused) and drops the symbol;
			// klines both publish meanwhile are the same, and the
			// stream keeps one.
			since, ok := l.standby[sym]
			if !ok || now.Sub(since) < l.settle() || moved >= rebalanceEvery {
				continue
			}
			moved++
		}
		if err := l.take(ctx, sym, v, ok, rebalance); err != nil {
			if ctx.Err() != nil {
				return
			}
			l.cfg.Log.Debug("taking a symbol over failed; another node was faster or NATS did not answer", "symbol", sym, "err", err)
		}
	}
}

// settle is how long a node stands by for a symbol before it takes it
// from a live owner: its buffer then holds the trades since the owner's
// last checkpoint, with room for the subscription to start.
func (l *Leases) settle() time.Duration {
	return max(4*l.cfg.CheckpointEvery, 2*l.cfg.Staleness)
}

// standBy tells the registry which symbols this node is next in line for:
// those another live node owns, which rendezvous hashing gives this node
// among the others.
func (l *Leases) standBy(ctx context.Context, now time.Time) {
	nodes := l.liveIngest(now)
	want := map[string]bool{}
	for _, sym := range *l.want.Load() {
		v, ok := l.leases[Key(sym)]
		if !ok || v.owner == "" || v.owner == l.cfg.Node || l.Owns(sym) || !l.alive(v.owner, now) {
			continue
		}
		others := slices.DeleteFunc(slices.Clone(nodes), func(n string) bool { return n == v.owner })
		if Pick(sym, others) == l.cfg.Node {
			want[sym] = true
		}
	}
	for sym := range want {
		if _, ok := l.standby[sym]; !ok {
			if l.reg.Standby(ctx, sym, true) != nil {
				return // the registry's answer fails only when ctx ends
			}
			l.standby[sym] = now
		}
	}
	for sym := range l.standby {
		if !want[sym] {
			if l.reg.Standby(ctx, sym, false) != nil {
				return
			}
			delete(l.standby, sym)
		}
	}
}

// take takes symbol's lease with compare-and-set on the revision seen: of
// all nodes that try, exactly one wins. The checkpoint stays as it was but
// for its owner, so that if this node dies before its first write, the
// next one resumes from it all the same.
func (l *Leases) take(ctx context.Context, sym string, v view, exists, rebalance bool) error {
	key := Key(sym)
	st := engine.State{Symbol: sym, LastID: -1}
	var asOf time.Time
	var m0 int64
	resumable := false
	value := encodeCheckpoint(l.cfg.Node, st, nil, time.Now(), -1, 0)
	if exists {
		if c, s, err := decodeCheckpoint(v.value, l.cfg.Intervals); err == nil && len(s.Open) > 0 && s.Open[0].OpenTime != 0 {
			// The checkpoint holds every trade its owner applied until it
			// last wrote all its checkpoints, if that was later.
			at := c.At
			if m, ok := l.members[v.owner]; ok && c.Owner == v.owner {
				at = max(at, m.through)
			}
			st, asOf, m0, resumable = s, time.UnixMilli(at), c.liveSince(s), true
		}
		if value2, err := withOwner(v.value, l.cfg.Node); err == nil {
			value = value2
		}
	}
	tctx, cancel := context.WithTimeout(ctx, l.cfg.Staleness)
	defer cancel()
	var rev uint64
	var err error
	if exists {
		rev, err = l.b.Live.Update(tctx, key, value, v.rev)
	} else {
		rev, err = l.b.Live.Create(tctx, key, value)
	}
	if err != nil {
		return err
	}
	l.mu.Lock()
	l.held[sym] = &lease{key: key, rev: rev, lastID: st.LastID, written: time.Now()}
	if len(st.Open) > 0 {
		l.held[sym].open = st.Open[0].OpenTime
	}
	if resumable {
		l.taken[sym] = Resume{st, asOf, m0}
	}
	l.mu.Unlock()
	from := v.owner
	switch {
	case rebalance:
		l.Rebalanced.Add(1)
	case from != "" && from != l.cfg.Node:
		l.Takeovers.Add(1)
	}
	l.cfg.Log.Info("symbol lease taken", "symbol", sym, "from", from, "rebalance", rebalance, "resume_after_id", st.LastID, "checkpoint", resumable)
	return l.reg.Own(ctx, sym, true)
}

func (l *Leases) checkpointLoop(ctx context.Context) {
	t := time.NewTicker(l.cfg.CheckpointEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		l.checkpoint(ctx, l.cfg.Node)
	}
}

// checkpoint writes the owned symbols' checkpoints with owner, once every
// closed kline before them is acknowledged on the stream.
func (l *Leases) checkpoint(ctx context.Context, owner string) int {
	l.mu.Lock()
	names := make([]string, 0, len(l.held))
	for name := range l.held {
		names = append(names, name)
	}
	l.mu.Unlock()
	if len(names) == 0 {
		return 0
	}
	// In chunks: the engine stops applying trades while it copies states,
	// and a thousand symbols at once held trades back by milliseconds.
	snapAt := time.Now()
	var states []engine.State
	for chunk := range slices.Chunk(names, 64) {
		st, err := l.engine.States(ctx, chunk)
		if err != nil {
			return 0
		}
		states = append(states, st...)
	}
	var released, holds map[string]int64
	if l.cfg.Released != nil {
		released = l.cfg.Released()
	}
	if l.cfg.Holds != nil {
		holds = l.cfg.Holds()
	}
	var rechecking map[string]bool
	if l.cfg.Rechecking != nil {
		rechecking = l.cfg.Rechecking()
	}
	// Marked after the states: every closed kline emitted before them is
	// queued by now.
	mark := l.pub.Mark()
	wctx, cancel := context.WithTimeout(ctx, max(l.cfg.Staleness, 5*time.Second))
	err := l.pub.WaitAcked(wctx, mark)
	cancel()
	if err != nil {
		if ctx.Err() == nil {
			l.cfg.Log.Warn("closed klines not yet acknowledged on the stream; checkpoints wait", "err", err)
		}
		return 0
	}
	// Each write reports its own failure (failed, the log); the group's
	// functions return nil, so that one failed write does not stop others.
	var g errgroup.Group
	g.SetLimit(16)
	var written, failed atomic.Int64
	now := time.Now()
	for _, st := range states {
		l.mu.Lock()
		ls := l.held[st.Symbol]
		var rev uint64
		changed, mine := false, false
		rel := released[st.Symbol]
		if ls != nil {
			rev, mine = ls.rev, ls.mine
			if st.LastID < 0 && ls.lastID >= 0 {
				// Not traded since it resumed at a known aggregate id: its
				// checkpoint keeps that id.
				st.LastID = ls.lastID
			}
			// A new owner writes its first checkpoint whether or not the
			// symbol traded: until then the other nodes take it as not
			// resumed, and refuse what it lacks.
			changed = !mine || st.LastID != ls.lastID || len(st.Open) > 0 && st.Open[0].OpenTime != ls.open || owner != l.cfg.Node || rel != ls.rel
		}
		l.mu.Unlock()
		if _, held := holds[st.Symbol]; (held || rechecking[st.Symbol]) && !mine && owner == l.cfg.Node {
			// Still reading the trades since the last owner's checkpoint,
			// or checking the minutes before it: the other nodes go on
			// taking it as not resumed.
			continue
		}
		// A symbol not yet seeded has nothing to write. One not traded
		// since a seed from the exchange is written without an id: its
		// taker resynchronizes it from klines.
		if ls == nil || !changed || len(st.Open) == 0 || st.Open[0].OpenTime == 0 {
			continue
		}
		m0 := int64(-1)
		if l.cfg.LiveSince != nil {
			if m, ok := l.cfg.LiveSince(st.Symbol); ok {
				m0 = m
			}
		}
		value := encodeCheckpoint(owner, st, l.cfg.Intervals, now, m0, rel)
		g.Go(func() error {
			tctx, cancel := context.WithTimeout(ctx, l.cfg.Staleness)
			defer cancel()
			nrev, err := l.b.Live.Update(tctx, ls.key, value, rev)
			switch {
			case errors.Is(err, jetstream.ErrKeyRevisionMismatch):
				l.lose(ctx, st.Symbol)
			case err != nil:
				failed.Add(1)
				if ctx.Err() == nil {
					l.cfg.Log.Debug("writing a checkpoint failed; retrying", "symbol", st.Symbol, "err", err)
				}
			default:
				written.Add(1)
				l.mu.Lock()
				if l.held[st.Symbol] == ls {
					ls.rev, ls.lastID, ls.written, ls.rel, ls.mine = nrev, st.LastID, now, rel, true
					if len(st.Open) > 0 {
						ls.open = st.Open[0].OpenTime
					}
				}
				l.mu.Unlock()
			}
			return nil
		})
	}
	_ = g.Wait() // always nil: see above
	if failed.Load() == 0 {
		l.through.Store(snapAt.UnixMilli())
	}
	return int(written.Load())
}

// heldBefore reports whether this node holds symbol's lease at a revision
// before rev: a later write by anyone else means the lease is gone.
func (l *Leases) heldBefore(symbol string, rev uint64) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	ls := l.held[symbol]
	return ls != nil && ls.rev < rev
}

// lose drops a symbol whose lease another node has taken.
func (l *Leases) lose(ctx context.Context, sym string) {
	l.mu.Lock()
	_, ok := l.held[sym]
	delete(l.held, sym)
	delete(l.taken, sym)
	l.mu.Unlock()
	if !ok {
		return
	}
	l.Lost.Add(1)
	l.cfg.Log.Warn("another node took this symbol's lease (it joined and rendezvous hashing gives it the symbol, or it thought this node dead); dropping the symbol", "symbol", sym)
	if err := l.reg.Own(ctx, sym, false); err != nil {
		l.cfg.Log.Debug("stopping; the registry was not told of a lost lease", "symbol", sym, "err", err)
	}
}

// Release hands every owned symbol back, for a clean stop: after the
// inputs stopped and while the engine still runs, it writes each symbol's
// last checkpoint with no owner and leaves the membership bucket, so that
// other nodes take the symbols over at once.
func (l *Leases) Release(ctx context.Context) error {
	if l.cfg.Ingest {
		n := l.checkpoint(ctx, "")
		l.cfg.Log.Info("symbol leases released", "symbols", n)
	}
	l.mu.Lock()
	clear(l.held)
	l.mu.Unlock()
	if err := l.b.Nodes.Delete(ctx, l.cfg.Node); err != nil {
		return err
	}
	return nil
}
