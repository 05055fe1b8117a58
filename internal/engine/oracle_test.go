package engine

import (
	"bytes"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/klagg/klagg/internal/archive"
	"github.com/klagg/klagg/internal/binance"
	"github.com/klagg/klagg/internal/decimal"
	"github.com/klagg/klagg/internal/kline"
	"github.com/klagg/klagg/internal/oracle"
)

// simpleRollup aggregates OHLCV 1m klines into iv the plain way, as a
// reference independent of kline.Merge: minutes without volume only count
// when the whole bucket has none.
func simpleRollup(iv kline.Interval, ones []kline.Kline) map[int64]kline.Kline {
	out := map[int64]kline.Kline{}
	traded := map[int64]bool{}
	for _, m := range ones {
		open := iv.Open(m.OpenTime)
		k, ok := out[open]
		if !ok {
			k = kline.Kline{OpenTime: open, Open: m.Open, High: m.High, Low: m.Low, Close: m.Close}
		}
		if !m.Volume.IsZero() {
			if !traded[open] {
				k.Open, k.High, k.Low = m.Open, m.High, m.Low
				traded[open] = true
			}
			k.High, k.Low, k.Close = max(k.High, m.High), min(k.Low, m.Low), m.Close
			k.Volume = k.Volume.Add(m.Volume)
		}
		out[open] = k
	}
	return out
}

// TestOracleFreqtradeEngine feeds Binance's XRP/ETH aggTrades through the
// engine in random batches at every Binance interval and custom ones, and
// checks every interval against the plain aggregate of Binance's own 1m
// klines.
func TestOracleFreqtradeEngine(t *testing.T) {
	dir := oracle.Dir(t)
	trades := oracle.FreqtradeTrades(t, dir)
	refs, err := archive.ReadKlines(filepath.Join(dir, "freqtrade-spot-XRPETH-2019-10", "XRP_ETH-1m.json"), "XRPETH", "1m")
	if err != nil {
		t.Fatal(err)
	}
	ref1m := refs[0].Klines[:len(refs[0].Klines)-1] // last one was open when saved
	first, lastClose := ref1m[0].OpenTime, ref1m[len(ref1m)-1].CloseTime

	ivs := kline.BinanceIntervals()
	for _, n := range []string{"2m", "10m", "90m", "2d"} {
		ivs = append(ivs, kline.MustInterval(n))
	}
	kline.SortIntervals(ivs)
	h := newHarness(t, ivs, 0)
	h.add("XRPETH")
	r := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < len(trades); {
		n := min(len(trades)-i, 1+r.IntN(300))
		h.trades("XRPETH", trades[i:i+n])
		i += n
	}
	h.tick(lastClose + 1)
	h.sync()

	for _, iv := range ivs {
		want := simpleRollup(iv, ref1m)
		got := h.c.series("XRPETH", iv.String())
		checked := 0
		for _, k := range got {
			if k.OpenTime < first || k.CloseTime > lastClose {
				continue // bucket not fully inside the reference
			}
			w, ok := want[k.OpenTime]
			if !ok {
				t.Errorf("%s: engine has kline %d the reference lacks", iv, k.OpenTime)
				continue
			}
			if k.Open != w.Open || k.High != w.High || k.Low != w.Low || k.Close != w.Close || k.Volume != w.Volume {
				t.Errorf("%s %d: got O%s H%s L%s C%s V%s, want O%s H%s L%s C%s V%s", iv, k.OpenTime,
					decimal.String(k.Open), decimal.String(k.High), decimal.String(k.Low), decimal.String(k.Close), k.Volume.String(8),
					decimal.String(w.Open), decimal.String(w.High), decimal.String(w.Low), decimal.String(w.Close), w.Volume.String(8))
			}
			if !k.Closed {
				t.Errorf("%s %d: not closed", iv, k.OpenTime)
			}
			checked++
		}
		for open := range want {
			if open >= first && iv.CloseTime(open) <= lastClose {
				checked--
			}
		}
		if checked != 0 {
			t.Errorf("%s: engine and reference disagree on the number of complete klines (off by %d)", iv, checked)
		}
	}
}

// TestOracleFuturesCapture continues a kline snapshot of a real USDⓈ-M
// stream capture with the aggTrades that follow it, and checks every kline
// Binance closed in the capture, every field and trade id. The snapshot used
// is each symbol's first one that does not end part way through a
// multi-fill aggTrade; seeding from one that does is counted as Partial.
func TestOracleFuturesCapture(t *testing.T) {
	dir := oracle.Dir(t)
	path := filepath.Join(dir, "cryptofeed-ws-captures", "BINANCE_FUTURES.ws.1.0")
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	snaps := map[string][]kline.Kline{}
	trades := map[string][]kline.Trade{}
	err = archive.EachCapturedFrame(f, func(frame []byte) error {
		switch {
		case bytes.Contains(frame, []byte(`"e":"kline"`)):
			ev, err := binance.ParseKlineEvent(frame)
			if err != nil {
				return err
			}
			k, err := ev.K.Kline()
			snaps[ev.Symbol] = append(snaps[ev.Symbol], k)
			return err
		case bytes.Contains(frame, []byte(`"e":"aggTrade"`)):
			sym, tr, err := binance.ParseAggTrade(frame)
			trades[string(sym)] = append(trades[string(sym)], tr)
			return err
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	straddles := func(sym string, L int64) bool {
		for _, tr := range trades[sym] {
			if tr.FirstID <= L && L < tr.LastID {
				return true
			}
		}
		return false
	}

	h := newHarness(t, []kline.Interval{kline.OneMinute()}, 0)
	partialSeeds := 0
	for sym, ss := range snaps {
		h.add(sym)
		i := 0
		for i < len(ss) && straddles(sym, ss[i].LastTradeID) {
			i++
		}
		if i > 0 {
			partialSeeds++
			// Seed from the straddled snapshot first: the engine must notice.
			if err := h.e.Seed(h.ctx, sym, kline.OneMinute(), ss[0], 0); err != nil {
				t.Fatal(err)
			}
			h.trades(sym, trades[sym])
			h.sync()
			if h.e.Stats().Partial == 0 {
				t.Errorf("%s: seeding part way through an aggTrade was not counted", sym)
			}
			h.e.RemoveSymbol(h.ctx, sym)
			h.add(sym)
		}
		if err := h.e.Seed(h.ctx, sym, kline.OneMinute(), ss[i], 0); err != nil {
			t.Fatal(err)
		}
		h.trades(sym, trades[sym])
	}
	h.sync()
	if partialSeeds == 0 {
		t.Error("expected at least one snapshot taken part way through an aggTrade in this capture")
	}
	refs, err := archive.ReadKlines(path, "", "")
	if err != nil {
		t.Fatal(err)
	}
	closed := 0
	for _, ref := range refs {
		got := map[int64]kline.Kline{}
		for _, k := range h.c.series(ref.Symbol, ref.Interval) {
			got[k.OpenTime] = k
		}
		for _, w := range ref.Klines {
			closed++
			g, ok := got[w.OpenTime]
			if !ok {
				t.Errorf("%s %d: no kline", ref.Symbol, w.OpenTime)
				continue
			}
			if g != w {
				t.Errorf("%s %d:\n got %+v\nwant %+v", ref.Symbol, w.OpenTime, g, w)
			}
		}
	}
	if closed != 4 {
		t.Errorf("capture has %d closed klines, want 4", closed)
	}
}
