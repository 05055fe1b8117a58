// Package storetest is the conformance suite every klagg store passes:
// SQLite (the default) and PostgreSQL (a cluster's shared history) keep
// klines, symbols and the exchange's lists alike, to the last digit.
package storetest

import (
	"context"
	"reflect"
	"testing"

	"github.com/klagg/klagg/internal/decimal"
	"github.com/klagg/klagg/internal/kline"
	"github.com/klagg/klagg/internal/store"
)

// Store is what the suite checks.
type Store interface {
	Upsert(updates []kline.Update) error
	Klines(ctx context.Context, q store.Query) ([]kline.Kline, error)
	Last(ctx context.Context, symbol string, iv kline.Interval) (kline.Kline, bool, error)
	Series(ctx context.Context) (map[[2]string]int, error)
	ClosedVersion(symbol string, iv kline.Interval) uint64
	PutSymbols(syms []store.Symbol) error
	Symbols(ctx context.Context) ([]store.Symbol, error)
	PutExchange(lists map[string][]byte) error
	Exchange(ctx context.Context) (map[string][]byte, error)
	AddSpans(spans []store.Span) error
	CompactSpans(ctx context.Context) ([]store.Span, error)
	Spans(ctx context.Context) ([]store.Span, error)
	AddImported(files []store.Imported) error
	Imported(ctx context.Context) (map[string]store.Imported, error)
	Close() error
}

// Run runs the suite; open returns a new, empty store, and reopen the same
// store again after Close (nil: the store cannot be reopened).
func Run(t *testing.T, open func(t *testing.T) Store, reopen func(t *testing.T, s Store) Store) {
	t.Run("UpsertAndRanges", func(t *testing.T) { upsertAndRanges(t, open(t)) })
	t.Run("ReplaceAndReplay", func(t *testing.T) { replaceAndReplay(t, open(t)) })
	t.Run("Stamps", func(t *testing.T) { stamps(t, open(t)) })
	t.Run("ExactNumbers", func(t *testing.T) { exactNumbers(t, open(t)) })
	t.Run("SymbolsAndLists", func(t *testing.T) { symbolsAndLists(t, open(t), reopen) })
	t.Run("ClosedVersion", func(t *testing.T) { closedVersion(t, open(t)) })
	t.Run("Spans", func(t *testing.T) { spans(t, open(t), reopen) })
	t.Run("Imported", func(t *testing.T) { imported(t, open(t), reopen) })
}

// imported: the ledger of archive files keeps each file once, with the
// checksum it was last imported with, across a reopen.
func imported(t *testing.T, s Store, reopen func(*testing.T, Store) Store) {
	ctx := context.Background()
	a := store.Imported{Name: "data/futures/um/monthly/klines/BTCUSDT/1m/BTCUSDT-1m-2026-01.zip", Checksum: "aa", Size: 10}
	b := store.Imported{Name: "data/futures/um/daily/klines/BTCUSDT/1m/BTCUSDT-1m-2026-02-01.zip", Checksum: "bb", Size: 3}
	if err := s.AddImported([]store.Imported{a, b}); err != nil {
		t.Fatal(err)
	}
	a.Checksum, a.Size = "cc", 11 // re-uploaded, imported again
	if err := s.AddImported([]store.Imported{a}); err != nil {
		t.Fatal(err)
	}
	if reopen != nil {
		s = reopen(t, s)
	}
	got, err := s.Imported(ctx)
	if want := map[string]store.Imported{a.Name: a, b.Name: b}; err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("Imported = %v %v, want %v", got, err, want)
	}
}

