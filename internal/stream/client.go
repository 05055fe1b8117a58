package stream

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"

	"github.com/klagg/klagg/internal/binance"
)

// maxRequest bounds a client's request frame; a SUBSCRIBE of 1024 streams
// fits in it.
const maxRequest = 64 << 10

// client is one WebSocket connection: a reader for requests and a writer
// fed through pending; the push loop pings it.
type client struct {
	s        *Server
	conn     *websocket.Conn
	wire     *wire
	remote   string      // the client's address, for the log
	combined atomic.Bool // events wrapped with their stream name; SET_PROPERTY changes it
	ctx      context.Context
	cancel   context.CancelFunc
	closing  atomic.Bool // close has begun; closed is closed once it is over
	closed   chan struct{}
	id       uint64    // set by join, in the order clients joined
	phase    int       // the push loop's group; set by join
	pinged   time.Time // the last ping's start; guarded by s.mu
	pinging  atomic.Bool
	subs     map[string]*sub // by stream name; guarded by s.mu
	streams  atomic.Int32    // len(subs), for queue

	mu       sync.Mutex
	pending  []frame // queued for the writer
	inflight int     // frames the writer has taken and not yet written
	ready    chan struct{}
}

// frame is one message to a client and when it was due.
type frame struct {
	b   []byte
	due time.Time
}

// ServeHTTP accepts every URL form Binance accepts for market streams:
// /market/ws, /market/ws/<stream>/<stream>… (raw events), /market/stream
// and /market/stream?streams=<stream>/… (events wrapped with their stream
// name), the same under /public and /private and without a prefix.
// Path segments that are not stream names (/market/ws/0, as some clients
// open before they SUBSCRIBE) are ignored.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	su, ok := binance.ParseStreamURL(r.URL)
	names, combined := su.Names, su.Combined
	if !ok {
		http.NotFound(w, r)
		return
	}
	if len(r.RequestURI) > binance.MaxURLLength {
		http.Error(w, fmt.Sprintf("URL too long: %d characters, at most %d", len(r.RequestURI), binance.MaxURLLength), http.StatusRequestURITooLong)
		return
	}
	if len(names) > s.cfg.MaxStreamsPerConn {
		http.Error(w, fmt.Sprintf("too many streams: %d, at most %d per connection", len(names), s.cfg.MaxStreamsPerConn), http.StatusBadRequest)
		return
	}
	if s.stats.Clients.Add(1) > int64(s.cfg.MaxConns) {
		s.stats.Clients.Add(-1)
		s.stats.Rejected.Add(1)
		http.Error(w, fmt.Sprintf("connection limit reached (%d)", s.cfg.MaxConns), http.StatusServiceUnavailable)
		return
	}
	defer s.stats.Clients.Add(-1)
	hj := &hijacker{ResponseWriter: w}
	conn, err := websocket.Accept(hj, r, &websocket.AcceptOptions{OriginPatterns: s.cfg.OriginPatterns})
	if err != nil {
		return // Accept has answered the request
	}
	s.stats.Accepted.Add(1)
	conn.SetReadLimit(maxRequest)
	ctx, cancel := context.WithCancel(context.Background())
	c := &client{s: s, conn: conn, wire: hj.wire, ctx: ctx, cancel: cancel, remote: r.RemoteAddr,
		subs: map[string]*sub{}, ready: make(chan struct{}, 1), closed: make(chan struct{})}
	c.combined.Store(combined)
	if !s.join(c) {
		conn.Close(websocket.StatusGoingAway, "server shutting down")
		cancel()
		return
	}
	// This handler owns the client's goroutines and waits for them all;
	// Run waits for the handlers (join counted this one), so that klagg
	// does not exit before a client has its close frame.
	defer s.handlers.Done()
	writer := make(chan struct{})
	defer func() {
		s.leave(c)
		s.unsubscribe(c, nil)
		if c.closing.Swap(true) {
			<-c.closed // the close frame is out, or its wait timed out
		}
		cancel()
		conn.CloseNow()
		<-writer
	}()
	go func() { defer close(writer); c.writer() }()
	if len(names) > 0 {
		s.subscribe(c, names)
	}
	c.reader()
}

// queue adds frames to the client's queue without blocking: a client
// whose queue would pass its limit is dropped, so neither the push loop
// nor other clients wait for it. The limit is the configured buffer
// beyond what a client keeping up may have queued at once: a change and a
// close for each of its streams.
func (c *client) queue(frames []frame) { c.enqueue(frames, false) }

