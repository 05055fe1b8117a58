package binance

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/klagg/klagg/internal/decimal"
	"github.com/klagg/klagg/internal/kline"
)

const combined = `{"stream":"ctkusdt@aggTrade","data":{"e":"aggTrade","E":1626992741575,"a":16599292,"s":"CTKUSDT","p":"1.01100","q":"10","nq":"10","f":23961322,"l":23961325,"T":1626992741421,"m":false,"x":{"nested":[1,"}"]}}}`

func TestParseAggTrade(t *testing.T) {
	sym, tr, err := ParseAggTrade([]byte(combined))
	want := kline.Trade{ID: 16599292, Price: 101100000, Qty: 10 * decimal.Unit, FirstID: 23961322, LastID: 23961325, Time: 1626992741421,
		NormalQty: 10 * decimal.Unit, HasNormalQty: true}
	if err != nil || string(sym) != "CTKUSDT" || tr != want {
		t.Fatalf("got %s %+v %v", sym, tr, err)
	}
	bare := `{"e":"aggTrade","E":1,"s":"X","a":1,"p":"1","q":"2","f":3,"l":3,"T":4,"m":true}`
	if _, tr, err := ParseAggTrade([]byte(bare)); err != nil || !tr.BuyerMaker {
		t.Fatalf("bare frame: %+v %v", tr, err)
	}
	for _, f := range []string{`{"result":null,"id":1}`, `{"stream":"x@kline_1m","data":{"e":"kline","k":{}}}`} {
		if _, _, err := ParseAggTrade([]byte(f)); !errors.Is(err, ErrNotAggTrade) {
			t.Errorf("%s: err = %v, want ErrNotAggTrade", f, err)
		}
	}
	for _, f := range []string{``, `{`, `[]`, `{"e":"aggTrade"}`, `{"e":"aggTrade","E":1,"s":"X","a":1,"p":"x","q":"2","f":3,"l":3,"T":4,"m":true}`,
		`{"e":"aggTrade","E":1,"s":"X","a":1,"p":"1","q":"2","f":3,"l":2,"T":4,"m":true}`,
		`{"e":"aggTrade","E":1,"s":"X","a":1.5,"p":"1","q":"2","f":3,"l":3,"T":4,"m":true}`,
		`{"e":"aggTrade","E":1,"s":"X","a":1,"p":"1","q":"2","f":3,"l":3,"T":4,"m":true} trailing`} {
		if _, _, err := ParseAggTrade([]byte(f)); err == nil {
			t.Errorf("%q accepted", f)
		}
	}
}

// FuzzParseAggTrade checks the hand-written scanner against encoding/json:
// what it accepts, encoding/json reads the same way.
func FuzzParseAggTrade(f *testing.F) {
	f.Add(combined)
	f.Add(`{"e":"aggTrade","E":1,"s":"X","a":1,"p":"1","q":"2","f":3,"l":3,"T":4,"m":true}`)
	f.Add(`{"result":null,"id":1}`)
	f.Fuzz(func(t *testing.T, frame string) {
		sym, tr, err := ParseAggTrade([]byte(frame))
		if err != nil {
			return
		}
		// A map keeps keys exactly (struct decoding would match "t" to "T").
		var env map[string]json.RawMessage
		if err := json.Unmarshal([]byte(frame), &env); err != nil {
			// The scanner is lenient about the syntax of fields it skips;
			// it must never be lenient about the fields it reads.
			return
		}
		if d, ok := env["data"]; ok {
			if err := json.Unmarshal(d, &env); err != nil {
				return
			}
		}
		str := func(k string) string {
			var s string
			if err := json.Unmarshal(env[k], &s); err != nil {
				t.Fatalf("scanner accepted %s=%s", k, env[k])
			}
			return s
		}
		num := func(k string) int64 {
			var v int64
			if err := json.Unmarshal(env[k], &v); err != nil {
				t.Fatalf("scanner accepted %s=%s", k, env[k])
			}
			return v
		}
		var m bool
		if err := json.Unmarshal(env["m"], &m); err != nil {
			t.Fatalf("scanner accepted m=%s", env["m"])
		}
		p, _ := decimal.Parse(str("p"))
		q, _ := decimal.Parse(str("q"))
		want := kline.Trade{ID: num("a"), Price: p, Qty: q, FirstID: num("f"), LastID: num("l"), Time: num("T"), BuyerMaker: m}
		if _, ok := env["nq"]; ok {
			want.NormalQty, _ = decimal.Parse(str("nq"))
			want.HasNormalQty = true
		}
		if str("e") != "aggTrade" || string(sym) != str("s") || tr != want {
			t.Fatalf("scanner read %s %+v, encoding/json %+v", sym, tr, want)
		}
	})
}

