package coverage

import (
	"context"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/klagg/klagg/internal/kline"
	"github.com/klagg/klagg/internal/store"
	"github.com/klagg/klagg/internal/store/sqlite"
)

const m = int64(60_000)

var oneMin = kline.OneMinute()

func openStore(t *testing.T, path string) *sqlite.Store {
	t.Helper()
	st, err := sqlite.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

func span(from, to int64) store.Span {
	return store.Span{Symbol: "X", Interval: oneMin, From: from * m, To: to * m}
}

func closed(open int64) kline.Update {
	return kline.Update{Symbol: "X", Interval: oneMin, Kline: kline.Kline{OpenTime: open * m, Closed: true}}
}

func TestMissing(t *testing.T) {
	c := New(openStore(t, filepath.Join(t.TempDir(), "k.db")), []kline.Interval{oneMin}, 10, func() time.Time { return time.UnixMilli(55 * m) }, nil)
	for _, p := range []store.Span{span(10, 19), span(30, 39), span(60, 70)} {
		if err := c.Add(p); err != nil {
			t.Fatal(err)
		}
	}
	c.Live("X", 50*m)
	for _, tc := range []struct {
		name   string
		lo, hi int64
		want   []store.Span
	}{
		{"inside a span", 11, 19, nil},
		{"across two spans", 15, 35, []store.Span{span(20, 29)}},
		{"before everything", 0, 12, []store.Span{span(0, 9)}},
		{"up to the live span", 35, 60, []store.Span{span(40, 49)}},
		{"inside the live span, up to any time", 50, 10_000, nil},
		{"everything", 0, 100, []store.Span{span(0, 9), span(20, 29), span(40, 49)}},
		{"a span read inside the live span changes nothing", 52, 80, nil},
	} {
		if got := c.Missing("X", oneMin, tc.lo*m, tc.hi*m); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s: Missing(%d, %d) = %v, want %v", tc.name, tc.lo, tc.hi, got, tc.want)
		}
	}
	if got := c.Missing("Y", oneMin, 0, 5*m); !reflect.DeepEqual(got, []store.Span{{Symbol: "Y", Interval: oneMin, From: 0, To: 5 * m}}) {
		t.Errorf("a series never seen: %v", got)
	}
	// Backfill wants the last 10 before the live span, newest first.
	if got, want := c.Wanted("X", oneMin, 50*m), []store.Span{span(40, 49)}; !reflect.DeepEqual(got, want) {
		t.Errorf("Wanted = %v, want %v", got, want)
	}
	f := c.Figures()
	if f.Series != 1 || f.Missing != 10 || f.Gaps != 1 || f.Held != 6 || f.Whole {
		t.Errorf("Figures = %+v, want 1 series, 6 held, 10 missing in 1 gap", f)
	}
}

// TestLiveSpans: a live span holds everything from its start; what the
// store confirmed of it is recorded, and only that survives a restart or
// a stop.
func TestLiveSpans(t *testing.T) {
	path := filepath.Join(t.TempDir(), "k.db")
	st := openStore(t, path)
	c := New(st, []kline.Interval{oneMin}, 5, nil, nil)
	c.Live("X", 100*m)
	if !c.Holds("X", oneMin, 100*m, 200*m) {
		t.Fatal("the live span does not hold what comes after its start")
	}
	c.Stored([]kline.Update{closed(99), closed(100), closed(101), {Symbol: "X", Interval: oneMin, Kline: kline.Kline{OpenTime: 102 * m}}})
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	// A restart knows what the store confirmed, and no more.
	again := New(st, []kline.Interval{oneMin}, 5, nil, nil)
	if err := again.Load(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got, want := again.Missing("X", oneMin, 95*m, 105*m), []store.Span{span(95, 99), span(102, 105)}; !reflect.DeepEqual(got, want) {
		t.Errorf("after a restart: missing %v, want %v", got, want)
	}
	// Built live again from 110: the stop between is wanted whole,
	// newest first, and so is the depth before the first span.
	again.Live("X", 110*m)
	if got, want := again.Wanted("X", oneMin, 110*m), []store.Span{span(102, 109)}; !reflect.DeepEqual(got, want) {
		t.Errorf("Wanted after a stop = %v, want %v", got, want)
	}
	// Stopped here: the live span ends where the store's holdings do.
	again.Stored([]kline.Update{closed(110), closed(111)})
	again.Stop("X")
	if got, want := again.Missing("X", oneMin, 100*m, 115*m), []store.Span{span(102, 109), span(112, 115)}; !reflect.DeepEqual(got, want) {
		t.Errorf("after a stop: missing %v, want %v", got, want)
	}
	// Delisted: nothing comes after the live span, ever.
	again.Live("X", 120*m)
	again.End("X")
	if !again.Holds("X", oneMin, 120*m, 1_000_000*m) || again.Holds("X", oneMin, 119*m, 120*m) {
		t.Errorf("after the end: %v", again.Missing("X", oneMin, 100*m, 1_000_000*m))
	}
}

// TestPartialKlinesAreNotConfirmed: a closed kline stored while it lacked
// trades holds the live span's record back until its correction is
// stored: a crash in between leaves it to be read again.
func TestPartialKlinesAreNotConfirmed(t *testing.T) {
	st := openStore(t, filepath.Join(t.TempDir(), "k.db"))
	c := New(st, []kline.Interval{oneMin}, 5, nil, nil)
	c.Live("X", 100*m)
	partial := closed(102)
	partial.Partial = true
	c.Stored([]kline.Update{closed(100), closed(101), partial, closed(103)})
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	recorded := func() []store.Span {
		t.Helper()
		again := New(st, []kline.Interval{oneMin}, 5, nil, nil)
		if err := again.Load(context.Background()); err != nil {
			t.Fatal(err)
		}
		return again.Missing("X", oneMin, 100*m, 105*m)
	}
	if got, want := recorded(), []store.Span{span(102, 105)}; !reflect.DeepEqual(got, want) {
		t.Errorf("with minute 102 partial: missing %v after a restart, want %v", got, want)
	}
	c.Stored([]kline.Update{closed(102)}) // the repair's correction
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	if got, want := recorded(), []store.Span{span(104, 105)}; !reflect.DeepEqual(got, want) {
		t.Errorf("corrected: missing %v after a restart, want %v", got, want)
	}
}
