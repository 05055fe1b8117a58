package engine

import (
	"context"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/klagg/klagg/internal/decimal"
	"github.com/klagg/klagg/internal/kline"
	"github.com/klagg/klagg/internal/synth"
)

const t0 = int64(1_699_999_200_000) // an hour boundary

func trade(id, ms int64, price string, qty string, buyerMaker bool) kline.Trade {
	p, _ := decimal.Parse(price)
	q, _ := decimal.Parse(qty)
	return kline.Trade{ID: id, Price: p, Qty: q, FirstID: id * 10, LastID: id*10 + 1, Time: ms, BuyerMaker: buyerMaker}
}

func TestClockClosesAndOpensAtPreviousClose(t *testing.T) {
	h := newHarness(t, []kline.Interval{kline.OneMinute()}, 2*time.Second)
	h.add("BTCUSDT")
	h.trades("BTCUSDT", []kline.Trade{trade(1, t0+1000, "100.5", "2", false), trade(2, t0+2000, "101", "1", true)})
	h.tick(t0 + 60_000 + 1999) // within grace: still open
	h.sync()
	ks := h.c.series("BTCUSDT", "1m")
	if len(ks) != 1 || ks[0].Closed {
		t.Fatalf("closed before grace passed: %+v", ks)
	}
	h.tick(t0 + 3*60_000 + 2001) // two quiet minutes then grace
	h.sync()
	ks = h.c.series("BTCUSDT", "1m")
	if len(ks) != 4 {
		t.Fatalf("got %d klines, want 4 (traded, 2 empty closed, 1 open)", len(ks))
	}
	close101, _ := decimal.Parse("101")
	for i, k := range ks[1:] {
		if k.Trades != 0 || k.Open != close101 || k.High != close101 || k.Low != close101 || k.Close != close101 || !k.Volume.IsZero() {
			t.Errorf("empty kline %d not at previous close: %+v", i+1, k)
		}
		if k.FirstTradeID != -1 || k.LastTradeID != -1 {
			t.Errorf("empty kline %d has trade ids", i+1)
		}
	}
	if !ks[0].Closed || !ks[1].Closed || !ks[2].Closed || ks[3].Closed {
		t.Errorf("closed flags: %v %v %v %v", ks[0].Closed, ks[1].Closed, ks[2].Closed, ks[3].Closed)
	}
	if ks[0].Trades != 4 || ks[0].Volume.String(8) != "3" || ks[0].TakerVolume.String(8) != "2" || ks[0].TakerQuoteVolume.String(16) != "201" {
		t.Errorf("traded kline wrong: %+v", ks[0])
	}
}

func TestLateTradeCorrectsClosedKline(t *testing.T) {
	h := newHarness(t, []kline.Interval{kline.OneMinute(), kline.MustInterval("5m"), kline.MustInterval("1h")}, 0)
	h.add("X")
	h.trades("X", []kline.Trade{trade(1, t0+1000, "10", "1", false)})
	h.tick(t0 + 60_000 + 10) // 1m closed by the clock; 5m still open
	h.trades("X", []kline.Trade{trade(2, t0+59_000, "12", "1", false)})
	h.sync()
	ks := h.c.series("X", "1m")
	if len(ks) != 2 || !ks[0].Closed || ks[0].Close != 12*decimal.Unit || ks[0].Trades != 4 {
		t.Fatalf("late trade did not correct the closed kline: %+v", ks)
	}
	if ks[1].Open != 12*decimal.Unit || ks[1].Trades != 0 {
		t.Errorf("open empty kline not moved to the corrected close: %+v", ks[1])
	}
	if st := h.e.Stats(); st.Late != 1 || st.TooLate != 0 {
		t.Errorf("stats %+v", st)
	}
	// Older than the last closed kline (a symbol whose hold ran out while
	// its trades were read): the minute, among the recent ones, takes it,
	// and so does the 5m kline still open, which holds what its minutes
	// hold.
	h.tick(t0 + 3*60_000)
	h.trades("X", []kline.Trade{trade(3, t0+30_000, "99", "1", false)})
	h.sync()
	if ks := h.c.series("X", "1m"); ks[0].Trades != 6 || ks[0].High != 99*decimal.Unit || !ks[0].Closed {
		t.Errorf("the minute of a trade two minutes late: %+v", ks[0])
	}
	if ks := h.c.series("X", "5m"); len(ks) != 1 || ks[0].Trades != 6 || ks[0].High != 99*decimal.Unit {
		t.Errorf("5m kline: %+v", ks)
	}
	// Older than the minutes the engine keeps: counted, not applied to
	// the minute, which a correction from the exchange's klines replaces
	// whole, without moving the longer klines; the hour still open takes
	// it.
	h.tick(t0 + 30*60_000)
	h.trades("X", []kline.Trade{trade(4, t0+40_000, "98", "1", false)})
	h.sync()
	if st := h.e.Stats(); st.Late != 2 || st.TooLate != 1 {
		t.Errorf("stats %+v", st)
	}
	if ks := h.c.series("X", "1h"); len(ks) != 1 || ks[0].Trades != 8 {
		t.Errorf("1h kline after a trade too late for its minute: %+v", ks)
	}
	var m strings.Builder
	h.e.WritePrometheus(&m)
	for _, want := range []string{"klagg_late_trades_total 2\n", "klagg_trades_too_late_total 1\n", "klagg_trades_total 4\n"} {
		if !strings.Contains(m.String(), want) {
			t.Errorf("the engine's metrics lack %q:\n%s", want, m.String())
		}
	}
}

