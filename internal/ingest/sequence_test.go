package ingest

import (
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/klagg/klagg/internal/kline"
)

// The sequencer's table: each row is a sequence brought to a state by the
// given messages, then one message, and what that message must do. Time is
// an offset from t0; exchange time (msgTick's at) is given in the message.

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

var testRules = rules{gapWait: 300 * time.Millisecond, holdMax: 5 * time.Second, maxBuf: 4}

// timed is a message at an offset from t0.
type timed struct {
	d time.Duration
	m msg
}

func at(d time.Duration, m timed) timed { m.d = d; return m }

func trade(id int64) timed { return timed{m: msg{kind: msgTrade, trade: tr(id)}} }
func tradeF(id, f, l int64) timed {
	return timed{m: msg{kind: msgTrade, trade: trf(id, f, l)}}
}
func start(next int64, ids ...int64) timed {
	m := msg{kind: msgStart, id: next}
	for _, id := range ids {
		m.trades = append(m.trades, tr(id))
	}
	return timed{m: m}
}
func startAfter(last int64) timed { return timed{m: msg{kind: msgStartAfter, id: last}} }
func startAt(ms int64) timed      { return timed{m: msg{kind: msgStartAt, id: ms}} }
func resume(next int64, asOf time.Duration) timed {
	return timed{m: msg{kind: msgResume, id: next, asOf: t0.Add(asOf)}}
}
func resumeQuiet(asOf time.Duration) timed {
	return timed{m: msg{kind: msgResumeQuiet, asOf: t0.Add(asOf)}}
}
func standbyMsg() timed { return timed{m: msg{kind: msgStandby}} }
func lost() timed       { return timed{m: msg{kind: msgLost}} }
func back() timed       { return timed{m: msg{kind: msgBack}} }
func tick(exchangeMs int64) timed {
	return timed{m: msg{kind: msgTick, at: exchangeMs}}
}
func filled(from int64, ids []int64, latest int64) timed {
	m := msg{kind: msgFilled, id: from, at: latest}
	for _, id := range ids {
		m.trades = append(m.trades, tr(id))
	}
	return timed{m: m}
}
func fillFailed(invalid bool) timed {
	return timed{m: msg{kind: msgFilled, err: errors.New("refused"), invalid: invalid}}
}
func resynced(err error) timed { return timed{m: msg{kind: msgResynced, err: err}} }
func snapshot(first, last int64) timed {
	return timed{m: msg{kind: msgSnapshot, snap: &kline.Kline{Trades: last - first + 1, FirstTradeID: first, LastTradeID: last}}}
}
func anchor() timed { return timed{m: msg{kind: msgAnchor}} }

func span(from, to int64) []int64 {
	var ids []int64
	for id := from; id <= to; id++ {
		ids = append(ids, id)
	}
	return ids
}

// want is what the last message must leave and ask for.
type want struct {
	phase   phase
	forward []int64
	fetch   int64 // REST aggTrades from this id (0: none)
	resync  int64 // repair from klines from this trade time (0: none)
	hold    int64 // held before this trade time (0: not held)
	anchor  int64 // the snapshot handed out ends at this trade id (0: none)
	pending int   // trades buffered (-1: not checked)
	err     error
	// counters
	duplicates, overflowing, unfillable, released int64
}

