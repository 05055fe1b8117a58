// Package service owns the running klagg service: it builds every part from
// the configuration, starts them in dependency order (store, engine and
// writer, ingest, catch-up), keeps the symbol set in step with exchangeInfo,
// logs a status line, and on stop shuts down in reverse order so that every
// kline reaches the store.
package service

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/klagg/klagg/internal/binance"
	"github.com/klagg/klagg/internal/bus"
	"github.com/klagg/klagg/internal/cluster"
	"github.com/klagg/klagg/internal/config"
	"github.com/klagg/klagg/internal/engine"
	"github.com/klagg/klagg/internal/history"
	"github.com/klagg/klagg/internal/ingest"
	"github.com/klagg/klagg/internal/kline"
	"github.com/klagg/klagg/internal/store"
	"github.com/klagg/klagg/internal/store/postgres"
	"github.com/klagg/klagg/internal/symbols"
)

// Service is klagg running.
type Service struct {
	cfg        *config.Config
	log        *slog.Logger
	Store      Store
	Client     *binance.Client
	Engine     *engine.Engine
	coalescer  *engine.Coalescer
	writer     *store.Writer
	Router     *ingest.Router
	Ingest     *ingest.Ingest
	History    *history.History
	Reconciler *history.Reconciler
	Registry   *symbols.Registry
	// In a cluster (config [cluster]): the node's NATS link, its leases
	// (ingest), the publisher of its closed klines (ingest) and the sink
	// into PostgreSQL (sink); nil otherwise.
	nc        *nats.Conn
	Leases    *cluster.Leases
	Publisher *bus.Publisher
	Opens     *bus.Opens // open klines to the serve nodes
	Sink      *bus.Sink
	Feed      *cluster.Feed
	// Progress, if set, is told about backfill progress (for a terminal bar).
	Progress func(done, total int)

	offset  atomic.Int64 // exchange clock − local clock, ms
	started time.Time
	mu      sync.Mutex
	known   map[string]store.Symbol // symbols with history from earlier runs
	rate    atomic.Uint64           // trades per second, float64 bits
	metrics *metrics.Set            // figures only the service sees, for /metrics
}

// Store is where klines, symbols and the exchange's lists are kept:
// SQLite (store.Store) or PostgreSQL (postgres.Store).
type Store interface {
	Upsert(updates []kline.Update) error
	Klines(ctx context.Context, q store.Query) ([]kline.Kline, error)
	Last(ctx context.Context, symbol string, iv kline.Interval) (kline.Kline, bool, error)
	ClosedVersion(symbol string, iv kline.Interval) uint64
	PutSymbols(syms []store.Symbol) error
	Symbols(ctx context.Context) ([]store.Symbol, error)
	PutExchange(lists map[string][]byte) error
	Exchange(ctx context.Context) (map[string][]byte, error)
	Close() error
}

// openStore opens the configured store: PostgreSQL when database.url is
// set, else the SQLite file at database.path.
func openStore(cfg *config.Config) (Store, error) {
	if cfg.Database.URL != "" {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		return postgres.Open(ctx, cfg.Database.URL)
	}
	st, err := store.Open(cfg.Database.Path)
	if err != nil {
		return nil, fmt.Errorf("%w (database.path in the config)", err)
	}
	return st, nil
}

// Consumer takes what the service makes beyond the store: kline changes,
// and trades in the order ingest accepted them (each once, gaps repaired).
// Both are called on the service's hot paths and must not block.
type Consumer interface {
	engine.Sink
	Trades(symbol string, trades []kline.Trade)
}