func TestDuplicatesAndUnknownSymbols(t *testing.T) {
	h := newHarness(t, []kline.Interval{kline.OneMinute()}, 0)
	h.add("X")
	tr := trade(5, t0+1, "1", "1", true)
	h.trades("X", []kline.Trade{tr, tr, trade(4, t0+2, "2", "1", true)})
	h.trades("Y", []kline.Trade{tr})
	h.sync()
	st := h.e.Stats()
	if st.Trades != 1 || st.Duplicates != 2 || st.Unknown != 1 {
		t.Fatalf("stats %+v", st)
	}
}

func TestRemoveSymbolFinalizes(t *testing.T) {
	h := newHarness(t, []kline.Interval{kline.OneMinute()}, 0)
	h.add("X")
	h.trades("X", []kline.Trade{trade(1, t0+1, "1", "1", true)})
	if err := h.e.RemoveSymbol(context.Background(), "X"); err != nil {
		t.Fatal(err)
	}
	h.trades("X", []kline.Trade{trade(2, t0+2, "1", "1", true)})
	h.sync()
	ks := h.c.series("X", "1m")
	if len(ks) != 1 || !ks[0].Closed || ks[0].Trades != 2 {
		t.Fatalf("removed symbol's kline not finalized: %+v", ks)
	}
	if h.e.Stats().Unknown != 1 {
		t.Fatal("trade after removal not counted as unknown")
	}
}

// TestProperties runs random trade sequences through the engine.
func TestProperties(t *testing.T) {
	ivs := append(kline.BinanceIntervals(), kline.MustInterval("2m"), kline.MustInterval("90m"))
	kline.SortIntervals(ivs)
	for seed := uint64(1); seed <= 5; seed++ {
		m := synth.DefaultMarket(int(seed), seed, t0-int64(seed)*7_777_777)
		m.MeanGapMs = 5_000
		m.QuietEvery = 50
		st := synth.NewStream(m)
		trades := make([]kline.Trade, 20_000)
		var wantTrades int64
		for i := range trades {
			trades[i] = st.Next()
			wantTrades += trades[i].LastID - trades[i].FirstID + 1
		}
		end := st.Time()
		r := rand.New(rand.NewPCG(seed, 99))

		run := func(batches func(func([]kline.Trade))) *collector {
			h := newHarness(t, ivs, 0)
			h.add(m.Symbol)
			batches(func(b []kline.Trade) { h.trades(m.Symbol, b) })
			h.tick(kline.MustInterval("1M").Next(kline.MustInterval("1M").Open(end)) + 1)
			h.sync()
			h.stop()
			return h.c
		}
		whole := run(func(send func([]kline.Trade)) { send(trades) })
		split := run(func(send func([]kline.Trade)) {
			for i := 0; i < len(trades); {
				n := min(len(trades)-i, 1+r.IntN(50))
				send(trades[i : i+n])
				i += n
			}
		})
		dup := run(func(send func([]kline.Trade)) {
			for i := range trades {
				send(trades[i : i+1])
				if r.IntN(10) == 0 {
					send(trades[max(0, i-r.IntN(5)) : i+1]) // repeats
				}
			}
		})

		ones := whole.series(m.Symbol, "1m")
		var sum int64
		for _, k := range ones {
			sum += k.Trades
		}
		if sum != wantTrades {
			t.Fatalf("seed %d: Σ trades = %d, want Σ(l−f+1) = %d", seed, sum, wantTrades)
		}
		for _, iv := range ivs {
			a, b, c := whole.series(m.Symbol, iv.String()), split.series(m.Symbol, iv.String()), dup.series(m.Symbol, iv.String())
			if len(a) != len(b) || len(a) != len(c) {
				t.Fatalf("seed %d %s: %d/%d/%d klines for whole/split/duplicated input", seed, iv, len(a), len(b), len(c))
			}
			roll := kline.Rollup(iv, ones)
			if len(roll) != len(a) {
				t.Fatalf("seed %d %s: %d klines, 1m rollup gives %d", seed, iv, len(a), len(roll))
			}
			for i := range a {
				if a[i] != b[i] || a[i] != c[i] {
					t.Fatalf("seed %d %s %d: batch split or duplicates changed the kline:\n%+v\n%+v\n%+v", seed, iv, a[i].OpenTime, a[i], b[i], c[i])
				}
				k := a[i]
				if k.Low > k.Open || k.Low > k.Close || k.High < k.Open || k.High < k.Close {
					t.Fatalf("seed %d %s: low ≤ open, close ≤ high violated: %+v", seed, iv, k)
				}
				if i > 0 && a[i].OpenTime != iv.Next(a[i-1].OpenTime) {
					t.Fatalf("seed %d %s: gap after %d", seed, iv, a[i-1].OpenTime)
				}
				if i == 0 && iv.Open(ones[0].OpenTime) != ones[0].OpenTime {
					continue // first bucket starts before the first trade in both
				}
				if roll[i] != k {
					t.Fatalf("seed %d %s %d: engine kline differs from the 1m aggregate:\n%+v\n%+v", seed, iv, k.OpenTime, k, roll[i])
				}
			}
		}
	}
}

