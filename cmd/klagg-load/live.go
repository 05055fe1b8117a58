package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/klagg/klagg/internal/fakex"
)

// runLive drives a real klagg binary with a fake exchange at a given trade
// rate and reports what klagg sustained and its memory.
func runLive(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("live", flag.ContinueOnError)
	fs.SetOutput(stderr)
	bin := fs.String("klagg", "", "path to the klagg binary (go build -o /tmp/klagg ./cmd/klagg)")
	symbols := fs.Int("symbols", 1000, "symbols")
	rate := fs.Float64("rate", 10000, "trades per second over all symbols")
	dur := fs.Duration("duration", 60*time.Second, "how long to measure after klagg is live")
	intervals := fs.String("intervals", "1m,3m,5m,15m,30m,1h,2h,4h,6h,8h,12h,1d,3d,1w,1M", "klagg's intervals")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *bin == "" {
		return fmt.Errorf("live: -klagg is required")
	}
	gap := time.Duration(float64(*symbols) / *rate * float64(time.Second))
	x, err := fakex.New(fakex.Config{Symbols: *symbols, MeanGap: gap, History: 10 * time.Minute, WeightPerMinute: 1 << 30, Tick: 5 * time.Millisecond})
	if err != nil {
		return err
	}
	defer x.Close()
	dir, err := os.MkdirTemp("", "klagg-load")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	k, err := startKlagg(*bin, dir, fmt.Sprintf(`[exchange]
rest_url = %q
ws_url = %q
weight_per_minute = 1000000
[klines]
intervals = [%s]
backfill_limit = 0
[reconcile]
enabled = false
[database]
path = %q
[server]
listen = "127.0.0.1:0"
`, x.URL(), x.WSURL(), quoteList(*intervals), filepath.Join(dir, "k.db")))
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "klagg live with %d symbols after %s\n", *symbols, k.LiveAfter().Round(time.Millisecond))
	var rates, rss []int
	for end := time.Now().Add(*dur); time.Now().Before(end); {
		time.Sleep(5 * time.Second)
		if st, err := k.Status(); err == nil {
			rates = append(rates, int(st.TradesPerSec))
			rss = append(rss, rssMB(k.Pid()))
		}
	}
	sent := x.Stats().TradesSent
	k.Stop(time.Minute)
	if len(rates) > 1 {
		rates = rates[1:] // the first status line has no rate yet
	}
	sort.Ints(rates)
	sort.Ints(rss)
	fmt.Fprintf(stdout, "offered %.0f trades/s; klagg status trades/s: min %d median %d max %d; RSS MB: median %d max %d; exchange sent %d trades\n",
		*rate, pick(rates, 0), pick(rates, len(rates)/2), pick(rates, len(rates)-1), pick(rss, len(rss)/2), pick(rss, len(rss)-1), sent)
	return nil
}

func pick(xs []int, i int) int {
	if len(xs) == 0 || i < 0 {
		return 0
	}
	return xs[min(i, len(xs)-1)]
}

func rssMB(pid int) int {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return -1
	}
	for _, l := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(l, "VmRSS:") {
			f := strings.Fields(l)
			kb, _ := strconv.Atoi(f[1])
			return kb / 1024
		}
	}
	return -1
}