// New builds the service; nothing runs until Run.
func New(cfg *config.Config, log *slog.Logger, consumers ...Consumer) (*Service, error) {
	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.Proxy = nil
	if cfg.Exchange.Proxy != "" {
		u, err := url.Parse(cfg.Exchange.Proxy)
		if err != nil {
			return nil, fmt.Errorf("exchange.proxy: %w", err)
		}
		transport.Proxy = http.ProxyURL(u)
	}
	transport.MaxIdleConnsPerHost = 16
	hc := &http.Client{Transport: transport, Timeout: 30 * time.Second}
	wsClient := &http.Client{Transport: transport}

	st, err := openStore(cfg)
	if err != nil {
		return nil, err
	}
	s := &Service{cfg: cfg, log: log, Store: st, known: map[string]store.Symbol{}, metrics: metrics.NewSet()}
	latency := s.metrics.NewSummaryExt("klagg_trade_to_consumer_seconds", time.Minute, []float64{0.5, 0.9, 0.99, 0.999, 1})
	s.Client = binance.NewClient(cfg.Exchange.RESTURL, hc, cfg.Exchange.WeightPerMinute, log.With("part", "rest"))
	s.coalescer = engine.NewCoalescer()
	sinks := []engine.Sink{s.coalescer}
	var js jetstream.JetStream
	var buckets cluster.Buckets
	if cfg.Clustered() {
		if js, buckets, err = s.joinCluster(); err != nil {
			st.Close()
			return nil, err
		}
		// The node's klines go to the stream, and from there through the
		// cluster's sinks into PostgreSQL; this node's writer only stores
		// what it backfills.
		sinks = nil
		if cfg.Has(config.RoleIngest) {
			s.Publisher = bus.NewPublisher(js, log.With("part", "publisher"))
			s.Opens = bus.NewOpens(js.Conn())
			sinks = append(sinks, s.Publisher, s.Opens)
		}
		if cfg.Has(config.RoleSink) {
			s.Sink = bus.NewSink(js, st, bus.SinkDurable, log.With("part", "sink"))
		}
	}
	for _, c := range consumers {
		sinks = append(sinks, c)
	}
	if cfg.Reconcile.Enabled {
		s.Reconciler = history.NewReconciler(s.Client, cfg.Intervals, cfg.Reconcile.Delay.Duration, s.ExchangeNow, log.With("part", "reconcile"))
		sinks = append(sinks, s.Reconciler)
	}
	s.Engine, err = engine.New(engine.Config{Intervals: cfg.Intervals, Grace: cfg.Klines.Grace.Duration, Sinks: sinks, Queue: 4096,
		Latency: func(d time.Duration) { latency.Update(d.Seconds()) }})
	if err != nil {
		st.Close()
		return nil, err
	}
	s.writer = store.NewWriter(st, s.coalescer, cfg.Database.WriteEvery.Duration, log.With("part", "writer"))
	s.Router = ingest.NewRouter(tee{s.Engine, consumers}, s.Client.Urgent(), ingest.RouterConfig{
		HoldMax: cfg.Exchange.HoldMax.Duration, Now: s.ExchangeNow, Log: log.With("part", "router")})
	s.Ingest = ingest.New(ingest.Config{
		URL: cfg.Exchange.WSURL, StreamsPerConn: cfg.Exchange.StreamsPerConnection,
		ReadTimeout: cfg.Exchange.ReadTimeout.Duration, RotateAfter: cfg.Exchange.RotateAfter.Duration,
		HTTPClient: wsClient, Now: s.ExchangeNow, Log: log.With("part", "ingest"),
	}, s.Router)
	s.History = history.New(s.Client.Urgent(), s.Client, s.Engine, s.Router, s.Ingest, st, s.writer, cfg.Intervals, cfg.Klines.BackfillLimit, s.ExchangeNow, log.With("part", "history"))
	var hist symbols.History = s.History
	var owner symbols.Owner
	if cfg.Clustered() {
		s.Leases = cluster.NewLeases(s.nc, buckets, cluster.Config{
			Node: cfg.Cluster.Node, Ingest: cfg.Has(config.RoleIngest), Roles: cfg.Cluster.Roles,
			Staleness: cfg.Cluster.Staleness.Duration, Intervals: cfg.Intervals, Log: log.With("part", "cluster"),
			Standby: cfg.Cluster.Standby,
			IngestNodes: func(n int) {
				// The nodes are taken to share one IP: each keeps to its
				// share, and Binance's count in every answer bounds them all.
				share := cfg.Exchange.WeightPerMinute / max(n, 1)
				s.Client.Weight().SetBudget(share)
				log.Info("REST weight shared by the live ingest nodes", "nodes", n, "per_node_per_minute", share)
			},
		}, s.Engine, s.Publisher)
		hist, owner = cluster.NewSeeder(s.History, s.Leases, s.Engine, s.Router, cfg.Intervals), s.Leases
		if cfg.Has(config.RoleServe) {
			var out []engine.Sink
			for _, c := range consumers {
				out = append(out, c)
			}
			s.Feed = cluster.NewFeed(js, buckets, cfg.Cluster.Node, s.Leases, out, cfg.Intervals, log.With("part", "feed"))
			if w, ok := st.(interface{ Written([]kline.Update) }); ok {
				s.Feed.Closed = w.Written
			}
		}
	}
	s.Registry = symbols.New(symbols.Config{
		ContractTypes: cfg.Symbols.ContractTypes, Include: cfg.Symbols.Include, Exclude: cfg.Symbols.Exclude,
		Poll: cfg.Exchange.SymbolsPoll.Duration, Log: log.With("part", "symbols"),
		Progress: func(done, total int) {
			if s.Progress != nil {
				s.Progress(done, total)
			}
		},
	}, symbols.Deps{Exchange: s.Client, Subscriber: s.Ingest, Router: s.Router, Engine: s.Engine, Store: st, History: hist, Owner: owner})
	s.metrics.NewGauge("klagg_backfill_requests_done", func() float64 { d, _ := s.Registry.Backfill(); return float64(d) })
	s.metrics.NewGauge("klagg_backfill_requests_total", func() float64 { _, t := s.Registry.Backfill(); return float64(t) })
	for _, st := range symbols.States() {
		s.metrics.NewGauge(fmt.Sprintf(`klagg_symbols{state=%q}`, st), func() float64 { return float64(s.Registry.View().Counts[st]) })
	}
	return s, nil
}

