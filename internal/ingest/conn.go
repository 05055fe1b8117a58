package ingest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"

	"github.com/klagg/klagg/internal/binance"
)

// Config sets up Ingest.
type Config struct {
	URL            string           // WebSocket root, e.g. wss://fstream.binance.com
	StreamsPerConn int              // streams per connection (Binance allows 1024) [200]
	ReadTimeout    time.Duration    // reconnect when nothing arrives for this long [5m]
	RotateAfter    time.Duration    // replace a connection after this, before Binance's 24h cut [23h]
	HTTPClient     *http.Client     // for dialing (proxy settings)
	Now            func() time.Time // exchange time [time.Now]
	Log            *slog.Logger
}

// Stats are ingest's counters.
type Stats struct {
	Frames      atomic.Int64 // WebSocket messages received
	Trades      atomic.Int64 // aggTrade frames parsed
	Snapshots   atomic.Int64 // 1m kline events parsed
	Other       atomic.Int64 // well-formed frames that are not trades (replies, other events)
	Malformed   atomic.Int64 // frames that could not be parsed
	Connects    atomic.Int64 // successful dials
	Reconnects  atomic.Int64 // dials after a connection was lost
	Rotations   atomic.Int64 // planned replacements before the lifetime
	LastFrameMs atomic.Int64 // unix ms of the last frame
}

// ConnState describes one connection for status pages.
type ConnState struct {
	ID         int       `json:"id"`
	Streams    int       `json:"streams"`
	Connected  bool      `json:"connected"`
	Since      time.Time `json:"since"`
	Reconnects int64     `json:"reconnects"`
}

// Ingest keeps one aggTrade stream per subscribed symbol, sharded over
// connections of at most StreamsPerConn streams.
type Ingest struct {
	cfg    Config
	router *Router
	log    *slog.Logger
	stats  Stats

	fresh  chan struct{} // a connection was made: Run starts it
	mu     sync.Mutex
	conns  []*conn
	bySym  map[string]*conn
	nextID int
}

// New returns an Ingest delivering into router.
func New(cfg Config, router *Router) *Ingest {
	if cfg.StreamsPerConn <= 0 {
		cfg.StreamsPerConn = 200
	}
	if cfg.ReadTimeout <= 0 {
		cfg.ReadTimeout = 5 * time.Minute
	}
	if cfg.RotateAfter <= 0 {
		cfg.RotateAfter = 23 * time.Hour
	}
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = http.DefaultClient
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Ingest{cfg: cfg, router: router, log: cfg.Log, bySym: map[string]*conn{}, fresh: make(chan struct{}, 1)}
}

// Stats returns the counters.
func (in *Ingest) Stats() *Stats { return &in.stats }

// Run keeps connections until ctx ends, then closes them and waits for
// them: it starts every connection Subscribe and split make, so that each
// one's goroutine is Run's.
func (in *Ingest) Run(ctx context.Context) error {
	for {
		in.mu.Lock()
		for _, c := range in.conns {
			c.start(ctx) // a no-op for one started before
		}
		in.mu.Unlock()
		select {
		case <-in.fresh:
			continue
		case <-ctx.Done():
		}
		break
	}
	in.mu.Lock()
	conns := append([]*conn(nil), in.conns...)
	in.mu.Unlock()
	for _, c := range conns {
		c.wait()
	}
	return nil
}

// startFresh asks Run to start the connections made since it last looked.
func (in *Ingest) startFresh() {
	select {
	case in.fresh <- struct{}{}:
	default: // Run will look anyway
	}
}

// Subscribe adds symbols' aggTrade streams, on connections with room or on
// new ones.
func (in *Ingest) Subscribe(symbols ...string) {
	in.mu.Lock()
	defer in.mu.Unlock()
	for _, s := range symbols {
		if in.bySym[s] != nil {
			continue
		}
		var c *conn
		for _, cc := range in.conns {
			if cc.hasRoom(s) {
				c = cc
				break
			}
		}
		if c == nil {
			in.nextID++
			c = newConn(in, in.nextID)
			in.conns = append(in.conns, c)
			defer in.startFresh()
		}
		c.add(s)
		in.bySym[s] = c
	}
}

