package sqlite

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/klagg/klagg/internal/decimal"
	"github.com/klagg/klagg/internal/kline"
	"github.com/klagg/klagg/internal/store"
)

func testKline(open int64, i int64) kline.Kline {
	return kline.Kline{
		OpenTime: open, CloseTime: open + 59_999,
		Open: 100*decimal.Unit + i, High: 101 * decimal.Unit, Low: 99 * decimal.Unit, Close: 100 * decimal.Unit,
		Volume:      decimal.FromInt64(5 * decimal.Unit),
		QuoteVolume: decimal.U128{Hi: 7, Lo: 12345}, // past int64: exact in TEXT
		TakerVolume: decimal.FromInt64(2), TakerQuoteVolume: decimal.FromInt64(3),
		Trades: i, FirstTradeID: i * 10, LastTradeID: i*10 + 9, Closed: i%2 == 0,
	}
}

func open(t testing.TB) *Store {
	t.Helper()
	s, err := Open(filepath.Join(t.TempDir(), "sub", "klagg.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestUpsertAndQuery(t *testing.T) {
	s := open(t)
	iv := kline.OneMinute()
	var ups []kline.Update
	for i := int64(0); i < 100; i++ {
		ups = append(ups, kline.Update{Symbol: "BTCUSDT", Interval: iv, Kline: testKline(i*60_000, i)})
	}
	if err := s.Upsert(ups); err != nil {
		t.Fatal(err)
	}
	// Idempotent, later wins.
	ups[5].Trades = 555
	if err := s.Upsert(ups[5:6]); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	all, err := s.Klines(ctx, store.Query{Symbol: "BTCUSDT", Interval: iv})
	if err != nil || len(all) != 100 {
		t.Fatalf("got %d klines, %v", len(all), err)
	}
	if all[5] != ups[5].Kline || all[7] != ups[7].Kline {
		t.Fatalf("round trip:\n%+v\n%+v", all[5], ups[5].Kline)
	}
	rng, _ := s.Klines(ctx, store.Query{Symbol: "BTCUSDT", Interval: iv, Start: 10 * 60_000, End: 20 * 60_000, Limit: 5})
	if len(rng) != 5 || rng[0].OpenTime != 10*60_000 {
		t.Fatalf("range: %d from %d", len(rng), rng[0].OpenTime)
	}
	tail, _ := s.Klines(ctx, store.Query{Symbol: "BTCUSDT", Interval: iv, Limit: 3, FromEnd: true})
	if len(tail) != 3 || tail[2].OpenTime != 99*60_000 || tail[0].OpenTime != 97*60_000 {
		t.Fatalf("newest 3: %+v", tail)
	}
	last, ok, err := s.Last(ctx, "BTCUSDT", iv)
	if err != nil || !ok || last.OpenTime != 99*60_000 {
		t.Fatalf("last: %v %v %v", last.OpenTime, ok, err)
	}
	if _, ok, _ := s.Last(ctx, "ETHUSDT", iv); ok {
		t.Fatal("last of unknown symbol")
	}
}

func TestReopenKeepsDataAndSchema(t *testing.T) {
	path := filepath.Join(t.TempDir(), "k.db")
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	sym := store.Symbol{Name: "BTCUSDT", Status: "TRADING", BaseAsset: "BTC", QuoteAsset: "USDT", ContractType: "PERPETUAL", PricePrecision: 2,
		QuantityPrecision: 3, OnboardDate: 1569398400000, Pair: "BTCUSDT", Info: []byte(`{"symbol":"BTCUSDT","filters":[]}`)}
	if err := s.PutSymbols([]store.Symbol{sym}); err != nil {
		t.Fatal(err)
	}
	// A later record without the exchange's object keeps the stored one.
	if err := s.PutSymbols([]store.Symbol{{Name: "BTCUSDT", Status: "TRADING", BaseAsset: "BTC", QuoteAsset: "USDT", ContractType: "PERPETUAL",
		PricePrecision: 2, QuantityPrecision: 3, OnboardDate: 1569398400000, Pair: "BTCUSDT"}}); err != nil {
		t.Fatal(err)
	}
	limits := map[string][]byte{store.RateLimits: []byte(`[{"rateLimitType":"REQUEST_WEIGHT","limit":2400}]`)}
	if err := s.PutExchange(limits); err != nil {
		t.Fatal(err)
	}
	if err := s.Upsert([]kline.Update{{Symbol: "BTCUSDT", Interval: kline.OneMinute(), Kline: testKline(0, 1)}}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s, err = Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	syms, err := s.Symbols(context.Background())
	if err != nil || len(syms) != 1 || !reflect.DeepEqual(syms[0], sym) {
		t.Fatalf("symbols after reopen: %+v %v", syms, err)
	}
	if got, err := s.Exchange(context.Background()); err != nil || !reflect.DeepEqual(got, limits) {
		t.Fatalf("exchange lists after reopen: %q %v", got, err)
	}
	series, _ := s.Series(context.Background())
	if series[[2]string{"BTCUSDT", "1m"}] != 1 {
		t.Fatalf("series after reopen: %v", series)
	}
}

// fakeSource hands out updates published to it, like the engine's Coalescer.
type fakeSource struct {
	ch     chan []kline.Update
	ready  chan struct{}
	drains atomic.Int64
}

func (f *fakeSource) Ready() <-chan struct{} { return f.ready }
func (f *fakeSource) Drain(dst []kline.Update) []kline.Update {
	f.drains.Add(1)
	for {
		select {
		case us := <-f.ch:
			dst = append(dst, us...)
		default:
			return dst
		}
	}
}

func TestWriterFlushesOnStop(t *testing.T) {
	s := open(t)
	src := &fakeSource{ch: make(chan []kline.Update, 10)}
	w := store.NewWriter(s, src, 0, nil, slog.New(slog.DiscardHandler))
	for i := int64(0); i < 5; i++ {
		src.ch <- []kline.Update{{Symbol: "A", Interval: kline.OneMinute(), Kline: testKline(i*60_000, i)}}
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // stop at once: everything pending must still be written
	if err := w.Run(ctx); err != nil {
		t.Fatal(err)
	}
	if w.Written() != 5 {
		t.Fatalf("written %d, want 5", w.Written())
	}
	ks, _ := s.Klines(context.Background(), store.Query{Symbol: "A", Interval: kline.OneMinute()})
	if len(ks) != 5 {
		t.Fatalf("stored %d", len(ks))
	}
}

func TestWriterWritesAtMostOncePerInterval(t *testing.T) {
	s := open(t)
	src := &fakeSource{ch: make(chan []kline.Update, 10), ready: make(chan struct{})}
	w := store.NewWriter(s, src, time.Hour, nil, slog.New(slog.DiscardHandler))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	src.ch <- []kline.Update{{Symbol: "A", Interval: kline.OneMinute(), Kline: testKline(0, 1)}}
	src.ready <- struct{}{} // the first write goes at once
	src.ch <- []kline.Update{{Symbol: "A", Interval: kline.OneMinute(), Kline: testKline(60_000, 2)}}
	src.ready <- struct{}{} // within the hour: waits
	src.ready <- struct{}{} // taken only once the writer handled the one before
	if n := src.drains.Load(); n != 1 {
		t.Fatalf("drained %d times within the interval, want 1", n)
	}
	cancel() // stopping writes what waits
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if w.Written() != 2 {
		t.Fatalf("written %d, want 2", w.Written())
	}
}

func TestNewerSchemaRefused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "k.db")
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	s.wmu.Lock()
	err = execScript(s, "PRAGMA user_version=99")
	s.wmu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	if _, err := Open(path); err == nil {
		t.Fatal("opened a database from a newer klagg")
	}
}

// BenchmarkUpsert measures kline upserts per second in batches of 5,000
// spread over 100 symbols, half of them inserts and half updates.
func BenchmarkUpsert(b *testing.B) {
	s := open(b)
	iv := kline.OneMinute()
	batch := make([]kline.Update, 5000)
	names := make([]string, 100)
	for i := range names {
		names[i] = fmt.Sprintf("S%03dUSDT", i)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for j := range batch {
			n := int64(i*len(batch)/2 + j)
			batch[j] = kline.Update{Symbol: names[j%100], Interval: iv, Kline: testKline(n*60_000, n)}
		}
		if err := s.Upsert(batch); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N*len(batch))/b.Elapsed().Seconds(), "upserts/s")
}

// BenchmarkUpsertLive is the service's pattern: the open klines of 1,000
// symbols × 7 intervals rewritten batch after batch, with a new kline
// opening for 1m every tenth batch.
func BenchmarkUpsertLive(b *testing.B) {
	s := open(b)
	ivs, _ := kline.ParseIntervals("1m,5m,30m,1h,4h,1d,1w")
	var batch []kline.Update
	for sym := range 1000 {
		for _, iv := range ivs {
			batch = append(batch, kline.Update{Symbol: fmt.Sprintf("S%04dUSDT", sym), Interval: iv, Kline: testKline(0, int64(sym))})
		}
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for j := range batch {
			batch[j].Trades++
			if i%10 == 0 && batch[j].Interval.String() == "1m" {
				batch[j].OpenTime += 60_000
			}
		}
		if err := s.Upsert(batch); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N*len(batch))/b.Elapsed().Seconds(), "upserts/s")
}

