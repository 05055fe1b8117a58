package query

import (
	"context"
	"encoding/json"
	"errors"
	"net/url"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/klagg/klagg/internal/binance"
	"github.com/klagg/klagg/internal/coverage"
	"github.com/klagg/klagg/internal/head"
	"github.com/klagg/klagg/internal/kline"
	"github.com/klagg/klagg/internal/store"
	"github.com/klagg/klagg/internal/store/sqlite"
)

var one = kline.OneMinute()

// k is minute i's kline of A with n trades, closed or open.
func k(i, n int64, closed bool) kline.Update {
	kl := kline.Empty(one, i*60_000, 100)
	kl.Trades, kl.Closed = n, closed
	return kline.Update{Symbol: "A", Interval: one, Kline: kl}
}

// TestMerge: the answer lays the head over the store by interval slot;
// of two versions a closed one wins over an open one, else the head's;
// an answer the store cannot give and the head does not hold whole is
// refused.
func TestMerge(t *testing.T) {
	for _, c := range []struct {
		name   string
		stored []kline.Update
		head   []kline.Update
		broken bool // the store cannot be read
		query  string
		want   []string // minute:trades, "o" if open; nil: refused
	}{
		{"the head's newest after the store's", []kline.Update{k(1, 1, true), k(2, 1, true), k(3, 1, false)},
			[]kline.Update{k(3, 5, true), k(4, 1, false)}, false, "limit=3", []string{"2:1", "3:5", "4:1o"}},
		{"the head's open kline over the store's", []kline.Update{k(1, 1, true), k(2, 1, false)},
			[]kline.Update{k(2, 4, false)}, false, "limit=5", []string{"1:1", "2:4o"}},
		{"a stale open kline loses to the stored closed one", []kline.Update{k(1, 1, true), k(2, 7, true), k(3, 1, false)},
			[]kline.Update{k(2, 4, false)}, false, "limit=5", []string{"1:1", "2:7", "3:1o"}},
		{"a range", []kline.Update{k(1, 1, true), k(2, 1, true), k(3, 1, false)},
			[]kline.Update{k(3, 2, true), k(4, 1, false)}, false, "startTime=120000&endTime=180000", []string{"2:1", "3:2"}},
		{"the store unreadable, the head whole", nil,
			[]kline.Update{k(3, 2, true), k(4, 1, false)}, true, "limit=2", []string{"3:2", "4:1o"}},
		{"the store unreadable, the head short", nil,
			[]kline.Update{k(3, 2, true), k(4, 1, false)}, true, "limit=3", nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			st, err := sqlite.Open(filepath.Join(t.TempDir(), "k.db"))
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			if err := st.Upsert(c.stored); err != nil {
				t.Fatal(err)
			}
			h := head.New(head.Config{Confirmed: true})
			h.Publish(c.head)
			if c.broken {
				st.Close()
			}
			values, err := url.ParseQuery("symbol=A&interval=1m&" + c.query)
			if err != nil {
				t.Fatal(err)
			}
			q, aerr := binance.ParseKlinesQuery(values)
			if aerr != nil {
				t.Fatal(aerr)
			}
			b, err := New(Config{Store: st, Head: h}).AppendKlines(context.Background(), nil, q, kline.Precision{Price: 2, Qty: 3})
			rows := answered(t, b, err, c.want == nil)
			if c.want == nil {
				return
			}
			var got []string
			for _, r := range rows {
				kl, _, err := binance.ParseKlineArray(r)
				if err != nil {
					t.Fatal(err)
				}
				s := strconv.FormatInt(kl.OpenTime/60_000, 10) + ":" + strconv.FormatInt(kl.Trades, 10)
				if kl.CloseTime >= 0 && !closedAt(c.stored, c.head, kl) {
					s += "o"
				}
				got = append(got, s)
			}
			if !slices.Equal(got, c.want) {
				t.Fatalf("answered %v, want %v", got, c.want)
			}
		})
	}
}

