package main

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"time"

	"github.com/klagg/klagg/internal/archive"
	"github.com/klagg/klagg/internal/config"
	"github.com/klagg/klagg/internal/fakex"
	"github.com/klagg/klagg/internal/service"
)

func runDemo(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "demo", "[-symbols N] [-db PATH] [-listen ADDR]")
	symbols := fs.Int("symbols", 30, "generated symbols")
	db := fs.String("db", filepath.Join("data", "demo.db"), "SQLite database")
	listen := fs.String("listen", "127.0.0.1:8080", "HTTP address to serve on")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *symbols < 1 || *symbols > 2000 {
		return fmt.Errorf("-symbols %d: give 1 to 2000", *symbols)
	}
	// Six busy hours for backfill, and a sparser week before them for the
	// archive.
	x, err := fakex.New(fakex.Config{Symbols: *symbols, Seed: uint64(time.Now().Unix()), History: 6 * time.Hour,
		Deep: demoWeek + 24*time.Hour, DeepGap: 20 * time.Second,
		MeanGap: 400 * time.Millisecond, QuietEvery: 2000, Log: e.log.With("part", "fake-exchange")})
	if err != nil {
		return err
	}
	defer x.Close()
	cfg, err := config.Parse([]byte(fmt.Sprintf(`
[exchange]
rest_url = %q
ws_url = %q
symbols_poll = "10s"
[klines]
backfill_limit = 400
[database]
path = %q
[server]
listen = %q
[log]
status_interval = "10s"
`, x.URL(), x.WSURL(), *db, *listen)))
	if err != nil {
		return err
	}
	e.log.Info("demo: a fake exchange with generated trades runs in this process", "symbols", *symbols, "exchange", x.URL())
	if err := demoImport(ctx, e, cfg, x); err != nil {
		return err
	}
	return serve(ctx, e, cfg)
}

// demoWeek is how much of the fake exchange's archive the demo imports.
const demoWeek = 7 * 24 * time.Hour

// demoImport imports the last week of the fake exchange's archive, as
// `klagg import -from` would from Binance's: deep history, offline. The
// archive's defects are the fake's too; a file it could not import is
// read from the exchange when asked for, so the demo goes on.
func demoImport(ctx context.Context, e *env, cfg *config.Config, x *fakex.Exchange) error {
	svc, err := service.New(cfg, e.log)
	if err != nil {
		return err
	}
	svc.Progress = progress(e, "import")
	var syms []string
	for s := range x.Symbols() {
		syms = append(syms, s)
	}
	slices.Sort(syms)
	// The days the archive has published: each 8 hours after it ends.
	until := x.Now().UTC().Add(-8 * time.Hour).Truncate(24 * time.Hour)
	e.log.Info("demo: importing a week of the fake exchange's archive", "archive", x.ArchiveURL(), "symbols", len(syms))
	err = svc.Import(ctx, x.ArchiveURL(), archive.ImportConfig{Symbols: syms, Since: until.Add(-demoWeek), Until: until})
	if err != nil && ctx.Err() == nil {
		e.log.Warn("demo: the import did not take every file; the service reads what it lacks from the exchange", "err", err)
		return nil
	}
	return err
}

func runFakeExchange(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "fake-exchange", "[-symbols N] [-speed X] [-listen ADDR]")
	symbols := fs.Int("symbols", 50, "generated symbols")
	speed := fs.Float64("speed", 1, "simulated seconds per second")
	gap := fs.Duration("gap", 200*time.Millisecond, "mean simulated time between a symbol's trades")
	history := fs.Duration("history", time.Hour, "trades generated before the start, for backfill")
	listen := fs.String("listen", "127.0.0.1:9090", "address to listen on")
	seed := fs.Uint64("seed", 1, "generator seed")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	x, err := fakex.New(fakex.Config{Symbols: *symbols, Speed: *speed, MeanGap: *gap, History: *history,
		Addr: *listen, Seed: *seed, Log: e.log})
	if err != nil {
		return err
	}
	defer x.Close()
	fmt.Fprintf(e.stdout, "fake exchange: rest_url = %q, ws_url = %q\n", x.URL(), x.WSURL())
	<-ctx.Done()
	return nil
}