// TestWriterTakesBackfillPages: pages written through Write go through the
// one writer, with the engine's updates, and are flushed on stop; each
// page's writer is told once it is stored.
func TestWriterTakesBackfillPages(t *testing.T) {
	s := open(t)
	src := &fakeSource{ch: make(chan []kline.Update, 10), ready: make(chan struct{})}
	w := store.NewWriter(s, src, time.Hour, nil, slog.New(slog.DiscardHandler))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	var told atomic.Int64
	for i := int64(0); i < 3; i++ {
		page := []kline.Update{{Symbol: "B", Interval: kline.OneMinute(), Kline: testKline(i*60_000, i)}}
		if err := w.Write(context.Background(), page, func() { told.Add(1) }); err != nil {
			t.Fatal(err)
		}
	}
	// A page a client waits for is written at once, not in an hour, and
	// the pages queued before it with it.
	now := []kline.Update{{Symbol: "C", Interval: kline.OneMinute(), Kline: testKline(0, 1)}}
	if err := w.WriteNow(context.Background(), now); err != nil {
		t.Fatal(err)
	}
	if ks, _ := s.Klines(context.Background(), store.Query{Symbol: "C", Interval: kline.OneMinute()}); len(ks) != 1 || told.Load() != 3 {
		t.Fatalf("after WriteNow: %d klines of C stored, %d pages told stored; want 1 and 3", len(ks), told.Load())
	}
	src.ch <- []kline.Update{{Symbol: "A", Interval: kline.OneMinute(), Kline: testKline(0, 1)}}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	for sym, want := range map[string]int{"A": 1, "B": 3} {
		ks, _ := s.Klines(context.Background(), store.Query{Symbol: sym, Interval: kline.OneMinute()})
		if len(ks) != want {
			t.Errorf("%s: stored %d, want %d", sym, len(ks), want)
		}
	}
}

