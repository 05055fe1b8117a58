package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/klagg/klagg/internal/bus"
	"github.com/klagg/klagg/internal/engine"
	"github.com/klagg/klagg/internal/head"
	"github.com/klagg/klagg/internal/kline"
)

// Owner tells which symbols this node builds itself: the leases.
type Owner interface {
	Owns(symbol string) bool
}

// Pending keeps the closed klines the feed reads from the stream until the
// sinks have stored them, so that the node's readers have them while
// PostgreSQL lacks them (a sink behind, or the database down): the node's
// head.
type Pending interface {
	// Streamed takes closed klines read at the given stream sequences.
	Streamed(updates []kline.Update, seqs []uint64)
	// StoredThrough says the sinks have stored every sequence up to floor.
	StoredThrough(floor uint64)
}

// Remote learns which symbols other nodes build live, from when, from
// their checkpoints, and which of their closed klines the node awaits:
// coverage.
type Remote interface {
	Remote(symbol, owner string, m0, open, at, rel int64)
	Awaiting(symbol string, iv kline.Interval, from, to int64)
}

// Feed shows a serve node the klines other nodes build: the open ones as
// their owners send them (bus.Opens, every quarter second) and from their
// checkpoints in the lease bucket (about once a second, should a message
// be lost), the closed ones from the kline stream as they are published.
// It hands them to the node's consumers (the WebSocket server and the
// head, which REST reads the newest klines from) as the engine hands its
// own, for every symbol the node does not own, and every closed kline to
// pending until the sinks have stored it; closed, if given, is told of every closed kline first, its own
// included, so that readers' copies of what the store holds are known to be
// stale. Once the node has every closed kline the sinks have not stored,
// remote is told of every other node's checkpoint, and Released says
// whose klines lack trades until their owner repairs them.
type Feed struct {
	js       jetstream.JetStream
	b        Buckets
	owner    Owner
	sinks    []engine.Sink
	ivs      []kline.Interval
	log      *slog.Logger
	onClosed func(updates []kline.Update)
	pending  Pending
	remote   Remote
	self     string // this node's name

	released atomic.Pointer[map[string]int64] // by the owners' checkpoints

	// Owned by Run: per series, the open time of the newest closed kline
	// handed on, so that an older checkpoint's open copy of it is not;
	// and the newest open kline handed on, so that an older one (a
	// checkpoint behind the owner's last message) is not.
	closed map[[2]string]int64
	open   map[[2]string]version
	// awaiting is, per series, the slots [from, to] between the newest
	// closed kline read and the newest open one: closed by their owner
	// and not read yet, or never to come (the owner died first).
	awaiting map[[2]string][2]int64
	backlog  uint64 // the stream's last sequence when the feed started reading it
	read     uint64 // the last sequence read, to follow on from after a failure
	// streamed and seqs are the closed klines of one gathering and their
	// sequences, for pending.
	streamed []kline.Update
	seqs     []uint64
	// caughtUp is set once the feed has read the stream up to backlog and
	// every checkpoint there was (listed); until then, what checkpoints
	// say is kept in vouched.
	caughtUp atomic.Bool
	listed   bool
	vouched  map[string]checkpoint
	rel      map[string]int64 // the checkpoints' Rel, by symbol

	replays chan struct{} // one token a Replay running

	Klines atomic.Int64 // klines handed on
}

// NewFeed returns a feed for node self to sinks, keeping what the store
// lacks in pending and telling remote (if not nil) what other nodes build;
// start it with Run.
func NewFeed(js jetstream.JetStream, b Buckets, self string, owner Owner, sinks []engine.Sink, closed func([]kline.Update), pending Pending, remote Remote, ivs []kline.Interval, log *slog.Logger) *Feed {
	return &Feed{js: js, b: b, self: self, owner: owner, sinks: sinks, onClosed: closed, pending: pending, remote: remote, ivs: ivs, log: log,
		closed: map[[2]string]int64{}, open: map[[2]string]version{}, awaiting: map[[2]string][2]int64{}, vouched: map[string]checkpoint{}, rel: map[string]int64{},
		replays: make(chan struct{}, maxReplays)}
}

