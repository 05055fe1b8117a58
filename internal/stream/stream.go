// Package stream owns klagg's WebSocket API: Binance-compatible
// <symbol>@kline_<interval>, <pair>_perpetual@continuousKline_<interval>
// and <symbol>@aggTrade streams on every URL form Binance accepts, every
// client's subscriptions, and the fan-out of kline changes and trades.
//
// Subscriptions follow Binance: a well-formed stream klagg does not serve
// is acknowledged and stays silent, and a stream is served only under the
// name Binance writes it with, so that one client's odd spelling never
// names a stream for others.
//
// The Server is an engine sink. Publish only records the newest kline of
// each stream, so the engine never waits on clients. A push loop sends each
// client the streams that changed, at most once per push interval, and a
// kline's closing event at once; no two events of a stream reach a client
// closer than the push interval, but for a closing one. Clients are spread over the interval in
// phases, so the loop never has all clients' events to write at one
// moment, and each client's events of one push leave in one write. An
// event is encoded once per push and shared by its subscribers. Each
// client has a bounded queue: a client that does not keep up is closed
// with a reason, and nobody else notices.
package stream

import (
	"cmp"
	"context"
	"io"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/coder/websocket"

	"github.com/klagg/klagg/internal/binance"
	"github.com/klagg/klagg/internal/kline"
)

// Config sets up a Server. Zero fields take the defaults in brackets.
type Config struct {
	PushInterval      time.Duration // at most one event per stream per this [100ms]
	ClientBuffer      int           // frames queued per client, beyond two per stream, before it is dropped [1024]
	MaxStreamsPerConn int           // [1024]
	MaxConns          int           // [10000]
	MaxMsgsPerSecond  int           // requests per second per connection [10]
	PingInterval      time.Duration // server pings [3m]
	PongTimeout       time.Duration // a client not answering a ping this long is closed [10m]
	Intervals         []kline.Interval
	// Symbol tells whether klagg serves symbol, with its number formatting
	// and contract.
	Symbol func(symbol string) (Market, bool)
	// OriginPatterns are the other origins whose pages may connect
	// (server.cors_origins); same-origin pages always may.
	OriginPatterns []string
	Now            func() time.Time // event time, the exchange's clock [time.Now]
	Log            *slog.Logger
}

// Market is what the streams need to know of a symbol.
type Market struct {
	Precision    kline.Precision
	Pair         string // "BTCUSDT"
	ContractType string // "PERPETUAL", "TRADIFI_PERPETUAL", …
}

// Stats are the server's counters.
type Stats struct {
	Clients  atomic.Int64 // connected now
	Accepted atomic.Int64
	Dropped  atomic.Int64 // closed for not keeping up
	Events   atomic.Int64 // events queued to clients
	Rejected atomic.Int64 // connections refused at the limit
}

// Clients are spread over up to maxPhases groups within a push interval,
// each pushed at least minPhase after the one before. Measured with
// BenchmarkFanout: 10 phases of 100 clients each left a p99 of 4 ms from
// push to socket, 50 phases of 20 clients 0.9 ms.
const (
	maxPhases = 50
	minPhase  = 2 * time.Millisecond
)

// Server fans kline changes out to WebSocket clients.
type Server struct {
	cfg    Config
	stats  Stats
	wake   chan struct{}
	phases int
	// spacing is the least time in ms between two open events of a stream
	// by their event times: the push interval less one step of the push
	// loop, by which a phase's pushes may run late of each other. Without
	// that slack a phase pushed a millisecond late would hold its clients'
	// events back a whole interval.
	spacing int64
	delay   *metrics.Summary // from an event's push to its write to the socket
	set     *metrics.Set

	mu       sync.Mutex
	streams  map[streamKey]*stream
	bySeries []*stream              // streams by kline.Update.Series, a cache of streams
	urgent   []closing              // closed klines to send at once
	fresh    []*client              // clients with new subscriptions, to send at once
	groups   []map[*client]struct{} // clients by phase
	joined   uint64
	stopped  bool
	// handlers counts the client handlers that joined: Run waits for them.
	handlers sync.WaitGroup
	pings    sync.WaitGroup // owned by Run's push loop

	// Trade streams have their own lock: trades arrive from ingest far more
	// often than kline changes, and must not wait for a push.
	tmu       sync.RWMutex
	trades    map[string]*tradeStream // by symbol
	tradeSubs atomic.Int64            // subscriptions to trade streams, for a lock-free "none"
	tradeQ    chan tradeBatch         // to the fan-out
}