// joinCluster connects to NATS and makes sure the kline stream and the
// cluster's buckets are there.
func (s *Service) joinCluster() (jetstream.JetStream, cluster.Buckets, error) {
	c := &s.cfg.Cluster
	nc, err := cluster.Connect(c.NATSURL, c.Node, s.log.With("part", "nats"))
	if err != nil {
		return nil, cluster.Buckets{}, err
	}
	s.nc = nc
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, cluster.Buckets{}, fmt.Errorf("cluster: %w", err)
	}
	// JetStream answers nothing while its servers elect a leader (a NATS
	// cluster starting with klagg, or a server restarting), and a request
	// sent as the link drops is lost: each attempt has its own deadline,
	// and they go on for a minute.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var b cluster.Buckets
	for attempt := 0; ; attempt++ {
		actx, acancel := context.WithTimeout(ctx, 10*time.Second)
		_, err = bus.EnsureStream(actx, js, c.Replicas)
		if err != nil {
			err = fmt.Errorf("%w (is JetStream enabled on the NATS servers at %s? nats-server -js)", err, c.NATSURL)
		} else {
			b, err = cluster.EnsureBuckets(actx, js, c.Replicas)
		}
		acancel()
		if err == nil {
			return js, b, nil
		}
		if errors.Is(err, jetstream.ErrJetStreamNotEnabled) || errors.Is(err, jetstream.ErrJetStreamNotEnabledForAccount) {
			nc.Close() // the servers' configuration: waiting changes nothing
			return nil, cluster.Buckets{}, err
		}
		if attempt%10 == 0 { // once every ten seconds or so is enough to read
			s.log.Warn("waiting for JetStream; retrying for a minute", "err", err)
		}
		select {
		case <-ctx.Done():
			nc.Close()
			return nil, cluster.Buckets{}, err
		case <-time.After(time.Second):
		}
	}
}

// tee hands the router's trades to the consumers, then to the engine,
// which owns them from then on.
type tee struct {
	engine    *engine.Engine
	consumers []Consumer
}

func (t tee) Trades(ctx context.Context, symbol string, trades []kline.Trade, received time.Time) error {
	for _, c := range t.consumers {
		c.Trades(symbol, trades)
	}
	return t.engine.Trades(ctx, symbol, trades, received)
}

// WritePrometheus writes the service's own metrics (the time from a trade's
// arrival to the kline update reaching every consumer, over the last minute)
// in Prometheus's text format.
func (s *Service) WritePrometheus(w io.Writer) { s.metrics.WritePrometheus(w) }

// ExchangeNow is the local clock corrected by the measured offset to the
// exchange's.
func (s *Service) ExchangeNow() time.Time {
	return time.Now().Add(time.Duration(s.offset.Load()) * time.Millisecond)
}

// Ready reports whether every symbol tradable at startup is live.
func (s *Service) Ready() bool { return s.Registry.Ready() }

