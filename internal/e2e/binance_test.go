package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/klagg/klagg/internal/fakex"
)

// These tests meet the exchange as Binance is in 2026 (DESIGN §6): every
// run's exchange has a non-ASCII symbol, a TradFi perpetual with a daily
// break (23:50–00:10, inside every run) and a symbol in SETTLING; these add
// a refused stream, a halt, and aggTrades' retention.

// TestRefusedStream has the exchange refuse every connection naming one
// symbol's streams for several minutes: klagg splits the connection until
// that symbol is alone, the others go on, and once the exchange takes it
// again everything is repaired to the exchange's klines.
func TestRefusedStream(t *testing.T) {
	r := newRun(t, fakex.Config{}, "")
	// At 60× a second of holding is a minute of exchange time.
	r.appendExchange(`hold_max = "1s"`)
	r.startKlagg()
	r.until(3 * time.Minute)
	r.x.RefuseStreams("S004USDT")
	r.x.DropConnections()
	r.until(7 * time.Minute)
	// The others' klines go on closing on time meanwhile: within grace
	// and the hold's bound (a minute here), and the slack of klagg's
	// exchange clock at 60×. Held for the whole refusal, they would be
	// four minutes behind.
	for _, sym := range []string{"S000USDT", "S005USDT"} {
		if lag := r.closedLag(sym); lag > 3*time.Minute {
			t.Errorf("%s: the newest closed 1m kline is %s behind the exchange's clock while another symbol's stream is refused", sym, lag)
		}
	}
	r.until(8 * time.Minute)
	r.x.RefuseStreams()
	// The refused symbol's connection retries with a backoff of up to 30 s
	// of wall time, half an hour of this exchange's: give it time.
	r.until(30 * time.Minute)
	r.stop()
	if !r.logged("splitting it to find the stream at fault") {
		t.Error("klagg did not split the refused connection")
	}
	r.check(30 * time.Minute)
}

// TestHaltAndResume halts a symbol and lets it trade again: a pause is not
// a delisting, so nothing is finalized and the series goes on without a
// gap, equal to the exchange's.
func TestHaltAndResume(t *testing.T) {
	r := newRun(t, fakex.Config{}, "")
	r.startKlagg()
	r.until(3 * time.Minute)
	r.x.Pause("S001USDT", "TRADING_HALT")
	r.until(7 * time.Minute)
	r.x.Resume("S001USDT")
	r.until(11 * time.Minute)
	r.stop()
	if !r.logged("to=TRADING_HALT") {
		t.Error("klagg did not see the halt")
	}
	for _, l := range r.k.Lines() {
		if strings.Contains(l, "finalizing it") && strings.Contains(l, "S001USDT") {
			t.Errorf("a halt was taken for a delisting: %s", l)
		}
	}
	r.check(11 * time.Minute)
}

// TestOutageBeyondRetention: the exchange keeps aggregate trades for only
// a minute of its (simulated) time, and the stream stalls for longer: the
// gap can only be repaired from klines.
func TestOutageBeyondRetention(t *testing.T) {
	r := newRun(t, fakex.Config{Retention: time.Minute}, "")
	r.startKlagg()
	r.until(3 * time.Minute)
	r.x.StallConnections()
	r.until(12 * time.Minute)
	r.stop()
	if !r.logged("repairing a trade gap from klines") {
		t.Error("klagg did not repair the gap from klines")
	}
	r.check(12 * time.Minute)
}

// closedLag is how far the close time of the newest closed 1m kline klagg
// serves for sym is behind the exchange's clock.
func (r *run) closedLag(sym string) time.Duration {
	r.t.Helper()
	resp, err := http.Get(fmt.Sprintf("http://%s/fapi/v1/klines?symbol=%s&interval=1m&limit=3", strings.TrimPrefix(r.base, "http://"), sym))
	if err != nil {
		r.t.Fatal(err)
	}
	defer resp.Body.Close()
	var rows [][]json.RawMessage
	if err := json.NewDecoder(resp.Body).Decode(&rows); err != nil || len(rows) < 2 {
		r.t.Fatalf("klines of %s: %v (%d rows)", sym, err, len(rows))
	}
	var closeTime int64
	if err := json.Unmarshal(rows[len(rows)-2][6], &closeTime); err != nil {
		r.t.Fatal(err)
	}
	return r.x.Now().Sub(time.UnixMilli(closeTime))
}
