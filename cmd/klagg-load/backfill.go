package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/klagg/klagg/internal/binance"
	"github.com/klagg/klagg/internal/fakex"
)

// runBackfill measures `klagg backfill` against the time its request-weight
// budget allows, against the fake exchange, which enforces the budget in
// fixed wall-clock minutes as Binance does. Its history is short: a
// klines request weighs what its limit says whatever the rows it holds.
func runBackfill(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("backfill", flag.ContinueOnError)
	fs.SetOutput(stderr)
	bin := fs.String("klagg", "", "path to the klagg binary (go build -o /tmp/klagg ./cmd/klagg)")
	symbols := fs.Int("symbols", 500, "symbols")
	intervals := fs.String("intervals", "1m,3m,5m,15m,30m,1h,2h", "klagg's intervals")
	limit := fs.Int("limit", 1000, "klagg's klines.backfill_limit")
	budget := fs.Int("budget", 2400, "request weight per minute, for the exchange and klagg alike")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *bin == "" {
		return fmt.Errorf("backfill: -klagg is required")
	}
	x, err := fakex.New(fakex.Config{Symbols: *symbols, WeightPerMinute: *budget, History: 10 * time.Minute, MeanGap: 10 * time.Second, Plain: true})
	if err != nil {
		return err
	}
	defer x.Close()

	dir, err := os.MkdirTemp("", "klagg-backfill")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	conf := filepath.Join(dir, "klagg.toml")
	if err := os.WriteFile(conf, fmt.Appendf(nil, `[exchange]
rest_url = %[1]q
ws_url = %[2]q
weight_per_minute = %[3]d
[klines]
intervals = [%[4]s]
backfill_limit = %[5]d
[database]
path = %[6]q
`, x.URL(), x.WSURL(), *budget, quoteList(*intervals), *limit, filepath.Join(dir, "k.db")), 0o644); err != nil {
		return err
	}
	cmd := exec.Command(*bin, "backfill")
	cmd.Env = append(os.Environ(), "CONFIG_PATH="+conf)
	cmd.Stderr = stderr
	start := time.Now()
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("klagg backfill: %w", err)
	}
	took := time.Since(start)

	st := x.Stats()
	perReq := binance.KlinesWeight(*limit)
	want := *symbols * len(strings.Split(*intervals, ",")) * perReq
	allowed := time.Duration(float64(want) / float64(*budget) * float64(time.Minute))
	fmt.Fprintf(stdout, "%d symbols × %d intervals × %d klines: %d requests, weight %d (%d per kline request), %d refused\n",
		*symbols, len(strings.Split(*intervals, ",")), *limit, st.RESTRequests, st.Weight, perReq, st.Rejected429+st.Banned418)
	fmt.Fprintf(stdout, "took %s; the budget of %d/min allows the klines' weight in %s: %.1f %% of that\n",
		took.Round(100*time.Millisecond), *budget, allowed.Round(100*time.Millisecond), 100*took.Seconds()/allowed.Seconds())
	return nil
}