type streamKey struct{ symbol, interval string }

// kind is how a kline stream's events are written.
type kind uint8

const (
	klineKind      kind = iota // <symbol>@kline_<interval>
	continuousKind             // <pair>_<contract>@continuousKline_<interval>
)

// stream is one <symbol>@kline_<interval>, or its continuous twin; the
// Server's mu guards it.
type stream struct {
	name     string // as Binance writes it
	kind     kind
	symbol   string
	market   Market // of a continuous stream: its pair and contract type
	interval kline.Interval
	// twin is a kline stream's continuous stream, once a client asked for
	// it; Publish keeps both.
	twin    *stream
	latest  kline.Kline // newest kline by open time; OpenTime 0 = none yet
	has     bool
	version uint64 // counts the changes of latest
	subs    []*sub
	// job is the index of this stream's event in the push numbered
	// jobPush, so that one push encodes it once for all subscribers.
	job     int
	jobPush uint64
}

// tradeStream is one <symbol>@aggTrade; the Server's tmu guards it.
type tradeStream struct {
	name   string
	symbol string
	subs   []*sub
}

// sub is one client's subscription to one stream name, served or silent;
// the Server's mu guards it.
type sub struct {
	c    *client
	name string       // as the client asked for it
	st   *stream      // nil unless a kline stream klagg serves
	ts   *tradeStream // nil unless a trade stream klagg serves
	sent uint64       // the stream's version last queued to c
	at   int64        // the event time of its last open kline's event queued to c
}