func TestCoalescerKeepsNewest(t *testing.T) {
	c := NewCoalescer()
	iv := kline.OneMinute()
	for i := int64(0); i < 100; i++ {
		c.Publish([]kline.Update{
			{Symbol: "A", Interval: iv, Series: 1, Kline: kline.Kline{OpenTime: t0, Trades: i}},
			{Symbol: "B", Interval: iv, Series: 2, Kline: kline.Kline{OpenTime: t0 + i%3, Trades: i}},
		})
	}
	select {
	case <-c.Ready():
	default:
		t.Fatal("not signalled")
	}
	got := c.Drain(nil)
	if len(got) != 4 {
		t.Fatalf("drained %d, want 4", len(got))
	}
	for _, u := range got {
		if u.Symbol == "A" && u.Trades != 99 {
			t.Errorf("A kept version %d, want 99", u.Trades)
		}
	}
	if c.Len() != 0 || len(c.Drain(nil)) != 0 {
		t.Fatal("not empty after drain")
	}
}

// TestCorrectionReachesLongerIntervals hides some trades from the engine,
// as the aggTrade stream hides insurance-fund trades, then corrects each
// closed minute with its full value 3 s after it closed, as the reconciler
// does: every interval must then equal the klines of all trades.
func TestCorrectionReachesLongerIntervals(t *testing.T) {
	ivs := []kline.Interval{kline.OneMinute(), kline.MustInterval("3m"), kline.MustInterval("5m"),
		kline.MustInterval("15m"), kline.MustInterval("1h"), kline.MustInterval("1d")}
	for _, c := range []struct {
		seed      uint64
		gapMs     float64
		hideOneIn int
		trades    int
		lag       int // minutes a correction comes late
	}{{1, 2_000, 15, 20_000, 0}, {2, 20_000, 3, 6_000, 0}, {3, 5_000, 4, 10_000, 2}} {
		m := synth.DefaultMarket(int(c.seed), c.seed, t0)
		m.MeanGapMs, m.QuietEvery = c.gapMs, 40
		st := synth.NewStream(m)
		r := rand.New(rand.NewPCG(c.seed, 7))
		all := make([]kline.Trade, c.trades)
		hidden := make([]bool, c.trades)
		for i := range all {
			all[i] = st.Next()
			hidden[i] = r.IntN(c.hideOneIn) == 0
		}
		h := newHarness(t, ivs, 0)
		h.add(m.Symbol)
		one := kline.OneMinute()
		hidden[0] = false // the engine's klines start at its first trade
		ref1m := refKlines(t, one, all)
		sent := 0
		hid := 0
		for i := range len(ref1m) + c.lag {
			if i < len(ref1m) {
				cut := ref1m[i].CloseTime + 3_001
				var batch []kline.Trade
				for ; sent < len(all) && all[sent].Time < cut; sent++ {
					if hidden[sent] {
						hid++
						continue
					}
					batch = append(batch, all[sent])
				}
				if len(batch) > 0 {
					h.trades(m.Symbol, batch)
				}
				h.tick(cut)
				h.sync()
			}
			if i < c.lag {
				continue
			}
			want := ref1m[i-c.lag]
			h.sync()
			ours := h.c.get(kline.Key{Symbol: m.Symbol, Interval: "1m", OpenTime: want.OpenTime})
			ex := want
			ex.FirstTradeID, ex.LastTradeID = ours.FirstTradeID, ours.LastTradeID
			if err := h.e.Correct(context.Background(), m.Symbol, one, ex); err != nil {
				t.Fatal(err)
			}
		}
		h.sync()
		if st := h.e.Stats(); st.Unamended != 0 {
			t.Fatalf("seed %d: %d longer klines not amended", c.seed, st.Unamended)
		}
		if hid == 0 {
			t.Fatal("no trade hidden: the test shows nothing")
		}
		for _, iv := range ivs {
			want := map[int64]kline.Kline{}
			for _, k := range refKlines(t, iv, all) {
				want[k.OpenTime] = k
			}
			checked := 0
			for _, k := range h.c.series(m.Symbol, iv.String()) {
				w, ok := want[k.OpenTime]
				if !k.Closed || !ok {
					continue
				}
				k.FirstTradeID, k.LastTradeID, w.FirstTradeID, w.LastTradeID = 0, 0, 0, 0
				w.Closed = true
				if k != w {
					t.Fatalf("seed %d %s %d: after corrections\n got %+v\nwant %+v", c.seed, iv, k.OpenTime, k, w)
				}
				checked++
			}
			if checked == 0 {
				t.Fatalf("seed %d %s: no closed kline compared", c.seed, iv)
			}
		}
	}
}

