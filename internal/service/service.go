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
	"maps"
	"net/http"
	"net/url"
	"sort"
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
	"github.com/klagg/klagg/internal/coverage"
	"github.com/klagg/klagg/internal/engine"
	"github.com/klagg/klagg/internal/head"
	"github.com/klagg/klagg/internal/history"
	"github.com/klagg/klagg/internal/ingest"
	"github.com/klagg/klagg/internal/kline"
	"github.com/klagg/klagg/internal/query"
	"github.com/klagg/klagg/internal/store"
	"github.com/klagg/klagg/internal/store/postgres"
	"github.com/klagg/klagg/internal/store/sqlite"
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
	Coverage   *coverage.Set // which klines are held
	Reconciler *history.Reconciler
	Registry   *symbols.Registry
	// Head holds the newest klines, those the store does not hold yet, and
	// the last prices; Klines answers every klines query from the store
	// and the head.
	Head   *head.Head
	Klines *query.Querier
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
	built   atomic.Bool             // a serve node: the cluster built every symbol once
	// imported is how far the last import of the archive is (nil: none
	// ran): klagg import, or [history] in the background.
	imported atomic.Pointer[ImportStatus]
	metrics  *metrics.Set       // figures only the service sees, for /metrics
	figures  []prometheusWriter // the parts that write their own, in /metrics's order
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
	AddSpans(spans []store.Span) error
	CompactSpans(ctx context.Context) ([]store.Span, error)
	Spans(ctx context.Context) ([]store.Span, error)
	AddImported(files []store.Imported) error
	Imported(ctx context.Context) (map[string]store.Imported, error)
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
	st, err := sqlite.Open(cfg.Database.Path)
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

