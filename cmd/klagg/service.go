package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"

	"github.com/klagg/klagg/internal/api"
	"github.com/klagg/klagg/internal/archive"
	"github.com/klagg/klagg/internal/config"
	"github.com/klagg/klagg/internal/kline"
	"github.com/klagg/klagg/internal/run"
	"github.com/klagg/klagg/internal/service"
	"github.com/klagg/klagg/internal/stream"
	"github.com/klagg/klagg/internal/web"
)

func configPath() string {
	if p := os.Getenv("CONFIG_PATH"); p != "" {
		return p
	}
	return config.DefaultPath
}

func loadConfig(e *env) (*config.Config, error) {
	path := configPath()
	cfg, created, err := config.Load(path)
	if err != nil {
		return nil, err
	}
	switch {
	case created && os.Getenv("CONFIG_PATH") != "":
		// The user named a file: a typo must not pass for their config.
		e.log.Warn("CONFIG_PATH names a file that did not exist: wrote the defaults there, and klagg runs on its defaults", "path", path)
	case created:
		e.log.Info("no config found; wrote the defaults", "path", path)
	}
	return cfg, nil
}

func runService(ctx context.Context, e *env, args []string) error {
	if len(args) > 0 {
		fmt.Fprintf(e.stderr, "klagg: unexpected argument %q\n\n", args[0])
		usage(e.stderr)
		return errUsage
	}
	cfg, err := loadConfig(e)
	if err != nil {
		return err
	}
	return serve(ctx, e, cfg)
}

// serve runs the service and its HTTP API until ctx ends; a second SIGINT
// or SIGTERM while it flushes forces the exit.
func serve(ctx context.Context, e *env, cfg *config.Config) error {
	ln, err := net.Listen("tcp", cfg.Server.Listen)
	if err != nil {
		return fmt.Errorf("serve on %s (server.listen in the config): %w", cfg.Server.Listen, err)
	}
	var streams *stream.Server
	svc, err := service.New(cfg, e.log, func(svc *service.Service) service.Consumer {
		streams = stream.New(stream.Config{
			PushInterval: cfg.Server.PushInterval.Duration, ClientBuffer: cfg.Server.ClientBuffer,
			MaxStreamsPerConn: cfg.Server.MaxStreamsPerConn, MaxConns: cfg.Server.MaxConnections,
			PingInterval: cfg.Server.PingInterval.Duration, Intervals: cfg.Intervals,
			Symbol: func(name string) (stream.Market, bool) {
				y, ok := svc.Symbol(name)
				return stream.Market{Precision: kline.Precision{Price: y.PricePrecision, Qty: y.QuantityPrecision},
					Pair: y.Pair, ContractType: y.ContractType}, ok
			},
			// Event times are on the exchange's clock, as t and T are.
			Now:            svc.ExchangeNow,
			OriginPatterns: corsHosts(cfg.Server.CORSOrigins), Log: e.log.With("part", "stream"),
		})
		return streams
	})
	if err != nil {
		ln.Close()
		return err
	}
	svc.Progress = progress(e, "backfill")
	maxConns := cfg.Server.MaxHTTPConns + cfg.Server.MaxConnections
	if fds := openFileLimit(); fds > 0 && maxConns > fds-fdReserve {
		maxConns = max(1, fds-fdReserve)
		e.log.Warn("fewer connections than configured: the open-file limit is low (raise it with ulimit -n)",
			"open_files", fds, "connections", maxConns)
	}
	capped := api.NewListener(ln, maxConns)
	ln = capped
	handler := api.New(api.Config{Source: svc, Klines: svc.Klines, Prices: svc.Head, Streams: streams, Page: web.Handler(),
		Token: cfg.Server.Token, CORS: cfg.Server.CORSOrigins, WeightPerMinute: cfg.Server.WeightPerMinute,
		Conns: capped, Log: e.log.With("part", "api")})
	// Timeouts, so that a client that stops reading or sending cannot hold
	// a connection: the WebSocket handler clears them on the connections
	// it takes over.
	hs := &http.Server{Handler: handler, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second,
		WriteTimeout: 30 * time.Second, MaxHeaderBytes: 16 << 10, IdleTimeout: 2 * time.Minute,
		ConnState: capped.ConnState, ConnContext: capped.ConnContext, ErrorLog: slog.NewLogLogger(e.log.Handler(), slog.LevelDebug)}
	if !web.Built() {
		e.log.Warn("the chart page's library is not built in; run ./scripts/run, or ./scripts/web before building")
	}

	// One group runs every part; the API's tiers start last and stop
	// first, so no request reads a closed store and every stream client
	// gets its close frame.
	var g run.Group
	svc.Tiers(&g)
	g.Tier("streams").Add("stream server", streams.Run)
	g.Tier("http").Add("HTTP server", run.Server(hs, ln, 5*time.Second))
	forceOnSecondSignal(ctx, e)
	e.log.Info("klagg starting", "version", version, "exchange", cfg.Exchange.RESTURL, "database", database(cfg),
		"listen", "http://"+ln.Addr().String())
	return errors.Join(g.Run(ctx), svc.Close())
}