// refKlines builds iv's klines of trades with kline.Series, gap-free from
// the first trade's bucket.
func refKlines(t *testing.T, iv kline.Interval, trades []kline.Trade) []kline.Kline {
	t.Helper()
	s, err := kline.NewSeries(iv)
	if err != nil {
		t.Fatal(err)
	}
	for i := range trades {
		s.Add(&trades[i])
	}
	return s.Klines()
}

func TestLatencyFromArrivalToSinks(t *testing.T) {
	var mu sync.Mutex
	var got []time.Duration
	e, err := New(Config{Intervals: []kline.Interval{kline.OneMinute()}, Sinks: []Sink{newCollector()},
		Latency: func(d time.Duration) { mu.Lock(); got = append(got, d); mu.Unlock() }})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	defer func() { cancel(); <-done }()
	e.AddSymbol(ctx, "X")
	arrived := time.Now().Add(-time.Hour)
	e.Trades(ctx, "X", []kline.Trade{trade(1, t0+1, "1", "1", true)}, arrived)
	e.Trades(ctx, "X", []kline.Trade{trade(2, t0+2, "1", "1", true)}, time.Time{}) // arrival unknown: not reported
	if _, err := e.Snapshot(ctx, ""); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(got) != 1 || got[0] < time.Hour {
		t.Fatalf("latencies %v, want one of at least 1h", got)
	}
}

func TestSeriesIDsNeverReused(t *testing.T) {
	ivs := []kline.Interval{kline.OneMinute(), kline.MustInterval("5m")}
	h := newHarness(t, ivs, 0)
	h.add("X")
	h.trades("X", []kline.Trade{trade(1, t0+1, "1", "1", true)})
	h.sync()
	if err := h.e.RemoveSymbol(context.Background(), "X"); err != nil {
		t.Fatal(err)
	}
	h.add("Y") // takes X's slots
	h.trades("Y", []kline.Trade{trade(1, t0+1, "1", "1", true)})
	h.sync()
	seen := map[uint32]string{}
	for _, sym := range []string{"X", "Y"} {
		for _, iv := range ivs {
			u := h.c.get(kline.Key{Symbol: sym, Interval: iv.String(), OpenTime: t0})
			if u.Series == 0 || seen[u.Series] != "" {
				t.Fatalf("%s %s has series %d, also %q's", sym, iv, u.Series, seen[u.Series])
			}
			seen[u.Series] = sym + iv.String()
		}
	}
}

// TestHoldsAreTheirSymbolsOnly: a symbol that may be missing trades (its
// connection is down) keeps its klines open up to its hold; the others
// close on time, and the held one closes once released.
func TestHoldsAreTheirSymbolsOnly(t *testing.T) {
	h := newHarness(t, []kline.Interval{kline.OneMinute()}, 2*time.Second)
	h.add("A")
	h.add("B")
	h.trades("A", []kline.Trade{trade(1, t0+1000, "10", "1", false)})
	h.trades("B", []kline.Trade{trade(1, t0+1000, "20", "1", false)})
	if err := h.e.Tick(context.Background(), time.UnixMilli(t0+60_000+2001), map[string]int64{"B": t0 + 30_000}, nil); err != nil {
		t.Fatal(err)
	}
	h.sync()
	if a, b := h.c.series("A", "1m"), h.c.series("B", "1m"); len(a) != 2 || !a[0].Closed || len(b) != 1 || b[0].Closed {
		t.Fatalf("A should close on time and B stay open while held:\nA %+v\nB %+v", a, b)
	}
	h.tick(t0 + 60_000 + 2002) // the hold is released
	h.sync()
	if b := h.c.series("B", "1m"); len(b) != 2 || !b[0].Closed {
		t.Fatalf("B should close once released: %+v", b)
	}
}

