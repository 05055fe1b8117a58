// Package stream owns klagg's WebSocket API: Binance-compatible
// <symbol>@kline_<interval> streams on /market/ws and /market/stream, every
// client's subscriptions, and the fan-out of kline changes to them.
//
// The Server is an engine sink. Publish only records the newest kline of
// each stream, so the engine never waits on clients; a push loop sends each
// changed stream at most once per push interval, and a kline's closing
// event at once. Every event is encoded once and shared by all its
// subscribers. Each client has a bounded queue: a client that does not
// keep up is closed with a reason, and nobody else notices.
package stream

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"

	"github.com/klagg/klagg/internal/binance"
	"github.com/klagg/klagg/internal/kline"
)

// Config sets up a Server. Zero fields take the defaults in brackets.
type Config struct {
	PushInterval      time.Duration // at most one event per stream per this [100ms]
	ClientBuffer      int           // frames queued per client before it is dropped [1024]
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

// Server fans kline changes out to WebSocket clients.
type Server struct {
	cfg   Config
	stats Stats
	wake  chan struct{}

	mu       sync.Mutex
	streams  map[streamKey]*stream
	bySeries []*stream      // streams by kline.Update.Series, a cache of streams
	dirty    []*stream      // open klines changed since the last push
	urgent   []kline.Update // closed klines to send at once
	clients  map[*client]bool
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
	closed kline.Kline
	dirty  bool
	// subs is replaced, never changed in place, so the push loop can use
	// it after unlocking.
	subs []*client
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
	return &Server{cfg: cfg, wake: make(chan struct{}, 1), streams: map[streamKey]*stream{}, clients: map[*client]bool{}}
}

// Stats returns the server's counters.
func (s *Server) Stats() *Stats { return &s.stats }

// Publish implements the engine's Sink.
func (s *Server) Publish(us []kline.Update) {
	urgent := false
	s.mu.Lock()
	for i := range us {
		u := &us[i]
		st := s.stream(u)
		if !st.has || u.OpenTime >= st.latest.OpenTime {
			st.latest, st.has = u.Kline, true
		}
		if u.Closed && u.OpenTime >= st.closed.OpenTime {
			st.closed = u.Kline
		}
		if len(st.subs) == 0 {
			continue
		}
		if u.Closed {
			s.urgent = append(s.urgent, *u)
			urgent = true
		} else if !st.dirty && u.OpenTime == st.latest.OpenTime {
			st.dirty = true
			s.dirty = append(s.dirty, st)
		}
	}
	s.mu.Unlock()
	if urgent {
		select {
		case s.wake <- struct{}{}:
		default:
		}
	}
}

// stream returns u's stream, made if new; called with mu held.
func (s *Server) stream(u *kline.Update) *stream {
	if int(u.Series) < len(s.bySeries) {
		if st := s.bySeries[u.Series]; st != nil && st.symbol == u.Symbol && st.interval == u.Interval {
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
	t := time.NewTicker(s.cfg.PushInterval)
	defer t.Stop()
	var urgent []kline.Update
	var dirty []*stream
	type job struct {
		u    kline.Update
		name string
		subs []*client
	}
	var jobs []job
	for {
		tick := false
		select {
		case <-ctx.Done():
			s.mu.Lock()
			s.stopped = true
			for c := range s.clients {
				c.close(websocket.StatusGoingAway, "server shutting down")
			}
			s.mu.Unlock()
			return nil
		case <-s.wake:
		case <-t.C:
			tick = true
		}
		jobs = jobs[:0]
		s.mu.Lock()
		urgent, s.urgent = s.urgent, urgent[:0]
		for _, u := range urgent {
			if st := s.streams[streamKey{u.Symbol, u.Interval.String()}]; st != nil && len(st.subs) > 0 {
				jobs = append(jobs, job{u, st.name, st.subs})
			}
		}
		if tick {
			dirty, s.dirty = s.dirty, dirty[:0]
			for _, st := range dirty {
				st.dirty = false
				if len(st.subs) > 0 {
					jobs = append(jobs, job{kline.Update{Symbol: st.symbol, Interval: st.interval, Kline: st.latest}, st.name, st.subs})
				}
			}
			clear(dirty)
		}
		s.mu.Unlock()
		clear(urgent)
		now := s.cfg.Now().UnixMilli()
		for i := range jobs {
			j := &jobs[i]
			ev := s.encode(j.name, &j.u, now)
			if ev == nil {
				continue
			}
			for _, c := range j.subs {
				c.send(ev)
			}
		}
	}
}

// event is one kline event in both layouts, sharing one buffer: combined
// is {"stream":…,"data":raw}.
type event struct {
	combined []byte
	raw      []byte
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

// subscribe adds c to the streams and queues their current klines to it,
// after the reply the caller has already queued.
func (s *Server) subscribe(c *client, keys []streamKey, names []string) {
	now := s.cfg.Now().UnixMilli()
	var evs []*event
	s.mu.Lock()
	for i, k := range keys {
		if _, ok := c.subs[names[i]]; ok {
			continue
		}
		c.subs[names[i]] = k
		st := s.streams[k]
		if st == nil {
			iv := s.intervalOf(k.interval)
			st = &stream{symbol: k.symbol, interval: iv}
			s.streams[k] = st
		}
		st.name = names[i]
		st.subs = append(st.subs[:len(st.subs):len(st.subs)], c)
		if st.has {
			u := kline.Update{Symbol: st.symbol, Interval: st.interval, Kline: st.latest}
			if ev := s.encode(st.name, &u, now); ev != nil {
				evs = append(evs, ev)
			}
		}
	}
	s.mu.Unlock()
	for _, ev := range evs {
		c.send(ev)
	}
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
		k, ok := c.subs[n]
		if !ok {
			continue
		}
		delete(c.subs, n)
		st := s.streams[k]
		if st == nil {
			continue
		}
		subs := make([]*client, 0, len(st.subs))
		for _, o := range st.subs {
			if o != c {
				subs = append(subs, o)
			}
		}
		st.subs = subs
	}
}

// join registers a client unless the server has stopped.
func (s *Server) join(c *client) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return false
	}
	s.clients[c] = true
	return true
}

func (s *Server) leave(c *client) {
	s.mu.Lock()
	delete(s.clients, c)
	s.mu.Unlock()
}
