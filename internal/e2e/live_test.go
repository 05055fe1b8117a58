package e2e

import (
	"net/http"
	"testing"
	"time"

	"github.com/klagg/klagg/internal/fakex"
)

// Every test runs the real binary against a fake exchange whose clock runs
// 60× faster than the wall clock, then compares the store with the
// exchange's reference klines, every field of every closed kline.

func TestSteadyState(t *testing.T) {
	r := newRun(t, fakex.Config{Symbols: 50, WeightPerMinute: 6000}, "")
	r.appendExchange(`weight_per_minute = 6000`)
	r.startKlagg()
	r.until(30 * time.Minute)
	r.stop()
	r.check(30 * time.Minute)
	r.checkSnapshot()
}

func TestDroppedConnection(t *testing.T) {
	r := newRun(t, fakex.Config{}, "")
	r.startKlagg()
	closings := r.closings(t, "S001USDT")
	r.until(4 * time.Minute)
	r.x.DropConnections()
	r.until(10 * time.Minute)
	r.stop()
	if !r.logged("trade stream lost; reconnecting") {
		t.Error("klagg did not notice the dropped connection")
	}
	r.check(10 * time.Minute)
	// A stream client saw each kline close once it was whole, across the
	// drop too.
	r.checkClosings("S001USDT", closings())
}

func TestStalledConnection(t *testing.T) {
	r := newRun(t, fakex.Config{}, "")
	r.startKlagg()
	r.until(4 * time.Minute)
	r.x.StallConnections()
	r.until(12 * time.Minute)
	r.stop()
	if !r.logged("trade stream silent; dropping it") {
		t.Error("klagg did not notice the stalled connection")
	}
	r.check(12 * time.Minute)
}

func TestLongOutage(t *testing.T) {
	// Busy symbols and a stream silent for longer than a page of their
	// trades spans: klagg must repair the gap from klines, not trade by
	// trade. At 20× a 12 s read timeout is 4 simulated minutes.
	r := newRun(t, fakex.Config{Symbols: 3, MeanGap: 50 * time.Millisecond, QuietEvery: -1, Speed: 20, History: 30 * time.Minute}, "")
	r.appendExchange(`read_timeout = "12s"`)
	r.startKlagg()
	r.until(3 * time.Minute)
	r.x.StallConnections()
	r.until(13 * time.Minute)
	r.stop()
	if !r.logged("repairing a trade gap from klines") {
		t.Error("klagg did not resync from klines after a long outage")
	}
	r.check(13 * time.Minute)
}

func TestLifetimeCutAndRotation(t *testing.T) {
	// Connections live 8 s of wall time (8 simulated minutes); klagg
	// rotates after 5 s, and one cut comes without warning.
	r := newRun(t, fakex.Config{Lifetime: 8 * time.Second}, "")
	r.appendExchange(`rotate_after = "5s"`)
	r.startKlagg()
	r.until(3 * time.Minute)
	r.x.CutAtLifetime()
	r.until(14 * time.Minute)
	r.stop()
	if !r.logged("rotating trade stream before its lifetime ends") {
		t.Error("klagg never rotated its connection")
	}
	r.check(14 * time.Minute)
}

func TestMalformedFrames(t *testing.T) {
	r := newRun(t, fakex.Config{}, "")
	r.startKlagg()
	r.until(3 * time.Minute)
	r.x.SendMalformed(50)
	r.until(8 * time.Minute)
	r.stop()
	if !r.logged("malformed frame ignored") {
		t.Error("malformed frames were not reported")
	}
	r.check(8 * time.Minute)
}

// TestHiddenTrades has the exchange keep trades out of its streams, as it
// does with insurance-fund trades: reconciliation must find every one and
// carry it into every interval.
func TestHiddenTrades(t *testing.T) {
	r := newRun(t, fakex.Config{}, "")
	r.hidden = true
	r.startKlagg()
	r.until(3 * time.Minute)
	r.x.HideTrades(40)
	r.until(10 * time.Minute)
	r.stop()
	if !r.logged("kline differs from the exchange's; taking the exchange's") {
		t.Error("reconciliation found no difference")
	}
	r.check(10 * time.Minute)
}

func TestRESTErrors(t *testing.T) {
	r := newRun(t, fakex.Config{}, "")
	// The first requests meet what Binance answers when it will not serve:
	// a backend timeout, an overloaded server, the firewall, then a 418
	// ban of 2 s whose end is in its message.
	r.x.FailREST(2*time.Second, http.StatusRequestTimeout, http.StatusServiceUnavailable, http.StatusForbidden, http.StatusTeapot)
	r.startKlagg()
	r.until(6 * time.Minute)
	r.stop()
	st := r.x.Stats()
	if st.Banned418 != 1 {
		t.Errorf("klagg sent %d requests during or into the 418 ban, want only the one that was banned", st.Banned418-1)
	}
	if !r.logged("binance rate limit: pausing REST requests") || !r.logged("firewall refused a request (403)") {
		t.Error("klagg did not report the ban and the firewall")
	}
	r.check(6 * time.Minute)
}

func TestListingAndDelisting(t *testing.T) {
	r := newRun(t, fakex.Config{}, "")
	r.startKlagg()
	r.until(3 * time.Minute)
	listed := r.x.ListSymbol()
	r.x.Delist("S001USDT")
	r.until(12 * time.Minute)
	r.stop()
	if !r.logged("symbol stopped trading; finalizing it") || !r.logged("new symbol listed") {
		t.Error("klagg did not follow exchangeInfo")
	}
	r.check(12 * time.Minute)
	r.checkListed(listed)
}

func TestKillAndRestart(t *testing.T) {
	r := newRun(t, fakex.Config{}, "")
	r.startKlagg()
	r.until(4 * time.Minute)
	r.kill()
	r.until(7 * time.Minute)
	r.startKlagg()
	r.until(12 * time.Minute)
	r.stop()
	r.check(12 * time.Minute)
}

func TestExchangeClockAhead(t *testing.T) {
	r := newRun(t, fakex.Config{}, "")
	r.x.ShiftClock(2 * time.Second)
	r.startKlagg()
	r.until(3 * time.Minute)
	r.x.ShiftClock(2 * time.Second)
	r.until(8 * time.Minute)
	r.stop()
	r.check(8 * time.Minute)
}

// TestWeightBudget starts 4 symbols under a budget of 200 weight a minute:
// startup needs more, so klagg must spread it over minutes and never get a 429.
func TestWeightBudget(t *testing.T) {
	r := newRun(t, fakex.Config{Symbols: 4, WeightPerMinute: 200, Speed: 5}, "")
	r.appendExchange(`weight_per_minute = 200`)
	r.appendExchange(`time_sync = "10s"`)
	r.startKlagg()
	r.until(2 * time.Minute)
	r.stop()
	st := r.x.Stats()
	if st.Rejected429 != 0 || st.Banned418 != 0 || st.MaxWeight1M > 200 {
		t.Errorf("budget exceeded: %+v", st)
	}
	r.check(2 * time.Minute)
}