// spans: the spans held are kept, merged where they meet or overlap, and
// grow, never shrink, when one is recorded again.
func spans(t *testing.T, s Store, reopen func(*testing.T, Store) Store) {
	ctx := context.Background()
	m := int64(60_000)
	add := []store.Span{
		{Symbol: "BTCUSDT", Interval: oneMin, From: 10 * m, To: 19 * m},
		{Symbol: "BTCUSDT", Interval: oneMin, From: 20 * m, To: 29 * m}, // meets the first
		{Symbol: "BTCUSDT", Interval: oneMin, From: 40 * m, To: 41 * m}, // a hole before it
		{Symbol: "BTCUSDT", Interval: fiveMin, From: 0, To: 50 * m},
		{Symbol: "ETHUSDT", Interval: oneMin, From: 5 * m, To: store.Forever},
		{Symbol: "ETHUSDT", Interval: oneMin, From: 5 * m, To: 6 * m},   // inside: changes nothing
		{Symbol: "BTCUSDT", Interval: oneMin, From: 40 * m, To: 45 * m}, // the same start, further
	}
	if err := s.AddSpans(add[:3]); err != nil {
		t.Fatal(err)
	}
	if err := s.AddSpans(add[3:]); err != nil {
		t.Fatal(err)
	}
	// Spans reads what is recorded as it is, merging nothing in the store.
	raw, err := s.Spans(ctx)
	if err != nil || len(raw) < 5 || !reflect.DeepEqual(store.MergeSpans(raw), store.MergeSpans(add)) {
		t.Fatalf("Spans = %+v %v\nwant the spans added, %+v", raw, err, add)
	}
	want := []store.Span{
		{Symbol: "BTCUSDT", Interval: oneMin, From: 10 * m, To: 29 * m},
		{Symbol: "BTCUSDT", Interval: oneMin, From: 40 * m, To: 45 * m},
		{Symbol: "BTCUSDT", Interval: fiveMin, From: 0, To: 50 * m},
		{Symbol: "ETHUSDT", Interval: oneMin, From: 5 * m, To: store.Forever},
	}
	got, err := s.CompactSpans(ctx)
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("CompactSpans = %+v %v\nwant %+v", got, err, want)
	}
	if got, err := s.Spans(ctx); err != nil || !reflect.DeepEqual(store.MergeSpans(got), want) || len(got) != len(want) {
		t.Fatalf("Spans after CompactSpans = %+v %v\nwant %+v", got, err, want)
	}
	if reopen != nil {
		s = reopen(t, s)
	}
	if got, err := s.CompactSpans(ctx); err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("CompactSpans again = %+v %v\nwant %+v", got, err, want)
	}
}

var (
	oneMin  = kline.OneMinute()
	fiveMin = kline.MustInterval("5m")
)

// Kline is a test kline opening at open, numbered i.
func Kline(open, i int64) kline.Kline {
	return kline.Kline{
		OpenTime: open, CloseTime: open + 59_999,
		Open: 100*decimal.Unit + i, High: 101 * decimal.Unit, Low: 99 * decimal.Unit, Close: 100*decimal.Unit - i,
		Volume:      decimal.FromInt64(5*decimal.Unit + i),
		QuoteVolume: decimal.U128{Hi: 7, Lo: 12345 + uint64(i)}, // past int64
		TakerVolume: decimal.FromInt64(2), TakerQuoteVolume: decimal.FromInt64(3),
		Trades: i, FirstTradeID: i * 10, LastTradeID: i*10 + 9, Closed: i%2 == 0,
	}
}

func updates(symbol string, iv kline.Interval, n int) []kline.Update {
	us := make([]kline.Update, n)
	for i := range us {
		us[i] = kline.Update{Symbol: symbol, Interval: iv, Kline: Kline(int64(i)*iv.Duration().Milliseconds(), int64(i))}
	}
	return us
}

func upsertAndRanges(t *testing.T, s Store) {
	ctx := context.Background()
	if err := s.Upsert(append(updates("BTCUSDT", oneMin, 100), updates("ETHUSDT", fiveMin, 10)...)); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name      string
		q         store.Query
		n         int
		first     int64 // open time of the first kline
		lastOpen  int64
		wantEmpty bool
	}{
		{"all", store.Query{Symbol: "BTCUSDT", Interval: oneMin}, 100, 0, 99 * 60_000, false},
		{"limit from start", store.Query{Symbol: "BTCUSDT", Interval: oneMin, Limit: 5}, 5, 0, 4 * 60_000, false},
		{"limit from end", store.Query{Symbol: "BTCUSDT", Interval: oneMin, Limit: 5, FromEnd: true}, 5, 95 * 60_000, 99 * 60_000, false},
		{"start", store.Query{Symbol: "BTCUSDT", Interval: oneMin, Start: 90 * 60_000}, 10, 90 * 60_000, 99 * 60_000, false},
		{"start and end inclusive", store.Query{Symbol: "BTCUSDT", Interval: oneMin, Start: 10 * 60_000, End: 12 * 60_000}, 3, 10 * 60_000, 12 * 60_000, false},
		{"end from end", store.Query{Symbol: "BTCUSDT", Interval: oneMin, End: 50 * 60_000, Limit: 2, FromEnd: true}, 2, 49 * 60_000, 50 * 60_000, false},
		{"between klines", store.Query{Symbol: "BTCUSDT", Interval: oneMin, Start: 60_001, End: 119_999}, 0, 0, 0, true},
		{"other interval", store.Query{Symbol: "ETHUSDT", Interval: fiveMin, Limit: 1000}, 10, 0, 9 * 300_000, false},
		{"unknown series", store.Query{Symbol: "ETHUSDT", Interval: oneMin}, 0, 0, 0, true},
	} {
		ks, err := s.Klines(ctx, tc.q)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if len(ks) != tc.n || !tc.wantEmpty && (ks[0].OpenTime != tc.first || ks[len(ks)-1].OpenTime != tc.lastOpen) {
			t.Errorf("%s: %d klines %v, want %d from %d to %d", tc.name, len(ks), opens(ks), tc.n, tc.first, tc.lastOpen)
		}
		for i := 1; i < len(ks); i++ {
			if ks[i].OpenTime <= ks[i-1].OpenTime {
				t.Errorf("%s: not oldest first: %v", tc.name, opens(ks))
				break
			}
		}
	}
	last, ok, err := s.Last(ctx, "BTCUSDT", oneMin)
	if err != nil || !ok || last != Kline(99*60_000, 99) {
		t.Errorf("Last = %+v %v %v", last, ok, err)
	}
	if _, ok, err := s.Last(ctx, "NOPE", oneMin); ok || err != nil {
		t.Errorf("Last of nothing = %v %v", ok, err)
	}
	series, err := s.Series(ctx)
	if err != nil || !reflect.DeepEqual(series, map[[2]string]int{{"BTCUSDT", "1m"}: 100, {"ETHUSDT", "5m"}: 10}) {
		t.Errorf("Series = %v %v", series, err)
	}
}

