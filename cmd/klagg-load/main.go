// Command klagg-load is klagg's load tool. It makes seeded synthetic input
// for benchmarks, so that no large data file is ever checked in.
//
//	klagg-load trades -symbols 4 -rows 10000000 -out DIR
//
// writes <SYMBOL>-aggTrades-<date>.csv files holding rows trades in all,
// split evenly over the symbols, one file per symbol and UTC day.
//
//	klagg-load live -klagg /tmp/klagg -symbols 1000 -rate 10000 -duration 60s
//
// runs the klagg binary against an in-process fake exchange trading at the
// given rate and reports the trade rate klagg sustained and its memory.
//
//	klagg-load blast -klagg /tmp/klagg -symbols 1000 [-rate 100000] [-clients 1000 -streams 10]
//
// runs the klagg binary against a minimal exchange that sends aggTrade
// frames as fast as klagg reads them (or at the given rate) and reports
// klagg's trade rate, its trade-to-consumer latency and its memory; with
// -clients, that many WebSocket clients read klagg's kline streams, and it
// reports their events and the delay from push to socket.
//
//	klagg-load backfill -klagg /tmp/klagg -symbols 500 [-budget 2400]
//
// runs `klagg backfill` against an exchange serving synthetic klines within
// a request-weight budget and compares its time with what the budget allows.
package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/klagg/klagg/internal/synth"
)

func main() {
	if err := run(os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "klagg-load:", err)
		os.Exit(1)
	}
}

func run(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return fmt.Errorf("usage: klagg-load trades [-symbols N] [-rows N] [-seed N] -out DIR | live -klagg BIN [-symbols N] [-rate R] [-duration D] | blast -klagg BIN [-symbols N] [-rate R] [-duration D] [-clients N] | backfill -klagg BIN [-symbols N] [-budget W] | start -klagg BIN [-symbols N] [-budget W] [-down D -speed X]")
	}
	switch args[0] {
	case "trades":
		return runTrades(args[1:], stdout, stderr)
	case "live":
		return runLive(args[1:], stdout, stderr)
	case "blast":
		return runBlast(args[1:], stdout, stderr)
	case "backfill":
		return runBackfill(args[1:], stdout, stderr)
	case "start":
		return runStart(args[1:], stdout, stderr)
	}
	return fmt.Errorf("unknown command %q: want trades, live, blast, backfill or start", args[0])
}

func runTrades(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("trades", flag.ContinueOnError)
	fs.SetOutput(stderr)
	symbols := fs.Int("symbols", 4, "number of symbols")
	rows := fs.Int("rows", 1_000_000, "trades in all")
	seed := fs.Uint64("seed", 1, "generator seed: the same seed gives the same files")
	gap := fs.Float64("gap-ms", 20, "mean time between a symbol's trades, ms")
	out := fs.String("out", "", "output folder")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *out == "" || *symbols <= 0 || *rows <= 0 {
		return fmt.Errorf("trades: -out is required, -symbols and -rows must be positive")
	}
	if err := os.MkdirAll(*out, 0o755); err != nil {
		return err
	}
	start := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	per := *rows / *symbols
	for i := range *symbols {
		m := synth.DefaultMarket(i, *seed, start.UnixMilli())
		m.MeanGapMs = *gap
		s := synth.NewStream(m)
		left := per
		for day := start; left > 0; day = day.AddDate(0, 0, 1) {
			path := filepath.Join(*out, fmt.Sprintf("%s-aggTrades-%s.csv", m.Symbol, day.Format("2006-01-02")))
			f, err := os.Create(path)
			if err != nil {
				return err
			}
			n, err := synth.WriteCSV(f, s, day.AddDate(0, 0, 1).UnixMilli(), left, true)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return fmt.Errorf("write %s: %w", path, err)
			}
			left -= n
		}
	}
	fmt.Fprintf(stdout, "wrote %d trades of %d symbols to %s\n", per**symbols, *symbols, *out)
	return nil
}