// split moves half of c's symbols to a new connection, started at once:
// Binance refused c's URL because of some stream in it, and halving finds
// that stream while the others go on. It reports false when c carries one
// symbol, which is then the one refused.
func (in *Ingest) split(c *conn) bool {
	in.mu.Lock()
	defer in.mu.Unlock()
	moved := c.takeHalf()
	if len(moved) == 0 {
		return false
	}
	in.nextID++
	nc := newConn(in, in.nextID)
	nc.splitFrom = c.id
	for _, s := range moved {
		nc.symbols[s] = s
		nc.urlLen += streamsLen(s)
		in.bySym[s] = nc
	}
	nc.publishNames()
	in.conns = append(in.conns, nc)
	in.startFresh()
	in.log.Warn("the exchange refused a connection; splitting it to find the stream at fault", "conn", c.id, "new_conn", nc.id, "moved", len(moved))
	return true
}

// Unsubscribe drops symbols' streams.
func (in *Ingest) Unsubscribe(symbols ...string) {
	in.mu.Lock()
	defer in.mu.Unlock()
	for _, s := range symbols {
		if c := in.bySym[s]; c != nil {
			c.remove(s)
			delete(in.bySym, s)
		}
	}
}

// Streaming waits until the exchange carries symbol's streams: from then
// on every trade of it reaches the router.
func (in *Ingest) Streaming(ctx context.Context, symbol string) error {
	for {
		in.mu.Lock()
		c := in.bySym[symbol]
		in.mu.Unlock()
		if c == nil {
			return fmt.Errorf("%s is not subscribed", symbol)
		}
		ok, wake := c.streaming(symbol)
		if ok {
			return nil
		}
		select {
		case <-wake:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Connections describes the connections.
func (in *Ingest) Connections() []ConnState {
	in.mu.Lock()
	defer in.mu.Unlock()
	out := make([]ConnState, 0, len(in.conns))
	for _, c := range in.conns {
		out = append(out, c.state())
	}
	return out
}

// conn is one logical connection: a set of streams kept on a WebSocket
// session, replaced by a new session on loss or before its lifetime ends.
type conn struct {
	in *Ingest
	id int

	mu      sync.Mutex
	symbols map[string]string // "BTCUSDT" → "BTCUSDT", guarded by mu
	// names is a read-only copy of symbols for the frame path, replaced on
	// every change, so reading a trade takes no lock and interns the name.
	names     atomic.Pointer[map[string]string]
	session   *websocket.Conn
	since     time.Time
	reconn    int64
	started   bool
	done      chan struct{}
	changed   chan struct{} // subscriptions changed while connected
	pendingOp []op
	urlLen    int // length of the URL carrying every current stream
	splitFrom int // the connection this one was split from (0: none)
	// live are the symbols whose streams the exchange carries on the
	// current session: those in its URL, and those whose SUBSCRIBE it
	// acknowledged (acks: request id → symbols). wake is closed and
	// replaced whenever live grows.
	live map[string]bool
	acks map[int64][]string
	wake chan struct{}
}

// streamsOf are the streams klagg reads for a symbol: its trades, and its
// 1m klines, whose events are the snapshots that seed open klines (a
// kline event's L is the last trade it holds).
func streamsOf(symbol string) [2]string {
	return [2]string{binance.AggTradeStream(symbol), binance.KlineStream(symbol, "1m")}
}

// streamsLen is what symbol's streams add to a combined URL.
func streamsLen(symbol string) int {
	n := 0
	for _, st := range streamsOf(symbol) {
		n += len(binance.EscapeStream(st)) + 1
	}
	return n
}

type op struct {
	method  string
	streams []string
	symbols []string
}

func newConn(in *Ingest, id int) *conn {
	return &conn{in: in, id: id, symbols: map[string]string{}, done: make(chan struct{}), changed: make(chan struct{}, 1),
		urlLen: len(binance.CombinedURL(in.cfg.URL, nil)), live: map[string]bool{}, acks: map[int64][]string{}, wake: make(chan struct{})}
}

// hasRoom tells whether symbol's streams fit on c within the configured
// streams per connection and Binance's URL length.
func (c *conn) hasRoom(symbol string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return 2*(len(c.symbols)+1) <= c.in.cfg.StreamsPerConn && c.urlLen+streamsLen(symbol) <= binance.MaxURLLength
}

// takeHalf removes the later half of c's symbols (by name) and returns
// them; none when c has fewer than two. The streams leave with the
// session, which is not connected: no UNSUBSCRIBE is due.
func (c *conn) takeHalf() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.symbols) < 2 {
		return nil
	}
	names := make([]string, 0, len(c.symbols))
	for s := range c.symbols {
		names = append(names, s)
	}
	sort.Strings(names)
	moved := names[len(names)/2:]
	for _, s := range moved {
		delete(c.symbols, s)
		c.urlLen -= streamsLen(s)
	}
	c.publishNames()
	c.wakeLocked() // those waiting for the moved symbols look again
	return moved
}

func (c *conn) size() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.symbols)
}