func opens(ks []kline.Kline) []int64 {
	out := make([]int64, len(ks))
	for i, k := range ks {
		out[i] = k.OpenTime
	}
	return out
}

// replaceAndReplay: a later version of a kline replaces the stored one,
// also within one batch (the last wins), and writing the same klines again
// changes nothing.
func replaceAndReplay(t *testing.T, s Store) {
	ctx := context.Background()
	open := updates("BTCUSDT", oneMin, 3)
	if err := s.Upsert(open); err != nil {
		t.Fatal(err)
	}
	newer := Kline(60_000, 41)
	newest := Kline(60_000, 42)
	if err := s.Upsert([]kline.Update{{Symbol: "BTCUSDT", Interval: oneMin, Kline: newer}, {Symbol: "BTCUSDT", Interval: oneMin, Kline: newest}}); err != nil {
		t.Fatal(err)
	}
	want := []kline.Kline{open[0].Kline, newest, open[2].Kline}
	for range 2 {
		ks, err := s.Klines(ctx, store.Query{Symbol: "BTCUSDT", Interval: oneMin})
		if err != nil || !reflect.DeepEqual(ks, want) {
			t.Fatalf("after replacing: %+v %v, want %+v", ks, err, want)
		}
		// A replay of what is stored.
		replay := make([]kline.Update, len(want))
		for i, k := range want {
			replay[i] = kline.Update{Symbol: "BTCUSDT", Interval: oneMin, Kline: k}
		}
		if err := s.Upsert(replay); err != nil {
			t.Fatal(err)
		}
	}
}

// stamps: a version with a lower stamp never replaces the stored one, in
// separate writes or in one; an unstamped write (the engine's own) always
// does, and keeps the highest stamp seen; a higher stamp on equal content
// still counts.
func stamps(t *testing.T, s Store) {
	ctx := context.Background()
	v := func(stamp, i int64) kline.Update {
		return kline.Update{Symbol: "BTCUSDT", Interval: oneMin, Stamp: stamp, Kline: Kline(0, i)}
	}
	for n, step := range []struct {
		write []kline.Update
		want  int64 // the stored kline's number
	}{
		{[]kline.Update{v(10, 1)}, 1},
		{[]kline.Update{v(5, 2)}, 1},            // older
		{[]kline.Update{v(10, 3)}, 3},           // the same stamp: later wins
		{[]kline.Update{v(0, 4)}, 4},            // unstamped
		{[]kline.Update{v(7, 5)}, 4},            // older than the stamp kept
		{[]kline.Update{v(30, 4)}, 4},           // equal content, newer stamp
		{[]kline.Update{v(20, 6)}, 4},           // older than that
		{[]kline.Update{v(40, 7), v(35, 8)}, 7}, // in one batch
		{[]kline.Update{v(45, 9), v(50, 10), v(0, 11), v(48, 12)}, 11},
	} {
		if err := s.Upsert(step.write); err != nil {
			t.Fatal(err)
		}
		ks, err := s.Klines(ctx, store.Query{Symbol: "BTCUSDT", Interval: oneMin})
		if err != nil || len(ks) != 1 || ks[0] != Kline(0, step.want) {
			t.Fatalf("step %d: stored %+v (%v), want kline %d", n, ks, err, step.want)
		}
	}
}

