package head

import (
	"context"
	"slices"
	"strconv"
	"testing"

	"github.com/klagg/klagg/internal/kline"
	"github.com/klagg/klagg/internal/store"
)

var one = kline.OneMinute()

// k is minute i's kline of A with n trades, closed or open.
func k(i, n int64, closed bool) kline.Update {
	kl := kline.Empty(one, i*60_000, 100)
	kl.Trades, kl.Closed = n, closed
	return kline.Update{Symbol: "A", Interval: one, Kline: kl}
}

// held lists what the head holds of A 1m as minute:trades, with a trailing
// "o" for an open kline.
func held(t *testing.T, h *Head) []string {
	t.Helper()
	ks, err := h.Klines(context.Background(), store.Query{Symbol: "A", Interval: one})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, kl := range ks {
		s := itoa(kl.OpenTime/60_000) + ":" + itoa(kl.Trades)
		if !kl.Closed {
			s += "o"
		}
		out = append(out, s)
	}
	return out
}

func itoa(v int64) string { return strconv.FormatInt(v, 10) }

// TestHead: what the head keeps as klines are published, streamed and
// confirmed, with and without something to confirm them.
func TestHead(t *testing.T) {
	type step struct {
		publish  []kline.Update
		streamed []kline.Update // at sequences 1, 2, … in order over the test
		stored   []kline.Update
		through  uint64
	}
	for _, c := range []struct {
		name      string
		confirmed bool
		steps     []step
		want      []string
	}{
		{"the newest changes in place", true,
			[]step{{publish: []kline.Update{k(1, 1, false), k(1, 2, false)}}}, []string{"1:2o"}},
		{"a closed kline stays until stored", true,
			[]step{{publish: []kline.Update{k(1, 2, true), k(2, 1, false)}}}, []string{"1:2", "2:1o"}},
		{"stored, it goes", true,
			[]step{{publish: []kline.Update{k(1, 2, true), k(2, 1, false)}}, {stored: []kline.Update{k(1, 2, true)}}}, []string{"2:1o"}},
		{"an older version stored keeps the newer", true,
			[]step{{publish: []kline.Update{k(1, 2, true), k(1, 3, true), k(2, 1, false)}}, {stored: []kline.Update{k(1, 2, true)}}}, []string{"1:3", "2:1o"}},
		{"the newest stays though stored", true,
			[]step{{publish: []kline.Update{k(1, 2, true)}}, {stored: []kline.Update{k(1, 2, true)}}}, []string{"1:2"}},
		{"an open version stored releases nothing", true,
			[]step{{publish: []kline.Update{k(1, 2, true), k(2, 1, false)}}, {stored: []kline.Update{k(1, 2, false)}}}, []string{"1:2", "2:1o"}},
		{"many closed before the store takes them", true,
			[]step{{publish: []kline.Update{k(1, 1, true), k(2, 1, true), k(3, 1, true), k(4, 1, false)}}}, []string{"1:1", "2:1", "3:1", "4:1o"}},
		{"an older closed kline (a repair) is kept in order", true,
			[]step{{publish: []kline.Update{k(1, 1, true), k(3, 1, false)}}, {publish: []kline.Update{k(2, 5, true)}}}, []string{"1:1", "2:5", "3:1o"}},
		{"without a confirmer only the newest closed stays", false,
			[]step{{publish: []kline.Update{k(1, 1, true), k(2, 1, true), k(3, 1, false)}}}, []string{"2:1", "3:1o"}},
		{"without a confirmer an older kline is not kept", false,
			[]step{{publish: []kline.Update{k(3, 1, false)}}, {publish: []kline.Update{k(1, 5, true)}}}, []string{"3:1o"}},
		{"streamed until the sinks' floor passes", true,
			[]step{{streamed: []kline.Update{k(1, 1, true), k(2, 1, true)}}, {publish: []kline.Update{k(3, 1, false)}}, {through: 1}}, []string{"2:1", "3:1o"}},
		{"the engine's copy is released by the stream's floor", true,
			[]step{{publish: []kline.Update{k(1, 1, true), k(2, 1, false)}}, {streamed: []kline.Update{k(1, 1, true)}}, {through: 1}}, []string{"2:1o"}},
		{"a newer version after the streamed one waits for its own", true,
			[]step{{streamed: []kline.Update{k(1, 1, true)}}, {publish: []kline.Update{k(1, 2, true), k(2, 1, false)}}, {through: 1}}, []string{"1:2", "2:1o"}},
		{"the floor spares what was not streamed", true,
			[]step{{publish: []kline.Update{k(1, 1, true), k(2, 1, false)}}, {through: 9}}, []string{"1:1", "2:1o"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			h := New(Config{Confirmed: c.confirmed})
			var seq uint64
			for _, s := range c.steps {
				h.Publish(s.publish)
				if len(s.streamed) > 0 {
					seqs := make([]uint64, len(s.streamed))
					for i := range seqs {
						seq++
						seqs[i] = seq
					}
					h.Streamed(s.streamed, seqs)
				}
				h.Stored(s.stored)
				if s.through > 0 {
					h.StoredThrough(s.through)
				}
			}
			if got := held(t, h); !slices.Equal(got, c.want) {
				t.Fatalf("holds %v, want %v", got, c.want)
			}
			if want := len(c.want) - 1; h.Pending() != want {
				t.Fatalf("Pending() = %d, want %d", h.Pending(), want)
			}
		})
	}
}