// TestOlderSeedRollsForwardAgain: the clock closed a held symbol's klines
// without the trades it was missing; a repair's seed of an earlier minute
// takes the slot back, and the trades after it close those klines again,
// whole.
func TestOlderSeedRollsForwardAgain(t *testing.T) {
	h := newHarness(t, []kline.Interval{kline.OneMinute()}, 2*time.Second)
	h.add("A")
	h.trades("A", []kline.Trade{trade(1, t0+1000, "10", "1", false)})
	h.tick(t0 + 3*60_000 + 2001) // minutes 0, 1 and 2 closed by the clock
	h.sync()
	seed := kline.Empty(kline.OneMinute(), t0+60_000, 10*decimal.Unit)
	seed.Add(&kline.Trade{ID: 2, Price: 11 * decimal.Unit, Qty: decimal.Unit, FirstID: 20, LastID: 21, Time: t0 + 61_000})
	if err := h.e.Seed(context.Background(), "A", kline.OneMinute(), seed, t0+60_000); err != nil {
		t.Fatal(err)
	}
	h.trades("A", []kline.Trade{trade(2, t0+61_000, "11", "1", false), trade(3, t0+62_000, "12", "1", false), trade(4, t0+150_000, "13", "1", false)})
	h.tick(t0 + 4*60_000 + 2001)
	h.sync()
	ks := h.c.series("A", "1m")
	if len(ks) != 5 {
		t.Fatalf("got %d klines, want 5", len(ks))
	}
	m1, m2 := ks[1], ks[2]
	if !m1.Closed || m1.Trades != 4 || m1.Close != 12*decimal.Unit || m1.Open != 11*decimal.Unit {
		t.Errorf("minute 1 should be the seed plus trade 3: %+v", m1)
	}
	if !m2.Closed || m2.Trades != 2 || m2.Open != 13*decimal.Unit {
		t.Errorf("minute 2 should hold trade 4: %+v", m2)
	}
}

// TestSeededKlineClosedIsNotAmended: a repair seeds the 5m kline from the
// exchange's closed 1m klines and then corrects those minutes one by one;
// when the clock closes the 5m kline between the two (a slow REST answer),
// the corrections must not be counted into it a second time.
func TestSeededKlineClosedIsNotAmended(t *testing.T) {
	one, five := kline.OneMinute(), kline.MustInterval("5m")
	h := newHarness(t, []kline.Interval{one, five}, 0)
	h.add("A")
	h.trades("A", []kline.Trade{trade(1, t0+1000, "10", "1", false)}) // minute 0 so far; minutes 1 and 2 lost
	h.sync()
	// The exchange's minutes: 0 with trades 1 and 2, 1 and 2 with one
	// trade each. The repair seeds at minute 3.
	ex := func(min, id int64, price string) kline.Kline {
		k := kline.Empty(one, t0+min*60_000, 10*decimal.Unit)
		tr := trade(id, t0+min*60_000+1000, price, "1", false)
		k.Add(&tr)
		k.Closed = true
		return k
	}
	m0 := ex(0, 1, "10")
	extra := trade(2, t0+2000, "10", "1", false)
	m0.Add(&extra)
	m1, m2 := ex(1, 3, "11"), ex(2, 4, "12")
	base := kline.Empty(five, t0, 10*decimal.Unit)
	for _, k := range []kline.Kline{m0, m1, m2} {
		base.Merge(&k)
	}
	base.FirstTradeID, base.LastTradeID = -1, -1
	ctx := context.Background()
	if err := h.e.Seed(ctx, "A", five, base, t0+3*60_000); err != nil {
		t.Fatal(err)
	}
	if err := h.e.Seed(ctx, "A", one, kline.Empty(one, t0+3*60_000, 12*decimal.Unit), t0+3*60_000); err != nil {
		t.Fatal(err)
	}
	h.tick(t0 + 5*60_000 + 1) // the 5m kline closes before the corrections come
	for _, k := range []kline.Kline{m0, m1, m2} {
		k.FirstTradeID, k.LastTradeID = -1, -1
		if err := h.e.Correct(ctx, "A", one, k); err != nil {
			t.Fatal(err)
		}
	}
	h.sync()
	got := h.c.get(kline.Key{Symbol: "A", Interval: "5m", OpenTime: t0}).Kline
	if !got.Closed || got.Trades != base.Trades || got.Volume != base.Volume {
		t.Errorf("the seeded 5m kline after the corrections: %d trades, volume %s; want %d, %s", got.Trades, got.Volume.String(8), base.Trades, base.Volume.String(8))
	}
}

