package main

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
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
	ivs := `"` + strings.Join(strings.Split(*intervals, ","), `","`) + `"`
	conf := filepath.Join(dir, "klagg.toml")
	os.WriteFile(conf, []byte(fmt.Sprintf(`[exchange]
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
[log]
status_interval = "5s"
`, x.URL(), x.WSURL(), ivs, filepath.Join(dir, "k.db"))), 0o644)
	cmd := exec.Command(*bin)
	cmd.Env = append(os.Environ(), "CONFIG_PATH="+conf)
	errPipe, _ := cmd.StderrPipe()
	if err := cmd.Start(); err != nil {
		return err
	}
	defer cmd.Process.Kill()
	lines := bufio.NewScanner(errPipe)
	start := time.Now()
	for lines.Scan() {
		if strings.Contains(lines.Text(), "caught up; live") {
			break
		}
	}
	fmt.Fprintf(stdout, "klagg live with %d symbols after %s\n", *symbols, time.Since(start).Round(time.Millisecond))
	rateRe := regexp.MustCompile(`trades_per_s=(\d+)`)
	var rates []int
	var rss []int
	deadline := time.Now().Add(*dur)
	for time.Now().Before(deadline) && lines.Scan() {
		if m := rateRe.FindStringSubmatch(lines.Text()); m != nil {
			n, _ := strconv.Atoi(m[1])
			rates = append(rates, n)
			rss = append(rss, rssMB(cmd.Process.Pid))
		}
	}
	sent := x.Stats().TradesSent
	cmd.Process.Signal(os.Interrupt)
	go io.Copy(io.Discard, errPipe)
	cmd.Wait()
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