// queueTrades adds trade events to the client's queue: unlike kline
// events they come in bursts of any size (a repaired gap's trades), so the
// queue may pass its limit by one burst, and a client is dropped only when
// it is already that far behind.
func (c *client) queueTrades(frames []frame) { c.enqueue(frames, true) }

func (c *client) enqueue(frames []frame, burst bool) {
	if len(frames) == 0 {
		return
	}
	c.mu.Lock()
	if c.closing.Load() {
		c.mu.Unlock()
		return
	}
	queued := c.inflight + len(c.pending)
	if !burst {
		queued += len(frames)
	}
	if queued > c.s.cfg.ClientBuffer+2*int(c.streams.Load()) {
		c.mu.Unlock()
		c.s.stats.Dropped.Add(1)
		c.close(websocket.StatusPolicyViolation, fmt.Sprintf("too slow: %d events not read", c.s.cfg.ClientBuffer))
		return
	}
	c.pending = append(c.pending, frames...)
	c.mu.Unlock()
	c.s.stats.Events.Add(int64(len(frames)))
	select {
	case c.ready <- struct{}{}:
	default:
	}
}

// reply queues an answer to a request.
func (c *client) reply(b []byte) { c.queue([]frame{{b, time.Now()}}) }

// close ends the connection with a reason, once, on a goroutine that
// closes c.closed when done: the close handshake waits for the client (up
// to 5 s), and the caller may be the push loop. The client's handler
// waits for it.
func (c *client) close(code websocket.StatusCode, reason string) {
	if c.closing.Swap(true) {
		return
	}
	// At INFO: a client the server drops should be able to find out why
	// from the operator.
	c.s.cfg.Log.Info("closing a stream client", "remote", c.remote, "code", int(code), "reason", reason)
	go func() {
		defer close(c.closed)
		c.conn.Close(code, reason)
		c.cancel()
	}()
}

// writer writes whatever is queued, all of it in one write to the socket.
func (c *client) writer() {
	var batch []frame
	for {
		select {
		case <-c.ctx.Done():
			return
		case <-c.ready:
		}
		c.mu.Lock()
		batch, c.pending = c.pending, batch[:0]
		c.inflight = len(batch)
		c.mu.Unlock()
		if err := c.write(batch); err != nil {
			c.cancel()
			return
		}
		c.mu.Lock()
		c.inflight = 0
		c.mu.Unlock()
		now := time.Now()
		for _, f := range batch {
			c.s.delay.Update(now.Sub(f.due).Seconds())
		}
		clear(batch)
	}
}

func (c *client) write(batch []frame) error {
	c.wire.cork()
	for _, f := range batch {
		// Corked, a write only copies to memory; without a deadline the
		// library skips arming one per message. The conn's close ends a
		// write to a client that stopped reading.
		if err := c.conn.Write(context.Background(), websocket.MessageText, f.b); err != nil {
			c.wire.uncork()
			return err
		}
	}
	return c.wire.uncork()
}

// ping closes the client if it does not answer a ping in time. It runs
// only while a ping is out, so that no goroutine per client waits minutes
// for the next.
func (c *client) ping() {
	if c.pinging.Swap(true) {
		return
	}
	defer c.pinging.Store(false)
	ctx, cancel := context.WithTimeout(c.ctx, c.s.cfg.PongTimeout)
	defer cancel()
	if err := c.conn.Ping(ctx); err != nil && c.ctx.Err() == nil {
		c.close(websocket.StatusPolicyViolation, "no pong")
	}
}

func (c *client) reader() {
	window, count := time.Now(), 0
	for {
		_, msg, err := c.conn.Read(c.ctx)
		if err != nil {
			if strings.Contains(err.Error(), "read limited at") {
				// The library has closed it with 1009 and the limit.
				c.s.cfg.Log.Info("closing a stream client", "remote", c.remote, "code", int(websocket.StatusMessageTooBig),
					"reason", fmt.Sprintf("a frame over %d bytes", maxRequest))
			}
			return
		}
		if time.Since(window) >= time.Second {
			window, count = time.Now(), 0
		}
		if count++; count > c.s.cfg.MaxMsgsPerSecond {
			// Closed here, not by the writer: the deferred CloseNow in
			// ServeHTTP must not cut the close frame that gives the reason.
			if !c.closing.Swap(true) {
				reason := fmt.Sprintf("too many requests: more than %d a second", c.s.cfg.MaxMsgsPerSecond)
				c.s.cfg.Log.Info("closing a stream client", "remote", c.remote, "code", int(websocket.StatusPolicyViolation), "reason", reason)
				c.conn.Close(websocket.StatusPolicyViolation, reason)
				close(c.closed)
			}
			return
		}
		c.s.request(c, msg)
	}
}

