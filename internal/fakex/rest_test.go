package fakex

import (
	"encoding/json"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/klagg/klagg/internal/binance"
)

// TestKlinesFromStartTime: klines are identified by their open time, so
// the first answered to a startTime inside a minute is the next minute's.
func TestKlinesFromStartTime(t *testing.T) {
	start := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	x, err := New(Config{Symbols: 1, Start: start, Speed: 60, MeanGap: time.Second, History: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer x.Close()
	for _, c := range []struct{ start, first int64 }{
		{start.Add(-30*time.Minute + 30*time.Second).UnixMilli(), start.Add(-29 * time.Minute).UnixMilli()},
		{start.Add(-30 * time.Minute).UnixMilli(), start.Add(-30 * time.Minute).UnixMilli()},
	} {
		resp, err := http.Get(fmt.Sprintf("%s/fapi/v1/klines?symbol=S000USDT&interval=1m&limit=2&startTime=%d", x.URL(), c.start))
		if err != nil {
			t.Fatal(err)
		}
		var rows [][]json.RawMessage
		err = json.NewDecoder(resp.Body).Decode(&rows)
		resp.Body.Close()
		if err != nil || len(rows) == 0 {
			t.Fatalf("startTime %d: %v %v", c.start, rows, err)
		}
		k, _, err := binance.ParseKlineArray(rows[0])
		if err != nil || k.OpenTime != c.first {
			t.Errorf("startTime %d: first kline opens at %d (%v), want %d", c.start, k.OpenTime, err, c.first)
		}
	}
}