// TestExchangesLongerKlineNotAmended: a longer kline taken whole from the
// exchange (reconciliation fetches it when one of its minutes differed)
// holds every minute's final trades: a correction of one of its minutes
// arriving after it changes it no more.
func TestExchangesLongerKlineNotAmended(t *testing.T) {
	one, five := kline.OneMinute(), kline.MustInterval("5m")
	h := newHarness(t, []kline.Interval{one, five}, 0)
	h.add("A")
	h.trades("A", []kline.Trade{trade(1, t0+1000, "10", "1", false), trade(2, t0+61_000, "11", "1", false)})
	h.tick(t0 + 5*60_000 + 1)
	h.sync()
	// The exchange's minute 1 has one more trade; its 5m kline says so.
	ctx := context.Background()
	ex1 := h.c.get(kline.Key{Symbol: "A", Interval: "1m", OpenTime: t0 + 60_000}).Kline
	extra := trade(3, t0+62_000, "12", "1", false)
	ex1.Add(&extra)
	ex5 := h.c.get(kline.Key{Symbol: "A", Interval: "5m", OpenTime: t0}).Kline
	ex5.Add(&extra)
	if err := h.e.Correct(ctx, "A", five, ex5); err != nil {
		t.Fatal(err)
	}
	if err := h.e.Correct(ctx, "A", one, ex1); err != nil {
		t.Fatal(err)
	}
	h.sync()
	got := h.c.get(kline.Key{Symbol: "A", Interval: "5m", OpenTime: t0}).Kline
	if got.Trades != ex5.Trades || got.Volume != ex5.Volume || got.Close != ex5.Close {
		t.Errorf("the exchange's 5m kline after a correction of its minute: %d trades, volume %s; want %d, %s",
			got.Trades, got.Volume.String(8), ex5.Trades, ex5.Volume.String(8))
	}
}

// TestHandover carries a symbol from one engine to another mid-stream by
// its State, as a cluster does when a node dies: the second engine's
// klines equal those of an engine that saw every trade, and the first,
// dropped, emits nothing more.
func TestHandover(t *testing.T) {
	ivs := kline.BinanceIntervals()
	m := synth.DefaultMarket(1, 7, t0)
	m.MeanGapMs = 3_000
	st := synth.NewStream(m)
	trades := make([]kline.Trade, 5_000)
	for i := range trades {
		trades[i] = st.Next()
	}
	end := kline.MustInterval("1M").Next(kline.MustInterval("1M").Open(st.Time())) + 1
	whole := newHarness(t, ivs, 0)
	whole.add(m.Symbol)
	whole.trades(m.Symbol, trades)
	whole.tick(end)
	whole.sync()

	for _, cut := range []int{1, 777, 2_500, 4_999} {
		a, b := newHarness(t, ivs, 0), newHarness(t, ivs, 0)
		a.add(m.Symbol)
		a.trades(m.Symbol, trades[:cut])
		a.tick(trades[cut-1].Time) // closes what the clock may
		states, err := a.e.States(context.Background(), []string{m.Symbol, "OTHER"})
		if err != nil || len(states) != 1 || states[0].LastID != trades[cut-1].ID || len(states[0].Open) != len(ivs) {
			t.Fatalf("cut %d: states %+v, %v", cut, states, err)
		}
		if err := a.e.Drop(context.Background(), m.Symbol); err != nil {
			t.Fatal(err)
		}
		a.sync()
		before := len(a.c.latest)
		a.trades(m.Symbol, trades[cut:])
		a.tick(end)
		a.sync()
		if len(a.c.latest) != before || a.e.Stats().Unknown != int64(len(trades)-cut) {
			t.Fatalf("cut %d: the dropped engine went on: %d klines, then %d", cut, before, len(a.c.latest))
		}

		b.add(m.Symbol)
		for j, iv := range ivs {
			if k := states[0].Open[j]; k.OpenTime != 0 {
				if err := b.e.Seed(context.Background(), m.Symbol, iv, k, 0); err != nil {
					t.Fatal(err)
				}
			}
		}
		b.trades(m.Symbol, trades[cut:])
		b.tick(end)
		b.sync()
		for key, u := range b.c.latest {
			w := whole.c.get(key)
			if u.Kline != w.Kline {
				t.Fatalf("cut %d: %v after the handover:\n got %+v\nwant %+v", cut, key, u.Kline, w.Kline)
			}
		}
		for key, u := range whole.c.latest {
			if u.OpenTime >= states[0].Open[0].OpenTime && u.Interval.String() == "1m" {
				if _, ok := b.c.latest[key]; !ok {
					t.Fatalf("cut %d: %v missing after the handover", cut, key)
				}
			}
		}
	}
}