// answered returns the rows of an answer, or with refused checks that it
// was refused as incomplete.
func answered(t *testing.T, b []byte, err error, refused bool) [][]json.RawMessage {
	t.Helper()
	if refused {
		if !errors.Is(err, ErrIncomplete) {
			t.Fatalf("answered %s (%v); want ErrIncomplete", b, err)
		}
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var rows [][]json.RawMessage
	if err := json.Unmarshal(b, &rows); err != nil {
		t.Fatal(err)
	}
	return rows
}

// closedAt tells whether the version of kl given (by open time and trade
// count) was a closed one: Binance's rows do not say.
func closedAt(stored, head []kline.Update, kl kline.Kline) bool {
	for _, u := range slices.Concat(stored, head) {
		if u.OpenTime == kl.OpenTime && u.Trades == kl.Trades {
			return u.Closed
		}
	}
	return false
}

// exchange is the klines the exchange has of A (minute → trades), read
// through to by Fill, which stores them and records them held.
type exchange struct {
	st    *sqlite.Store
	held  *coverage.Set
	has   map[int64]int64
	fails bool
	calls int
}

func (x *exchange) Fill(_ context.Context, symbol string, iv kline.Interval, lo, hi int64, want int) error {
	x.calls++
	if x.fails {
		return errors.New("the exchange does not answer")
	}
	var ups []kline.Update
	for i := hi / 60_000; i >= lo/60_000 && (lo > 0 || len(ups) < want); i-- {
		if n, ok := x.has[i]; ok {
			ups = append(ups, k(i, n, true))
		}
	}
	if err := x.st.Upsert(ups); err != nil {
		return err
	}
	from := lo
	if lo == 0 && len(ups) == want {
		from = ups[len(ups)-1].OpenTime
	}
	return x.held.Add(store.Span{Symbol: symbol, Interval: iv, From: from, To: hi})
}

// released is the router's word on the symbols lacking trades.
type released map[string]int64

func (r released) Released() map[string]int64 { return r }

// TestReadThrough: what klagg does not hold of an answer is read through
// to the exchange first; an answer it cannot make whole is refused, never
// given short.
func TestReadThrough(t *testing.T) {
	minutes := func(from, to int64) map[int64]int64 {
		m := map[int64]int64{}
		for i := from; i <= to; i++ {
			m[i] = 3
		}
		return m
	}
	for _, c := range []struct {
		name   string
		stored int64 // minutes 1…stored are stored and held
		live   int64 // built live from this minute, open in the head; -1: not built (now is minute 10)
		has    map[int64]int64
		fails  bool
		query  string
		want   []string // nil: refused
		calls  int
	}{
		{"held whole: nothing read", 9, 10, minutes(1, 9), false, "limit=5", []string{"6:1", "7:1", "8:1", "9:1", "10:1"}, 0},
		{"only the live kline held: the rest read", 0, 10, minutes(1, 9), false, "limit=5", []string{"6:3", "7:3", "8:3", "9:3", "10:1"}, 1},
		{"a restart's hole read", 5, 9, minutes(1, 8), false, "limit=5", []string{"5:1", "6:3", "7:3", "8:3", "9:1"}, 1},
		{"a range with a hole read", 5, 9, minutes(1, 8), false, "startTime=240000&endTime=420000", []string{"4:1", "5:1", "6:3", "7:3"}, 1},
		{"before the listing: as the exchange answers", 0, 10, minutes(5, 9), false, "startTime=0&endTime=180000", []string{}, 1},
		{"fewer than asked since the listing", 0, 10, minutes(5, 9), false, "limit=500", []string{"5:3", "6:3", "7:3", "8:3", "9:3", "10:1"}, 1},
		{"the future: nothing to read", 9, 10, minutes(1, 9), false, "startTime=1200000", []string{}, 0},
		{"the exchange unreachable: refused", 0, 10, minutes(1, 9), true, "limit=5", nil, 1},
		{"lacking trades until a repair: refused", 9, 10, minutes(1, 9), false, "limit=5&released=1", nil, 0},
		{"not built live yet: refused, no weight spent", 0, -1, minutes(1, 9), false, "limit=5", nil, 0},
		{"not built live, a range in the past: read", 0, -1, minutes(1, 9), false, "startTime=60000&limit=3", []string{"1:3", "2:3", "3:3"}, 1},
		{"lacking trades after the range asked: answered", 9, 10, minutes(1, 9), false, "endTime=300000&limit=3&released=1", []string{"3:1", "4:1", "5:1"}, 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			st, err := sqlite.Open(filepath.Join(t.TempDir(), "k.db"))
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			held := coverage.New(coverage.Config{Store: st, Intervals: []kline.Interval{one}, Depth: 1000})
			var stored []kline.Update
			for i := int64(1); i <= c.stored; i++ {
				stored = append(stored, k(i, 1, true))
			}
			if err := st.Upsert(stored); err != nil {
				t.Fatal(err)
			}
			if c.stored > 0 {
				if err := held.Add(store.Span{Symbol: "A", Interval: one, From: 60_000, To: c.stored * 60_000}); err != nil {
					t.Fatal(err)
				}
			}
			h := head.New(head.Config{Confirmed: true})
			if c.live >= 0 {
				held.Live("A", c.live*60_000)
				h.Publish([]kline.Update{k(c.live, 1, false)})
			}
			x := &exchange{st: st, held: held, has: c.has, fails: c.fails}
			now := func() time.Time { return time.UnixMilli(max(c.live, 10)*60_000 + 30_000) }
			values, _ := url.ParseQuery("symbol=A&interval=1m&" + c.query)
			var repairs released
			if values.Get("released") != "" {
				repairs = released{"A": 9*60_000 + 30_000} // minute 9 lacks trades
				values.Del("released")
			}
			q, aerr := binance.ParseKlinesQuery(values)
			if aerr != nil {
				t.Fatal(aerr)
			}
			b, err := New(Config{Store: st, Head: h, Held: held, Fill: x, Now: now, Repairs: repairs}).AppendKlines(context.Background(), nil, q, kline.Precision{Price: 2, Qty: 3})
			if x.calls != c.calls {
				t.Errorf("read through %d times, want %d", x.calls, c.calls)
			}
			rows := answered(t, b, err, c.want == nil)
			if c.want == nil {
				return
			}
			got := []string{}
			for _, r := range rows {
				kl, _, err := binance.ParseKlineArray(r)
				if err != nil {
					t.Fatal(err)
				}
				got = append(got, strconv.FormatInt(kl.OpenTime/60_000, 10)+":"+strconv.FormatInt(kl.Trades, 10))
			}
			if !slices.Equal(got, c.want) {
				t.Fatalf("answered %v, want %v", got, c.want)
			}
		})
	}
}