// Run runs the service until ctx ends, then stops it and flushes the store.
func (s *Service) Run(ctx context.Context) (err error) {
	s.started = time.Now()
	defer func() { err = errors.Join(err, s.Store.Close()) }()

	// Three lifetimes, stopped in reverse: inputs, the engine, the writer.
	// A part whose Run fails stops the inputs, and so the service.
	inCtx, stopIn := context.WithCancel(context.Background())
	engCtx, stopEng := context.WithCancel(context.Background())
	wCtx, stopW := context.WithCancel(context.Background())
	in, eng, w := &group{stop: stopIn}, &group{stop: stopIn}, &group{stop: stopIn}
	w.Go("store writer", func() error { return s.writer.Run(wCtx) })
	if s.Publisher != nil {
		// Stopped with the writer, after the engine: it drains what the
		// engine closed last.
		w.Go("publisher", func() error { return s.Publisher.Run(wCtx) })
	}
	eng.Go("engine", func() error { return s.Engine.Run(engCtx) })
	if s.Opens != nil {
		eng.Go("open klines", func() error { return s.Opens.Run(engCtx) })
	}
	defer func() {
		stopIn()
		inErr := in.Wait()
		if s.Leases != nil {
			// The inputs are stopped and the engine runs: the last
			// checkpoints hand every symbol over as it stands.
			rctx, cancel := context.WithTimeout(context.Background(), bus.Drain)
			if rerr := s.Leases.Release(rctx); rerr != nil {
				s.log.Warn("releasing the symbol leases failed; other nodes take the symbols over after cluster.staleness", "err", rerr)
			}
			cancel()
		}
		stopEng()
		engErr := eng.Wait()
		stopW()
		if werr := w.Wait(); werr != nil {
			werr = fmt.Errorf("final write to the store failed; the newest klines are lost: %w", werr)
			err = errors.Join(err, werr)
		}
		err = errors.Join(err, inErr, engErr)
		if s.nc != nil {
			s.nc.Close()
		}
		s.log.Info("stopped", "klines_written", s.writer.Written())
	}()
	defer context.AfterFunc(ctx, stopIn)()

	stored, err := s.Store.Symbols(inCtx)
	if err != nil {
		return err
	}
	s.mu.Lock()
	for _, y := range stored {
		s.known[y.Name] = y
	}
	s.mu.Unlock()
	// The exchange may be down or refusing for a while: keep trying, and
	// say so each time.
	if err := s.untilReached(inCtx, "reach the exchange's clock", s.syncTime); err != nil {
		return s.startErr(ctx, err)
	}
	var info *binance.ExchangeInfo
	err = s.untilReached(inCtx, "read exchangeInfo", func(ctx context.Context) error {
		var err error
		info, err = s.Client.ExchangeInfo(ctx)
		return err
	})
	if err != nil {
		return s.startErr(ctx, err)
	}
	kept := 0
	for _, i := range info.Symbols {
		if s.Registry.Keeps(i) {
			kept++
		}
	}
	if kept == 0 {
		return fmt.Errorf("exchangeInfo lists no %s USDT contract matching symbols.include/exclude", strings.Join(s.cfg.Symbols.ContractTypes, " or "))
	}
	s.log.Info("symbols", "count", kept, "intervals", len(s.cfg.Intervals))

	in.Go("router", func() error { return s.Router.Run(inCtx) })
	in.Go("repairs", func() error { return s.Router.RunRepairs(inCtx, s.History) })
	in.Go("ingest", func() error { return s.Ingest.Run(inCtx) })
	in.Go("clock", func() error { s.tick(inCtx); return nil })
	in.Go("time sync", func() error { s.syncClock(inCtx); return nil })
	if s.Reconciler != nil {
		in.Go("reconciler", func() error { return s.Reconciler.Run(inCtx, s.Engine) })
	}
	in.Go("symbols", func() error { return s.Registry.Run(inCtx, info) })
	if s.Leases != nil {
		in.Go("cluster leases", func() error { return s.Leases.Run(inCtx, s.Registry) })
	}
	if s.Sink != nil {
		in.Go("kline sink", func() error { return s.Sink.Run(inCtx) })
	}
	if s.Feed != nil {
		in.Go("cluster feed", func() error { return s.Feed.Run(inCtx) })
	}
	s.status(inCtx)
	return nil
}