// TestWriterIsolatesAFailingSymbol: a symbol whose rows cannot be written
// (here a trigger refuses them, as a damaged page would) does not stop the
// writes of the others; its rows are kept and retried.
func TestWriterIsolatesAFailingSymbol(t *testing.T) {
	s := open(t)
	if err := execScript(s, `CREATE TRIGGER damaged BEFORE INSERT ON klines WHEN NEW.symbol = 'BAD' BEGIN SELECT RAISE(ABORT, 'damaged page'); END;`); err != nil {
		t.Fatal(err)
	}
	src := &fakeSource{ch: make(chan []kline.Update, 10)}
	w := store.NewWriter(s, src, 0, nil, slog.New(slog.DiscardHandler))
	src.ch <- []kline.Update{
		{Symbol: "A", Interval: kline.OneMinute(), Kline: testKline(0, 1)},
		{Symbol: "BAD", Interval: kline.OneMinute(), Kline: testKline(0, 1)},
		{Symbol: "C", Interval: kline.OneMinute(), Kline: testKline(0, 1)},
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := w.Run(ctx); err == nil {
		t.Error("the failing symbol's rows were not reported")
	}
	for sym, want := range map[string]int{"A": 1, "C": 1, "BAD": 0} {
		ks, _ := s.Klines(context.Background(), store.Query{Symbol: sym, Interval: kline.OneMinute()})
		if len(ks) != want {
			t.Errorf("%s: stored %d, want %d", sym, len(ks), want)
		}
	}
}

// TestWriterConfirmsOnlyWhatIsStored: while writes fail, the writer says
// so and confirms nothing, so readers keep the klines the store has not
// taken; once a write succeeds it confirms them and the error clears.
func TestWriterConfirmsOnlyWhatIsStored(t *testing.T) {
	s := open(t)
	if err := execScript(s, `CREATE TRIGGER full BEFORE INSERT ON klines BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END;`); err != nil {
		t.Fatal(err)
	}
	src := &fakeSource{ch: make(chan []kline.Update, 10), ready: make(chan struct{}, 1)}
	var mu sync.Mutex
	var confirmed []kline.Update
	stored := func(us []kline.Update) {
		mu.Lock()
		confirmed = append(confirmed, us...)
		mu.Unlock()
	}
	nConfirmed := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(confirmed)
	}
	w := store.NewWriter(s, src, 0, stored, slog.New(slog.DiscardHandler))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	defer func() { cancel(); <-done }()
	src.ch <- []kline.Update{
		{Symbol: "A", Interval: kline.OneMinute(), Kline: testKline(60_000, 2)},
		{Symbol: "A", Interval: kline.OneMinute(), Kline: testKline(0, 1)},
	}
	src.ready <- struct{}{}
	until(t, "the writer reports the failure", func() bool { return w.Failing() != nil })
	if err := w.Failing(); !strings.Contains(err.Error(), "disk is full") {
		t.Fatalf("Failing() = %v", err)
	}
	if n := nConfirmed(); n != 0 {
		t.Fatalf("%d klines confirmed while every write fails", n)
	}
	if err := execScript(s, `DROP TRIGGER full;`); err != nil {
		t.Fatal(err)
	}
	until(t, "the retry succeeds", func() bool { return w.Failing() == nil })
	if n := nConfirmed(); n != 2 {
		t.Fatalf("%d klines confirmed after a good write, want 2", n)
	}
	if ks, _ := s.Klines(context.Background(), store.Query{Symbol: "A", Interval: kline.OneMinute()}); len(ks) != 2 {
		t.Fatalf("stored %d klines after the retry", len(ks))
	}
}

// until waits for cond, which another goroutine makes true, for at most
// ten seconds.
func until(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); runtime.Gosched() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
	}
}

// TestCheckNoticesTheFileGone: the database file deleted or replaced
// under a running klagg is noticed, with what to do.
func TestCheckNoticesTheFileGone(t *testing.T) {
	path := filepath.Join(t.TempDir(), "k.db")
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.Check(); err != nil {
		t.Fatalf("a fresh store: %v", err)
	}
	if err := os.Rename(path, path+".old"); err != nil {
		t.Fatal(err)
	}
	if err := s.Check(); err == nil || !strings.Contains(err.Error(), "deleted") || !strings.Contains(err.Error(), "restart klagg") {
		t.Errorf("file moved away: %v", err)
	}
	if err := os.WriteFile(path, []byte("another"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := s.Check(); err == nil || !strings.Contains(err.Error(), "replaced") {
		t.Errorf("file replaced: %v", err)
	}
}