// TestHeadQuery: the head answers the store's query over what it holds.
func TestHeadQuery(t *testing.T) {
	h := New(Config{Confirmed: true})
	for i := int64(1); i <= 5; i++ {
		h.Publish([]kline.Update{k(i, i, i < 5)})
	}
	for _, c := range []struct {
		q    store.Query
		want []int64
	}{
		{store.Query{}, []int64{1, 2, 3, 4, 5}},
		{store.Query{Start: 2 * 60_000, End: 4 * 60_000}, []int64{2, 3, 4}},
		{store.Query{Start: 2*60_000 + 1}, []int64{3, 4, 5}},
		{store.Query{End: 3*60_000 - 1}, []int64{1, 2}},
		{store.Query{Limit: 2}, []int64{1, 2}},
		{store.Query{Limit: 2, FromEnd: true}, []int64{4, 5}},
		{store.Query{End: 4 * 60_000, Limit: 2, FromEnd: true}, []int64{3, 4}},
		{store.Query{Start: 9 * 60_000}, nil},
	} {
		c.q.Symbol, c.q.Interval = "A", one
		ks, err := h.Klines(context.Background(), c.q)
		if err != nil {
			t.Fatal(err)
		}
		var got []int64
		for _, kl := range ks {
			got = append(got, kl.OpenTime/60_000)
		}
		if !slices.Equal(got, c.want) {
			t.Errorf("%+v: minutes %v, want %v", c.q, got, c.want)
		}
	}
	if ks, _ := h.Klines(context.Background(), store.Query{Symbol: "B", Interval: one}); len(ks) != 0 {
		t.Errorf("an unknown series answered %v", ks)
	}
}

// TestHeadBound: beyond MaxPending unconfirmed klines the oldest go, never
// a series' newest.
func TestHeadBound(t *testing.T) {
	h := New(Config{Confirmed: true})
	us := make([]kline.Update, 0, 1000)
	for i := range int64(MaxPending + 2) {
		us = append(us, k(i, 1, true))
		if len(us) == cap(us) {
			h.Publish(us)
			us = us[:0]
		}
	}
	h.Publish(us)
	if n := h.Pending(); n > MaxPending || n < MaxPending/2 {
		t.Fatalf("%d pending after %d; want at most %d, at least half", n, MaxPending+1, MaxPending)
	}
	if newest, ok := h.Newest("A", one); !ok || newest.OpenTime != (MaxPending+1)*60_000 {
		t.Fatalf("newest %+v, want minute %d", newest, MaxPending+1)
	}
}

// TestPrice: the last trade's price, else the newest 1m kline's close.
func TestPrice(t *testing.T) {
	h := New(Config{})
	if _, _, ok := h.Price("A", 1e12); ok {
		t.Fatal("a price with nothing known")
	}
	h.Publish([]kline.Update{k(1, 1, false)})
	if p, at, ok := h.Price("A", 90_000); !ok || p != 100 || at != 90_000 {
		t.Fatalf("from the kline: %d at %d (%v)", p, at, ok)
	}
	if _, at, _ := h.Price("A", 1e12); at != 2*60_000-1 {
		t.Fatalf("from the kline, later: at %d, want its close time", at)
	}
	h.Trades("A", []kline.Trade{{Price: 7, Time: 5}, {Price: 8, Time: 6}})
	h.Trades("A", []kline.Trade{{Price: 9, Time: 4}}) // older: ignored
	if p, at, ok := h.Price("A", 1e12); !ok || p != 8 || at != 6 {
		t.Fatalf("from the trades: %d at %d (%v)", p, at, ok)
	}
}

// BenchmarkPublish is the head's share of the engine's hot path: a batch
// of open-kline changes over 7,150 series (550 symbols, 13 intervals), as
// the engine flushes them.
//
//	go test -run '^$' -bench Publish ./internal/head/
func BenchmarkPublish(b *testing.B) {
	h := New(Config{Confirmed: true})
	us := make([]kline.Update, 7150)
	for i := range us {
		us[i] = k(1, 1, false)
		us[i].Symbol = "S" + strconv.Itoa(i/13)
		us[i].Series = uint32(i + 1)
	}
	h.Publish(us)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for j := range us {
			us[j].Trades = int64(i)
		}
		h.Publish(us)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(us)), "ns/update")
}