// TestAwaited: klines another node closed and this node has not read
// (its newer open kline came first) are waited for a moment, then the
// answer is refused, never given with a hole; once stored, it is whole.
func TestAwaited(t *testing.T) {
	st, err := sqlite.Open(filepath.Join(t.TempDir(), "k.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	held := coverage.New(coverage.Config{Store: st, Intervals: []kline.Interval{one}, Depth: 1000, Shared: true,
		Alive: func(n string) bool { return n == "b" }, Now: func() time.Time { return time.UnixMilli(9*60_000 + 30_000) }})
	held.Remote("A", "b", 60_000, 9*60_000, 1, 0) // b builds A live since minute 1
	h := head.New(head.Config{Confirmed: true})
	var ks []kline.Update
	for i := int64(1); i <= 7; i++ {
		ks = append(ks, k(i, 1, true))
	}
	h.Publish(append(ks, k(9, 1, false))) // minute 8 closed by b, not read here
	held.Awaiting("A", one, 8*60_000, 8*60_000)
	q, aerr := binance.ParseKlinesQuery(url.Values{"symbol": {"A"}, "interval": {"1m"}, "limit": {"5"}})
	if aerr != nil {
		t.Fatal(aerr)
	}
	r := New(Config{Store: st, Head: h, Held: held, Now: func() time.Time { return time.UnixMilli(9*60_000 + 30_000) }})
	if _, err := r.AppendKlines(context.Background(), nil, q, kline.Precision{Price: 2, Qty: 3}); !errors.Is(err, ErrIncomplete) {
		t.Fatalf("minute 8 awaited: %v, want it refused", err)
	}
	// Stored (the sinks read it from the stream) though the feed has not
	// read it yet: answered.
	if err := st.Upsert([]kline.Update{k(8, 1, true)}); err != nil {
		t.Fatal(err)
	}
	b, err := r.AppendKlines(context.Background(), nil, q, kline.Precision{Price: 2, Qty: 3})
	if rows := answered(t, b, err, false); len(rows) != 5 {
		t.Fatalf("minute 8 stored: %d klines, want 5", len(rows))
	}
}