func (c *conn) add(symbol string) {
	c.mu.Lock()
	c.symbols[symbol] = symbol
	c.urlLen += streamsLen(symbol)
	c.publishNames()
	c.queueOp("SUBSCRIBE", symbol)
	c.mu.Unlock()
	c.signal()
}

// queueOp adds symbol's streams to the pending requests; called with mu
// held. Consecutive requests of one method share a message, since Binance
// allows only 10 messages a second per connection and adding a few hundred
// symbols one message each would take a minute; a message stays under the
// size beyond which Binance ignores it.
func (c *conn) queueOp(method, symbol string) {
	streams := streamsOf(symbol)
	if n := len(c.pendingOp); n > 0 && c.pendingOp[n-1].method == method &&
		binance.RequestSize(method, append(c.pendingOp[n-1].streams, streams[:]...)) <= binance.MaxRequestBytes {
		c.pendingOp[n-1].streams = append(c.pendingOp[n-1].streams, streams[:]...)
		c.pendingOp[n-1].symbols = append(c.pendingOp[n-1].symbols, symbol)
		return
	}
	c.pendingOp = append(c.pendingOp, op{method, streams[:], []string{symbol}})
}

func (c *conn) remove(symbol string) {
	c.mu.Lock()
	delete(c.symbols, symbol)
	delete(c.live, symbol)
	c.urlLen -= streamsLen(symbol)
	c.publishNames()
	c.queueOp("UNSUBSCRIBE", symbol)
	c.mu.Unlock()
	c.signal()
}

// publishNames copies symbols for the frame path; called with mu held.
func (c *conn) publishNames() {
	m := make(map[string]string, len(c.symbols))
	for k, v := range c.symbols {
		m[k] = v
	}
	c.names.Store(&m)
}

func (c *conn) signal() {
	select {
	case c.changed <- struct{}{}:
	default:
	}
}

// symbolList returns c's symbols, sorted.
func (c *conn) symbolList() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]string, 0, len(c.symbols))
	for s := range c.symbols {
		out = append(out, s)
	}
	sort.Strings(out)
	return out
}

func first(names []string) string {
	if len(names) == 0 {
		return ""
	}
	return names[0]
}

func (c *conn) state() ConnState {
	c.mu.Lock()
	defer c.mu.Unlock()
	return ConnState{ID: c.id, Streams: len(c.symbols), Connected: c.session != nil, Since: c.since, Reconnects: c.reconn}
}

func (c *conn) start(ctx context.Context) {
	c.mu.Lock()
	if c.started {
		c.mu.Unlock()
		return
	}
	c.started = true
	c.mu.Unlock()
	go c.run(ctx)
}

func (c *conn) wait() {
	c.mu.Lock()
	started := c.started
	c.mu.Unlock()
	if started {
		<-c.done
	}
}

func (c *conn) url() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	streams := make([]string, 0, 2*len(c.symbols))
	for s := range c.symbols {
		st := streamsOf(s)
		streams = append(streams, st[:]...)
	}
	sort.Strings(streams)
	c.pendingOp = nil // the URL carries every current stream
	return binance.CombinedURL(c.in.cfg.URL, streams)
}