// exactNumbers: the largest values klagg keeps come back to the digit,
// and a symbol need not be ASCII.
func exactNumbers(t *testing.T, s Store) {
	k := Kline(0, 1)
	k.Open, k.High, k.Low, k.Close = 1, 1<<62, 1, 123456789012345678
	k.Volume = decimal.U128{Hi: 1 << 40, Lo: 1<<64 - 1}
	k.QuoteVolume = decimal.U128{Hi: 1<<63 - 1, Lo: 3}
	k.TakerVolume, k.TakerQuoteVolume = decimal.U128{}, decimal.U128{Lo: 1}
	k.FirstTradeID, k.LastTradeID, k.Trades = -1, -1, 0
	if err := s.Upsert([]kline.Update{{Symbol: "币安人生USDT", Interval: oneMin, Kline: k}}); err != nil {
		t.Fatal(err)
	}
	got, ok, err := s.Last(context.Background(), "币安人生USDT", oneMin)
	if err != nil || !ok || got != k {
		t.Fatalf("got %+v %v %v\nwant %+v", got, ok, err, k)
	}
}

func symbolsAndLists(t *testing.T, s Store, reopen func(*testing.T, Store) Store) {
	ctx := context.Background()
	a := store.Symbol{Name: "BTCUSDT", Status: "TRADING", BaseAsset: "BTC", QuoteAsset: "USDT", ContractType: "PERPETUAL",
		PricePrecision: 2, QuantityPrecision: 3, OnboardDate: 1569398400000, Pair: "BTCUSDT",
		Info: []byte(`{"symbol":"BTCUSDT","filters":[{"filterType":"PRICE_FILTER","tickSize":"0.10"}]}`)}
	b := store.Symbol{Name: "XAUUSDT", Status: "BREAK", BaseAsset: "XAU", QuoteAsset: "USDT", ContractType: "TRADIFI_PERPETUAL",
		PricePrecision: 2, QuantityPrecision: 3, OnboardDate: 1700000000000, Pair: "XAUUSDT"}
	if err := s.PutSymbols([]store.Symbol{b, a}); err != nil {
		t.Fatal(err)
	}
	// A later record without the exchange's object keeps the stored one.
	moved := a
	moved.Status, moved.Info = "SETTLING", nil
	if err := s.PutSymbols([]store.Symbol{moved}); err != nil {
		t.Fatal(err)
	}
	lists := map[string][]byte{store.RateLimits: []byte(`[{"rateLimitType":"REQUEST_WEIGHT","limit":2400}]`), store.ExchangeFilters: []byte(`[]`)}
	if err := s.PutExchange(lists); err != nil {
		t.Fatal(err)
	}
	if reopen != nil {
		s = reopen(t, s)
	}
	a.Status = "SETTLING"
	syms, err := s.Symbols(ctx)
	if err != nil || !reflect.DeepEqual(syms, []store.Symbol{a, b}) {
		t.Errorf("Symbols = %+v %v\nwant %+v", syms, err, []store.Symbol{a, b})
	}
	got, err := s.Exchange(ctx)
	if err != nil || !reflect.DeepEqual(got, lists) {
		t.Errorf("Exchange = %q %v", got, err)
	}
}

// closedVersion: the version of a series changes with each write of a
// closed kline of it, and only then.
func closedVersion(t *testing.T, s Store) {
	v0 := s.ClosedVersion("BTCUSDT", oneMin)
	open := Kline(0, 1) // odd: open
	if err := s.Upsert([]kline.Update{{Symbol: "BTCUSDT", Interval: oneMin, Kline: open}}); err != nil {
		t.Fatal(err)
	}
	if v := s.ClosedVersion("BTCUSDT", oneMin); v != v0 {
		t.Fatalf("an open kline changed the version: %d → %d", v0, v)
	}
	if err := s.Upsert([]kline.Update{{Symbol: "BTCUSDT", Interval: oneMin, Kline: Kline(0, 2)}}); err != nil {
		t.Fatal(err)
	}
	if v := s.ClosedVersion("BTCUSDT", oneMin); v == v0 {
		t.Fatal("a closed kline left the version")
	}
	if s.ClosedVersion("ETHUSDT", oneMin) != 0 {
		t.Fatal("another series has a version")
	}
}
