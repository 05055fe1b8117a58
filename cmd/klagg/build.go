package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"

	"github.com/klagg/klagg/internal/archive"
	"github.com/klagg/klagg/internal/kline"
	"github.com/klagg/klagg/internal/store/sqlite"
)

const buildArgs = "[-intervals 1m,5m,...] (-out DIR | -db PATH) FILE..."

func runBuild(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "build", buildArgs)
	intervals := fs.String("intervals", "1m,5m,30m,1h,4h,1d,1w", "comma-separated intervals to build")
	out := fs.String("out", "", "write DIR/<SYMBOL>-<interval>.csv files in Binance's kline archive layout")
	db := fs.String("db", "", "write into the SQLite store at PATH")
	pp := fs.Int("price-precision", -1, "decimals for prices (default: the most seen in the input)")
	qp := fs.Int("qty-precision", -1, "decimals for quantities (default: the most seen in the input)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if (*out == "") == (*db == "") {
		fmt.Fprintln(e.stderr, "klagg build: give exactly one of -out DIR or -db PATH")
		fs.Usage()
		return errUsage
	}
	if fs.NArg() == 0 {
		fmt.Fprintln(e.stderr, "klagg build: no input files; give <SYMBOL>-aggTrades-<date>.csv or .zip files")
		fs.Usage()
		return errUsage
	}
	ivs, err := kline.ParseIntervals(*intervals)
	if err != nil {
		return fmt.Errorf("-intervals: %w", err)
	}
	cfg := archive.BuildConfig{Files: fs.Args(), Intervals: ivs, Log: e.log}
	if (*pp >= 0) != (*qp >= 0) {
		return fmt.Errorf("give both -price-precision and -qty-precision, or neither")
	}
	if *pp >= 0 {
		if *pp > 8 || *qp > 8 {
			return fmt.Errorf("precisions go from 0 to 8")
		}
		cfg.Precision = &kline.Precision{Price: *pp, Qty: *qp}
	}
	var output archive.Output
	if *db != "" {
		s, err := sqlite.Open(*db)
		if err != nil {
			return err
		}
		defer s.Close()
		output = s
	} else {
		output = archive.CSVDir{Dir: *out}
	}
	if f, ok := e.stderr.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		bar := progressbar.DefaultBytes(-1, "reading trades")
		cfg.Progress = func(done, total int64) {
			bar.ChangeMax64(total)
			bar.Set64(done)
		}
		defer bar.Finish()
	}
	start := time.Now()
	st, err := archive.Build(ctx, cfg, output)
	if err != nil {
		return err
	}
	el := time.Since(start)
	fmt.Fprintf(e.stdout, "built %d symbols from %d files: %d rows (%d duplicates ignored) in %s, %.0f rows/s\n",
		st.Symbols, st.Files, st.Rows, st.Duplicates, el.Round(time.Millisecond), float64(st.Rows)/el.Seconds())
	for _, iv := range ivs {
		fmt.Fprintf(e.stdout, "  %-4s %d klines", iv, st.Klines[iv.String()])
		if n := st.Partial[iv.String()]; n > 0 {
			where := "not written to the CSV files"
			if *db != "" {
				where = "stored as open"
			}
			fmt.Fprintf(e.stdout, " (+%d only partly covered by the input dates: %s)", n, where)
		}
		fmt.Fprintln(e.stdout)
	}
	fmt.Fprintf(e.stdout, "peak memory %d MB\n", peakRSSMB())
	return nil
}
