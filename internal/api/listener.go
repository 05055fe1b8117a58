package api

import (
	"context"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// stalledAfter is how long a write must be blocked before its connection
// counts as one whose client stopped reading.
const stalledAfter = time.Second

// Listener caps the connections a server holds open at once, WebSocket
// ones included, so that a flood of clients cannot take the process's
// last file descriptors, which the store and the exchange connections
// need. At the cap a new connection takes the place of one whose client
// stopped reading (a write blocked for a second or more), else of the one
// that has not completed a request for the longest (a second or more:
// still sending its headers, or nothing at all), else of the one idle
// longest between requests; when there is none it is closed at once. So
// clients that pipeline requests and never read the answers, and clients
// that trickle their headers, lose their places to clients that do not.
type Listener struct {
	net.Listener
	max     int
	refused atomic.Int64
	evicted atomic.Int64

	now func() time.Time

	mu    sync.Mutex
	conns map[*countedConn]struct{}
}

// NewListener caps ln at max open connections. Pass ConnState to the
// http.Server using it, so that it knows idle connections.
func NewListener(ln net.Listener, max int) *Listener {
	return &Listener{Listener: ln, max: max, now: time.Now, conns: map[*countedConn]struct{}{}}
}

// Accept returns the next connection within the cap.
func (l *Listener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		cc := &countedConn{Conn: c, l: l}
		cc.waiting.Store(l.now().UnixNano())
		l.mu.Lock()
		var victim *countedConn
		if len(l.conns) >= l.max {
			victim = l.victimLocked(l.now())
			if victim == nil {
				l.mu.Unlock()
				l.refused.Add(1)
				c.Close()
				continue
			}
			delete(l.conns, victim)
		}
		l.conns[cc] = struct{}{}
		l.mu.Unlock()
		if victim != nil {
			l.evicted.Add(1)
			victim.Close()
		}
		return cc, nil
	}
}

// victimLocked picks the connection to close for a new one: the longest
// stalled writer, else the longest idle; nil if none.
func (l *Listener) victimLocked(now time.Time) *countedConn {
	var stalled, waiting, idle *countedConn
	var stalledSince, waitingSince, idleSince int64
	for c := range l.conns {
		if w := c.writing.Load(); w != 0 && now.UnixNano()-w >= int64(stalledAfter) && (stalled == nil || w < stalledSince) {
			stalled, stalledSince = c, w
		}
		if w := c.waiting.Load(); w != 0 && now.UnixNano()-w >= int64(stalledAfter) && (waiting == nil || w < waitingSince) {
			waiting, waitingSince = c, w
		}
		if i := c.idle.Load(); i != 0 && (idle == nil || i < idleSince) {
			idle, idleSince = c, i
		}
	}
	switch {
	case stalled != nil:
		return stalled
	case waiting != nil:
		return waiting
	}
	return idle
}

// ConnState is the http.Server's ConnState hook: it tells the listener
// which connections wait idle between requests.
func (l *Listener) ConnState(c net.Conn, state http.ConnState) {
	cc, ok := c.(*countedConn)
	if !ok {
		return
	}
	switch state {
	case http.StateNew: // waiting since Accept
	case http.StateIdle:
		cc.idle.Store(l.now().UnixNano())
		cc.waiting.Store(0)
	case http.StateActive:
		// A request's first bytes: it waits until its handler starts.
		cc.idle.Store(0)
		cc.waiting.Store(l.now().UnixNano())
	default:
		cc.idle.Store(0)
		cc.waiting.Store(0)
	}
}

type connKey struct{}

// ConnContext is the http.Server's ConnContext hook: it lets a request's
// handler tell the listener that the request has come whole.
func (l *Listener) ConnContext(ctx context.Context, c net.Conn) context.Context {
	if cc, ok := c.(*countedConn); ok {
		return context.WithValue(ctx, connKey{}, cc)
	}
	return ctx
}

// requested marks the connection of the request with ctx as one whose
// request came whole.
func requested(ctx context.Context) {
	if cc, ok := ctx.Value(connKey{}).(*countedConn); ok {
		cc.waiting.Store(0)
	}
}

// Open is the number of connections open now.
func (l *Listener) Open() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.conns)
}

// Refused is the number of connections closed at once for the cap.
func (l *Listener) Refused() int64 { return l.refused.Load() }

// Evicted is the number of connections closed to make room for new ones.
func (l *Listener) Evicted() int64 { return l.evicted.Load() }

// countedConn gives its place back on its first Close, whoever holds it
// then (the HTTP server, or the WebSocket library after a hijack), and
// tells the listener when a write of it is blocked.
type countedConn struct {
	net.Conn
	l       *Listener
	once    sync.Once
	writing atomic.Int64 // when the write under way began, Unix ns; 0: none
	idle    atomic.Int64 // since when it waits between requests, Unix ns; 0: busy
	waiting atomic.Int64 // since when a request is awaited whole, Unix ns; 0: none
}

func (c *countedConn) Write(p []byte) (int, error) {
	c.writing.Store(c.l.now().UnixNano())
	n, err := c.Conn.Write(p)
	c.writing.Store(0)
	return n, err
}

func (c *countedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() {
		c.l.mu.Lock()
		delete(c.l.conns, c)
		c.l.mu.Unlock()
	})
	return err
}
