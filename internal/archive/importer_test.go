package archive_test

import (
	"context"
	"fmt"
	"net/http/httptest"
	"path/filepath"
	"testing"
	"time"

	"github.com/klagg/klagg/internal/archive"
	"github.com/klagg/klagg/internal/coverage"
	"github.com/klagg/klagg/internal/decimal"
	"github.com/klagg/klagg/internal/fakex"
	"github.com/klagg/klagg/internal/kline"
	"github.com/klagg/klagg/internal/store"
	"github.com/klagg/klagg/internal/store/sqlite"
	"github.com/klagg/klagg/internal/store/storetest"
	"github.com/klagg/klagg/internal/synth"
)

// minutes returns the archive's 1m klines of [from, to).
func minutes(from, to time.Time) []kline.Kline {
	var ks []kline.Kline
	for t := from.UnixMilli(); t < to.UnixMilli(); t += 60_000 {
		k := storetest.Kline(t, t/60_000%97)
		k.Closed, k.FirstTradeID, k.LastTradeID = true, -1, -1
		ks = append(ks, k)
	}
	return ks
}

// TestImport: a month from its monthly file, the day that file lacks from
// its daily file, the days after from theirs; everything stored and held;
// again, nothing read but the checksums; a file re-uploaded with a new
// checksum read again; a corrupt one counted and left.
func TestImport(t *testing.T) {
	day := func(s string) time.Time { d, _ := time.Parse(time.DateOnly, s); return d }
	jan, feb := day("2026-01-01"), day("2026-02-01")
	files := map[string][]byte{}
	put := func(key string, ks []kline.Kline) {
		data := klinesZip(t, filepath.Base(key), ks, true)
		files[key] = data
		files[key+".CHECKSUM"] = checksum(data, filepath.Base(key), true)
	}
	monthly, daily := archive.KlinesPrefix("BTCUSDT", "1m", true), archive.KlinesPrefix("BTCUSDT", "1m", false)
	janKs := minutes(jan, feb)
	lost := day("2026-01-15")
	var withoutDay []kline.Kline
	for _, k := range janKs {
		if k.OpenTime < lost.UnixMilli() || k.OpenTime >= lost.AddDate(0, 0, 1).UnixMilli() {
			withoutDay = append(withoutDay, k)
		}
	}
	put(monthly+"BTCUSDT-1m-2026-01.zip", withoutDay)
	put(daily+"BTCUSDT-1m-2026-01-15.zip", minutes(lost, lost.AddDate(0, 0, 1)))
	for d := feb; d.Before(day("2026-02-04")); d = d.AddDate(0, 0, 1) {
		put(daily+fmt.Sprintf("BTCUSDT-1m-%s.zip", d.Format(time.DateOnly)), minutes(d, d.AddDate(0, 0, 1)))
	}
	b := serveBucket(t, files)
	st := openStore(t)
	one := kline.OneMinute()
	held := coverage.New(coverage.Config{Store: st, Intervals: []kline.Interval{one}, Depth: 10})
	ctx := context.Background()
	cfg := archive.ImportConfig{Symbols: []string{"BTCUSDT"}, Since: jan, Until: day("2026-02-04")}
	p, err := archive.Import(ctx, b, st, held, cfg)
	wantKlines := int64(len(janKs) + 3*1440)
	if err != nil || p.Files != 5 || p.Done != 5 || p.Klines != wantKlines || p.Corrupt != 0 || p.Uncovered != 0 {
		t.Fatalf("import: %+v %v; want 5 files, %d klines", p, err, wantKlines)
	}
	if gaps := held.Missing("BTCUSDT", one, jan.UnixMilli(), day("2026-02-04").UnixMilli()-60_000); len(gaps) != 0 {
		t.Errorf("missing after the import: %v", gaps)
	}
	got, err := st.Klines(ctx, store.Query{Symbol: "BTCUSDT", Interval: one, Start: lost.UnixMilli(), Limit: 1500})
	if err != nil || len(got) != 1500 || got[0] != janKs[14*1440] {
		t.Fatalf("the lost day's klines: %d %v", len(got), err)
	}

	// Again: every file is in the ledger with its checksum.
	p, err = archive.Import(ctx, b, st, held, cfg)
	if err != nil || p.Skipped != 4 || p.Klines != 0 || p.Bytes != 0 {
		t.Errorf("import again: %+v %v; want all 4 planned files skipped", p, err)
	}
	// A day re-uploaded with a new checksum, and one corrupt.
	fixed := minutes(feb, feb.AddDate(0, 0, 1))
	fixed[7].Trades++
	put(daily+"BTCUSDT-1m-2026-02-01.zip", fixed)
	// Re-uploaded too, and half: its bytes do not match its new checksum.
	files[daily+"BTCUSDT-1m-2026-02-02.zip.CHECKSUM"] = checksum([]byte("whole"), "BTCUSDT-1m-2026-02-02.zip", false)
	p, err = archive.Import(ctx, b, st, held, cfg)
	if err != nil || p.Skipped != 2 || p.Klines != 1440 || p.Corrupt != 1 {
		t.Errorf("import of a re-upload: %+v %v; want 1 day read again, 1 corrupt", p, err)
	}
	got, err = st.Klines(ctx, store.Query{Symbol: "BTCUSDT", Interval: one, Start: fixed[7].OpenTime, Limit: 1})
	if err != nil || len(got) != 1 || got[0].Trades != fixed[7].Trades {
		t.Errorf("the re-uploaded kline: %+v %v", got, err)
	}
}

