package main

import (
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/klagg/klagg/internal/binance"
	"github.com/klagg/klagg/internal/decimal"
	"github.com/klagg/klagg/internal/kline"
)

// runBackfill measures `klagg backfill` against the time its request-weight
// budget allows: a minimal exchange serves synthetic klines for any range
// and enforces the budget in fixed wall-clock minutes, as Binance does.
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
	x := &klineExchange{budget: *budget, used: map[int64]int{}}
	for i := range *symbols {
		x.symbols = append(x.symbols, fmt.Sprintf("K%04dUSDT", i))
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: x.handler()}
	go srv.Serve(ln)
	defer srv.Close()

	dir, err := os.MkdirTemp("", "klagg-backfill")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	conf := filepath.Join(dir, "klagg.toml")
	if err := os.WriteFile(conf, fmt.Appendf(nil, `[exchange]
rest_url = "http://%[1]s"
ws_url = "ws://%[1]s"
weight_per_minute = %[2]d
[klines]
intervals = [%[3]s]
backfill_limit = %[4]d
[database]
path = %[5]q
`, ln.Addr(), *budget, quoteList(*intervals), *limit, filepath.Join(dir, "k.db")), 0o644); err != nil {
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

	x.mu.Lock()
	defer x.mu.Unlock()
	perReq := binance.KlinesWeight(*limit)
	want := *symbols * len(strings.Split(*intervals, ",")) * perReq
	allowed := time.Duration(float64(want) / float64(*budget) * float64(time.Minute))
	fmt.Fprintf(stdout, "%d symbols × %d intervals × %d klines: %d kline requests, weight %d (%d per request), %d answered 429\n",
		*symbols, len(strings.Split(*intervals, ",")), *limit, x.requests, x.weight, perReq, x.refused)
	fmt.Fprintf(stdout, "took %s; the budget of %d/min allows the klines' weight in %s: %.1f %% of that\n",
		took.Round(100*time.Millisecond), *budget, allowed.Round(100*time.Millisecond), 100*took.Seconds()/allowed.Seconds())
	return nil
}

// klineExchange serves exchangeInfo and synthetic klines, counting weight.
type klineExchange struct {
	symbols []string
	budget  int

	mu       sync.Mutex
	used     map[int64]int // weight by wall-clock minute
	requests int
	weight   int
	refused  int
}

func (x *klineExchange) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/fapi/v1/time", func(w http.ResponseWriter, r *http.Request) {
		if x.spend(w, 1) {
			fmt.Fprintf(w, `{"serverTime":%d}`, time.Now().UnixMilli())
		}
	})
	mux.HandleFunc("/fapi/v1/exchangeInfo", func(w http.ResponseWriter, r *http.Request) {
		if x.spend(w, 1) {
			writeExchangeInfo(w, x.symbols)
		}
	})
	mux.HandleFunc("/fapi/v1/klines", x.klines)
	return mux
}

// spend charges weight to the current minute, or answers 429 if the
// minute's budget is spent.
func (x *klineExchange) spend(w http.ResponseWriter, weight int) bool {
	now := time.Now()
	minute := now.Unix() / 60
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.used[minute]+weight > x.budget {
		x.refused++
		w.Header().Set("Retry-After", strconv.Itoa(int(60-now.Unix()%60)))
		w.WriteHeader(http.StatusTooManyRequests)
		io.WriteString(w, `{"code":-1003,"msg":"Too many requests."}`)
		return false
	}
	x.used[minute] += weight
	w.Header().Set("X-MBX-USED-WEIGHT-1M", strconv.Itoa(x.used[minute]))
	return true
}

// klines answers like Binance: from startTime forward, or the last limit
// klines up to endTime (or now), the open one included.
func (x *klineExchange) klines(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	iv, err := kline.ParseInterval(q.Get("interval"))
	if err != nil {
		http.Error(w, `{"code":-1120,"msg":"Invalid interval."}`, http.StatusBadRequest)
		return
	}
	limit := 500
	if v := q.Get("limit"); v != "" {
		limit, _ = strconv.Atoi(v)
	}
	limit = max(1, min(limit, 1500))
	if !x.spend(w, binance.KlinesWeight(limit)) {
		return
	}
	x.mu.Lock()
	x.requests++
	x.weight += binance.KlinesWeight(limit)
	x.mu.Unlock()
	now := time.Now().UnixMilli()
	end := now
	if v := q.Get("endTime"); v != "" {
		end, _ = strconv.ParseInt(v, 10, 64)
	}
	var open int64
	if v := q.Get("startTime"); v != "" {
		start, _ := strconv.ParseInt(v, 10, 64)
		open = iv.Open(start)
		if open < start {
			open = iv.Next(open)
		}
	} else {
		open = iv.Open(min(end, now))
		for range limit - 1 {
			open = iv.Prev(open)
		}
	}
	prec := kline.Precision{Price: 2, Qty: 3}
	b := []byte{'['}
	for n := 0; n < limit && open <= min(end, now); n, open = n+1, iv.Next(open) {
		if n > 0 {
			b = append(b, ',')
		}
		p := 10_000 + open/60_000%997 // cents, varying by time
		k := kline.Kline{OpenTime: open, CloseTime: iv.CloseTime(open), Trades: 10,
			Open: p * decimal.Unit / 100, High: (p + 5) * decimal.Unit / 100, Low: (p - 5) * decimal.Unit / 100, Close: (p + 1) * decimal.Unit / 100,
			Volume: decimal.FromInt64(decimal.Unit), QuoteVolume: decimal.Mul(p*decimal.Unit/100, decimal.Unit),
			TakerVolume: decimal.FromInt64(0), TakerQuoteVolume: decimal.FromInt64(0), FirstTradeID: open / 1000, LastTradeID: open/1000 + 9}
		b = binance.AppendKlineArray(b, &k, prec)
	}
	w.Write(append(b, ']'))
}