// request answers one client message; every message gets a reply.
func (s *Server) request(c *client, msg []byte) {
	if len(msg) > binance.MaxRequestBytes {
		// Binance ignores such a frame without a word; a reply costs
		// nothing and tells the client why nothing happens.
		c.reply(binance.AppendWSReply(nil, nil, &binance.WSError{Code: 2,
			Msg: fmt.Sprintf("Invalid request: %d bytes, over the %d a request may have", len(msg), binance.MaxRequestBytes)}, nil))
		return
	}
	req, werr := binance.ParseWSRequest(msg)
	if werr != nil {
		c.reply(binance.AppendWSReply(nil, nil, werr, req.ID))
		return
	}
	var result any
	switch req.Method {
	case binance.MethodSubscribe:
		names, werr := req.Streams()
		if werr != nil {
			c.reply(binance.AppendWSReply(nil, nil, werr, req.ID))
			return
		}
		s.mu.Lock()
		n := len(c.subs)
		for _, name := range names {
			if _, ok := c.subs[name]; !ok {
				n++
			}
		}
		s.mu.Unlock()
		if n > s.cfg.MaxStreamsPerConn {
			c.reply(binance.AppendWSReply(nil, nil, &binance.WSError{Code: 2,
				Msg: fmt.Sprintf("Invalid request: at most %d streams per connection", s.cfg.MaxStreamsPerConn)}, req.ID))
			return
		}
		c.reply(binance.AppendWSReply(nil, nil, nil, req.ID))
		s.subscribe(c, names)
		return
	case binance.MethodUnsubscribe:
		names, werr := req.Streams()
		if werr != nil {
			c.reply(binance.AppendWSReply(nil, nil, werr, req.ID))
			return
		}
		if names == nil {
			names = []string{}
		}
		s.unsubscribe(c, names)
	case binance.MethodListSubscriptions:
		s.mu.Lock()
		names := make([]string, 0, len(c.subs))
		for n := range c.subs {
			names = append(names, n)
		}
		s.mu.Unlock()
		sort.Strings(names)
		result = names
	case binance.MethodSetProperty, binance.MethodGetProperty:
		_, v, werr := req.Property()
		if werr != nil {
			c.reply(binance.AppendWSReply(nil, nil, werr, req.ID))
			return
		}
		if req.Method == binance.MethodGetProperty {
			result = c.combined.Load()
		} else {
			c.combined.Store(v)
		}
	}
	c.reply(binance.AppendWSReply(nil, result, nil, req.ID))
}

// wire is a client's connection under the WebSocket library, which flushes
// every message to the socket. While the writer has it corked, writes
// collect in memory and leave together when it uncorks: a client with ten
// changed streams costs one system call instead of ten, which at 100,000
// events a second is most of the fan-out's CPU.
type wire struct {
	net.Conn
	mu     sync.Mutex // orders writes: the library's control frames come from other goroutines
	corked bool
	buf    []byte
}

func (w *wire) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.corked {
		w.buf = append(w.buf, p...)
		return len(p), nil
	}
	return w.Conn.Write(p)
}

func (w *wire) cork() {
	w.mu.Lock()
	w.corked = true
	w.mu.Unlock()
}

// uncork writes what collected while corked.
func (w *wire) uncork() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.corked = false
	if len(w.buf) == 0 {
		return nil
	}
	_, err := w.Conn.Write(w.buf)
	if cap(w.buf) > 64<<10 {
		w.buf = nil // an idle client does not keep a large burst's buffer
	} else {
		w.buf = w.buf[:0]
	}
	return err
}

// hijacker hands the WebSocket library the connection wrapped in a wire.
type hijacker struct {
	http.ResponseWriter
	wire *wire
}

func (h *hijacker) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	conn, brw, err := http.NewResponseController(h.ResponseWriter).Hijack()
	if err != nil {
		return nil, nil, err
	}
	// The HTTP server's read and write timeouts are for requests; a stream
	// lives for hours, watched by pings instead.
	conn.SetDeadline(time.Time{})
	h.wire = &wire{Conn: conn}
	brw.Writer.Reset(h.wire) // the server's own buffer, held until the handler returns anyway
	return h.wire, brw, nil
}
