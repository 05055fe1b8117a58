package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/klagg/klagg/internal/fakex"
	"github.com/klagg/klagg/internal/klaggproc"
	"github.com/klagg/klagg/internal/kline"
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
	ask := fs.Int("ask", 0, "if set, a client asks for the latest this many 1m klines of every symbol, one after another, the moment klagg is live (retrying a 503 after a second), and the time it took is reported")
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
		if *ask > 0 {
			if err := askEvery(stdout, k.Base(), x, *ask, what); err != nil {
				k.Stop(time.Minute)
				return err
			}
		}
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

// askEvery asks klagg at base for the latest n 1m klines of each of x's
// symbols in turn, as a client catching up with the whole market does,
// and reports how long it took and how often klagg said to come back. An
// answer must be whole: n klines, or as many as the exchange has.
func askEvery(stdout io.Writer, base string, x *fakex.Exchange, n int, what string) error {
	syms := slices.Sorted(maps.Keys(x.Symbols()))
	started := time.Now()
	refused := 0
	var slowest time.Duration
	for _, sym := range syms {
		asked := time.Now()
		for {
			resp, err := http.Get(fmt.Sprintf("%s/fapi/v1/klines?symbol=%s&interval=1m&limit=%d", base, url.QueryEscape(sym), n))
			if err != nil {
				return fmt.Errorf("ask %s: %w", sym, err)
			}
			body, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil {
				return fmt.Errorf("ask %s: %w", sym, err)
			}
			if resp.StatusCode == http.StatusServiceUnavailable {
				refused++
				time.Sleep(time.Second) // what a client does with a 503
				continue
			}
			var rows []json.RawMessage
			if resp.StatusCode != http.StatusOK || json.Unmarshal(body, &rows) != nil {
				return fmt.Errorf("ask %s: %d %s", sym, resp.StatusCode, body)
			}
			if has := len(x.ReferenceKlines(sym, kline.OneMinute(), 0, x.Now().UnixMilli())); len(rows) < min(n, has) {
				return fmt.Errorf("ask %s: a short answer, %d klines of %d", sym, len(rows), min(n, has))
			}
			break
		}
		slowest = max(slowest, time.Since(asked))
	}
	fmt.Fprintf(stdout, "%s: the latest %d 1m klines of all %d symbols, asked one after another, answered whole in %s (slowest %s, %d refusals retried)\n",
		what, n, len(syms), time.Since(started).Round(time.Millisecond), slowest.Round(time.Millisecond), refused)
	return nil
}
