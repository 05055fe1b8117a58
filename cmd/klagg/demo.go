package main

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	"github.com/klagg/klagg/internal/config"
	"github.com/klagg/klagg/internal/fakex"
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
	x, err := fakex.New(fakex.Config{Symbols: *symbols, Seed: uint64(time.Now().Unix()), History: 6 * time.Hour,
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
	return serve(ctx, e, cfg)
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
