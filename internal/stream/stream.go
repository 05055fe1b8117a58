// Package stream owns klagg's WebSocket API: Binance-compatible
// <symbol>@kline_<interval> streams on /market/ws and /market/stream, every
// client's subscriptions, and the fan-out of kline changes to them.
//
// The Server is an engine sink. Publish only records the newest kline of
// each stream, so the engine never waits on clients. A push loop sends each
// client the streams that changed, at most once per push interval, and a
// kline's closing event at once. Clients are spread over the interval in
// phases, so the loop never has all clients' events to write at one
// moment, and each client's events of one push leave in one write. An
// event is encoded once per push and shared by its subscribers. Each
// client has a bounded queue: a client that does not keep up is closed
// with a reason, and nobody else notices.
package stream

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
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
	// Symbol tells whether klagg serves symbol, and its number formatting.
	Symbol func(symbol string) (kline.Precision, bool)
	// OriginPatterns are the other origins whose pages may connect
	// (server.cors_origins); same-origin pages always may.
	OriginPatterns []string
	Now            func() time.Time // event time [time.Now]
	Log            *slog.Logger
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
	delay  *metrics.Summary // from an event's push to its write to the socket
	set    *metrics.Set

	mu       sync.Mutex
	streams  map[streamKey]*stream
	bySeries []*stream              // streams by kline.Update.Series, a cache of streams
	urgent   []closing              // closed klines to send at once
	fresh    []*client              // clients with new subscriptions, to send at once
	groups   []map[*client]struct{} // clients by phase
	joined   uint64
	stopped  bool
}

type streamKey struct{ symbol, interval string }

// stream is one <symbol>@kline_<interval>; the Server's mu guards it.
type stream struct {
	name     string
	symbol   string
	interval kline.Interval
	latest   kline.Kline // newest kline by open time; OpenTime 0 = none yet
	has      bool
	// closed is the newest closed kline, kept until the store surely has
	// it: the writer writes once a second, and a REST answer must not lack
	// a kline that closed a moment ago.
	closed  kline.Kline
	version uint64 // counts the changes of latest
	subs    []*sub
	// job is the index of this stream's event in the push numbered
	// jobPush, so that one push encodes it once for all subscribers.
	job     int
	jobPush uint64
}

// sub is one client's subscription to one stream; the Server's mu guards it.
type sub struct {
	c    *client
	st   *stream
	sent uint64 // the stream's version last queued to c
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
	s := &Server{cfg: cfg, wake: make(chan struct{}, 1), phases: phases, streams: map[streamKey]*stream{},
		groups: make([]map[*client]struct{}, phases), set: metrics.NewSet()}
	for i := range s.groups {
		s.groups[i] = map[*client]struct{}{}
	}
	s.delay = s.set.NewSummaryExt("klagg_stream_event_delay_seconds", time.Minute, []float64{0.5, 0.9, 0.99, 0.999, 1})
	return s
}

// WritePrometheus writes the server's own metrics: the time from an
// event's push (a closing kline's publication, or the push of a client's
// phase) or a reply's queueing to its write to the client's socket.
func (s *Server) WritePrometheus(w io.Writer) { s.set.WritePrometheus(w) }

// Stats returns the server's counters.
func (s *Server) Stats() *Stats { return &s.stats }

// Publish implements the engine's Sink.
func (s *Server) Publish(us []kline.Update) {
	var closedAt time.Time
	s.mu.Lock()
	for i := range us {
		u := &us[i]
		st := s.stream(u)
		if !st.has || u.OpenTime >= st.latest.OpenTime {
			st.latest, st.has = u.Kline, true
			st.version++
		}
		if u.Closed && u.OpenTime >= st.closed.OpenTime {
			st.closed = u.Kline
		}
		if u.Closed && len(st.subs) > 0 {
			if closedAt.IsZero() {
				closedAt = time.Now()
			}
			s.urgent = append(s.urgent, closing{*u, closedAt})
		}
	}
	s.mu.Unlock()
	if !closedAt.IsZero() {
		s.nudge()
	}
}

// closing is a closed kline to send at once, and when it was published:
// its event's delay counts from then.
type closing struct {
	u  kline.Update
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
	st := s.streams[streamKey{u.Symbol, u.Interval.String()}]
	if st == nil {
		st = &stream{symbol: u.Symbol, interval: u.Interval}
		s.streams[streamKey{u.Symbol, u.Interval.String()}] = st
	}
	if u.Series != 0 && u.Series < 1<<24 {
		if n := int(u.Series) + 1; n > len(s.bySeries) {
			s.bySeries = append(s.bySeries, make([]*stream, n-len(s.bySeries))...)
		}
		s.bySeries[u.Series] = st
	}
	return st
}

// Recent appends to dst the newest closed kline of symbol and iv and the
// newest kline if that is another, oldest first: what the engine has
// published that the store may not have yet.
func (s *Server) Recent(dst []kline.Kline, symbol string, iv kline.Interval) []kline.Kline {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.streams[streamKey{symbol, iv.String()}]
	if st == nil || !st.has {
		return dst
	}
	if st.closed.OpenTime != 0 && st.closed.OpenTime < st.latest.OpenTime {
		dst = append(dst, st.closed)
	}
	return append(dst, st.latest)
}

