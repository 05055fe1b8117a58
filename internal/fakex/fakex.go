// Package fakex is klagg's fake Binance USDⓈ-M exchange, in the spirit of
// net/http/httptest: a loopback server that speaks Binance's REST and
// WebSocket protocol from generated trades, computes its own reference
// klines with a separate, deliberately plain implementation, and misbehaves
// on command (dropped or stalled connections, malformed frames, 429/418/5xx,
// lifetime cuts, listings and delistings, a shifted clock).
//
// Its clock is simulated: it starts at Config.Start and runs Config.Speed
// times faster than the wall clock, so a test can live through 30 minutes
// of market in a few seconds. By default it is the wall clock, as
// Binance's is: every client library compares its own clock with
// /fapi/v1/time, and some refuse an exchange seconds behind.
package fakex

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sort"
	"sync"
	"time"

	"github.com/klagg/klagg/internal/archive"
	"github.com/klagg/klagg/internal/binance"
	"github.com/klagg/klagg/internal/kline"
	"github.com/klagg/klagg/internal/synth"
)

// Config sets up an Exchange. Zero fields take the defaults in brackets.
type Config struct {
	Symbols int           // generated symbols trading from the start [10]
	Seed    uint64        // generator seed [1]
	Start   time.Time     // simulated time at the start [now]
	History time.Duration // trades generated before Start, for backfill [0]
	// Deep is history before History, generated at DeepGap, sparser, so
	// that the archive holds days and weeks without the memory of a busy
	// market's [0; DeepGap 1m].
	Deep, DeepGap time.Duration
	Speed         float64 // simulated seconds per wall-clock second [1]
	// MeanGap is the mean simulated time between one symbol's trades [200ms].
	MeanGap time.Duration
	// QuietEvery makes about one gap in N a quiet stretch of minutes [0: never].
	QuietEvery int
	// Plain turns off the parts of Binance that are awkward, which are on
	// by default: with 3 symbols or more, the third is named 币安人生USDT
	// (not ASCII), the fourth is a TradFi perpetual with a market break
	// every day (BreakFrom to BreakTo UTC), and one more symbol is listed
	// as SETTLING with history but no trading.
	Plain bool
	// BreakFrom and BreakTo are the daily TradFi market break, as time of
	// day [23:50, 00:10].
	BreakFrom, BreakTo time.Duration
	// Retention is how far back REST aggTrades reaches [48h].
	Retention time.Duration
	// ArchiveDelay is how long after a day ends the archive publishes its
	// file [8h] (archive.go).
	ArchiveDelay time.Duration

	PingInterval      time.Duration // server pings [3m]
	Lifetime          time.Duration // connections are cut after this [24h]
	MaxStreamsPerConn int           // [1024]
	MaxMsgsPerSecond  int           // incoming messages per second per connection [10]
	WeightPerMinute   int           // REST request weight per minute [2400]
	// Tick is the wall-clock period of trade generation and delivery [10ms].
	Tick time.Duration
	// Addr is the listen address [127.0.0.1:0, a free port].
	Addr string
	Log  *slog.Logger
}

// Exchange is a running fake exchange.
type Exchange struct {
	cfg  Config
	srv  *http.Server
	ln   net.Listener
	log  *slog.Logger
	stop context.CancelFunc
	done chan struct{}

	mu     sync.Mutex
	realT0 time.Time
	shift  time.Duration
	simNow int64 // last simulated time generated up to
	// undelivered holds the trades generated and not yet pushed to the
	// streams: REST generates up to its answer's time too, as the
	// exchange's REST shows every trade up to its clock however late its
	// streams are. Nil while the exchange builds its history.
	undelivered map[string][]kline.Trade
	symbols     []*symbol
	bySym       map[string]*symbol
	conns       map[*wsConn]bool
	weight      weightWindow
	restFail    []restFault
	hide        int // generated trades still to hide
	refused     map[string]bool
	stats       Stats
	waiters     []waiter
}

type waiter struct {
	at int64
	ch chan struct{}
}

// Stats are what the exchange observed, for tests to assert on.
type Stats struct {
	Connections   int // WebSocket connections accepted
	Subscribes    int
	RESTRequests  int
	Rejected429   int
	Banned418     int
	MaxWeight1M   int // highest request weight used in any minute window
	Weight        int // request weight used in all
	TradesSent    int
	LifetimeCuts  int
	ServerErrors  int
	MessagesLimit int // connections closed for exceeding the message rate
}