// session is one WebSocket connection with its reader running.
type session struct {
	ws      *websocket.Conn
	ctx     context.Context // ends when the session closes
	cancel  context.CancelFunc
	pings   sync.WaitGroup // the ping in flight
	readErr chan error
	first   chan struct{} // closed on the first frame
	last    atomic.Int64  // unix ms of the last frame or pong
	pinging atomic.Bool
}

// open dials a session carrying every current stream and starts reading it.
func (c *conn) open(ctx context.Context) (*session, error) {
	inURL := c.symbolList()
	ws, resp, err := websocket.Dial(ctx, c.url(), &websocket.DialOptions{HTTPClient: c.in.cfg.HTTPClient})
	if err != nil {
		if resp != nil && resp.StatusCode >= 400 && resp.StatusCode < 500 &&
			resp.StatusCode != http.StatusTooManyRequests && resp.StatusCode != http.StatusTeapot {
			return nil, &refusedError{status: resp.StatusCode, err: err}
		}
		return nil, err
	}
	ws.SetReadLimit(1 << 20)
	c.mu.Lock()
	for _, sym := range inURL {
		if c.symbols[sym] != "" {
			c.live[sym] = true
		}
	}
	c.wakeLocked()
	c.mu.Unlock()
	sctx, cancel := context.WithCancel(ctx)
	s := &session{ws: ws, ctx: sctx, cancel: cancel, readErr: make(chan error, 1), first: make(chan struct{})}
	s.last.Store(time.Now().UnixMilli())
	go func() {
		var once sync.Once
		var buf []byte
		for {
			// Reading without a context deadline and into one buffer: a
			// cancellable context costs the library a timer per message and
			// Read a fresh slice, together a third of ingest's CPU at high
			// rates. Closing the session ends the read instead.
			typ, b, err := readMessage(ws, buf[:0])
			if err != nil {
				s.readErr <- err
				return
			}
			buf = b
			s.last.Store(time.Now().UnixMilli())
			once.Do(func() { close(s.first) })
			if typ == websocket.MessageText {
				c.handle(sctx, b)
			}
		}
	}()
	c.in.stats.Connects.Add(1)
	c.mu.Lock()
	c.session, c.since = ws, time.Now()
	c.mu.Unlock()
	return s, nil
}

// refusedError is a dial the exchange answered with a client error: the
// URL, that is some stream in it, is what it refuses.
type refusedError struct {
	status int
	err    error
}

func (e *refusedError) Error() string {
	return fmt.Sprintf("the exchange refused the connection (HTTP %d): %v", e.status, e.err)
}

func (e *refusedError) Unwrap() error { return e.err }

// readMessage reads the next message into buf, growing it as needed.
func readMessage(ws *websocket.Conn, buf []byte) (websocket.MessageType, []byte, error) {
	typ, r, err := ws.Reader(context.Background())
	if err != nil {
		return 0, buf, err
	}
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err == io.EOF {
			return typ, buf, nil
		}
		if err != nil {
			return 0, buf, err
		}
	}
}

// close ends the session and waits for its reader.
func (s *session) close(code websocket.StatusCode, reason string) {
	if code == 0 {
		s.ws.CloseNow()
	} else {
		s.ws.Close(code, reason)
	}
	s.cancel()
	<-s.readErr
	s.pings.Wait()
}

