// Package oracle locates the real Binance data that oracle tests compare
// klagg with (../shared/data/binance, or $KLAGG_ORACLE_DIR) and loads the
// files in it.
package oracle

import (
	"compress/gzip"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/klagg/klagg/internal/binance"
	"github.com/klagg/klagg/internal/kline"
)

// Dir returns the oracle data folder. Where it is missing the test is
// skipped, except in CI (CI set), where it fails: CI must run the oracles.
func Dir(tb testing.TB) string {
	tb.Helper()
	dir := os.Getenv("KLAGG_ORACLE_DIR")
	if dir == "" {
		dir = filepath.Join(moduleRoot(), "..", "shared", "data", "binance")
	} else if !filepath.IsAbs(dir) {
		dir = filepath.Join(moduleRoot(), dir)
	}
	if _, err := os.Stat(filepath.Join(dir, "README.md")); err != nil {
		msg := fmt.Sprintf("oracle data not found at %s (set KLAGG_ORACLE_DIR to the folder holding Binance's reference data)", dir)
		if os.Getenv("CI") != "" {
			tb.Fatal(msg)
		}
		tb.Skip(msg)
	}
	return dir
}

func moduleRoot() string {
	dir, _ := os.Getwd()
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return d
		}
		if filepath.Dir(d) == d {
			return dir
		}
	}
}

// FreqtradeTrades loads the aggTrades of freqtrade's XRP/ETH sample, in file order.
func FreqtradeTrades(tb testing.TB, dir string) []kline.Trade {
	tb.Helper()
	f, err := os.Open(filepath.Join(dir, "freqtrade-spot-XRPETH-2019-10", "XRP_OLD-trades.json.gz"))
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		tb.Fatal(err)
	}
	var rows []struct {
		Info binance.AggTradeJSON `json:"info"`
	}
	if err := json.NewDecoder(zr).Decode(&rows); err != nil {
		tb.Fatal(err)
	}
	out := make([]kline.Trade, len(rows))
	for i, r := range rows {
		t, err := r.Info.Trade()
		if err != nil {
			tb.Fatal(err)
		}
		out[i] = t
	}
	return out
}