type symbol struct {
	name     string
	prec     kline.Precision
	status   string
	contract string // PERPETUAL, TRADIFI_PERPETUAL
	tradfi   bool   // breaks daily
	halted   string // a pause status set by Pause, or ""
	onboard  int64
	// skipped counts trades not made during breaks and halts, and the
	// trade ids they would have used: later ids close up behind them.
	skipped, skippedIDs int64
	stream              *synth.Stream
	trades              []kline.Trade // what the aggTrade stream and REST show, in id order
	// all is the whole history, hidden trades included; nil while there are
	// none, so the common case keeps one copy.
	all    []kline.Trade
	hidden int64 // trades hidden so far; later aggregate ids skip them
}

// history is every trade, hidden ones included: what klines are made of.
func (s *symbol) history() []kline.Trade {
	if s.all != nil {
		return s.all
	}
	return s.trades
}

// New starts an exchange on a loopback port.
func New(cfg Config) (*Exchange, error) {
	if cfg.Symbols == 0 {
		cfg.Symbols = 10
	}
	if cfg.Seed == 0 {
		cfg.Seed = 1
	}
	if cfg.Start.IsZero() {
		cfg.Start = time.Now()
	}
	if cfg.Speed == 0 {
		cfg.Speed = 1
	}
	if cfg.MeanGap == 0 {
		cfg.MeanGap = 200 * time.Millisecond
	}
	if cfg.PingInterval == 0 {
		cfg.PingInterval = 3 * time.Minute
	}
	if cfg.Lifetime == 0 {
		cfg.Lifetime = 24 * time.Hour
	}
	if cfg.MaxStreamsPerConn == 0 {
		cfg.MaxStreamsPerConn = 1024
	}
	if cfg.MaxMsgsPerSecond == 0 {
		cfg.MaxMsgsPerSecond = 10
	}
	if cfg.WeightPerMinute == 0 {
		cfg.WeightPerMinute = 2400
	}
	if cfg.Tick == 0 {
		cfg.Tick = 10 * time.Millisecond
	}
	if cfg.BreakFrom == 0 && cfg.BreakTo == 0 {
		cfg.BreakFrom, cfg.BreakTo = 23*time.Hour+50*time.Minute, 10*time.Minute
	}
	if cfg.Retention == 0 {
		cfg.Retention = 48 * time.Hour
	}
	if cfg.DeepGap == 0 {
		cfg.DeepGap = time.Minute
	}
	if cfg.ArchiveDelay == 0 {
		cfg.ArchiveDelay = 8 * time.Hour
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	x := &Exchange{
		cfg: cfg, log: cfg.Log, bySym: map[string]*symbol{}, conns: map[*wsConn]bool{},
		done: make(chan struct{}), realT0: time.Now(),
	}
	from := cfg.Start.Add(-cfg.History - cfg.Deep).UnixMilli()
	for i := 0; i < cfg.Symbols; i++ {
		x.addSymbolLocked(i, from)
	}
	var settling *symbol
	if !cfg.Plain {
		settling = x.addSymbolLocked(cfg.Symbols, from)
	}
	if cfg.Deep > 0 {
		x.generateLocked(cfg.Start.Add(-cfg.History).UnixMilli())
		for _, s := range x.symbols {
			s.stream.SetMeanGap(float64(cfg.MeanGap) / float64(time.Millisecond))
		}
	}
	x.generateLocked(cfg.Start.UnixMilli())
	x.undelivered = map[string][]kline.Trade{}
	if settling != nil {
		settling.status = "SETTLING"
	}

	if cfg.Addr == "" {
		cfg.Addr = "127.0.0.1:0"
	}
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("fakex: listen: %w", err)
	}
	x.ln = stallListener{ln}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /fapi/v1/ping", x.rest(1, x.handlePing))
	mux.HandleFunc("GET /fapi/v1/time", x.rest(1, x.handleTime))
	mux.HandleFunc("GET /fapi/v1/exchangeInfo", x.rest(1, x.handleExchangeInfo))
	mux.HandleFunc("GET /fapi/v1/klines", x.rest(-1, x.handleKlines))
	mux.HandleFunc("GET /fapi/v1/aggTrades", x.rest(20, x.handleAggTrades))
	files := archive.Server{Files: &archiveFiles{x: x, cache: map[string][]byte{}}}
	mux.Handle("GET /archive", http.StripPrefix("/archive", files))
	mux.Handle("GET /archive/", http.StripPrefix("/archive", files))
	mux.HandleFunc("GET /market/stream", x.handleWS)
	mux.HandleFunc("GET /market/ws/", x.handleWS)
	x.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, ConnContext: withConn}
	ctx, cancel := context.WithCancel(context.Background())
	x.stop = cancel
	go x.srv.Serve(x.ln)
	go x.run(ctx)
	return x, nil
}