// CaughtUp reports whether the node has every closed kline the cluster
// holds, in the store or pending, and knows what the other nodes build.
func (f *Feed) CaughtUp() bool { return f.caughtUp.Load() }

// Released returns, for the symbols other nodes build whose klines lack
// trades until their owner's repair, the trade time since when.
func (f *Feed) Released() map[string]int64 {
	if r := f.released.Load(); r != nil {
		return *r
	}
	return nil
}

// Run feeds until ctx ends. A JetStream that does not answer (its servers
// electing a leader, a server restarting) stops the feed only for a while:
// it follows again where it stopped, and nothing else on the node stops.
func (f *Feed) Run(ctx context.Context) error {
	backoff := time.Second
	for {
		began := time.Now()
		err := f.follow(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if time.Since(began) > time.Minute {
			backoff = time.Second
		}
		f.log.Warn("following the cluster's klines failed; following again", "err", err, "retry_in", backoff)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 10*time.Second)
	}
}

// follow feeds until ctx ends or JetStream fails.
func (f *Feed) follow(ctx context.Context) error {
	live, err := f.b.Live.WatchAll(ctx)
	if err != nil {
		return fmt.Errorf("cluster: watch %s: %w", LiveBucket, err)
	}
	defer live.Stop()
	cfg, err := f.start(ctx)
	if err != nil {
		return err
	}
	cons, err := f.js.OrderedConsumer(ctx, bus.Stream, cfg)
	if err != nil {
		return fmt.Errorf("cluster: follow the kline stream: %w", err)
	}
	// fctx ends when follow returns, before the consumer stops, so that
	// no delivery waits on msgs for a reader that is gone.
	fctx, stop := context.WithCancel(ctx)
	msgs := make(chan jetstream.Msg, 4096)
	cc, err := cons.Consume(func(m jetstream.Msg) {
		select {
		case msgs <- m:
		case <-fctx.Done():
		}
	})
	if err != nil {
		stop()
		return fmt.Errorf("cluster: follow the kline stream: %w", err)
	}
	defer cc.Stop()
	defer stop()
	opens := make(chan *nats.Msg, 4096)
	sub, err := f.js.Conn().ChanSubscribe(bus.OpenSubjects, opens)
	if err != nil {
		return fmt.Errorf("cluster: follow the open klines: %w", err)
	}
	defer sub.Unsubscribe()
	var wg sync.WaitGroup
	wg.Go(func() { f.followSinks(fctx) })
	defer wg.Wait()
	defer stop()
	var batch, closed []kline.Update
	for {
		batch = batch[:0]
		select {
		case <-ctx.Done():
			return nil
		case m := <-msgs:
			closed = gather(closed[:0], m, msgs, f.closedKline)
			if len(f.streamed) > 0 {
				f.pending.Streamed(f.streamed, f.seqs)
				clear(f.streamed)
				f.streamed, f.seqs = f.streamed[:0], f.seqs[:0]
			}
			f.catchUp() // pending has what was read
			if f.onClosed != nil && len(closed) > 0 {
				f.onClosed(closed)
			}
			for _, u := range closed {
				if !f.owner.Owns(u.Symbol) { // this node's engine handed on its own
					batch = append(batch, u)
				}
			}
		case m := <-opens:
			batch = gather(batch, m, opens, f.openKline)
		case e, ok := <-live.Updates():
			if !ok {
				return errors.New("cluster: the lease watch ended")
			}
			if e == nil {
				f.listed = true // every checkpoint there was is in
				f.catchUp()
				continue
			}
			if e.Operation() != jetstream.KeyValuePut {
				continue
			}
			batch = f.openKlines(batch, e.Value())
		}
		if len(batch) > 0 {
			f.Klines.Add(int64(len(batch)))
			for _, s := range f.sinks {
				s.Publish(batch)
			}
		}
	}
}

