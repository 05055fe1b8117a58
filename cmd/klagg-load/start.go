package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/klagg/klagg/internal/fakex"
	"github.com/klagg/klagg/internal/klaggproc"
)

// runStart measures how long the real klagg takes to have the whole market
// live under Binance's weight budget: a cold start, and with -down a
// restart after that long stopped (exchange time), until live and until the
// missed klines are backfilled.
func runStart(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("start", flag.ContinueOnError)
	fs.SetOutput(stderr)
	bin := fs.String("klagg", "", "path to the klagg binary (go build -o /tmp/klagg ./cmd/klagg)")
	symbols := fs.Int("symbols", 550, "symbols")
	rate := fs.Float64("rate", 2000, "trades per second over all symbols")
	budget := fs.Int("budget", 2400, "request weight per minute, for the exchange and klagg alike")
	history := fs.Duration("history", 30*time.Minute, "trades the exchange has before the start")
	limit := fs.Int("limit", 1000, "klagg's klines.backfill_limit")
	down := fs.Duration("down", 0, "if set, stop klagg once live and backfilled, and start it again after this much exchange time")
	speed := fs.Float64("speed", 1, "exchange time per wall-clock time")
	timeout := fs.Duration("timeout", 30*time.Minute, "give up after this long")
	backfill := fs.Bool("backfill", true, "wait for the backfill to finish (and report its time)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *bin == "" {
		return fmt.Errorf("start: -klagg is required")
	}
	gap := time.Duration(float64(*symbols) / *rate * float64(time.Second))
	x, err := fakex.New(fakex.Config{Symbols: *symbols, MeanGap: gap, History: *history, WeightPerMinute: *budget, Speed: *speed})
	if err != nil {
		return err
	}
	defer x.Close()
	dir, err := os.MkdirTemp("", "klagg-start")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	config := fmt.Sprintf(`[exchange]
rest_url = %q
ws_url = %q
weight_per_minute = %d
[klines]
backfill_limit = %d
[database]
path = %q
[server]
listen = "127.0.0.1:0"
`, x.URL(), x.WSURL(), *budget, *limit, filepath.Join(dir, "k.db"))
	deadline := time.Now().Add(*timeout)
	for round := 0; round < 2; round++ {
		what := "cold start"
		if round == 1 {
			wait := time.Duration(float64(*down) / *speed)
			fmt.Fprintf(stdout, "stopped; starting again after %s of exchange time (%s)\n", *down, wait)
			time.Sleep(wait)
			what = "restart after " + down.String()
		}
		started := time.Now()
		k, err := startKlagg(*bin, dir, config)
		if err != nil {
			return err
		}
		st := x.Stats()
		fmt.Fprintf(stdout, "%s: %d symbols live after %s (exchange: at most %d weight in a minute so far, %d requests, %d refused)\n",
			what, *symbols, k.LiveAfter().Round(time.Millisecond), st.MaxWeight1M, st.RESTRequests, st.Rejected429+st.Banned418)
		if *backfill {
			total, err := waitBackfill(k, deadline)
			if err != nil {
				k.Stop(time.Minute)
				return err
			}
			fmt.Fprintf(stdout, "%s: backfill of %d requests done after %s\n", what, total, time.Since(started).Round(time.Second))
		}
		k.Stop(time.Minute)
		if *down == 0 {
			break
		}
	}
	return nil
}

// waitBackfill polls klagg's status until its backfill is done, and
// returns how many requests it took.
func waitBackfill(k *klaggproc.Proc, deadline time.Time) (int64, error) {
	for time.Now().Before(deadline) {
		st, err := k.Status()
		if err == nil && st.Ready && st.BackfillTotal > 0 && st.BackfillDone >= st.BackfillTotal {
			return st.BackfillTotal, nil
		}
		time.Sleep(time.Second)
	}
	return 0, fmt.Errorf("backfill not done before the timeout")
}
