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
	c := New(Config{Store: openStore(t, filepath.Join(t.TempDir(), "k.db")), Intervals: []kline.Interval{oneMin}, Depth: 10, Now: func() time.Time { return time.UnixMilli(55 * m) }})
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
	c := New(Config{Store: st, Intervals: []kline.Interval{oneMin}, Depth: 5})
	c.Live("X", 100*m)
	if !c.Holds("X", oneMin, 100*m, 200*m) {
		t.Fatal("the live span does not hold what comes after its start")
	}
	c.Stored([]kline.Update{closed(99), closed(100), closed(101), {Symbol: "X", Interval: oneMin, Kline: kline.Kline{OpenTime: 102 * m}}})
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	// A restart knows what the store confirmed, and no more.
	again := New(Config{Store: st, Intervals: []kline.Interval{oneMin}, Depth: 5})
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
	c := New(Config{Store: st, Intervals: []kline.Interval{oneMin}, Depth: 5})
	c.Live("X", 100*m)
	partial := closed(102)
	partial.Partial = true
	c.Stored([]kline.Update{closed(100), closed(101), partial, closed(103)})
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	recorded := func() []store.Span {
		t.Helper()
		again := New(Config{Store: st, Intervals: []kline.Interval{oneMin}, Depth: 5})
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

// TestStopRecordsTheEndedSpan: what a stop ends of a live span, and a
// delisting's forever, are recorded at the next flush, so that a restart
// (or another node of a cluster) knows them.
func TestStopRecordsTheEndedSpan(t *testing.T) {
	st := openStore(t, filepath.Join(t.TempDir(), "k.db"))
	c := New(Config{Store: st, Intervals: []kline.Interval{oneMin}, Depth: 5})
	c.Live("X", 100*m)
	c.Stored([]kline.Update{closed(100), closed(101), closed(102)})
	c.Stop("X") // before any flush
	c.Live("Y", 10*m)
	c.End("Y")
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	again := New(Config{Store: st, Intervals: []kline.Interval{oneMin}, Depth: 5})
	if err := again.Load(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got, want := again.Missing("X", oneMin, 99*m, 103*m), []store.Span{span(99, 99), span(103, 103)}; !reflect.DeepEqual(got, want) {
		t.Errorf("after a stop and a restart: missing %v, want %v", got, want)
	}
	if !again.Holds("Y", oneMin, 10*m, 1_000_000*m) {
		t.Errorf("a delisted symbol's forever was not recorded: missing %v", again.Missing("Y", oneMin, 10*m, 1_000_000*m))
	}
}

// TestRemote: a symbol another node builds is held from the minute its
// checkpoints say it is built live since: up to now while the owner lives
// and has resumed it, else up to the minute its last checkpoint stood at.
func TestRemote(t *testing.T) {
	alive := map[string]bool{"a": true, "b": true}
	type step struct {
		owner        string
		m0, open, at int64
	}
	for _, tc := range []struct {
		name  string
		steps []step
		lo    int64
		want  []store.Span // of [lo, 210]
	}{
		{"alive: held from m0 on", []step{{"a", 150 * m, 199 * m, 1}}, 140, []store.Span{span(140, 149)}},
		{"built from its first trade", []step{{"a", 0, 199 * m, 1}}, 0, nil},
		{"owner dead: held up to its last checkpoint", []step{{"dead", 150 * m, 190 * m, 1}}, 150, []store.Span{span(190, 210)}},
		{"released: the same until taken", []step{{"", 150 * m, 199 * m, 1}}, 150, []store.Span{span(199, 210)}},
		{"taken over, not resumed (no owner yet, as the feed tells it)", []step{{"a", 150 * m, 195 * m, 1}, {"", 150 * m, 195 * m, 1}}, 150, []store.Span{span(195, 210)}},
		{"taken over and resumed", []step{{"a", 150 * m, 195 * m, 1}, {"", 150 * m, 195 * m, 1}, {"b", 150 * m, 195 * m, 2}}, 150, nil},
		{"seeded afresh by the new owner", []step{{"a", 150 * m, 195 * m, 1}, {"b", 199 * m, 199 * m, 2}}, 150, []store.Span{span(150, 198)}},
		{"owner dead this minute: the open kline is held while open", []step{{"dead", 150 * m, 200 * m, 1}}, 150, []store.Span{span(201, 210)}},
	} {
		c := New(Config{Store: openStore(t, filepath.Join(t.TempDir(), "k.db")), Intervals: []kline.Interval{oneMin}, Depth: 5,
			Now: func() time.Time { return time.UnixMilli(200*m + 30_000) }, Shared: true, Alive: func(n string) bool { return alive[n] }})
		for _, s := range tc.steps {
			c.Remote("X", s.owner, s.m0, s.open, s.at, 0)
		}
		if got := c.Missing("X", oneMin, tc.lo*m, 210*m); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s: missing %v, want %v", tc.name, got, tc.want)
		}
	}
	// With minutes the owner may not have checked: those before its
	// checkpoint are not held either, nor is the kline open then.
	u := New(Config{Store: openStore(t, filepath.Join(t.TempDir(), "k.db")), Intervals: []kline.Interval{oneMin}, Depth: 5,
		Now: func() time.Time { return time.UnixMilli(200*m + 30_000) }, Shared: true, Alive: func(n string) bool { return alive[n] },
		Unchecked: 3 * time.Minute})
	u.Remote("X", "", 150*m, 200*m, 1, 0)
	if got, want := u.Missing("X", oneMin, 150*m, 210*m), []store.Span{span(197, 210)}; !reflect.DeepEqual(got, want) {
		t.Errorf("released, 3 minutes unchecked: missing %v, want %v", got, want)
	}
	// Built here too: the node's own live span wins over any checkpoint.
	c := New(Config{Store: openStore(t, filepath.Join(t.TempDir(), "k.db")), Intervals: []kline.Interval{oneMin}, Depth: 5,
		Shared: true, Alive: func(string) bool { return false }})
	c.Remote("X", "dead", 150*m, 160*m, 1, 0)
	c.Live("X", 100*m)
	if got := c.Missing("X", oneMin, 100*m, 210*m); got != nil {
		t.Errorf("built here: missing %v", got)
	}
	if m0, ok := c.LiveSince("X"); !ok || m0 != 100*m {
		t.Errorf("LiveSince = %d %v, want %d", m0, ok, 100*m)
	}
	// Built by a live node, whole, or lacking trades until a repair.
	b := New(Config{Store: openStore(t, filepath.Join(t.TempDir(), "k.db")), Intervals: []kline.Interval{oneMin}, Depth: 5,
		Shared: true, Alive: func(n string) bool { return alive[n] }})
	if b.Building("Y") {
		t.Error("a symbol nobody builds is building")
	}
	b.Remote("Y", "a", 150*m, 200*m, 1, 199*m)
	if b.Building("Y") {
		t.Error("a symbol lacking trades is building")
	}
	b.Remote("Y", "a", 150*m, 200*m, 2, 0)
	if !b.Building("Y") || !c.Building("X") {
		t.Error("a symbol built live is not building")
	}
}

// TestRefresh: a node sharing the store learns what another recorded.
func TestRefresh(t *testing.T) {
	path := filepath.Join(t.TempDir(), "k.db")
	a := New(Config{Store: openStore(t, path), Intervals: []kline.Interval{oneMin}, Depth: 5, Shared: true})
	b := New(Config{Store: openStore(t, path), Intervals: []kline.Interval{oneMin}, Depth: 5, Shared: true})
	if err := b.Add(span(0, 9)); err != nil {
		t.Fatal(err)
	}
	if err := a.Add(span(20, 29)); err != nil {
		t.Fatal(err)
	}
	if err := a.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got, want := a.Missing("X", oneMin, 0, 30*m), []store.Span{span(10, 19), span(30, 30)}; !reflect.DeepEqual(got, want) {
		t.Errorf("after a refresh: missing %v, want %v", got, want)
	}
}

// TestAwaited: slots awaited from the node that builds a symbol are
// awaited until the feed reads them or a read through stores them; a
// symbol built here awaits nothing.
func TestAwaited(t *testing.T) {
	c := New(Config{Store: openStore(t, filepath.Join(t.TempDir(), "k.db")), Intervals: []kline.Interval{oneMin}, Depth: 5, Shared: true})
	c.Awaiting("X", oneMin, 10*m, 12*m)
	if !c.Awaited("X", oneMin, 12*m, 20*m) || c.Awaited("X", oneMin, 13*m, 20*m) || c.Awaited("Y", oneMin, 0, 20*m) {
		t.Error("awaited slots misread")
	}
	if err := c.Add(span(5, 10)); err != nil {
		t.Fatal(err)
	}
	if c.Awaited("X", oneMin, 10*m, 10*m) || !c.Awaited("X", oneMin, 11*m, 11*m) {
		t.Error("a read through of an awaited slot left it awaited")
	}
	c.Awaiting("X", oneMin, 13*m, 12*m)
	if c.Awaited("X", oneMin, 0, 20*m) {
		t.Error("awaited after the feed read them")
	}
	c.Awaiting("X", oneMin, 10*m, 12*m)
	c.Live("X", 5*m)
	if c.Awaited("X", oneMin, 0, 20*m) {
		t.Error("a symbol built here awaits its own klines")
	}
}