// start returns where the feed reads the stream from: after what the
// sinks have stored. What the store lacks then (the sinks behind, or
// PostgreSQL down, when this node starts) is read again for REST's
// overlay only, up to f.backlog, the stream's last message now; the
// consumers get what comes after it. Without sinks, only what comes after.
func (f *Feed) start(ctx context.Context) (jetstream.OrderedConsumerConfig, error) {
	if f.read > 0 { // following again: pending has what came before
		f.backlog = f.read
		f.catchUp()
		return jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverByStartSequencePolicy, OptStartSeq: f.read + 1}, nil
	}
	st, err := f.js.Stream(ctx, bus.Stream)
	if err != nil {
		return jetstream.OrderedConsumerConfig{}, fmt.Errorf("cluster: follow the kline stream: %w", err)
	}
	// The last message is read before the sinks' floor, so a floor that
	// moved past it meanwhile starts the feed just after it: every message
	// is either read again or handed on.
	last := st.CachedInfo().State.LastSeq
	from := last + 1
	switch sinks, err := f.js.Consumer(ctx, bus.Stream, bus.SinkDurable); {
	case errors.Is(err, jetstream.ErrConsumerNotFound):
	case err != nil:
		return jetstream.OrderedConsumerConfig{}, fmt.Errorf("cluster: read the sinks' progress on the kline stream: %w", err)
	default:
		from = min(from, sinks.CachedInfo().AckFloor.Stream+1)
		if last >= head.MaxPending { // the head keeps no more than the newest MaxPending
			from = max(from, last-head.MaxPending+1)
		}
	}
	f.backlog = last
	if from > last {
		f.read = last // nothing before it to read
	}
	f.catchUp()
	return jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverByStartSequencePolicy, OptStartSeq: from}, nil
}

// catchUp tells remote what the checkpoints said once the feed has read
// the stream up to its backlog: only then does the node have every closed
// kline the checkpoints vouch for, in the store or pending.
func (f *Feed) catchUp() {
	if f.caughtUp.Load() || !f.listed || f.read < f.backlog {
		return
	}
	f.caughtUp.Store(true)
	for _, c := range f.vouched {
		f.vouch(c)
	}
	clear(f.vouched)
}

// gather adds first to batch with add, then what else has come on ch, up
// to 1024 messages: one hand-over for what arrived together.
func gather[M any](batch []kline.Update, first M, ch <-chan M, add func([]kline.Update, M) []kline.Update) []kline.Update {
	batch = add(batch, first)
	for range 1023 {
		select {
		case m := <-ch:
			batch = add(batch, m)
		default:
			return batch
		}
	}
	return batch
}

func (f *Feed) closedKline(batch []kline.Update, m jetstream.Msg) []kline.Update {
	u, err := bus.Decode(m.Data())
	if err != nil {
		f.log.Warn("left out a message that is not a kline", "subject", m.Subject(), "err", err)
		return batch
	}
	key := [2]string{u.Symbol, u.Interval.String()}
	f.closed[key] = max(f.closed[key], u.OpenTime)
	if a, ok := f.awaiting[key]; ok && u.OpenTime >= a[0] {
		f.await(key, u.Interval, u.Interval.Next(f.closed[key]), a[1])
	}
	if md, err := m.Metadata(); err == nil {
		f.streamed, f.seqs = append(f.streamed, u), append(f.seqs, md.Sequence.Stream)
		f.read = max(f.read, md.Sequence.Stream)
		if md.Sequence.Stream <= f.backlog {
			return batch // published before the feed started: for REST only
		}
	}
	return append(batch, u)
}

// followSinks tells pending, every second, what the sinks have
// acknowledged, until ctx ends. While there is no sink, or no answer,
// pending keeps what it has.
func (f *Feed) followSinks(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		rctx, cancel := context.WithTimeout(ctx, time.Second)
		c, err := f.js.Consumer(rctx, bus.Stream, bus.SinkDurable)
		cancel()
		if err != nil {
			f.log.Debug("reading the sinks' progress", "err", err)
			continue
		}
		f.pending.StoredThrough(c.CachedInfo().AckFloor.Stream)
	}
}