// run keeps a session open until ctx ends: dial, read, and on loss dial
// again with jittered exponential backoff. Before the lifetime ends a new
// session replaces the old one with an overlap; the router drops the
// trades both delivered.
func (c *conn) run(ctx context.Context) {
	defer close(c.done)
	log := c.in.log.With("conn", c.id)
	backoff := 100 * time.Millisecond
	// A connection split from a lost one starts lost: its symbols were
	// marked so, and it must tell the router when it has them back.
	c.mu.Lock()
	lost := c.splitFrom != 0
	c.mu.Unlock()
	pause := func() bool {
		wait := backoff/2 + rand.N(backoff)
		backoff = min(2*backoff, 30*time.Second)
		select {
		case <-ctx.Done():
			return false
		case <-time.After(wait):
			return true
		}
	}
	idle := time.NewTicker(500 * time.Millisecond)
	defer idle.Stop()
	for ctx.Err() == nil {
		if c.size() == 0 {
			// Nothing to miss: an idle connection holds no one back.
			c.in.router.Alive(ctx, c.id, c.in.cfg.Now().UnixMilli())
			select {
			case <-ctx.Done():
				return
			case <-c.changed:
			case <-idle.C:
			}
			continue
		}
		s, err := c.open(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			if !lost {
				// Its symbols miss trades from now on: hold their klines
				// (for a bounded time) and repair them once it is back.
				lost = true
				if c.in.router.Lost(ctx, c.id, c.symbolList()) != nil {
					return // the router's answer fails only when ctx ends
				}
			}
			var refused *refusedError
			if errors.As(err, &refused) && c.in.split(c) {
				continue // both halves dial again at once
			}
			syms := c.symbolList()
			log.Warn("cannot connect to the trade stream; retrying", "err", err, "symbols", len(syms), "first", first(syms))
			if !pause() {
				return
			}
			continue
		}
		if lost {
			c.in.stats.Reconnects.Add(1)
			c.mu.Lock()
			c.reconn++
			c.mu.Unlock()
			if c.in.router.Reconnected(ctx, c.id, c.symbolList()) != nil {
				return
			}
		}
		backoff = 100 * time.Millisecond
		for s != nil {
			s = c.serve(ctx, s, log)
		}
		c.mu.Lock()
		c.session = nil
		clear(c.live)
		clear(c.acks)
		c.mu.Unlock()
		if ctx.Err() != nil {
			return
		}
		if c.in.router.Lost(ctx, c.id, c.symbolList()) != nil {
			return
		}
		lost = true
		log.Warn("trade stream lost; reconnecting")
		if !pause() {
			return
		}
	}
}

// serve watches session s until it fails, ctx ends, or it is time to
// rotate; it returns the replacing session after a rotation, else nil.
func (c *conn) serve(ctx context.Context, s *session, log *slog.Logger) *session {
	watch := time.NewTicker(min(c.in.cfg.ReadTimeout/4, 500*time.Millisecond))
	defer watch.Stop()
	life := time.NewTimer(c.in.cfg.RotateAfter)
	defer life.Stop()
	sent := 0
	for {
		select {
		case <-ctx.Done():
			s.close(websocket.StatusNormalClosure, "klagg stopping")
			return nil
		case err := <-s.readErr:
			log.Info("trade stream closed", "err", err)
			s.readErr <- err // for close
			s.close(0, "")
			return nil
		case <-watch.C:
			quiet := time.Since(time.UnixMilli(s.last.Load()))
			if quiet > c.in.cfg.ReadTimeout {
				log.Warn("trade stream silent; dropping it", "silent_for", c.in.cfg.ReadTimeout)
				s.close(0, "")
				return nil
			}
			if quiet > time.Second && !s.pinging.Swap(true) {
				// A pong proves the connection is current even when no
				// trade comes, so klines can close on time.
				s.pings.Go(func() {
					defer s.pinging.Store(false)
					pctx, cancel := context.WithTimeout(s.ctx, 5*time.Second)
					defer cancel()
					sent := c.in.cfg.Now().UnixMilli()
					if s.ws.Ping(pctx) == nil {
						s.last.Store(time.Now().UnixMilli())
						c.in.router.Alive(s.ctx, c.id, sent)
					}
				})
			}
		case <-c.changed:
			c.mu.Lock()
			ops := c.pendingOp
			c.pendingOp = nil
			c.mu.Unlock()
			for _, o := range ops {
				sent++
				if o.method == "SUBSCRIBE" {
					c.mu.Lock()
					c.acks[int64(sent)] = o.symbols
					c.mu.Unlock()
				}
				msg := binance.StreamRequest(o.method, o.streams, sent)
				if err := s.ws.Write(ctx, websocket.MessageText, msg); err != nil {
					log.Warn("sending "+o.method+" failed; reconnecting with the full list", "err", err)
					s.close(0, "")
					return nil
				}
				// Binance takes at most 10 messages a second per connection.
				time.Sleep(150 * time.Millisecond)
			}
		case <-life.C:
			log.Info("rotating trade stream before its lifetime ends")
			ns, err := c.open(ctx)
			if err != nil {
				log.Warn("rotation dial failed; keeping the old session", "err", err)
				life.Reset(time.Minute)
				continue
			}
			// Let go of the old session only once the new one delivers,
			// or the old one ends; if the new one ends first, keep the old.
			select {
			case <-ns.first:
			case err := <-ns.readErr:
				ns.readErr <- err // for close
				ns.close(0, "")
				log.Warn("the rotation's new session ended at once; keeping the old one", "err", err)
				life.Reset(time.Minute)
				continue
			case err := <-s.readErr:
				s.readErr <- err
				log.Info("the old session ended during rotation", "err", err)
			case <-time.After(10 * time.Second):
			case <-ctx.Done():
			}
			s.close(websocket.StatusNormalClosure, "rotated")
			c.in.stats.Rotations.Add(1)
			return ns
		}
	}
}

