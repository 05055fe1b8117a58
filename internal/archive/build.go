package archive

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"

	"github.com/klagg/klagg/internal/kline"
)

// Output receives the klines Build makes for one symbol and interval,
// oldest first. Klines not fully covered by the input files' dates have
// Closed false.
type Output interface {
	WriteKlines(symbol string, iv kline.Interval, p kline.Precision, ks []kline.Kline) error
}

// BuildConfig configures Build.
type BuildConfig struct {
	Files     []string
	Intervals []kline.Interval
	// Precision overrides the formatting precision; when nil it is inferred
	// per symbol from the most decimals seen in the input.
	Precision *kline.Precision
	// Progress, if set, is called as input bytes are consumed.
	Progress func(done, total int64)
	Log      *slog.Logger
}

// BuildStats summarize a build.
type BuildStats struct {
	Files, Symbols int
	Rows           int64
	Duplicates     int64
	Klines         map[string]int // fully covered klines, by interval
	Partial        map[string]int // klines the input covers only in part, by interval
}

// Build reads aggTrades archives, groups them by symbol, and hands every
// symbol's klines of every interval to out. Rows may come in any order and
// repeat: klines are aggregated by aggregate id, not by row order.
func Build(ctx context.Context, cfg BuildConfig, out Output) (BuildStats, error) {
	st := BuildStats{Klines: map[string]int{}, Partial: map[string]int{}}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	bySym := map[string][]TradeFile{}
	var total int64
	for _, p := range cfg.Files {
		tf, err := ParseTradeFileName(p)
		if err != nil {
			return st, err
		}
		fi, err := os.Stat(p)
		if err != nil {
			return st, fmt.Errorf("input %w", err)
		}
		total += fi.Size()
		bySym[tf.Symbol] = append(bySym[tf.Symbol], tf)
	}
	syms := make([]string, 0, len(bySym))
	for s := range bySym {
		syms = append(syms, s)
	}
	sort.Strings(syms)
	var done int64
	for _, sym := range syms {
		files := bySym[sym]
		series, _ := kline.NewSeries(kline.OneMinute())
		var ts TradeStats
		for _, tf := range files {
			if err := ctx.Err(); err != nil {
				return st, err
			}
			if err := readFile(tf.Path, &ts, series, func(n int64) {
				done += n
				if cfg.Progress != nil {
					cfg.Progress(done, total)
				}
			}); err != nil {
				return st, fmt.Errorf("%s: %w", tf.Path, err)
			}
			st.Files++
		}
		st.Symbols++
		st.Rows += ts.Rows
		st.Duplicates += int64(series.Duplicates())
		prec := kline.Precision{Price: ts.PriceDec, Qty: ts.QtyDec}
		if cfg.Precision != nil {
			prec = *cfg.Precision
		}
		cov := coverage(files)
		base := extend(series.Klines(), cov)
		for _, iv := range cfg.Intervals {
			ks := base
			if iv.String() != "1m" {
				ks = kline.Rollup(iv, base)
			}
			for i := range ks {
				ks[i].Closed = cov.covers(ks[i].OpenTime, ks[i].CloseTime)
				if ks[i].Closed {
					st.Klines[iv.String()]++
				} else {
					st.Partial[iv.String()]++
				}
			}
			if err := out.WriteKlines(sym, iv, prec, ks); err != nil {
				return st, err
			}
		}
		log.Info("built klines", "symbol", sym, "rows", ts.Rows, "duplicates", series.Duplicates(),
			"price_decimals", prec.Price, "qty_decimals", prec.Qty)
	}
	return st, nil
}

func readFile(path string, ts *TradeStats, series *kline.Series, progress func(int64)) error {
	rc, _, err := OpenCSV(path)
	if err != nil {
		return err
	}
	defer rc.Close()
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	// Progress is in bytes of the files as the user sees them, so a zip
	// counts once it is read; a CSV counts as it is read.
	cr := &countingReader{r: rc, report: progress, quiet: filepath.Ext(path) == ".zip"}
	err = ReadTrades(cr, ts, func(t *kline.Trade) error {
		series.Add(t)
		return nil
	})
	cr.finish(fi.Size())
	return err
}

type countingReader struct {
	r       io.Reader
	report  func(int64)
	n       int64
	pending int64
	quiet   bool
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if !c.quiet {
		c.pending += int64(n)
		if c.pending >= 1<<20 {
			c.report(c.pending)
			c.n += c.pending
			c.pending = 0
		}
	}
	return n, err
}

// finish reports whatever of the file's size was not reported yet.
func (c *countingReader) finish(size int64) {
	if rest := size - c.n; rest > 0 {
		c.report(rest)
	}
}

// span is a union of [from, to) ms ranges, sorted and merged.
type span [][2]int64

func coverage(files []TradeFile) span {
	var s span
	for _, f := range files {
		if f.To > f.From {
			s = append(s, [2]int64{f.From, f.To})
		}
	}
	sort.Slice(s, func(i, j int) bool { return s[i][0] < s[j][0] })
	var out span
	for _, r := range s {
		if n := len(out); n > 0 && r[0] <= out[n-1][1] {
			out[n-1][1] = max(out[n-1][1], r[1])
			continue
		}
		out = append(out, r)
	}
	return out
}

// covers reports whether [open, close] lies inside one covered range.
func (s span) covers(open, close int64) bool {
	for _, r := range s {
		if open >= r[0] && close < r[1] {
			return true
		}
	}
	return false
}

// extend appends empty klines after the last traded one up to the end of the
// covered range it falls in: minutes without trades at the end of a day are
// still klines.
func extend(ks []kline.Kline, cov span) []kline.Kline {
	if len(ks) == 0 {
		return ks
	}
	iv := kline.OneMinute()
	last := ks[len(ks)-1]
	for _, r := range cov {
		if last.OpenTime >= r[0] && last.OpenTime < r[1] {
			for open := iv.Next(last.OpenTime); open < r[1]; open = iv.Next(open) {
				ks = append(ks, kline.Empty(iv, open, last.Close))
			}
		}
	}
	return ks
}

// CSVDir is an Output that writes one archive-layout CSV per symbol and
// interval, DIR/<SYMBOL>-<interval>.csv, holding only fully covered klines.
// Each file is written to a temporary name and renamed, so a file that
// exists is complete.
type CSVDir struct {
	Dir string
}

// WriteKlines implements Output.
func (d CSVDir) WriteKlines(symbol string, iv kline.Interval, p kline.Precision, ks []kline.Kline) error {
	if err := os.MkdirAll(d.Dir, 0o755); err != nil {
		return fmt.Errorf("create output folder: %w", err)
	}
	path := filepath.Join(d.Dir, symbol+"-"+iv.String()+".csv")
	tmp, err := os.CreateTemp(d.Dir, ".klagg-*.csv")
	if err != nil {
		return fmt.Errorf("create output file: %w", err)
	}
	defer os.Remove(tmp.Name())
	buf := make([]byte, 0, 1<<16)
	buf = append(buf, KlineHeader...)
	buf = append(buf, '\n')
	for i := range ks {
		if !ks[i].Closed {
			continue
		}
		buf = AppendKlineCSV(buf, &ks[i], p)
		if len(buf) > 1<<16-512 {
			if _, err := tmp.Write(buf); err != nil {
				tmp.Close()
				return fmt.Errorf("write %s: %w", path, err)
			}
			buf = buf[:0]
		}
	}
	if _, err := tmp.Write(buf); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return os.Rename(tmp.Name(), path)
}