func (x *Exchange) addSymbolLocked(i int, from int64) *symbol {
	m := synth.DefaultMarket(i, x.cfg.Seed, from)
	m.MeanGapMs = float64(x.cfg.MeanGap) / float64(time.Millisecond)
	if x.cfg.Deep > 0 && from < x.cfg.Start.Add(-x.cfg.History).UnixMilli() {
		m.MeanGapMs = float64(x.cfg.DeepGap) / float64(time.Millisecond)
	}
	m.QuietEvery = x.cfg.QuietEvery
	contract := "PERPETUAL"
	if !x.cfg.Plain && i == 2 {
		m.Symbol = "币安人生USDT"
	}
	if !x.cfg.Plain && i == 3 {
		contract = "TRADIFI_PERPETUAL"
	}
	s := &symbol{name: m.Symbol, prec: m.Precision, status: "TRADING", contract: contract, tradfi: contract == "TRADIFI_PERPETUAL",
		onboard: from, stream: synth.NewStream(m)}
	x.symbols = append(x.symbols, s)
	x.bySym[s.name] = s
	return s
}

// URL is the base URL for REST ("http://127.0.0.1:port"); WebSocket uses
// the same host with ws://.
func (x *Exchange) URL() string { return "http://" + x.ln.Addr().String() }

// WSURL is the WebSocket root (klagg appends /market/stream).
func (x *Exchange) WSURL() string { return "ws://" + x.ln.Addr().String() }

// Close stops the exchange and cuts every connection.
func (x *Exchange) Close() {
	x.stop()
	<-x.done
	x.mu.Lock()
	for c := range x.conns {
		c.kill()
	}
	x.mu.Unlock()
	x.srv.Close()
}

// Now is the exchange's simulated time.
func (x *Exchange) Now() time.Time {
	x.mu.Lock()
	defer x.mu.Unlock()
	return time.UnixMilli(x.nowLocked())
}

func (x *Exchange) nowLocked() int64 {
	real := time.Since(x.realT0)
	return x.cfg.Start.UnixMilli() + int64(float64(real.Milliseconds())*x.cfg.Speed) + x.shift.Milliseconds()
}

// run generates trades up to the simulated now every tick and pushes them
// to subscribers.
func (x *Exchange) run(ctx context.Context) {
	defer close(x.done)
	t := time.NewTicker(x.cfg.Tick)
	defer t.Stop()
	lastKlines := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		x.mu.Lock()
		now := x.nowLocked()
		x.generateLocked(now)
		fresh := x.undelivered
		x.undelivered = map[string][]kline.Trade{}
		conns := make([]*wsConn, 0, len(x.conns))
		for c := range x.conns {
			conns = append(conns, c)
		}
		waiting := x.waiters[:0]
		var due []chan struct{}
		for _, w := range x.waiters {
			if w.at <= now {
				due = append(due, w.ch)
			} else {
				waiting = append(waiting, w)
			}
		}
		x.waiters = waiting
		x.mu.Unlock()
		for _, c := range conns {
			c.deliver(fresh, now)
		}
		if time.Since(lastKlines) >= 250*time.Millisecond {
			lastKlines = time.Now()
			for _, c := range conns {
				c.deliverKlines(now)
			}
		}
		for _, ch := range due {
			close(ch)
		}
	}
}

