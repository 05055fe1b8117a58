package kline_test

import (
	"path/filepath"
	"testing"

	"github.com/klagg/klagg/internal/archive"
	"github.com/klagg/klagg/internal/kline"
	"github.com/klagg/klagg/internal/oracle"
	"github.com/klagg/klagg/internal/verify"
)

// TestOracleFreqtradeSeries rebuilds Binance's XRP/ETH 1m klines from its
// aggTrades, empty minutes included.
func TestOracleFreqtradeSeries(t *testing.T) {
	dir := oracle.Dir(t)
	trades := oracle.FreqtradeTrades(t, dir)
	refs, err := archive.ReadKlines(filepath.Join(dir, "freqtrade-spot-XRPETH-2019-10", "XRP_ETH-1m.json"), "XRPETH", "1m")
	if err != nil {
		t.Fatal(err)
	}
	ref := refs[0]
	if len(ref.Klines) != 3560 {
		t.Fatalf("reference has %d klines, want 3560", len(ref.Klines))
	}
	ref.Klines = ref.Klines[:len(ref.Klines)-1] // the last one was still open when saved

	s, _ := kline.NewSeries(kline.OneMinute())
	// Reverse order: aggregation must not depend on it.
	for i := len(trades) - 1; i >= 0; i-- {
		s.Add(&trades[i])
	}
	s.Add(&trades[100]) // a repeat changes nothing
	if s.Duplicates() != 1 {
		t.Fatalf("duplicates = %d, want 1", s.Duplicates())
	}
	rep := verify.New(5)
	rep.Compare(ref, s.Klines())
	if !rep.OK() || rep.Compared != 3559 {
		t.Errorf("compared %d, equal %d, missing ours %d, missing reference %d, first: %+v",
			rep.Compared, rep.Equal, rep.MissingOurs, rep.MissingReference, rep.First)
	}
}