func (f *Feed) openKlines(batch []kline.Update, value []byte) []kline.Update {
	if f.self != "" && ownedBy(value, f.self) {
		return batch // this node's own, handed on by its engine
	}
	c, st, err := decodeCheckpoint(value, f.ivs)
	if err != nil {
		f.log.Warn("left out a malformed checkpoint", "err", err)
		return batch
	}
	if f.owner.Owns(c.Symbol) {
		return batch
	}
	if m0 := c.liveSince(st); m0 >= 0 && len(st.Open) > 0 && st.Open[0].OpenTime != 0 {
		c.M0, c.open = &m0, st.Open[0].OpenTime
		if f.caughtUp.Load() {
			f.vouch(c)
		} else {
			f.vouched[c.Symbol] = c
		}
	}
	if c.Owner == "" || c.Taken {
		return batch // its open klines are as the last owner left them
	}
	for i, k := range st.Open {
		if k.OpenTime != 0 && f.newer(c.Symbol, f.ivs[i], &k) {
			batch = append(batch, kline.Update{Symbol: c.Symbol, Interval: f.ivs[i], Kline: k})
		}
	}
	return batch
}

// vouch tells remote what checkpoint c, with M0 and open set, says, and notes its
// Rel.
func (f *Feed) vouch(c checkpoint) {
	if f.remote != nil {
		owner := c.Owner
		if c.Taken {
			// Not resumed yet: the klines after the checkpoint are its
			// new owner's to rebuild, as after a release. Seen from
			// the take on, or only later (a node starting), alike.
			owner = ""
		}
		f.remote.Remote(c.Symbol, owner, *c.M0, c.open, c.At, c.Rel)
	}
	if f.rel[c.Symbol] == c.Rel {
		return
	}
	if c.Rel == 0 {
		delete(f.rel, c.Symbol)
	} else {
		f.rel[c.Symbol] = c.Rel
	}
	r := maps.Clone(f.rel)
	f.released.Store(&r)
}

// openKline appends the open klines in m that are of a symbol another
// node owns and newer than what was handed on.
func (f *Feed) openKline(batch []kline.Update, m *nats.Msg) []kline.Update {
	n := len(batch)
	batch, err := bus.DecodeOpens(batch, m.Data)
	if err != nil {
		f.log.Warn("left out lines of an open-kline message that are not klines", "subject", m.Subject, "err", err)
	}
	kept := batch[:n]
	for _, u := range batch[n:] {
		if !u.Closed && !f.owner.Owns(u.Symbol) && f.newer(u.Symbol, u.Interval, &u.Kline) {
			kept = append(kept, u)
		}
	}
	return kept
}

// version orders the open versions of a series: a kline's trades only grow.
type version struct {
	open   int64
	trades int64
}

// newer reports whether the open kline k of symbol and iv is newer than
// any of the series handed on, and notes it if so.
func (f *Feed) newer(symbol string, iv kline.Interval, k *kline.Kline) bool {
	key := [2]string{symbol, iv.String()}
	if k.OpenTime <= f.closed[key] {
		return false
	}
	if v, ok := f.open[key]; ok && (k.OpenTime < v.open || k.OpenTime == v.open && k.Trades <= v.trades) {
		return false
	}
	f.open[key] = version{k.OpenTime, k.Trades}
	if last := f.closed[key]; last != 0 && k.OpenTime > iv.Next(last) {
		f.await(key, iv, iv.Next(last), iv.Prev(k.OpenTime))
	}
	return true
}

// await notes that the node awaits the closed klines of series key in
// [from, to] (none when from > to), and tells remote.
func (f *Feed) await(key [2]string, iv kline.Interval, from, to int64) {
	if from > to {
		delete(f.awaiting, key)
	} else {
		f.awaiting[key] = [2]int64{from, to}
	}
	if f.remote != nil {
		f.remote.Awaiting(key[0], iv, from, to)
	}
}