// TestImportDerives: the longer intervals are derived from the 1m klines
// imported, within each file and across files (3d, 1w), and equal the
// klines the exchange builds from the same trades, minutes without a
// trade included (the market is slow and has quiet stretches, so many
// hours open with empty minutes).
func TestImportDerives(t *testing.T) {
	day := func(s string) time.Time { d, _ := time.Parse(time.DateOnly, s); return d }
	since, until := day("2025-12-01"), day("2026-01-13")
	m := synth.Market{Symbol: "BTCUSDT", Seed: 3, Start: since.UnixMilli() - 60_000, Price: 100_000 * decimal.Unit,
		Precision: kline.Precision{Price: 2, Qty: 3}, MeanGapMs: 4000, QuietEvery: 40, FirstID: 1}
	s := synth.NewStream(m)
	var trades []kline.Trade
	for t := s.Next(); t.Time < until.UnixMilli(); t = s.Next() {
		trades = append(trades, t)
	}
	one := kline.OneMinute()
	files := map[string][]byte{}
	put := func(key string, from, to time.Time) {
		ks := fakex.Reference(trades, one, from.UnixMilli(), to.UnixMilli()-1)
		data := klinesZip(t, filepath.Base(key), ks, true)
		files[key] = data
		files[key+".CHECKSUM"] = checksum(data, filepath.Base(key), true)
	}
	put(archive.KlinesPrefix("BTCUSDT", "1m", true)+"BTCUSDT-1m-2025-12.zip", since, day("2026-01-01"))
	for d := day("2026-01-01"); d.Before(until); d = d.AddDate(0, 0, 1) {
		put(archive.KlinesPrefix("BTCUSDT", "1m", false)+fmt.Sprintf("BTCUSDT-1m-%s.zip", d.Format(time.DateOnly)), d, d.AddDate(0, 0, 1))
	}
	b := serveBucket(t, files)
	st := openStore(t)
	ivs := kline.BinanceIntervals()
	held := coverage.New(coverage.Config{Store: st, Intervals: ivs, Depth: 10})
	ctx := context.Background()
	p, err := archive.Import(ctx, b, st, held, archive.ImportConfig{Symbols: []string{"BTCUSDT"}, Since: since, Until: until, Intervals: ivs})
	if err != nil || p.Corrupt != 0 || p.Derived == 0 {
		t.Fatalf("import: %+v %v", p, err)
	}
	for _, iv := range ivs {
		// Every kline whose minutes the range holds.
		lo := iv.Open(since.UnixMilli())
		if lo < since.UnixMilli() {
			lo = iv.Next(lo)
		}
		hi := iv.Prev(iv.Open(until.UnixMilli()))
		want := fakex.Reference(trades, iv, lo, hi)
		if len(want) == 0 {
			t.Fatalf("%s: no reference klines in [%s, %s]", iv, ms(lo), ms(hi))
		}
		if gaps := held.Missing("BTCUSDT", iv, lo, hi); len(gaps) != 0 {
			t.Errorf("%s: not held: %v", iv, gaps)
		}
		got, err := st.Klines(ctx, store.Query{Symbol: "BTCUSDT", Interval: iv, Start: lo, End: hi})
		if err != nil || len(got) != len(want) {
			t.Fatalf("%s: %d klines stored in [%s, %s], the exchange has %d (%v)", iv, len(got), ms(lo), ms(hi), len(want), err)
		}
		for i := range want {
			g, w := got[i], want[i]
			if g.OpenTime != w.OpenTime || g.CloseTime != w.CloseTime || g.Open != w.Open || g.High != w.High || g.Low != w.Low || g.Close != w.Close ||
				g.Volume != w.Volume || g.QuoteVolume != w.QuoteVolume || g.Trades != w.Trades || g.TakerVolume != w.TakerVolume ||
				g.TakerQuoteVolume != w.TakerQuoteVolume || !g.Closed {
				t.Fatalf("%s kline at %s: %+v, the exchange's %+v", iv, ms(w.OpenTime), g, w)
			}
		}
		t.Logf("%s: %d klines equal the exchange's", iv, len(want))
	}
}

func ms(t int64) string { return time.UnixMilli(t).UTC().Format("2006-01-02 15:04") }

// serveBucket serves files as the archive's bucket, for the test's time.
func serveBucket(t testing.TB, files map[string][]byte) *archive.Bucket {
	t.Helper()
	srv := httptest.NewServer(&fakeBucket{files: files, page: 1000})
	t.Cleanup(srv.Close)
	b, err := archive.OpenBucket(srv.URL, srv.Client())
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// openStore opens a fresh SQLite store, for the test's time.
func openStore(t testing.TB) *sqlite.Store {
	t.Helper()
	st, err := sqlite.Open(filepath.Join(t.TempDir(), "k.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}