// New builds the service; nothing runs until Run. Each of makers makes a
// consumer given the service, whose symbols and clock it may use once the
// service runs (the WebSocket server formats and times its events by them).
func New(cfg *config.Config, log *slog.Logger, makers ...func(*Service) Consumer) (*Service, error) {
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
	consumers := make([]Consumer, len(makers))
	for i, mk := range makers {
		consumers[i] = mk(s)
	}
	latency := s.metrics.NewSummaryExt("klagg_trade_to_consumer_seconds", time.Minute, []float64{0.5, 0.9, 0.99, 0.999, 1})
	s.Client = binance.NewClient(cfg.Exchange.RESTURL, hc, cfg.Exchange.WeightPerMinute, log.With("part", "rest"))
	s.coalescer = engine.NewCoalescer()
	// Something confirms what the store holds: this node's writer, or on
	// a cluster's serve node the sinks, through the feed.
	s.Head = head.New(head.Config{Confirmed: !cfg.Clustered() || cfg.Has(config.RoleServe)})
	// What is held of each series: a single node's own writer confirms
	// its live klines, a cluster's ingest node the kline stream's
	// acknowledgements (the sinks store what it acknowledged); a cluster's
	// nodes share what they record, and a serve node learns from the
	// owners' checkpoints which symbols they build, from when.
	var unchecked time.Duration
	if cfg.Reconcile.Enabled {
		unchecked = time.Duration(uncheckedMinutes(cfg)) * time.Minute
	}
	s.Coverage = coverage.New(coverage.Config{Store: st, Intervals: cfg.Intervals, Depth: cfg.Klines.BackfillLimit, Now: s.ExchangeNow, Unchecked: unchecked,
		Shared: cfg.Clustered(), Alive: func(node string) bool { return s.Leases != nil && s.Leases.Alive(node) }, Log: log.With("part", "coverage")})
	// The head takes each update before the writer can: what the writer
	// confirms it has stored is then always in the head to let go.
	sinks := []engine.Sink{s.Head, s.coalescer}
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
		sinks = sinks[:1]
		if cfg.Has(config.RoleIngest) {
			s.Publisher = bus.NewPublisher(js, s.Coverage.Stored, log.With("part", "publisher"))
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
	stored := s.Head.Stored
	if !cfg.Clustered() {
		stored = func(us []kline.Update) {
			s.Head.Stored(us)
			s.Coverage.Stored(us)
		}
	}
	s.writer = store.NewWriter(st, s.coalescer, cfg.Database.WriteEvery.Duration, stored, log.With("part", "writer"))
	s.Router = ingest.NewRouter(tee{s.Engine, append([]Consumer{s.Head}, consumers...)}, s.Client.Urgent(), ingest.RouterConfig{
		HoldMax: cfg.Exchange.HoldMax.Duration, Now: s.ExchangeNow, Log: log.With("part", "router")})
	s.Ingest = ingest.New(ingest.Config{
		URL: cfg.Exchange.WSURL, StreamsPerConn: cfg.Exchange.StreamsPerConnection,
		ReadTimeout: cfg.Exchange.ReadTimeout.Duration, RotateAfter: cfg.Exchange.RotateAfter.Duration,
		HTTPClient: wsClient, Now: s.ExchangeNow, Log: log.With("part", "ingest"),
	}, s.Router)
	s.History = history.New(s.Client.Urgent(), s.Client, s.Engine, s.Router, s.Ingest, s.Coverage, s.writer, cfg.Intervals, cfg.Klines.BackfillLimit, s.ExchangeNow, log.With("part", "history"))
	s.History.Settle = cfg.Klines.Grace.Duration
	var hist symbols.History = s.History
	var owner symbols.Owner
	if cfg.Clustered() {
		var rechecking func() map[string]bool
		if s.Reconciler != nil {
			rechecking = s.Reconciler.Rechecking
		}
		s.Leases = cluster.NewLeases(s.nc, buckets, cluster.Config{
			Node: cfg.Cluster.Node, Ingest: cfg.Has(config.RoleIngest), Roles: cfg.Cluster.Roles,
			Staleness: cfg.Cluster.Staleness.Duration, Intervals: cfg.Intervals, Log: log.With("part", "cluster"),
			Standby: cfg.Cluster.Standby, LiveSince: s.Coverage.LiveSince, Released: s.lacking, Holds: s.Router.Holds, Rechecking: rechecking,
			IngestNodes: func(n int) {
				// The nodes are taken to share one IP: each keeps to its
				// share, and Binance's count in every answer bounds them all.
				share := cfg.Exchange.WeightPerMinute / max(n, 1)
				s.Client.Weight().SetBudget(share)
				log.Info("REST weight shared by the live ingest nodes", "nodes", n, "per_node_per_minute", share)
			},
		}, s.Engine, s.Publisher)
		seeder := cluster.NewSeeder(s.History, s.Leases, s.Engine, s.Router, cfg.Intervals)
		if s.Reconciler != nil {
			seeder.Recheck, seeder.RecheckMinutes = s.Reconciler, uncheckedMinutes(cfg)
		}
		hist, owner = seeder, s.Leases
		if cfg.Has(config.RoleServe) {
			out := []engine.Sink{s.Head}
			for _, c := range consumers {
				out = append(out, c)
			}
			var written func([]kline.Update)
			if w, ok := st.(interface{ Written([]kline.Update) }); ok {
				written = w.Written
			}
			s.Feed = cluster.NewFeed(js, buckets, cfg.Cluster.Node, s.Leases, out, written, s.Head, s.Coverage, cfg.Intervals, log.With("part", "feed"))
		}
	}
	qcfg := query.Config{Store: st, Head: s.Head, Held: s.Coverage, Fill: s.History, Repairs: s.Router, Now: s.ExchangeNow, Log: log.With("part", "query")}
	if s.Feed != nil {
		// A serve node refuses what lacks trades by the rule the owners'
		// checkpoints follow, for its own symbols as for the others'.
		qcfg.Replay = s.Feed
		qcfg.Repairs = repairs{lackingFunc(s.lacking), s.Feed}
	}
	s.Klines = query.New(qcfg)
	s.Registry = symbols.New(symbols.Config{
		ContractTypes: cfg.Symbols.ContractTypes, Include: cfg.Symbols.Include, Exclude: cfg.Symbols.Exclude,
		Poll: cfg.Exchange.SymbolsPoll.Duration, Log: log.With("part", "symbols"),
		Progress: func(done, total int) {
			if s.Progress != nil {
				s.Progress(done, total)
			}
		},
	}, symbols.Deps{Exchange: s.Client, Subscriber: s.Ingest, Router: s.Router, Engine: s.Engine, Store: st, History: hist, Owner: owner, Held: s.Coverage})
	s.figures = []prometheusWriter{s.Registry, s.Ingest, s.Router, s.Engine, s.coalescer, s.writer, s.Head, s.Client.Weight(), s.Coverage}
	if s.Reconciler != nil {
		s.figures = append(s.figures, s.Reconciler)
	}
	if s.Leases != nil {
		s.figures = append(s.figures, s.Leases)
	}
	if s.Publisher != nil {
		s.figures = append(s.figures, s.Publisher, s.Opens)
	}
	if s.Sink != nil {
		s.figures = append(s.figures, s.Sink)
	}
	if s.Feed != nil {
		s.figures = append(s.figures, s.Feed)
	}
	return s, nil
}

// heldLong is how long a symbol may miss trades before a cluster's
// checkpoints say its klines lack them: a gap filled at once (trades
// across connections out of order) is not worth refusing answers for; a
// symbol resumed after minutes down is.
const heldLong = 2 * time.Second

// lacking returns the symbols of this node whose klines lack trades,
// since when: those whose holds the router released, and those it has
// held for heldLong (a symbol resumed from a checkpoint, reading the
// trades since from REST, among them).
func (s *Service) lacking() map[string]int64 {
	rel, holds := s.Router.Released(), s.Router.Holds()
	cut := s.ExchangeNow().Add(-heldLong).UnixMilli()
	var out map[string]int64
	for sym, t := range holds {
		if _, ok := rel[sym]; ok || t >= cut {
			continue
		}
		if out == nil {
			out = maps.Clone(rel)
			if out == nil {
				out = map[string]int64{}
			}
		}
		out[sym] = t
	}
	if out == nil {
		return rel
	}
	return out
}

// lackingFunc is a func giving what Repairs gives.
type lackingFunc func() map[string]int64

func (f lackingFunc) Released() map[string]int64 { return f() }

// repairs are the symbols whose klines lack trades until a repair: this
// node's, and those of the symbols other nodes build.
type repairs []query.Repairs

func (r repairs) Released() map[string]int64 {
	var out map[string]int64
	for _, p := range r {
		m := p.Released()
		switch {
		case len(m) == 0:
		case out == nil:
			out = m
		default:
			out = maps.Clone(out)
			maps.Copy(out, m)
		}
	}
	return out
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

// prometheusWriter is a part of the service that writes its own figures.
type prometheusWriter interface{ WritePrometheus(w io.Writer) }

// WritePrometheus writes, in Prometheus's text format, each part's figures
// and the service's own: the time from a trade's arrival to the kline
// update reaching every consumer, over the last minute.
func (s *Service) WritePrometheus(w io.Writer) {
	for _, p := range s.figures {
		p.WritePrometheus(w)
	}
	s.writeImportMetrics(w)
	s.metrics.WritePrometheus(w)
}

// ExchangeNow is the local clock corrected by the measured offset to the
// exchange's.
func (s *Service) ExchangeNow() time.Time {
	return time.Now().Add(time.Duration(s.offset.Load()) * time.Millisecond)
}

// Readiness returns nil while klagg serves all it should: every symbol
// tradable at startup is live and the store takes writes to the file it
// opened; else what is wrong, worded for /readyz and the status.
func (s *Service) Readiness() error {
	if err := s.writer.Failing(); err != nil {
		return fmt.Errorf("store failing: %w", err)
	}
	if f, ok := s.Store.(interface{ Check() error }); ok {
		if err := f.Check(); err != nil {
			return err
		}
	}
	if !s.Registry.Ready() {
		return errors.New("catching up")
	}
	if s.Feed != nil && !s.built.Load() {
		// At startup, a serve node waits for the cluster as a single node
		// waits for its seeds; later, one node's death makes none of the
		// others unready: what they lack meanwhile is refused.
		if !s.Feed.CaughtUp() {
			return errors.New("catching up with the cluster's kline stream")
		}
		n := 0
		for name, y := range s.Registry.View().Symbols {
			if symbols.ClassOf(y.Info.Status) == symbols.ClassTrading && !s.Coverage.Building(name) {
				n++
			}
		}
		if n > 0 {
			return fmt.Errorf("waiting for the cluster's nodes to build %d symbols", n)
		}
		s.built.Store(true)
	}
	return nil
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

// Intervals returns the configured intervals, shortest first.
func (s *Service) Intervals() []kline.Interval { return s.cfg.Intervals }

// uncheckedMinutes is how many minutes before a symbol's checkpoint its
// last owner may have closed and not yet checked against the exchange's
// klines: those closed within the reconcile delay and the grace, and one
// more for a trade that came after its minute closed. A node taking the
// symbol over checks them again; until it has, other nodes hold them not.
func uncheckedMinutes(cfg *config.Config) int {
	return 2 + int((cfg.Reconcile.Delay.Duration+cfg.Klines.Grace.Duration)/time.Minute)
}
