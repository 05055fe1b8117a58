package archive_test

import (
	"context"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/klagg/klagg/internal/archive"
	"github.com/klagg/klagg/internal/coverage"
	"github.com/klagg/klagg/internal/fakex"
	"github.com/klagg/klagg/internal/kline"
	"github.com/klagg/klagg/internal/store"
	"github.com/klagg/klagg/internal/store/sqlite"
)

// TestImportFakeArchive: the fake exchange's archive, with the defects
// Binance's has (a day missing from each monthly file, files with and
// without a header, a duplicated row, a file published late, a corrupt
// one), imported for every symbol (a non-ASCII one, a TradFi one with
// daily breaks, one no longer trading among them) from their listing:
// every kline of every interval imported that klagg then holds equals
// the exchange's, built from the same trades; the late day and the
// corrupt one are not held. A symbol the archive lacks is an error.
func TestImportFakeArchive(t *testing.T) {
	start := time.Date(2026, 3, 20, 12, 0, 0, 0, time.UTC)
	x, err := fakex.New(fakex.Config{Symbols: 4, Start: start, History: 47 * 24 * time.Hour, MeanGap: time.Minute, QuietEvery: 30})
	if err != nil {
		t.Fatal(err)
	}
	defer x.Close()
	b, err := archive.OpenBucket(x.ArchiveURL(), nil)
	if err != nil {
		t.Fatal(err)
	}
	st := openStore(t)
	var syms []string
	for s := range x.Symbols() {
		syms = append(syms, s)
	}
	sort.Strings(syms)
	// A few of the intervals, each kind: within a day, a day, across
	// files (3d, 1w), a month. TestImportDerives checks every one.
	ivs, err := kline.ParseIntervals("1m,15m,4h,1d,3d,1w,1M")
	if err != nil {
		t.Fatal(err)
	}
	held := coverage.New(coverage.Config{Store: st, Intervals: ivs, Depth: 10})
	since, until := start.Add(-47*24*time.Hour), start.Truncate(24*time.Hour)
	ctx := context.Background()
	// Every symbol the archive has, from each one's listing: the day of
	// its first file.
	listed, err := archive.Symbols(ctx, b)
	if err != nil || !slices.Equal(listed, syms) {
		t.Fatalf("the archive lists %v (%v), want %v", listed, err, syms)
	}
	p, err := archive.Import(ctx, b, st, held, archive.ImportConfig{Until: until, Intervals: ivs})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := archive.Import(ctx, b, st, held, archive.ImportConfig{Symbols: []string{"NOPEUSDT"}, Until: until}); err == nil || !strings.Contains(err.Error(), "no 1m klines of NOPEUSDT") {
		t.Errorf("importing a symbol the archive lacks from its listing: %v", err)
	}
	t.Logf("import: %+v", p)
	if p.Corrupt != 1 || p.Uncovered < 1 || p.Derived == 0 {
		t.Errorf("import: %+v; want one corrupt file, the late day uncovered", p)
	}
	// The symbols the store did not know are recorded with the precisions
	// their files are written in: served under their names.
	recorded, err := st.Symbols(ctx)
	if err != nil || len(recorded) != len(syms) {
		t.Fatalf("symbols recorded: %v %v, want %d", recorded, err, len(syms))
	}
	for _, y := range recorded {
		if p := x.Precision(y.Name); y.PricePrecision != p.Price || y.QuantityPrecision != p.Qty {
			t.Errorf("%s recorded with %d and %d decimals, the exchange's %+v", y.Name, y.PricePrecision, y.QuantityPrecision, p)
		}
	}
	// The monthly files are read, and the day each lacks from its daily file.
	feb := time.Date(2026, 2, 1, 0, 0, 0, 0, time.UTC)
	ledger, err := st.Imported(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{archive.MonthlyKey(syms[0], "1m", feb), archive.DailyKey(syms[0], "1m", feb.AddDate(0, 0, 2))} {
		if _, ok := ledger[key]; !ok {
			t.Errorf("%s not imported", key)
		}
	}
	lastDay := until.AddDate(0, 0, -1)
	for _, sym := range syms {
		for _, iv := range ivs {
			ref := x.ReferenceKlines(sym, iv, since.UnixMilli(), until.UnixMilli()-1)
			stored, err := st.Klines(ctx, store.Query{Symbol: sym, Interval: iv, Start: since.UnixMilli(), End: until.UnixMilli()})
			if err != nil {
				t.Fatal(err)
			}
			byOpen := map[int64]kline.Kline{}
			for _, k := range stored {
				byOpen[k.OpenTime] = k
			}
			missing := held.Missing(sym, iv, since.UnixMilli(), until.UnixMilli())
			n := 0
			for _, w := range ref {
				if w.OpenTime < since.UnixMilli() || w.CloseTime >= until.UnixMilli() || slices.ContainsFunc(missing, func(p store.Span) bool { return w.OpenTime >= p.From && w.OpenTime <= p.To }) {
					continue
				}
				g, ok := byOpen[w.OpenTime]
				if !ok {
					t.Fatalf("%s %s at %s: held, not stored", sym, iv, ms(w.OpenTime))
				}
				if g.Open != w.Open || g.High != w.High || g.Low != w.Low || g.Close != w.Close || g.Volume != w.Volume ||
					g.QuoteVolume != w.QuoteVolume || g.Trades != w.Trades || g.TakerVolume != w.TakerVolume || g.TakerQuoteVolume != w.TakerQuoteVolume {
					t.Fatalf("%s %s at %s: %+v, the exchange's %+v", sym, iv, ms(w.OpenTime), g, w)
				}
				n++
			}
			if n == 0 && iv.Duration() <= 24*time.Hour {
				t.Errorf("%s %s: nothing held", sym, iv)
			}
		}
		// What the late and the corrupt file hold is not held: the
		// exchange's REST answers for it.
		lacking := held.Holds(sym, kline.OneMinute(), lastDay.UnixMilli(), until.UnixMilli()-60_000)
		if want := sym == syms[0] || sym == syms[1]; lacking == want {
			t.Errorf("%s: the last day held %v; want %v", sym, lacking, !want)
		}
	}
	if !strings.HasPrefix(syms[0], "S000") {
		t.Logf("symbols %v", syms)
	}
}

// BenchmarkImport imports 30 days of the fake archive for its symbols
// (five, with the archive's defects) into a fresh SQLite store, deriving
// every interval: parse, check, derive, write, over loopback HTTP.
func BenchmarkImport(b *testing.B) {
	start := time.Date(2026, 3, 20, 12, 0, 0, 0, time.UTC)
	x, err := fakex.New(fakex.Config{Symbols: 4, Start: start, History: time.Hour, Deep: 31 * 24 * time.Hour, DeepGap: 20 * time.Second})
	if err != nil {
		b.Fatal(err)
	}
	defer x.Close()
	var syms []string
	for s := range x.Symbols() {
		syms = append(syms, s)
	}
	ivs := kline.BinanceIntervals()
	until := start.Add(-9 * time.Hour).Truncate(24 * time.Hour)
	var klines int64
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		st, err := sqlite.Open(filepath.Join(b.TempDir(), "k.db"))
		if err != nil {
			b.Fatal(err)
		}
		bk, err := archive.OpenBucket(x.ArchiveURL(), nil)
		if err != nil {
			b.Fatal(err)
		}
		held := coverage.New(coverage.Config{Store: st, Intervals: ivs, Depth: 10})
		b.StartTimer()
		p, err := archive.Import(context.Background(), bk, st, held, archive.ImportConfig{Symbols: syms, Since: until.AddDate(0, 0, -30), Until: until, Intervals: ivs})
		if err != nil {
			b.Fatal(err)
		}
		klines += p.Klines
		b.StopTimer()
		st.Close()
		b.StartTimer()
	}
	b.ReportMetric(float64(klines)/b.Elapsed().Seconds(), "1m-klines/s")
}