// currentKline is symbol's kline of iv open at simulated time now, from
// every trade so far (hidden ones included, as in Binance's klines).
func (x *Exchange) currentKline(symbol string, iv kline.Interval, now int64) (kline.Kline, kline.Precision, bool) {
	x.mu.Lock()
	s := x.bySym[symbol]
	if s == nil {
		x.mu.Unlock()
		return kline.Kline{}, kline.Precision{}, false
	}
	trades, p := s.history(), s.prec
	x.mu.Unlock()
	open := iv.Open(now)
	i := sort.Search(len(trades), func(i int) bool { return trades[i].Time >= open })
	ks := Reference(trades[max(0, i-1):], iv, open, open)
	if len(ks) != 1 {
		return kline.Kline{}, p, false
	}
	return ks[0], p, true
}

// generateLocked extends every trading symbol's history to simulated time
// now, the new trades undelivered.
func (x *Exchange) generateLocked(now int64) {
	for _, s := range x.symbols {
		if s.status != "TRADING" {
			continue
		}
		for {
			t := s.stream.Next()
			if t.Time > now {
				s.stream.Unread(t)
				break
			}
			if x.pausedAt(s, t.Time) {
				// No trading: the trade is not made, and the ids it
				// would have taken go to the next one.
				s.skipped++
				s.skippedIDs += t.LastID - t.FirstID + 1
				continue
			}
			t.FirstID -= s.skippedIDs
			t.LastID -= s.skippedIDs
			t.ID -= s.skipped
			if x.hide > 0 {
				// Like an insurance-fund trade: in the klines, not in the
				// stream, and no aggregate id of its own.
				x.hide--
				if s.all == nil {
					s.all = append([]kline.Trade(nil), s.trades...)
				}
				s.all = append(s.all, t)
				s.hidden++
				continue
			}
			t.ID -= s.hidden
			s.trades = append(s.trades, t)
			if s.all != nil {
				s.all = append(s.all, t)
			}
			if x.undelivered != nil {
				x.undelivered[s.name] = append(x.undelivered[s.name], t)
			}
		}
	}
	if now > x.simNow {
		x.simNow = now
	}
}

// pausedAt tells whether s does not trade at time t: halted, or a TradFi
// contract in its daily break.
func (x *Exchange) pausedAt(s *symbol, t int64) bool {
	return s.halted != "" || s.tradfi && x.inBreak(t)
}

func (x *Exchange) inBreak(t int64) bool {
	day := int64(24 * time.Hour / time.Millisecond)
	tod := time.Duration(((t%day)+day)%day) * time.Millisecond
	from, to := x.cfg.BreakFrom, x.cfg.BreakTo
	if from <= to {
		return tod >= from && tod < to
	}
	return tod >= from || tod < to
}

// statusLocked is s's status as exchangeInfo shows it at time now.
func (x *Exchange) statusLocked(s *symbol, now int64) string {
	switch {
	case s.status != "TRADING":
		return s.status
	case s.halted != "":
		return s.halted
	case s.tradfi && x.inBreak(now):
		return "BREAK"
	}
	return s.status
}

// RefuseStreams makes the exchange refuse (HTTP 400) every connection
// whose URL names one of symbols' streams, until RefuseStreams is called
// again without them.
func (x *Exchange) RefuseStreams(symbols ...string) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.refused = map[string]bool{}
	for _, s := range symbols {
		x.refused[s] = true
	}
}

// refusedStream returns the first of streams whose symbol is refused.
func (x *Exchange) refusedStream(streams []string) string {
	x.mu.Lock()
	defer x.mu.Unlock()
	for _, st := range streams {
		if n, ok := binance.ParseStreamName(st); ok && x.refused[n.Symbol] {
			return st
		}
	}
	return ""
}

// Pause stops symbol trading with a pause status (TRADING_HALT,
// TRADING_CANCEL_ONLY); Resume starts it again on the same series.
func (x *Exchange) Pause(symbol, status string) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if s := x.bySym[symbol]; s != nil {
		s.halted = status
	}
}

// Resume ends a Pause.
func (x *Exchange) Resume(symbol string) { x.Pause(symbol, "") }

