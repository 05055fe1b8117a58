package stream

import (
	"context"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"

	"github.com/klagg/klagg/internal/binance"
)

// maxRequest bounds a client's request frame; a SUBSCRIBE of 1024 streams
// fits in it.
const maxRequest = 64 << 10

// client is one WebSocket connection: a reader for requests, a writer fed
// through out, and a pinger.
type client struct {
	s        *Server
	conn     *websocket.Conn
	combined bool
	out      chan []byte
	ctx      context.Context
	cancel   context.CancelFunc
	closing  atomic.Bool
	subs     map[string]streamKey // guarded by s.mu
}

// ServeHTTP accepts /market/ws/<stream>/<stream>… (raw events) and
// /market/stream?streams=<stream>/… (events wrapped with their stream name),
// and the same without /market, as Binance does.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	path := strings.TrimPrefix(r.URL.Path, "/market")
	var names []string
	combined := false
	switch {
	case path == "/stream":
		combined = true
		if q := r.URL.Query().Get("streams"); q != "" {
			names = strings.Split(q, "/")
		}
	case strings.HasPrefix(path, "/ws"):
		if rest := strings.Trim(strings.TrimPrefix(path, "/ws"), "/"); rest != "" {
			names = strings.Split(rest, "/")
		}
	default:
		http.NotFound(w, r)
		return
	}
	if len(names) > s.cfg.MaxStreamsPerConn {
		http.Error(w, fmt.Sprintf("too many streams: %d, at most %d per connection", len(names), s.cfg.MaxStreamsPerConn), http.StatusBadRequest)
		return
	}
	keys := make([]streamKey, len(names))
	for i, n := range names {
		k, err := s.parseStream(n)
		if err != nil {
			http.Error(w, err.Msg, http.StatusBadRequest)
			return
		}
		keys[i] = k
	}
	if s.stats.Clients.Add(1) > int64(s.cfg.MaxConns) {
		s.stats.Clients.Add(-1)
		s.stats.Rejected.Add(1)
		http.Error(w, fmt.Sprintf("connection limit reached (%d)", s.cfg.MaxConns), http.StatusServiceUnavailable)
		return
	}
	defer s.stats.Clients.Add(-1)
	conn, err := websocket.Accept(w, r, &websocket.AcceptOptions{OriginPatterns: s.cfg.OriginPatterns})
	if err != nil {
		return // Accept has answered the request
	}
	s.stats.Accepted.Add(1)
	conn.SetReadLimit(maxRequest)
	ctx, cancel := context.WithCancel(context.Background())
	c := &client{s: s, conn: conn, combined: combined, out: make(chan []byte, s.cfg.ClientBuffer),
		ctx: ctx, cancel: cancel, subs: map[string]streamKey{}}
	if !s.join(c) {
		conn.Close(websocket.StatusGoingAway, "server shutting down")
		cancel()
		return
	}
	defer func() {
		s.leave(c)
		s.unsubscribe(c, nil)
		cancel()
		conn.CloseNow()
	}()
	go c.writer()
	go c.pinger()
	if len(keys) > 0 {
		s.subscribe(c, keys, names)
	}
	c.reader()
}

// send queues an event in the client's layout.
func (c *client) send(ev *event) {
	if c.combined {
		c.queue(ev.combined)
	} else {
		c.queue(ev.raw)
	}
	c.s.stats.Events.Add(1)
}

// queue never blocks: a client whose queue is full is dropped, so neither
// the push loop nor other clients wait for it.
func (c *client) queue(b []byte) {
	if c.closing.Load() {
		return
	}
	select {
	case c.out <- b:
	default:
		c.s.stats.Dropped.Add(1)
		c.close(websocket.StatusPolicyViolation, fmt.Sprintf("too slow: %d events not read", cap(c.out)))
	}
}

// close ends the connection with a reason, once.
func (c *client) close(code websocket.StatusCode, reason string) {
	if c.closing.Swap(true) {
		return
	}
	c.s.cfg.Log.Debug("closing stream client", "reason", reason)
	go func() {
		c.conn.Close(code, reason)
		c.cancel()
	}()
}

func (c *client) writer() {
	for {
		select {
		case <-c.ctx.Done():
			return
		case b := <-c.out:
			if err := c.conn.Write(c.ctx, websocket.MessageText, b); err != nil {
				c.cancel()
				return
			}
		}
	}
}

func (c *client) pinger() {
	t := time.NewTicker(c.s.cfg.PingInterval)
	defer t.Stop()
	for {
		select {
		case <-c.ctx.Done():
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(c.ctx, c.s.cfg.PongTimeout)
		err := c.conn.Ping(ctx)
		cancel()
		if err != nil && c.ctx.Err() == nil {
			c.close(websocket.StatusPolicyViolation, "no pong")
			return
		}
	}
}

func (c *client) reader() {
	window, count := time.Now(), 0
	for {
		_, msg, err := c.conn.Read(c.ctx)
		if err != nil {
			return
		}
		if time.Since(window) >= time.Second {
			window, count = time.Now(), 0
		}
		if count++; count > c.s.cfg.MaxMsgsPerSecond {
			c.close(websocket.StatusPolicyViolation, fmt.Sprintf("too many requests: more than %d a second", c.s.cfg.MaxMsgsPerSecond))
			return
		}
		c.s.request(c, msg)
	}
}

// request answers one client message; every message gets a reply.
func (s *Server) request(c *client, msg []byte) {
	req, werr := binance.ParseWSRequest(msg)
	if werr != nil {
		c.queue(binance.AppendWSReply(nil, nil, werr, req.ID))
		return
	}
	var result any
	switch req.Method {
	case "SUBSCRIBE":
		keys := make([]streamKey, len(req.Params))
		for i, n := range req.Params {
			k, err := s.parseStream(n)
			if err != nil {
				c.queue(binance.AppendWSReply(nil, nil, err, req.ID))
				return
			}
			keys[i] = k
		}
		s.mu.Lock()
		n := len(c.subs)
		for _, name := range req.Params {
			if _, ok := c.subs[name]; !ok {
				n++
			}
		}
		s.mu.Unlock()
		if n > s.cfg.MaxStreamsPerConn {
			c.queue(binance.AppendWSReply(nil, nil, &binance.WSError{Code: 2,
				Msg: fmt.Sprintf("Invalid request: at most %d streams per connection", s.cfg.MaxStreamsPerConn)}, req.ID))
			return
		}
		c.queue(binance.AppendWSReply(nil, nil, nil, req.ID))
		s.subscribe(c, keys, req.Params)
		return
	case "UNSUBSCRIBE":
		if req.Params == nil {
			req.Params = []string{}
		}
		s.unsubscribe(c, req.Params)
	case "LIST_SUBSCRIPTIONS":
		s.mu.Lock()
		names := make([]string, 0, len(c.subs))
		for n := range c.subs {
			names = append(names, n)
		}
		s.mu.Unlock()
		sort.Strings(names)
		result = names
	}
	c.queue(binance.AppendWSReply(nil, result, nil, req.ID))
}