func TestSequence(t *testing.T) {
	const retention = retentionMs
	live10 := []timed{start(10), trade(10)} // live, next 11, last trade at 10 s
	cases := []struct {
		name  string
		given []timed
		when  timed
		want  want
	}{
		// Live: the next id goes on, an earlier one is dropped, a later one waits.
		{"live: the next id is forwarded", []timed{start(10)}, trade(10), want{phase: live, forward: []int64{10}}},
		{"live: an earlier id is a duplicate", live10, trade(10), want{phase: live, duplicates: 1}},
		{"live: a later id waits, the klines held at the last trade", live10, trade(12), want{phase: live, hold: 10_000, pending: 1}},
		{"live: the same later id twice is one", append(live10, trade(12)), trade(12), want{phase: live, hold: 10_000, pending: 1, duplicates: 1}},
		{"live: the missing id releases the run behind it", append(live10, trade(12), trade(13)), trade(11), want{phase: live, forward: []int64{11, 12, 13}}},
		{"gap: stands GapWait before REST (another connection may bring it)", append(live10, trade(12)), at(299*time.Millisecond, tick(12_000)),
			want{phase: live, hold: 10_000, pending: 1}},
		{"gap: then REST aggTrades from the missing id", append(live10, trade(12)), at(300*time.Millisecond, tick(12_000)),
			want{phase: live, fetch: 11, hold: 10_000, pending: 1}},
		{"gap: one fill at a time", append(live10, trade(12), at(300*time.Millisecond, tick(12_000))), at(time.Second, tick(12_000)),
			want{phase: live, hold: 10_000, pending: 1}},
		{"gap: more than a page of ids is repaired from klines", append(live10, trade(10+fillIDs+2)), at(300*time.Millisecond, tick(12_000)),
			want{phase: resyncing, resync: 10_000, hold: (10+fillIDs+2)*1000 - 1, pending: 1}},
		{"gap: older than aggTrades keeps is repaired from klines", append(live10, trade(12)), at(300*time.Millisecond, tick(10_000+retention+1)),
			want{phase: resyncing, resync: 10_000, hold: 11_999, pending: 1}},
		{"gap: a buffer beyond the bound keeps the oldest", append(live10, trade(12), trade(13), trade(14), trade(15)), trade(16),
			want{phase: live, hold: 10_000, pending: 4, overflowing: 1}},

		// Fills from REST aggTrades.
		{"fill: the exchange's trades close the gap", append(live10, trade(13), at(300*time.Millisecond, tick(13_000))), filled(11, []int64{11, 12}, 13_000),
			want{phase: live, forward: []int64{11, 12, 13}}},
		{"fill: ids the exchange does not have are skipped", append(live10, trade(13), at(300*time.Millisecond, tick(13_000))), filled(11, nil, 13_000),
			want{phase: live, forward: []int64{13}, unfillable: 1}},
		{"fill: refused as older than kept: repaired from klines", append(live10, trade(13), at(300*time.Millisecond, tick(13_000))), fillFailed(true),
			want{phase: resyncing, hold: 12_999, pending: 1}},
		{"fill: failed: again after GapWait", append(live10, trade(13), at(300*time.Millisecond, tick(13_000)), at(time.Second, fillFailed(false))),
			at(1299*time.Millisecond, tick(13_000)), want{phase: live, hold: 10_000, pending: 1}},
		{"fill: failed: asked again", append(live10, trade(13), at(300*time.Millisecond, tick(13_000)), at(time.Second, fillFailed(false))),
			at(1300*time.Millisecond, tick(13_000)), want{phase: live, fetch: 11, hold: 10_000, pending: 1}},
		{"fill: a full page still minutes behind: repaired from klines", append(live10, trade(1011), at(300*time.Millisecond, tick(20_000))),
			filled(11, span(11, 1010), 1_011_000+3*60_000), want{phase: resyncing, forward: span(11, 1011), hold: 1_011_000}},

		// A lost connection.
		{"lost: held at the last trade", live10, lost(), want{phase: live, hold: 10_000}},
		{"lost: nothing is repaired while down", append(live10, lost()), at(time.Second, tick(11_000)), want{phase: live, hold: 10_000}},
		{"back: trades of unknown number are repaired from klines", append(live10, lost(), back()), tick(11_000),
			want{phase: resyncing, resync: 10_000, hold: 10_000}},
		{"lost: a symbol not started is not held", []timed{startAfter(5)}, lost(), want{phase: settling}},

		// Holds are bounded; a repair holds afresh.
		{"hold: released after HoldMax, counted once", append(live10, lost()), at(5001*time.Millisecond, tick(11_000)),
			want{phase: live, released: 1}},
		{"hold: released stays released", append(live10, lost(), at(5001*time.Millisecond, tick(11_000))), at(6*time.Second, tick(11_000)),
			want{phase: live}},
		{"hold: a repair starting holds afresh", append(live10, lost(), back()), at(6*time.Second, tick(11_000)),
			want{phase: resyncing, resync: 10_000, hold: 10_000}},

		// Repairs from klines.
		{"repair: one at a time", append(live10, lost(), back(), tick(11_000)), at(time.Second, tick(11_000)),
			want{phase: resyncing, hold: 10_000}},
		{"repair: failed: not again before the backoff", append(live10, lost(), back(), tick(11_000), resynced(errors.New("down"))),
			at(resyncBackoff+299*time.Millisecond, tick(11_000)), want{phase: resyncing, released: 1}},
		{"repair: failed: again after the backoff", append(live10, lost(), back(), tick(11_000), resynced(errors.New("down"))),
			at(resyncBackoff+300*time.Millisecond, tick(11_000)), want{phase: resyncing, resync: 10_000, hold: 10_000}},
		{"repair: trades arriving meanwhile wait", append(live10, lost(), back(), tick(11_000)), trade(20),
			want{phase: resyncing, hold: 19_999, pending: 1}},
		{"repair: its start goes live, its result releases", append(live10, lost(), back(), tick(11_000), start(20)), resynced(nil),
			want{phase: live}},

		// Starts.
		{"unstarted: trades wait, held before the first", nil, trade(5), want{phase: unstarted, hold: 4_999, pending: 1}},
		{"start: its trades, then the buffered run", []timed{trade(12)}, start(10, 10, 11), want{phase: live, forward: []int64{10, 11, 12}}},
		{"start: what it covers is dropped", []timed{trade(9), trade(10)}, start(10), want{phase: live, forward: []int64{10}, duplicates: 1}},
		{"start: a started symbol is not started again", live10, start(50), want{phase: live}},
		{"startAfter: the buffer holds the trade ending at L", []timed{tradeF(5, 19, 20), tradeF(6, 21, 22)}, startAfter(20),
			want{phase: live, forward: []int64{6}, duplicates: 1}},
		{"startAfter: a trade straddles L", []timed{tradeF(5, 19, 22)}, startAfter(20), want{phase: unstarted, hold: 4_999, pending: 1, err: errNoAnchor}},
		{"startAfter: nothing buffered: settles on the next trade", nil, startAfter(20), want{phase: settling}},
		{"settling: the trade after L goes live", []timed{startAfter(20)}, tradeF(6, 21, 22), want{phase: live, forward: []int64{6}}},
		{"settling: a trade inside the seed is skipped", []timed{startAfter(20)}, tradeF(5, 19, 20), want{phase: live, duplicates: 1}},
		{"settling: trades went unseen: repaired from klines", []timed{startAfter(20)}, tradeF(9, 30, 30),
			want{phase: resyncing, hold: 8_999, pending: 1}},
		{"settling: ... at once", []timed{startAfter(20), tradeF(9, 30, 30)}, tick(9_000),
			want{phase: resyncing, resync: 9_000, hold: 8_999, pending: 1}},
		{"startAt: the buffered trades at or after it go", []timed{trade(4), trade(5)}, startAt(5_000), want{phase: live, forward: []int64{5}, duplicates: 1}},
		{"startAt: nothing buffered: settles on a trade at or after it", nil, startAt(5_000), want{phase: settling}},
		{"settling at: an earlier trade waits", []timed{startAt(5_000)}, trade(4), want{phase: settling, hold: 3_999, pending: 1}},
		{"settling at: a trade at the time goes live", []timed{startAt(5_000), trade(4)}, trade(5), want{phase: live, forward: []int64{5}, duplicates: 1}},

		// Snapshots and anchors.
		{"anchor: a snapshot the buffer continues is handed out", []timed{tradeF(9, 31, 31), snapshot(16, 30)}, anchor(),
			want{phase: unstarted, anchor: 30, hold: 8_999, pending: 1}},
		{"anchor: one the buffer does not continue waits", []timed{tradeF(9, 31, 31), snapshot(16, 20)}, anchor(),
			want{phase: unstarted, hold: 8_999, pending: 1}},
		{"anchor: ... for the next snapshot", []timed{tradeF(9, 31, 31), snapshot(16, 20), anchor()}, snapshot(16, 30),
			want{phase: unstarted, anchor: 30, hold: 8_999, pending: 1}},
		{"anchor: not inside a multi-fill aggregate trade", []timed{tradeF(9, 29, 31), snapshot(16, 30)}, anchor(),
			want{phase: unstarted, hold: 8_999, pending: 1}},
		{"snapshot: ignored once live", live10, snapshot(1, 10), want{phase: live}},

		// Standby and takeover.
		{"standby: keeps trades, holds nothing", []timed{standbyMsg()}, trade(1), want{phase: standby, pending: 1}},
		{"standby: keeps the last StandbyKeep once the oldest is twice that", append([]timed{standbyMsg()}, trades(1, 121)...), trade(122),
			want{phase: standby, pending: 61}},
		{"resume: the standby holds the trade before: from the buffer", []timed{standbyMsg(), trade(5), trade(6)}, resume(6, time.Second),
			want{phase: live, forward: []int64{6}, duplicates: 1}},
		{"resume: a standby from before, no trade: nothing missed", []timed{standbyMsg()}, at(3*time.Second, resume(50, 2*time.Second)),
			want{phase: live}},
		{"resume: a standby younger than the checkpoint: held, REST asked", []timed{at(time.Minute, standbyMsg())}, at(time.Minute, resume(50, 0)),
			want{phase: live, hold: 1}},
		{"resume: ... at once", []timed{at(time.Minute, standbyMsg()), at(time.Minute, resume(50, 0))}, at(time.Minute, tick(60_000)),
			want{phase: live, fetch: 50, hold: 1}},
		{"resume: the stream goes on from the checkpoint: nothing missed", []timed{resume(50, 0)}, trade(50), want{phase: live, forward: []int64{50}}},
		{"resumeQuiet: a quiet standby since before vouches", []timed{standbyMsg()}, at(3*time.Second, resumeQuiet(2*time.Second)),
			want{phase: settling}},
		{"resumeQuiet: a standby that saw a trade does not", []timed{standbyMsg(), trade(5)}, at(3*time.Second, resumeQuiet(2*time.Second)),
			want{phase: standby, pending: 1, err: errNotCovered}},
		{"resumeQuiet: a younger standby does not", []timed{at(2*time.Second, standbyMsg())}, at(3*time.Second, resumeQuiet(2*time.Second)),
			want{phase: standby, pending: 0, err: errNotCovered}},
		{"resumeQuiet: nor a symbol never stood by", nil, resumeQuiet(0), want{phase: unstarted, err: errNotCovered}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := newSequence()
			var fx effects
			for _, g := range c.given {
				fx.reset()
				s.step(&g.m, t0.Add(g.d), &testRules, &fx)
			}
			fx.reset()
			s.step(&c.when.m, t0.Add(c.when.d), &testRules, &fx)
			err := fx.answer
			w := c.want
			if !errors.Is(err, w.err) || (err == nil) != (w.err == nil) {
				t.Errorf("err %v, want %v", err, w.err)
			}
			if s.phase != w.phase {
				t.Errorf("phase %v, want %v", s.phase, w.phase)
			}
			var fwd []int64
			for _, x := range fx.forward {
				fwd = append(fwd, x.ID)
			}
			if !slices.Equal(fwd, w.forward) {
				t.Errorf("forwarded %v, want %v", fwd, w.forward)
			}
			if got := map[bool]int64{true: fx.fetchFrom}[fx.fetch]; got != w.fetch {
				t.Errorf("fetch from %d, want %d", got, w.fetch)
			}
			if fx.resync != w.resync {
				t.Errorf("repair from klines since %d, want %d", fx.resync, w.resync)
			}
			if got := map[bool]int64{true: s.hold}[s.held]; got != w.hold {
				t.Errorf("held before %d, want %d", got, w.hold)
			}
			var anchored int64
			if fx.anchor != nil {
				anchored = fx.anchor.LastTradeID
			}
			if anchored != w.anchor {
				t.Errorf("anchor ending at %d, want %d", anchored, w.anchor)
			}
			if w.pending >= 0 && len(s.pending) != w.pending {
				t.Errorf("%d trades buffered, want %d", len(s.pending), w.pending)
			}
			for _, n := range []struct {
				name      string
				got, want int64
			}{
				{"duplicates", fx.duplicates, w.duplicates}, {"overflowing", fx.overflowing, w.overflowing},
				{"unfillable", fx.unfillable, w.unfillable}, {"released", fx.released, w.released},
			} {
				if n.got != n.want {
					t.Errorf("%s %d, want %d", n.name, n.got, n.want)
				}
			}
		})
	}
}

func trades(from, to int64) []timed {
	var ts []timed
	for id := from; id <= to; id++ {
		ts = append(ts, trade(id))
	}
	return ts
}

// BenchmarkSequenceTrade is the hot path: a live symbol's next trade,
// stepped and forwarded.
func BenchmarkSequenceTrade(b *testing.B) {
	s := newSequence()
	var fx effects
	s.step(&msg{kind: msgStart, id: 0}, t0, &testRules, &fx)
	m := msg{kind: msgTrade}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		fx.reset()
		m.trade = kline.Trade{ID: int64(i), FirstID: int64(i), LastID: int64(i), Time: int64(i)}
		s.step(&m, t0, &testRules, &fx)
	}
	if len(fx.forward) != 1 {
		b.Fatalf("forwarded %d", len(fx.forward))
	}
}