// Run pushes changes until ctx ends, then closes every client.
func (s *Server) Run(ctx context.Context) error {
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
	urgent []closing
	fresh  []*client
	pings  []*client
	jobs   []job
	sends  []delivery
	batch  []frame
}

// job is one event to encode in a push.
type job struct {
	u       kline.Update
	name    string
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
// current klines of new subscriptions, and, when phase is not -1, every
// change the clients of that phase have not been sent; it pings those
// clients once per ping interval.
func (s *Server) push(p *pusher, phase int) {
	p.n++
	p.due = time.Now()
	p.jobs, p.sends = p.jobs[:0], p.sends[:0]
	s.mu.Lock()
	p.urgent, s.urgent = s.urgent, p.urgent[:0]
	p.fresh, s.fresh = s.fresh, p.fresh[:0]
	for i := range p.urgent {
		u := &p.urgent[i].u
		st := s.stream(u)
		if len(st.subs) == 0 {
			continue
		}
		// The closing event stands for the stream's newest kline if it is
		// that kline, so the phase does not send it again.
		newest := st.latest.OpenTime == u.OpenTime
		p.jobs = append(p.jobs, job{u: *u, name: st.name, due: p.urgent[i].at})
		for _, sb := range st.subs {
			p.sends = append(p.sends, delivery{sb.c, len(p.jobs) - 1})
			if newest {
				sb.sent = st.version
			}
		}
	}
	for _, c := range p.fresh {
		p.changes(c)
	}
	if phase >= 0 {
		for c := range s.groups[phase] {
			p.changes(c)
			if p.due.Sub(c.pinged) >= s.cfg.PingInterval {
				c.pinged = p.due
				p.pings = append(p.pings, c)
			}
		}
	}
	s.mu.Unlock()
	for _, c := range p.pings {
		go c.ping()
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
	now := s.cfg.Now().UnixMilli()
	for i := 0; i < len(p.sends); {
		c := p.sends[i].c
		p.batch = p.batch[:0]
		for ; i < len(p.sends) && p.sends[i].c == c; i++ {
			j := &p.jobs[p.sends[i].job]
			if !j.encoded {
				j.ev, j.encoded = s.encode(j.name, &j.u, now), true
			}
			if j.ev != nil {
				p.batch = append(p.batch, frame{j.ev.layout(c.combined), j.due})
			}
		}
		c.queue(p.batch)
	}
	clear(p.sends)
	clear(p.jobs)
	clear(p.batch)
}

// changes adds a delivery of each of c's streams whose newest kline c has
// not been sent; called with the Server's mu held.
func (p *pusher) changes(c *client) {
	for _, sb := range c.subs {
		st := sb.st
		if !st.has || sb.sent == st.version {
			continue
		}
		sb.sent = st.version
		if st.jobPush != p.n {
			st.jobPush, st.job = p.n, len(p.jobs)
			p.jobs = append(p.jobs, job{u: kline.Update{Symbol: st.symbol, Interval: st.interval, Kline: st.latest}, name: st.name, due: p.due})
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

func (s *Server) encode(name string, u *kline.Update, now int64) *event {
	prec, ok := s.cfg.Symbol(u.Symbol)
	if !ok {
		return nil
	}
	b := make([]byte, 0, 400)
	b = append(b, `{"stream":"`...)
	b = append(b, name...)
	b = append(b, `","data":`...)
	start := len(b)
	b = binance.AppendKlineEvent(b, u.Symbol, u.Interval.String(), now, &u.Kline, prec)
	end := len(b)
	b = append(b, '}')
	return &event{combined: b, raw: b[start:end:end]}
}

// parseStream checks a stream name and returns its symbol and interval.
func (s *Server) parseStream(name string) (streamKey, *binance.WSError) {
	sym, iv, ok := strings.Cut(name, "@kline_")
	if !ok || sym == "" {
		return streamKey{}, &binance.WSError{Code: 2, Msg: fmt.Sprintf("Invalid request: %q is not a stream klagg serves; klagg serves <symbol>@kline_<interval>", name)}
	}
	symbol := strings.ToUpper(sym)
	if _, ok := s.cfg.Symbol(symbol); !ok || sym != strings.ToLower(sym) {
		return streamKey{}, &binance.WSError{Code: 2, Msg: fmt.Sprintf("Invalid request: unknown symbol in %q (symbols are lower case in stream names)", name)}
	}
	if s.intervalOf(iv).String() != "" {
		return streamKey{symbol, iv}, nil
	}
	return streamKey{}, &binance.WSError{Code: 2, Msg: fmt.Sprintf("Invalid request: interval %q in %q is not kept by this klagg", iv, name)}
}

// subscribe adds c to the streams. The push loop then sends their current
// klines, after the reply the caller has already queued.
func (s *Server) subscribe(c *client, keys []streamKey, names []string) {
	s.mu.Lock()
	for i, k := range keys {
		if _, ok := c.subs[names[i]]; ok {
			continue
		}
		st := s.streams[k]
		if st == nil {
			st = &stream{symbol: k.symbol, interval: s.intervalOf(k.interval)}
			s.streams[k] = st
		}
		st.name = names[i]
		sb := &sub{c: c, st: st}
		c.subs[names[i]] = sb
		st.subs = append(st.subs, sb)
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
		st := sb.st
		if i := slices.Index(st.subs, sb); i >= 0 {
			st.subs = slices.Delete(st.subs, i, i+1)
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