// WaitUntil blocks until the exchange has generated and sent every trade up
// to simulated time t, or ctx ends.
func (x *Exchange) WaitUntil(ctx context.Context, t time.Time) error {
	ch := make(chan struct{})
	x.mu.Lock()
	x.waiters = append(x.waiters, waiter{t.UnixMilli(), ch})
	x.mu.Unlock()
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Symbols lists the symbols with their status.
func (x *Exchange) Symbols() map[string]string {
	x.mu.Lock()
	defer x.mu.Unlock()
	out := map[string]string{}
	now := x.nowLocked()
	for _, s := range x.symbols {
		out[s.name] = x.statusLocked(s, now)
	}
	return out
}

// Trades returns a copy of symbol's trade history so far, hidden trades
// included.
func (x *Exchange) Trades(symbol string) []kline.Trade {
	x.mu.Lock()
	defer x.mu.Unlock()
	s := x.bySym[symbol]
	if s == nil {
		return nil
	}
	return append([]kline.Trade(nil), s.history()...)
}

// Precision returns symbol's formatting precision.
func (x *Exchange) Precision(symbol string) kline.Precision {
	x.mu.Lock()
	defer x.mu.Unlock()
	if s := x.bySym[symbol]; s != nil {
		return s.prec
	}
	return kline.Precision{}
}

// Stats returns what the exchange observed so far.
func (x *Exchange) Stats() Stats {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.stats
}

// ListSymbol adds a new TRADING symbol, onboarded now, and returns its name.
func (x *Exchange) ListSymbol() string {
	x.mu.Lock()
	defer x.mu.Unlock()
	s := x.addSymbolLocked(len(x.symbols), x.nowLocked())
	return s.name
}

// Delist stops a symbol trading (status SETTLING); its history stays.
func (x *Exchange) Delist(symbol string) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if s := x.bySym[symbol]; s != nil {
		s.status = "SETTLING"
	}
}

// ShiftClock moves the exchange's clock by d.
func (x *Exchange) ShiftClock(d time.Duration) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.shift += d
}

// DropConnections closes every WebSocket connection at once, as a network
// failure would.
func (x *Exchange) DropConnections() {
	x.mu.Lock()
	defer x.mu.Unlock()
	for c := range x.conns {
		c.kill()
	}
}

// StallConnections stops sending anything, pings included, on every
// current connection, without closing it.
func (x *Exchange) StallConnections() {
	x.mu.Lock()
	defer x.mu.Unlock()
	for c := range x.conns {
		c.stall()
	}
}

// CutAtLifetime closes every current connection as its lifetime would.
func (x *Exchange) CutAtLifetime() {
	x.mu.Lock()
	defer x.mu.Unlock()
	for c := range x.conns {
		x.stats.LifetimeCuts++
		c.cut("connection lifetime reached")
	}
}

// SendMalformed queues n malformed or unknown frames on every connection.
func (x *Exchange) SendMalformed(n int) {
	x.mu.Lock()
	defer x.mu.Unlock()
	for c := range x.conns {
		c.malformed(n)
	}
}

type restFault struct {
	status     int
	retryAfter time.Duration
}

// FailREST makes the next REST requests fail, one per given status, as
// Binance answers them: a 418 bans the IP for retryAfter and says until when
// in its message, a 429 carries no Retry-After, 403 is the firewall's HTML
// page, 503 the -1008 overload error, 408 a backend timeout.
func (x *Exchange) FailREST(retryAfter time.Duration, statuses ...int) {
	x.mu.Lock()
	defer x.mu.Unlock()
	for _, s := range statuses {
		x.restFail = append(x.restFail, restFault{s, retryAfter})
	}
}

// HideTrades keeps the next n generated trades out of the aggTrade stream
// and REST aggTrades while counting them in the klines, as Binance does with
// insurance-fund and ADL trades; only reconciliation can find them.
func (x *Exchange) HideTrades(n int) {
	x.mu.Lock()
	x.hide += n
	x.mu.Unlock()
}

// ReferenceKlines computes symbol's klines of iv whose open time lies in
// [from, to], from the exchange's own trade history, with a plain
// implementation independent of klagg's engine. Intervals without trades
// after the first trade are filled at the previous close.
func (x *Exchange) ReferenceKlines(symbol string, iv kline.Interval, from, to int64) []kline.Kline {
	x.mu.Lock()
	s := x.bySym[symbol]
	var trades []kline.Trade
	if s != nil {
		trades = s.history()
	}
	x.mu.Unlock()
	return Reference(trades, iv, from, to)
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