// New returns a server; start its push loop with Run.
func New(cfg Config) *Server {
	if cfg.PushInterval <= 0 {
		cfg.PushInterval = 100 * time.Millisecond
	}
	if cfg.ClientBuffer <= 0 {
		cfg.ClientBuffer = 1024
	}
	if cfg.MaxStreamsPerConn <= 0 {
		cfg.MaxStreamsPerConn = 1024
	}
	if cfg.MaxConns <= 0 {
		cfg.MaxConns = 10000
	}
	if cfg.MaxMsgsPerSecond <= 0 {
		cfg.MaxMsgsPerSecond = 10
	}
	if cfg.PingInterval <= 0 {
		cfg.PingInterval = 3 * time.Minute
	}
	if cfg.PongTimeout <= 0 {
		cfg.PongTimeout = 10 * time.Minute
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	phases := max(1, min(maxPhases, int(cfg.PushInterval/minPhase)))
	s := &Server{cfg: cfg, wake: make(chan struct{}, 1), phases: phases, spacing: max(1, (cfg.PushInterval - cfg.PushInterval/time.Duration(phases)).Milliseconds()), streams: map[streamKey]*stream{},
		groups: make([]map[*client]struct{}, phases), set: metrics.NewSet(),
		trades: map[string]*tradeStream{}, tradeQ: make(chan tradeBatch, tradeQueue)}
	for i := range s.groups {
		s.groups[i] = map[*client]struct{}{}
	}
	s.delay = s.set.NewSummaryExt("klagg_stream_event_delay_seconds", time.Minute, []float64{0.5, 0.9, 0.99, 0.999, 1})
	return s
}

// WritePrometheus writes the server's own metrics: its clients and events,
// and the time from an event's push (a closing kline's publication, or the
// push of a client's phase) or a reply's queueing to its write to the
// client's socket.
func (s *Server) WritePrometheus(w io.Writer) {
	metrics.WriteGaugeUint64(w, "klagg_stream_clients", uint64(max(s.stats.Clients.Load(), 0)))
	metrics.WriteCounterUint64(w, "klagg_stream_clients_accepted_total", uint64(s.stats.Accepted.Load()))
	metrics.WriteCounterUint64(w, "klagg_stream_clients_dropped_total", uint64(s.stats.Dropped.Load()))
	metrics.WriteCounterUint64(w, "klagg_stream_clients_rejected_total", uint64(s.stats.Rejected.Load()))
	metrics.WriteCounterUint64(w, "klagg_stream_events_total", uint64(s.stats.Events.Load()))
	s.set.WritePrometheus(w)
}

// Stats returns the server's counters.
func (s *Server) Stats() *Stats { return &s.stats }

// Publish implements the engine's Sink.
func (s *Server) Publish(us []kline.Update) {
	var closedAt time.Time
	s.mu.Lock()
	for i := range us {
		u := &us[i]
		if u.Closed && u.Partial {
			continue // it lacks trades: the repair's correction is its closing event
		}
		for st := s.stream(u); st != nil; st = st.twin {
			st.update(&u.Kline)
			if u.Closed && len(st.subs) > 0 {
				if closedAt.IsZero() {
					closedAt = time.Now()
				}
				s.urgent = append(s.urgent, closing{st, u.Kline, closedAt})
			}
		}
	}
	s.mu.Unlock()
	if !closedAt.IsZero() {
		s.nudge()
	}
}

// update takes k as the stream's newest kline if it is not older.
func (st *stream) update(k *kline.Kline) {
	if !st.has || k.OpenTime >= st.latest.OpenTime {
		st.latest, st.has = *k, true
		st.version++
	}
}

// closing is a closed kline to send at once, and when it was published:
// its event's delay counts from then.
type closing struct {
	st *stream
	k  kline.Kline
	at time.Time
}

// nudge wakes the push loop for what cannot wait for a phase.
func (s *Server) nudge() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// stream returns u's stream, made if new; called with mu held.
func (s *Server) stream(u *kline.Update) *stream {
	if int(u.Series) < len(s.bySeries) {
		// The engine never gives a series id to another symbol or interval.
		if st := s.bySeries[u.Series]; st != nil {
			return st
		}
	}
	st := s.klineStream(u.Symbol, u.Interval)
	if u.Series != 0 && u.Series < 1<<24 {
		if n := int(u.Series) + 1; n > len(s.bySeries) {
			s.bySeries = append(s.bySeries, make([]*stream, n-len(s.bySeries))...)
		}
		s.bySeries[u.Series] = st
	}
	return st
}

// klineStream returns the stream of symbol and iv, made if new; called
// with mu held.
func (s *Server) klineStream(symbol string, iv kline.Interval) *stream {
	key := streamKey{symbol, iv.String()}
	st := s.streams[key]
	if st == nil {
		st = &stream{name: binance.KlineStream(symbol, key.interval), symbol: symbol, interval: iv}
		s.streams[key] = st
	}
	return st
}

// Run pushes changes and trades until ctx ends, then closes every client.
func (s *Server) Run(ctx context.Context) error {
	var fan sync.WaitGroup
	fan.Go(func() { s.fanTrades(ctx) })
	every := s.cfg.PushInterval / time.Duration(s.phases)
	t := time.NewTicker(every)
	defer t.Stop()
	var p pusher
	start, done := time.Now(), int64(0) // phases pushed since start
	for {
		select {
		case <-ctx.Done():
			s.mu.Lock()
			s.stopped = true
			for _, g := range s.groups {
				for c := range g {
					c.close(websocket.StatusGoingAway, "server shutting down")
				}
			}
			s.mu.Unlock()
			// Every client has its close frame (or gave up on it) before
			// Run returns.
			s.handlers.Wait()
			s.pings.Wait()
			fan.Wait()
			return nil
		case <-s.wake:
			s.push(&p, -1)
		case <-t.C:
			// A busy machine delays ticks and drops some: push every phase
			// whose time has come, so that no group of clients waits a
			// whole interval more than the others.
			due := int64(time.Since(start) / every)
			done = max(done, due-int64(s.phases))
			for ; done < due; done++ {
				s.push(&p, int(done%int64(s.phases)))
			}
		}
	}
}

// pusher is the push loop's scratch space, kept between pushes.
type pusher struct {
	n      uint64    // pushes so far
	due    time.Time // when this push began
	now    int64     // the same on the exchange's clock, in ms: its events' time
	urgent []closing
	fresh  []*client
	pings  []*client
	jobs   []job
	sends  []delivery
	batch  []frame
}

// job is one event to encode in a push.
type job struct {
	st      *stream // its name, kind and symbol, which never change
	k       kline.Kline
	due     time.Time // the push, or a closing kline's publication
	ev      *event
	encoded bool
}

// delivery is one event, jobs[job], for one client.
type delivery struct {
	c   *client
	job int
}

// push queues the closing events published since the last push, the
// current klines of new subscriptions, and, when phase is not -1, every change
// the clients of that phase have not been sent; it pings those clients
// once per ping interval.
func (s *Server) push(p *pusher, phase int) {
	p.n++
	p.due, p.now = time.Now(), s.cfg.Now().UnixMilli()
	p.jobs, p.sends = p.jobs[:0], p.sends[:0]
	s.mu.Lock()
	p.urgent, s.urgent = s.urgent, p.urgent[:0]
	p.fresh, s.fresh = s.fresh, p.fresh[:0]
	for i := range p.urgent {
		cl := &p.urgent[i]
		st := cl.st
		if len(st.subs) == 0 {
			continue
		}
		// The closing event stands for the stream's newest kline if it is
		// that kline, so the phase does not send it again.
		newest := st.latest.OpenTime == cl.k.OpenTime
		p.jobs = append(p.jobs, job{st: st, k: cl.k, due: cl.at})
		for _, sb := range st.subs {
			p.sends = append(p.sends, delivery{sb.c, len(p.jobs) - 1})
			if newest {
				sb.sent = st.version
			}
		}
	}
	for _, c := range p.fresh {
		s.changes(p, c)
	}
	if phase >= 0 {
		for c := range s.groups[phase] {
			s.changes(p, c)
			if p.due.Sub(c.pinged) >= s.cfg.PingInterval {
				c.pinged = p.due
				p.pings = append(p.pings, c)
			}
		}
	}
	s.mu.Unlock()
	for _, c := range p.pings {
		s.pings.Go(c.ping)
	}
	clear(p.pings)
	p.pings = p.pings[:0]
	if len(p.urgent) > 0 {
		// Closing events are in stream order: gather each client's, so
		// that they leave in one write; the order of each client's own
		// events stays.
		slices.SortStableFunc(p.sends, func(a, b delivery) int { return cmp.Compare(a.c.id, b.c.id) })
	}
	clear(p.urgent)
	clear(p.fresh)

	// Events are encoded as the first client needing each is reached, so
	// the first clients' events leave before the last ones are encoded.
	for i := 0; i < len(p.sends); {
		c := p.sends[i].c
		p.batch = p.batch[:0]
		for ; i < len(p.sends) && p.sends[i].c == c; i++ {
			j := &p.jobs[p.sends[i].job]
			if !j.encoded {
				j.ev, j.encoded = s.encode(j.st, &j.k, p.now), true
			}
			if j.ev != nil {
				p.batch = append(p.batch, frame{j.ev.layout(c.combined.Load()), j.due})
			}
		}
		c.queue(p.batch)
	}
	clear(p.sends)
	clear(p.jobs)
	clear(p.batch)
}

// changes adds a delivery of each of c's streams whose newest kline c has
// not been sent, unless c had an event of that stream less than a push
// interval ago (a new subscription's first event, a phase pushed late
// before this one): then the change waits for c's next phase. A closing
// event does not count: it goes at once, and the next kline's events keep
// their spacing from the open ones before it. Called with the Server's mu
// held.
func (s *Server) changes(p *pusher, c *client) {
	for _, sb := range c.subs {
		st := sb.st
		if st == nil || !st.has || sb.sent == st.version {
			continue
		}
		if p.now-sb.at < s.spacing {
			continue
		}
		sb.sent, sb.at = st.version, p.now
		if st.jobPush != p.n {
			st.jobPush, st.job = p.n, len(p.jobs)
			p.jobs = append(p.jobs, job{st: st, k: st.latest, due: p.due})
		}
		p.sends = append(p.sends, delivery{c, st.job})
	}
}

// event is one kline event in both layouts, sharing one buffer: combined
// is {"stream":…,"data":raw}.
type event struct {
	combined []byte
	raw      []byte
}

// layout returns the event in the layout a client asked for.
func (ev *event) layout(combined bool) []byte {
	if combined {
		return ev.combined
	}
	return ev.raw
}

// encode writes st's event of k, or nil if klagg no longer has its symbol.
func (s *Server) encode(st *stream, k *kline.Kline, now int64) *event {
	m, ok := s.cfg.Symbol(st.symbol)
	if !ok {
		return nil
	}
	b := make([]byte, 0, 400)
	b = append(b, `{"stream":"`...)
	b = append(b, st.name...)
	b = append(b, `","data":`...)
	start := len(b)
	if st.kind == continuousKind {
		b = binance.AppendContinuousKlineEvent(b, st.market.Pair, st.market.ContractType, st.interval.String(), now, k, m.Precision)
	} else {
		b = binance.AppendKlineEvent(b, st.symbol, st.interval.String(), now, k, m.Precision)
	}
	end := len(b)
	b = append(b, '}')
	return &event{combined: b, raw: b[start:end:end]}
}

// target is what a stream name refers to: a kline stream (key set), the
// continuous twin of one, a trade stream (trade set), or nothing klagg
// serves (all zero): such a subscription is acknowledged and silent.
type target struct {
	key        streamKey
	interval   kline.Interval
	continuous bool
	market     Market
	trade      string // the symbol of an aggTrade stream
}

// resolve tells what the stream name refers to. Only the name as Binance
// writes it is served: "btcusdt@kline_1m", never "BTCUSDT@kline_1m" or
// "btcuſdt@kline_1m" (U+017F upper-cases to S).
func (s *Server) resolve(name string) target {
	n, ok := binance.ParseStreamName(name)
	if !ok || n.String() != name {
		return target{}
	}
	m, ok := s.cfg.Symbol(n.Symbol)
	if !ok {
		return target{}
	}
	switch n.Kind {
	case binance.KindAggTrade:
		return target{trade: n.Symbol}
	case binance.KindKline:
		if iv := s.intervalOf(n.Interval); iv.String() != "" {
			return target{key: streamKey{n.Symbol, n.Interval}, interval: iv}
		}
	case binance.KindContinuousKline:
		// The perpetual of a pair is the symbol named as the pair.
		if iv := s.intervalOf(n.Interval); iv.String() != "" && n.ContractType == "PERPETUAL" &&
			m.ContractType == "PERPETUAL" && (m.Pair == n.Symbol || m.Pair == "") {
			m.Pair = n.Symbol
			return target{key: streamKey{n.Symbol, n.Interval}, interval: iv, continuous: true, market: m}
		}
	}
	return target{}
}

// subscribe adds c to the named streams it has not subscribed yet. The
// push loop then sends their current klines, after the reply the caller
// has already queued.
func (s *Server) subscribe(c *client, names []string) {
	targets := make([]target, len(names))
	for i, n := range names {
		targets[i] = s.resolve(n)
	}
	s.mu.Lock()
	for i, n := range names {
		if _, ok := c.subs[n]; ok {
			continue
		}
		sb := &sub{c: c, name: n}
		switch t := targets[i]; {
		case t.trade != "":
			s.addTrade(t.trade, sb)
		case t.key.symbol != "":
			st := s.klineStream(t.key.symbol, t.interval)
			if t.continuous {
				if st.twin == nil {
					st.twin = &stream{name: n, kind: continuousKind, symbol: st.symbol, market: t.market, interval: st.interval,
						latest: st.latest, has: st.has, version: st.version}
				}
				st = st.twin
			}
			sb.st = st
			st.subs = append(st.subs, sb)
		}
		c.subs[n] = sb
	}
	c.streams.Store(int32(len(c.subs)))
	s.fresh = append(s.fresh, c)
	s.mu.Unlock()
	s.nudge()
}

// intervalOf returns the kept interval named name, or the zero Interval.
func (s *Server) intervalOf(name string) kline.Interval {
	for _, v := range s.cfg.Intervals {
		if v.String() == name {
			return v
		}
	}
	return kline.Interval{}
}

// unsubscribe removes c from the named streams (all of them when names is nil).
func (s *Server) unsubscribe(c *client, names []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if names == nil {
		for n := range c.subs {
			names = append(names, n)
		}
	}
	for _, n := range names {
		sb, ok := c.subs[n]
		if !ok {
			continue
		}
		delete(c.subs, n)
		c.streams.Store(int32(len(c.subs)))
		if st := sb.st; st != nil {
			if i := slices.Index(st.subs, sb); i >= 0 {
				st.subs = slices.Delete(st.subs, i, i+1)
			}
		}
		if sb.ts != nil {
			s.untrade(sb)
		}
	}
}

// join registers a client in the next phase unless the server has stopped.
func (s *Server) join(c *client) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return false
	}
	s.handlers.Add(1) // under mu, so never after Run's Wait began
	c.id, c.phase, c.pinged = s.joined, int(s.joined%uint64(s.phases)), time.Now()
	s.joined++
	s.groups[c.phase][c] = struct{}{}
	return true
}

func (s *Server) leave(c *client) {
	s.mu.Lock()
	delete(s.groups[c.phase], c)
	s.mu.Unlock()
}