// group runs parts of the service and joins their errors; a part that
// fails calls stop, so that the service ends rather than runs without it.
type group struct {
	wg   sync.WaitGroup
	stop func()
	mu   sync.Mutex
	errs []error
}

// Go runs f, the part called name, on a goroutine of the group.
func (g *group) Go(name string, f func() error) {
	g.wg.Go(func() {
		if err := f(); err != nil {
			g.mu.Lock()
			g.errs = append(g.errs, fmt.Errorf("%s: %w", name, err))
			g.mu.Unlock()
			g.stop()
		}
	})
}

// Wait waits for every part and returns their errors, joined.
func (g *group) Wait() error {
	g.wg.Wait()
	return errors.Join(g.errs...)
}

// untilReached runs f until it succeeds or ctx ends, logging each failure
// at once: an exchange that does not answer must not look like a hang.
func (s *Service) untilReached(ctx context.Context, what string, f func(context.Context) error) error {
	wait := time.Second
	for {
		err := f(ctx)
		if err == nil || ctx.Err() != nil {
			return err
		}
		s.log.Error("cannot "+what+"; retrying", "url", s.cfg.Exchange.RESTURL, "err", err, "retry_in", wait)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
		wait = min(2*wait, 30*time.Second)
	}
}

// startErr reports a startup failure, or nothing if the user stopped us.
func (s *Service) startErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return nil
	}
	return err
}

func (s *Service) syncTime(ctx context.Context) error {
	t0 := time.Now()
	st, err := s.Client.Urgent().ServerTime(ctx)
	if err != nil {
		return fmt.Errorf("reach the exchange at %s: %w", s.cfg.Exchange.RESTURL, err)
	}
	rtt := time.Since(t0)
	s.offset.Store(st.Sub(t0.Add(rtt / 2)).Milliseconds())
	return nil
}

// tick tells the engine the exchange time four times a second, and
// measures the trade rate.
func (s *Service) tick(ctx context.Context) {
	// Klines without a later trade close by the clock, grace after their
	// close time. Every interval closes on a minute, so besides the
	// regular tick a timer fires at each minute + grace: closing events
	// then come within grace + a few ms, as Binance's own, without a fast
	// tick taking the engine from trades all the time.
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	grace := s.cfg.Klines.Grace.Duration
	target := time.Time{}
	untilClose := func() time.Duration {
		now := s.ExchangeNow()
		target = now.Truncate(time.Minute).Add(grace % time.Minute)
		for !target.After(now) {
			target = target.Add(time.Minute)
		}
		return target.Sub(now) + time.Millisecond
	}
	closer := time.NewTimer(untilClose())
	defer closer.Stop()
	retries := 0
	lastAt, lastN := time.Now(), s.Router.Stats().Forwarded.Load()
	for {
		select {
		case <-ctx.Done():
			return
		case <-closer.C:
			now, ok := s.clock()
			if ok {
				s.Engine.Tick(ctx, now, s.Router.Holds())
			}
			// The clock is held at the streams' watermark: while it lags
			// the target, look again shortly.
			if (!ok || now.Before(target)) && retries < 50 {
				retries++
				closer.Reset(10 * time.Millisecond)
			} else {
				retries = 0
				closer.Reset(untilClose())
			}
		case <-t.C:
			if now, ok := s.clock(); ok {
				s.Engine.Tick(ctx, now, s.Router.Holds())
			}
			if d := time.Since(lastAt); d >= time.Second {
				n := s.Router.Stats().Forwarded.Load()
				s.rate.Store(math.Float64bits(float64(n-lastN) / d.Seconds()))
				lastAt, lastN = time.Now(), n
			}
		}
	}
}

// syncClock re-measures the offset to the exchange's clock periodically. It
// is not part of tick: a request can wait a minute for REST weight, and
// klines must go on closing meanwhile.
func (s *Service) syncClock(ctx context.Context) {
	t := time.NewTicker(s.cfg.Exchange.TimeSync.Duration)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := s.syncTime(ctx); err != nil && ctx.Err() == nil {
				s.log.Warn("exchange time sync failed", "err", err)
			}
		}
	}
}