func TestKlineArrayRoundTrip(t *testing.T) {
	k := kline.Kline{OpenTime: 1, CloseTime: 60000, Open: 3700010000000, High: 3700010000000, Low: 3700000000000, Close: 3700000000000,
		Volume: decimal.FromInt64(100000), QuoteVolume: decimal.Mul(3700010000000, 100000), Trades: 3,
		TakerVolume: decimal.FromInt64(0), TakerQuoteVolume: decimal.FromInt64(0)}
	b := AppendKlineArray(nil, &k, kline.Precision{Price: 2, Qty: 3})
	want := `[1,"37000.10","37000.10","37000.00","37000.00","0.001",60000,"37.00010",3,"0.000","0.00000","0"]`
	if string(b) != want {
		t.Fatalf("got  %s\nwant %s", b, want)
	}
	var raw []json.RawMessage
	json.Unmarshal(b, &raw)
	back, n, err := ParseKlineArray(raw)
	if err != nil || n != 12 {
		t.Fatal(err)
	}
	back.FirstTradeID, back.LastTradeID, back.Closed = 0, 0, false
	if back != k {
		t.Fatalf("round trip: %+v", back)
	}
}

func TestKlineEventLayout(t *testing.T) {
	k := kline.Kline{OpenTime: 1, CloseTime: 60000, Open: 3700010000000, High: 3700010000000, Low: 3700000000000, Close: 3700000000000,
		Volume: decimal.FromInt64(100000), QuoteVolume: decimal.Mul(3700010000000, 100000), Trades: 3,
		FirstTradeID: 7, LastTradeID: 9, Closed: true}
	b := AppendKlineEvent(nil, "BTCUSDT", "1m", 123, &k, kline.Precision{Price: 2, Qty: 3})
	// Binance's own field order, as in its documentation and captures.
	want := `{"e":"kline","E":123,"s":"BTCUSDT","k":{"t":1,"T":60000,"s":"BTCUSDT","i":"1m","f":7,"L":9,"o":"37000.10","c":"37000.00","h":"37000.10","l":"37000.00","v":"0.001","n":3,"x":true,"q":"37.00010","V":"0.000","Q":"0.00000","B":"0"}}`
	if string(b) != want {
		t.Fatalf("got  %s\nwant %s", b, want)
	}
	ev, err := ParseKlineEvent(b)
	if err != nil {
		t.Fatal(err)
	}
	back, err := ev.K.Kline()
	if err != nil || back != k || ev.Symbol != "BTCUSDT" || ev.K.Interval != "1m" {
		t.Fatalf("round trip: %+v %v", back, err)
	}
}

func TestWeightReserveForUrgentRequests(t *testing.T) {
	wt := NewWeight(100)
	at := time.Date(2026, 1, 1, 0, 0, 30, 0, time.UTC)
	wt.now = func() time.Time { return at } // mid-minute, for good
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := wt.Acquire(ctx, 95, false); err != nil {
		t.Fatal(err)
	}
	// The minute's ordinary share is spent: an ordinary request waits for
	// the next minute (here: until cancelled), an urgent one goes at once.
	done := make(chan error, 1)
	go func() { done <- wt.Acquire(ctx, 1, false) }()
	if err := wt.Acquire(ctx, 5, true); err != nil {
		t.Fatal(err)
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("ordinary request within the reserve: %v", err)
	}
}

// TestWeightSpentBeforeDeadline: a request that could only go after its
// caller's deadline fails at once, saying why, rather than at the deadline.
func TestWeightSpentBeforeDeadline(t *testing.T) {
	wt := NewWeight(100)
	// An hour ahead: the minute's end is far past any deadline below.
	at := time.Now().Add(time.Hour).Truncate(time.Minute).Add(30 * time.Second)
	wt.now = func() time.Time { return at }
	if err := wt.Acquire(context.Background(), 100, true); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := wt.Acquire(ctx, 1, true); !errors.Is(err, ErrWeightSpent) || ctx.Err() != nil {
		t.Fatalf("Acquire with the minute spent = %v (context %v), want ErrWeightSpent at once", err, ctx.Err())
	}
}

// FuzzParseStreamName: a name that parses has a kind and a symbol; the
// name Binance would write for it parses back to the same parts, and is
// its own canonical form.
func FuzzParseStreamName(f *testing.F) {
	for _, s := range []string{"btcusdt@kline_1m", "btcusdt_perpetual@continuousKline_1h", "btcusdt@aggTrade",
		"币安人生usdt@aggTrade", "btcuſdt@kline_1m", "!miniTicker@arr", "btcusdt@depth@100ms", "BTCUSDT@kline_1m",
		"@kline_1m", "btcusdt@", "a/b@kline_1m", "btc usdt@aggTrade", "x@aggTrade_1m"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		n, ok := ParseStreamName(name)
		if !ok {
			return
		}
		if n.Kind == "" || n.Symbol == "" && n.Kind != KindContinuousKline {
			t.Fatalf("%q parsed to %+v", name, n)
		}
		canon := n.String()
		if canon == "" {
			return
		}
		m, ok := ParseStreamName(canon)
		if !ok {
			t.Fatalf("%q → %+v → %q does not parse", name, n, canon)
		}
		if again := m.String(); again != canon {
			t.Fatalf("%q → %q → %q: not canonical", name, canon, again)
		}
	})
}