// TestReleasedKlinesGoOutPartial: while its symbol misses trades past its
// hold, a kline closing after the time its trades are complete goes out
// Partial; the repair's seed makes the symbol whole again though the
// router says released until the repair is done, and its corrections are
// never Partial.
func TestReleasedKlinesGoOutPartial(t *testing.T) {
	h := newHarness(t, []kline.Interval{kline.OneMinute()}, 2*time.Second)
	h.add("A")
	h.add("B")
	h.trades("A", []kline.Trade{trade(1, t0+1000, "10", "1", false)})
	h.trades("B", []kline.Trade{trade(1, t0+1000, "20", "1", false)})
	released := map[string]int64{"A": t0 + 30_000}
	tick := func(ms int64, released map[string]int64) {
		t.Helper()
		if err := h.e.Tick(context.Background(), time.UnixMilli(ms), nil, released); err != nil {
			t.Fatal(err)
		}
		h.sync()
	}
	at := func(sym string, open int64) kline.Update {
		return h.c.get(kline.Key{Symbol: sym, Interval: "1m", OpenTime: open})
	}
	tick(t0+60_000+2001, released)
	if u := at("A", t0); !u.Closed || !u.Partial {
		t.Errorf("A's minute closed by the clock while released: closed %v, partial %v; want both", u.Closed, u.Partial)
	}
	if u := at("B", t0); !u.Closed || u.Partial {
		t.Errorf("B's minute: closed %v, partial %v; want closed and whole", u.Closed, u.Partial)
	}
	// The repair: a seed of the current minute, then the exchange's
	// klines for what closed without trades; the router still says
	// released until it has seen the repair through.
	seed := kline.Empty(kline.OneMinute(), t0+60_000, 10*decimal.Unit)
	if err := h.e.Seed(context.Background(), "A", kline.OneMinute(), seed, t0+60_000); err != nil {
		t.Fatal(err)
	}
	fixed := kline.Empty(kline.OneMinute(), t0, 10*decimal.Unit)
	fixed.Closed = true
	if err := h.e.Correct(context.Background(), "A", kline.OneMinute(), fixed); err != nil {
		t.Fatal(err)
	}
	tick(t0+2*60_000+2001, released)
	if u := at("A", t0); u.Partial {
		t.Error("the correction went out Partial")
	}
	if u := at("A", t0+60_000); !u.Closed || u.Partial {
		t.Errorf("A's minute after the repair's seed: closed %v, partial %v; want closed and whole", u.Closed, u.Partial)
	}
	// Repaired, then missing trades again: Partial again.
	tick(t0+2*60_000+2002, nil)
	tick(t0+3*60_000+2001, map[string]int64{"A": t0 + 2*60_000 + 10_000})
	if u := at("A", t0+2*60_000); !u.Closed || !u.Partial {
		t.Errorf("released again: closed %v, partial %v; want both", u.Closed, u.Partial)
	}
}

// TestLateMinuteCorrectedOnce (each trade here is two): a minute the
// clock closed before its trades came (its symbol's hold ran out) takes
// them when they come, as the 5m kline open then does; the exchange's
// correction of the minute then moves the 5m kline by what the minute
// still lacked, once; and a trade of the corrected minute coming after
// goes nowhere.
func TestLateMinuteCorrectedOnce(t *testing.T) {
	one, five := kline.OneMinute(), kline.MustInterval("5m")
	h := newHarness(t, []kline.Interval{one, five}, 0)
	h.add("A")
	h.trades("A", []kline.Trade{trade(1, t0+1000, "10", "1", false)})
	h.tick(t0 + 3*60_000) // minutes 0 to 2 closed, 2 s of minute 1's trades not in
	late := []kline.Trade{trade(2, t0+61_000, "11", "1", false), trade(3, t0+62_000, "12", "2", false)}
	h.trades("A", late)
	h.sync()
	// The exchange's minute 1 has one more trade, which no stream showed.
	ex := kline.Empty(one, t0+60_000, 10*decimal.Unit)
	for _, tr := range append(late, trade(4, t0+63_000, "13", "1", false)) {
		ex.Add(&tr)
	}
	ex.FirstTradeID, ex.LastTradeID = -1, -1
	if err := h.e.Correct(context.Background(), "A", one, ex); err != nil {
		t.Fatal(err)
	}
	h.sync()
	got := h.c.get(kline.Key{Symbol: "A", Interval: "5m", OpenTime: t0}).Kline
	if want := int64(2 + 4 + 2); got.Trades != want || got.High != 13*decimal.Unit || got.Close != 13*decimal.Unit {
		t.Errorf("the 5m kline after its minute's trades came late and the minute was corrected: %d trades, high %d, close %d; want %d, 13, 13",
			got.Trades, got.High, got.Close, want)
	}
	// The trade the exchange's minute had comes now, later still: the
	// minute and the 5m kline hold it already.
	h.trades("A", []kline.Trade{trade(4, t0+63_000, "13", "1", false)})
	h.sync()
	if got := h.c.get(kline.Key{Symbol: "A", Interval: "5m", OpenTime: t0}).Kline; got.Trades != 8 {
		t.Errorf("the 5m kline after a trade of its corrected minute came: %d trades, want 8", got.Trades)
	}
	if got := h.c.get(kline.Key{Symbol: "A", Interval: "1m", OpenTime: t0 + 60_000}).Kline; got.Trades != 6 {
		t.Errorf("the corrected minute after a trade of its came: %d trades, want 6", got.Trades)
	}
}