// clock is the time up to which the engine may close klines: exchange time,
// held back to what every connected connection has delivered, so that no
// kline closes while its trades are in flight. Symbols missing trades are
// held back further, each on its own (Router.Holds).
func (s *Service) clock() (time.Time, bool) {
	w := s.Router.Watermark()
	if w == 0 {
		return time.Time{}, false
	}
	return time.UnixMilli(min(s.ExchangeNow().UnixMilli(), w)), true
}

// parallel runs f over names with a few workers; REST weight, not
// concurrency, is the limit, and the client enforces it.
func (s *Service) parallel(ctx context.Context, names []string, f func(int, string) error) error {
	var wg sync.WaitGroup
	var mu sync.Mutex
	var first error
	next := atomic.Int64{}
	for range min(4, len(names)) {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= len(names) || ctx.Err() != nil {
					return
				}
				if err := f(i, names[i]); err != nil {
					mu.Lock()
					if first == nil {
						first = err
					}
					mu.Unlock()
					return
				}
			}
		})
	}
	wg.Wait()
	if first == nil {
		first = ctx.Err()
	}
	return first
}

// Symbols returns the symbols klagg keeps (seeding, live or paused), by
// name.
func (s *Service) Symbols() []store.Symbol {
	v := s.Registry.View()
	out := make([]store.Symbol, 0, len(v.Symbols))
	for _, y := range v.Symbols {
		if y.State != symbols.Pending && y.State != symbols.Delisted {
			out = append(out, symbols.Record(y.Info))
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Symbol returns a symbol klagg has klines of, kept now or not.
func (s *Service) Symbol(name string) (store.Symbol, bool) {
	if y, ok := s.Registry.View().Symbols[name]; ok && y.State != symbols.Pending {
		return symbols.Record(y.Info), true
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	y, ok := s.known[name]
	return y, ok
}

// Precision is the number formatting of a symbol klagg has klines of.
func (s *Service) Precision(name string) (kline.Precision, bool) {
	y, ok := s.Symbol(name)
	return kline.Precision{Price: y.PricePrecision, Qty: y.QuantityPrecision}, ok
}

// ExchangeLists returns exchangeInfo's exchange-wide lists by name
// (store.RateLimits, store.ExchangeFilters) as the exchange last gave them:
// from the latest listing, else as stored by an earlier run.
func (s *Service) ExchangeLists(ctx context.Context) map[string][]byte {
	if l := s.Registry.Lists(); l != nil {
		return l
	}
	l, err := s.Store.Exchange(ctx)
	if err != nil {
		s.log.Warn("reading exchangeInfo's rate limits from the store failed", "err", err)
	}
	return l
}

// StoreErr returns the store's write error while writes fail, else nil.
func (s *Service) StoreErr() error { return s.writer.Failing() }

// Unwritten appends the klines of symbol and iv the store has not taken
// while its writes fail, oldest first.
func (s *Service) Unwritten(dst []kline.Kline, symbol string, iv kline.Interval) []kline.Kline {
	at := len(dst)
	dst = s.writer.Unwritten(dst, symbol, iv)
	if s.Feed == nil {
		return dst
	}
	// A cluster's closed klines reach the store through the sinks.
	n := len(dst)
	if dst = s.Feed.Unwritten(dst, symbol, iv); n > at && len(dst) > n {
		dst = append(dst[:at], kline.ByOpenTime(dst[at:])...)
	}
	return dst
}

// Intervals returns the configured intervals, shortest first.
func (s *Service) Intervals() []kline.Interval { return s.cfg.Intervals }

// Status are the figures of the status line.
type Status struct {
	Ready          bool               `json:"ready"`
	Uptime         string             `json:"uptime"`
	Symbols        int                `json:"symbols"`
	Intervals      int                `json:"intervals"`
	Connections    int                `json:"connections"`
	Connected      int                `json:"connected"`
	Reconnects     int64              `json:"reconnects"`
	Frames         int64              `json:"frames"`
	Malformed      int64              `json:"malformed_frames"`
	Trades         int64              `json:"trades"`
	TradesPerSec   float64            `json:"trades_per_second"`
	GapFills       int64              `json:"gap_fills"`
	KlinesWritten  int64              `json:"klines_written"`
	WriterBacklog  int                `json:"writer_backlog"`
	WriteFailures  int64              `json:"write_failures"`
	LagMs          int64              `json:"lag_ms"`
	RESTWeight1M   int                `json:"rest_weight_1m"`
	RESTWeight     int64              `json:"rest_weight_total"`
	Cluster        *ClusterStatus     `json:"cluster,omitempty"`
	Reconciled     int64              `json:"reconciled"`
	ReconcileDiffs map[string]int64   `json:"reconcile_diffs"`
	SymbolStates   map[string]int     `json:"symbol_states"`
	BackfillDone   int64              `json:"backfill_requests_done"`
	BackfillTotal  int64              `json:"backfill_requests_total"`
	HoldsReleased  int64              `json:"holds_released"`
	Buffered       int64              `json:"buffered_trades"`
	Resyncs        int64              `json:"resyncs"`
	Seeds          map[string]int64   `json:"seeds"` // by how the current minute was had
	Unamended      int64              `json:"reconcile_unamended"`
	Late           int64              `json:"late_trades"`
	Exactness      Exactness          `json:"exactness"`
	ConnStates     []ingest.ConnState `json:"connection_states"`
}

// Exactness are the counters that show what klagg could not take as it
// came, and how it made up for it. Only Unfillable is a loss, and it is
// the exchange's: the trade ids it could not supply.
type Exactness struct {
	Duplicates int64 `json:"duplicate_trades"`     // dropped: already forwarded (overlapping connections, replays)
	Filled     int64 `json:"trades_filled"`        // came from REST aggTrades into a gap
	Unfillable int64 `json:"unfillable_gaps"`      // trade ids the exchange could not supply, skipped
	Overflowed int64 `json:"trades_overflowed"`    // dropped from a full gap buffer, fetched again from REST
	TooLate    int64 `json:"trades_too_late"`      // older than the engine's last closed kline; the repair from klines covers them
	Rotations  int64 `json:"connection_rotations"` // connections replaced before Binance's 24 h cut
}

// ClusterStatus are a cluster node's figures.
type ClusterStatus struct {
	Node           string   `json:"node"`
	Roles          []string `json:"roles"`
	Owned          int      `json:"symbols_owned"`
	Takeovers      int64    `json:"takeovers"`   // symbols taken from a dead or departed node
	Rebalanced     int64    `json:"rebalanced"`  // symbols taken from a live node: rendezvous hashing gives them to this one, which joined later
	Lost           int64    `json:"leases_lost"` // symbols another node took from this one
	Published      int64    `json:"klines_published"`
	OpenSent       int64    `json:"open_klines_sent"` // to the serve nodes, on core NATS
	PublishPending int      `json:"publish_pending"`
	Stored         int64    `json:"klines_stored"` // by this node's sink
	Fed            int64    `json:"klines_fed"`    // from other nodes, to this node's clients
}

// Status returns the current figures.
func (s *Service) Status() Status {
	v := s.Registry.View()
	nsym := v.Counts[symbols.Live] + v.Counts[symbols.Paused]
	now := time.Now()
	rate := math.Float64frombits(s.rate.Load())
	conns := s.Ingest.Connections()
	connected := 0
	for _, c := range conns {
		if c.Connected {
			connected++
		}
	}
	ist := s.Ingest.Stats()
	est := s.Engine.Stats()
	w1m, wTotal := s.Client.Weight().Used()
	st := Status{
		Ready: s.Ready(), Uptime: time.Since(s.started).Round(time.Second).String(),
		Symbols: nsym, Intervals: len(s.cfg.Intervals), Connections: len(conns), Connected: connected,
		Reconnects: ist.Reconnects.Load(), Frames: ist.Frames.Load(), Malformed: ist.Malformed.Load(),
		Trades: est.Trades, TradesPerSec: rate, GapFills: s.Router.Stats().Fills.Load(),
		KlinesWritten: s.writer.Written(), WriterBacklog: s.coalescer.Len(), WriteFailures: s.writer.Failures(),
		RESTWeight1M: w1m, RESTWeight: wTotal, Late: est.Late, Unamended: est.Unamended, ConnStates: conns,
		SymbolStates: v.CountsByName(), HoldsReleased: s.Router.Stats().Released.Load(), Buffered: s.Router.Stats().Buffered.Load(), Resyncs: s.Router.Stats().Resyncs.Load(),
	}
	rs := s.Router.Stats()
	st.Exactness = Exactness{Duplicates: rs.Duplicates.Load(), Filled: rs.Filled.Load(), Unfillable: rs.Unfillable.Load(),
		Overflowed: rs.Overflowing.Load(), TooLate: est.TooLate, Rotations: ist.Rotations.Load()}
	st.BackfillDone, st.BackfillTotal = s.Registry.Backfill()
	if s.Leases != nil {
		c := &ClusterStatus{Node: s.cfg.Cluster.Node, Roles: s.cfg.Cluster.Roles, Owned: s.Leases.Held(),
			Takeovers: s.Leases.Takeovers.Load(), Rebalanced: s.Leases.Rebalanced.Load(), Lost: s.Leases.Lost.Load()}
		if s.Publisher != nil {
			c.Published, c.PublishPending = s.Publisher.Published.Load(), s.Publisher.Pending()
			c.OpenSent = s.Opens.Sent.Load()
		}
		if s.Sink != nil {
			c.Stored = s.Sink.Stored.Load()
		}
		if s.Feed != nil {
			c.Fed = s.Feed.Klines.Load()
		}
		st.Cluster = c
	}
	st.Seeds = map[string]int64{"snapshot": s.History.Seeds.Snapshot.Load(), "quiet": s.History.Seeds.Quiet.Load(),
		"trades": s.History.Seeds.Trades.Load()}
	if last := ist.LastFrameMs.Load(); last > 0 {
		st.LagMs = now.UnixMilli() - last
	}
	if s.Reconciler != nil {
		st.Reconciled = s.Reconciler.Checked.Load()
		st.ReconcileDiffs = s.Reconciler.FieldDiffs()
	}
	return st
}

func (s *Service) status(ctx context.Context) {
	t := time.NewTicker(s.cfg.Log.StatusInterval.Duration)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		st := s.Status()
		s.log.Info("status", "symbols", st.Symbols, "states", st.SymbolStates, "backfill", fmt.Sprintf("%d/%d", st.BackfillDone, st.BackfillTotal), "connections", fmt.Sprintf("%d/%d", st.Connected, st.Connections),
			"trades_per_s", int(st.TradesPerSec), "klines_written", st.KlinesWritten, "reconnects", st.Reconnects,
			"lag_ms", st.LagMs, "gap_fills", st.GapFills, "rest_weight_1m", st.RESTWeight1M)
	}
}

// Backfill stores closed klines of every interval for every symbol, from
// the last stored one or the last klines.backfill_limit, and returns: the
// `klagg backfill` command.
func (s *Service) Backfill(ctx context.Context) (err error) {
	defer func() { err = errors.Join(err, s.Store.Close()) }()
	// Every write goes through the one writer, stopped (and flushed) last.
	wCtx, stopW := context.WithCancel(context.Background())
	var wWG sync.WaitGroup
	var writeErr error
	wWG.Go(func() { writeErr = s.writer.Run(wCtx) })
	defer func() {
		stopW()
		wWG.Wait()
		if writeErr != nil {
			err = errors.Join(err, fmt.Errorf("writing the backfilled klines failed: %w", writeErr))
		}
	}()
	if err := s.syncTime(ctx); err != nil {
		return err
	}
	info, err := s.Client.ExchangeInfo(ctx)
	if err != nil {
		return fmt.Errorf("read exchangeInfo from %s: %w", s.cfg.Exchange.RESTURL, err)
	}
	var syms []store.Symbol
	var names []string
	for _, i := range info.Symbols {
		if s.Registry.Keeps(i) && symbols.ClassOf(i.Status) != symbols.ClassPending {
			syms = append(syms, symbols.Record(i))
			names = append(names, i.Symbol)
		}
	}
	if err := s.Store.PutSymbols(syms); err != nil {
		return err
	}
	m0 := s.ExchangeNow().UnixMilli()
	m0 -= m0 % 60_000
	total, done := len(names)*s.History.BackfillRequests(), atomic.Int64{}
	start := time.Now()
	err = s.parallel(ctx, names, func(_ int, name string) error {
		return s.History.Backfill(ctx, name, m0, func() {
			if s.Progress != nil {
				s.Progress(int(done.Add(1)), total)
			}
		})
	})
	_, weight := s.Client.Weight().Used()
	s.log.Info("backfill done", "symbols", len(names), "klines", s.History.Backfills.Load(),
		"requests", s.History.Requests.Load(), "weight", weight, "took", time.Since(start).Round(time.Millisecond))
	return err
}