// database names the configured store for the log, without a password.
func database(cfg *config.Config) string {
	if cfg.Database.URL == "" {
		return cfg.Database.Path
	}
	if u, err := url.Parse(cfg.Database.URL); err == nil {
		return u.Redacted()
	}
	return "postgres"
}

// fdReserve is the file descriptors kept for other than clients: the
// database, exchange connections, logs.
const fdReserve = 64

// corsHosts turns CORS origins into the host patterns the WebSocket
// handshake checks.
func corsHosts(origins []string) []string {
	var out []string
	for _, o := range origins {
		if o == "*" {
			return []string{"*"}
		}
		if u, err := url.Parse(o); err == nil && u.Host != "" {
			out = append(out, u.Host)
		}
	}
	return out
}

func forceOnSecondSignal(ctx context.Context, e *env) {
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	go func() {
		<-ctx.Done()
		e.log.Info("stopping: flushing klines to the store (signal again to force)")
		<-sigs // the signal that cancelled ctx
		<-sigs // a second one
		e.log.Error("second signal: exiting without flushing")
		os.Exit(1)
	}()
}

func runBackfill(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "backfill", "")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	cfg, err := loadConfig(e)
	if err != nil {
		return err
	}
	svc, err := service.New(cfg, e.log)
	if err != nil {
		return err
	}
	svc.Progress = progress(e, "backfill")
	return svc.Backfill(ctx)
}

func runImport(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "import", "")
	from := fs.String("from", "", "the archive's address: a URL answering its bucket listing and files, or a folder laid out like it (default: data.binance.vision)")
	syms := fs.String("symbols", "", "comma-separated symbols to import, as Binance names them")
	all := fs.Bool("all", false, "import every symbol the archive has, delisted ones too")
	since := fs.String("since", "", "the first UTC day to import, YYYY-MM-DD, or \"listing\": each symbol's first day in the archive")
	until := fs.String("until", "", "the UTC day to stop before, YYYY-MM-DD (default: today)")
	parallel := fs.Int("parallel", 8, "files read at once")
	intervals := fs.String("intervals", "", "comma-separated intervals to derive from the 1m klines imported (default: the configured intervals)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	cfg := archive.ImportConfig{Parallel: *parallel, Until: time.Now().UTC()}
	for _, s := range strings.Split(*syms, ",") {
		if s = strings.TrimSpace(s); s != "" {
			cfg.Symbols = append(cfg.Symbols, strings.ToUpper(s))
		}
	}
	if len(cfg.Symbols) == 0 && !*all || len(cfg.Symbols) > 0 && *all || *since == "" {
		fmt.Fprintln(e.stderr, "klagg import: give -symbols or -all, and -since")
		fs.Usage()
		return errUsage
	}
	var err error
	if *intervals != "" {
		if cfg.Intervals, err = kline.ParseIntervals(*intervals); err != nil {
			return fmt.Errorf("-intervals: %w", err)
		}
	}
	if *since != "listing" {
		if cfg.Since, err = time.Parse(time.DateOnly, *since); err != nil {
			return fmt.Errorf("-since %q: want a day as YYYY-MM-DD, or listing", *since)
		}
	}
	if *until != "" {
		if cfg.Until, err = time.Parse(time.DateOnly, *until); err != nil {
			return fmt.Errorf("-until %q: want a day as YYYY-MM-DD", *until)
		}
	}
	conf, err := loadConfig(e)
	if err != nil {
		return err
	}
	svc, err := service.New(conf, e.log)
	if err != nil {
		return err
	}
	svc.Progress = progress(e, "import")
	return svc.Import(ctx, *from, cfg)
}

// progress returns a progress callback drawing a bar on a terminal, or nil.
func progress(e *env, what string) func(done, total int) {
	f, ok := e.stderr.(*os.File)
	if !ok || !term.IsTerminal(int(f.Fd())) {
		return nil
	}
	var bar *progressbar.ProgressBar
	return func(done, total int) {
		if bar == nil {
			bar = progressbar.NewOptions(total, progressbar.OptionSetDescription(what),
				progressbar.OptionSetWriter(f), progressbar.OptionShowCount(), progressbar.OptionClearOnFinish())
		}
		bar.ChangeMax(max(total, done))
		bar.Set(done)
	}
}