// handle parses one frame and passes a trade to the router.
func (c *conn) handle(ctx context.Context, b []byte) {
	st := &c.in.stats
	now := time.Now()
	st.Frames.Add(1)
	st.LastFrameMs.Store(now.UnixMilli())
	sym, t, err := binance.ParseAggTrade(b)
	switch {
	case err == nil:
	case errors.Is(err, binance.ErrNotAggTrade):
		if bytes.Contains(b, []byte(`"e":"kline"`)) {
			c.snapshot(ctx, b)
			return
		}
		st.Other.Add(1)
		if bytes.Contains(b, []byte(`"result"`)) || bytes.Contains(b, []byte(`"error"`)) {
			c.reply(b)
		}
		return
	default:
		c.malformed(err)
		return
	}
	name, ok := c.name(sym)
	if !ok {
		st.Other.Add(1) // a stream we no longer want
		return
	}
	st.Trades.Add(1)
	c.in.router.Deliver(ctx, c.id, name, t, now)
}

// reply takes the exchange's answer to a SUBSCRIBE: its streams are live.
func (c *conn) reply(b []byte) {
	var r struct {
		ID    int64           `json:"id"`
		Error json.RawMessage `json:"error"`
	}
	if json.Unmarshal(b, &r) != nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	syms, ok := c.acks[r.ID]
	if !ok {
		return
	}
	delete(c.acks, r.ID)
	if len(r.Error) > 0 && string(r.Error) != "null" {
		c.in.log.Warn("the exchange refused a subscription", "conn", c.id, "error", string(r.Error), "symbols", len(syms), "first", first(syms))
		return
	}
	for _, sym := range syms {
		if c.symbols[sym] != "" {
			c.live[sym] = true
		}
	}
	c.wakeLocked()
}

// wakeLocked tells those waiting in streaming that live changed; called
// with mu held.
func (c *conn) wakeLocked() {
	close(c.wake)
	c.wake = make(chan struct{})
}

// streaming reports whether the exchange carries symbol's streams on c,
// and a channel closed when that may have changed.
func (c *conn) streaming(symbol string) (bool, <-chan struct{}) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.live[symbol], c.wake
}

// name returns the interned name of a symbol c carries, read without a
// lock from the frame path.
func (c *conn) name(sym []byte) (string, bool) {
	if m := c.names.Load(); m != nil {
		name, ok := (*m)[string(sym)]
		return name, ok
	}
	return "", false
}

// malformed counts a frame that could not be parsed, logging the first few.
func (c *conn) malformed(err error) {
	if c.in.stats.Malformed.Add(1) <= 10 {
		c.in.log.Warn("malformed frame ignored", "conn", c.id, "err", err)
	}
}

// snapshot passes a 1m kline event to the router: the seed of the
// symbol's open klines.
func (c *conn) snapshot(ctx context.Context, b []byte) {
	st := &c.in.stats
	ev, err := binance.ParseKlineEvent(b)
	if err != nil {
		c.malformed(err)
		return
	}
	name, ok := c.name([]byte(ev.Symbol))
	k, err := ev.K.Kline()
	if !ok || ev.K.Interval != "1m" || err != nil {
		st.Other.Add(1)
		return
	}
	st.Snapshots.Add(1)
	c.in.router.Snapshot(ctx, c.id, name, k)
}

// String describes the connection for logs.
func (c *conn) String() string { return fmt.Sprintf("conn %d", c.id) }