// TestCorrectionMovesEmptyKlinesAfter: the klines without a trade after a
// minute stand flat at its close; when the exchange corrects that close,
// they follow: the closed ones are sent again, the 5m kline closed since
// too.
func TestCorrectionMovesEmptyKlinesAfter(t *testing.T) {
	one, five := kline.OneMinute(), kline.MustInterval("5m")
	h := newHarness(t, []kline.Interval{one, five}, 0)
	h.add("A")
	h.trades("A", []kline.Trade{trade(1, t0+4*60_000+1000, "10", "1", false)})
	h.tick(t0 + 12*60_000 + 1)
	h.sync()
	ex := h.c.get(kline.Key{Symbol: "A", Interval: "1m", OpenTime: t0 + 4*60_000}).Kline
	ex.Close, ex.High = 20*decimal.Unit, 20*decimal.Unit
	if err := h.e.Correct(context.Background(), "A", one, ex); err != nil {
		t.Fatal(err)
	}
	h.sync()
	for m := int64(5); m <= 12; m++ {
		if k := h.c.get(kline.Key{Symbol: "A", Interval: "1m", OpenTime: t0 + m*60_000}).Kline; k.Open != 20*decimal.Unit || k.Close != 20*decimal.Unit {
			t.Errorf("minute %d after the corrected one: %+v, want flat at 20", m, k)
		}
	}
	for _, open := range []int64{t0 + 5*60_000, t0 + 10*60_000} {
		if k := h.c.get(kline.Key{Symbol: "A", Interval: "5m", OpenTime: open}).Kline; k.Open != 20*decimal.Unit || k.Close != 20*decimal.Unit {
			t.Errorf("5m kline at %d: %+v, want flat at 20", (open-t0)/60_000, k)
		}
	}
	// The exchange's minute without a trade (a node that took the symbol
	// over rechecks one its last owner closed) carries its price too.
	flat := kline.Empty(one, t0+8*60_000, 21*decimal.Unit)
	if err := h.e.Correct(context.Background(), "A", one, flat); err != nil {
		t.Fatal(err)
	}
	h.sync()
	if k := h.c.get(kline.Key{Symbol: "A", Interval: "1m", OpenTime: t0 + 9*60_000}).Kline; k.Close != 21*decimal.Unit {
		t.Errorf("the minute after a corrected one without trades: %+v, want flat at 21", k)
	}
}

// TestCorrectedUnheldMinuteLeavesLongerKlines: a node that took a symbol
// over holds its 5m kline (from the checkpoint) but not the minutes the
// last owner closed in it; one of them is corrected from the exchange,
// which moves no longer kline, and a trade of it coming after still goes
// into the 5m kline.
func TestCorrectedUnheldMinuteLeavesLongerKlines(t *testing.T) {
	one, five := kline.OneMinute(), kline.MustInterval("5m")
	h := newHarness(t, []kline.Interval{one, five}, 0)
	h.add("A")
	ctx := context.Background()
	k5 := kline.Empty(five, t0, 10*decimal.Unit)
	first := trade(1, t0+1000, "10", "1", false)
	k5.Add(&first)
	if err := h.e.Seed(ctx, "A", five, k5, 0); err != nil {
		t.Fatal(err)
	}
	if err := h.e.Seed(ctx, "A", one, kline.Empty(one, t0+3*60_000, 10*decimal.Unit), 0); err != nil {
		t.Fatal(err)
	}
	ex := kline.Empty(one, t0+60_000, 10*decimal.Unit)
	late := trade(2, t0+61_000, "11", "1", false)
	ex.Add(&late)
	ex.FirstTradeID, ex.LastTradeID = -1, -1
	if err := h.e.Correct(ctx, "A", one, ex); err != nil {
		t.Fatal(err)
	}
	h.trades("A", []kline.Trade{late})
	h.sync()
	if got := h.c.get(kline.Key{Symbol: "A", Interval: "5m", OpenTime: t0}).Kline; got.Trades != 4 || got.High != 11*decimal.Unit {
		t.Errorf("the 5m kline after a trade of a corrected minute it was not moved by: %d trades, high %d; want 4, 11", got.Trades, got.High)
	}
}
