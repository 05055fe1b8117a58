package stream

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/klagg/klagg/internal/binance"
	"github.com/klagg/klagg/internal/kline"
)

// readUntilReply reads events until the reply with id and returns the
// events' stream names, in order, and the reply.
func readUntilReply(t *testing.T, c *websocket.Conn, id string) (streams []string, reply []byte) {
	t.Helper()
	for {
		b := read(t, c)
		if strings.Contains(string(b), `"id":`+id+`}`) {
			return streams, b
		}
		var env struct {
			Stream string `json:"stream"`
		}
		if err := json.Unmarshal(b, &env); err != nil || env.Stream == "" {
			t.Fatalf("not a combined event: %s", b)
		}
		streams = append(streams, env.Stream)
	}
}

// TestURLForms: every URL form Binance accepts for market streams connects
// and serves; those naming streams start with them, the rest take a
// SUBSCRIBE.
func TestURLForms(t *testing.T) {
	s, url := newServer(t, Config{PushInterval: 5 * time.Millisecond})
	s.Publish([]kline.Update{update("BTCUSDT", oneMin, 60_000, 3, false)})
	for _, tc := range []struct {
		path      string
		subscribe bool // no stream in the URL
		combined  bool
	}{
		{"/market/ws", true, false},
		{"/market/ws/", true, false},
		{"/market/ws/0", true, false},
		{"/market/ws/btcusdt@kline_1m", false, false},
		{"/market/ws/btcusdt@kline_1m/1", false, false},
		{"/market/stream", true, true},
		{"/market/stream?streams=btcusdt@kline_1m", false, true},
		{"/ws", true, false},
		{"/ws/btcusdt@kline_1m", false, false},
		{"/stream", true, true},
		{"/stream?streams=btcusdt@kline_1m", false, true},
		{"/public/ws", true, false},
		{"/public/stream", true, true},
		{"/public/stream?streams=btcusdt@kline_1m", false, true},
		{"/private/ws", true, false},
		{"/private/stream", true, true},
		{"/private/ws/someListenKey", true, false},
	} {
		t.Run(strings.ReplaceAll(tc.path, "/", "_"), func(t *testing.T) {
			c := dial(t, url+tc.path)
			if tc.subscribe {
				write(t, c, `{"method":"SUBSCRIBE","params":["btcusdt@kline_1m"],"id":1}`)
				if got := string(read(t, c)); got != `{"result":null,"id":1}` {
					t.Fatalf("reply %s", got)
				}
			}
			b := read(t, c)
			if got := strings.HasPrefix(string(b), `{"stream":"btcusdt@kline_1m","data":`); got != tc.combined {
				t.Fatalf("combined %v, want %v: %s", got, tc.combined, b)
			}
			if ev := parseEvent(t, b); ev.Symbol != "BTCUSDT" || ev.K.Trades != 3 {
				t.Fatalf("event %s", b)
			}
		})
	}
}

// closed reads an event of btcusdt@kline_1m and tells whether it closes
// its kline; any other stream's event fails the test.
func closed(t *testing.T, c *websocket.Conn) bool {
	t.Helper()
	b := read(t, c)
	if !strings.HasPrefix(string(b), `{"stream":"btcusdt@kline_1m",`) {
		t.Fatalf("event %s", b)
	}
	return parseEvent(t, b).K.Closed
}

// TestUnservedStreamsAreSilent: a well-formed stream klagg does not serve
// is acknowledged, listed, and sends nothing, as on Binance.
func TestUnservedStreamsAreSilent(t *testing.T) {
	s, url := newServer(t, Config{PushInterval: 5 * time.Millisecond})
	c := dial(t, url+"/market/stream")
	unserved := []string{"dogeusdt@kline_1m", "btcusdt@kline_7x", "btcusdt@depth@100ms", "BTCUSDT@kline_1m",
		"btcusdt@markPrice", "!miniTicker@arr", "btcusdt_current_quarter@continuousKline_1m", "btcusdt@kline_1M"}
	params, _ := json.Marshal(append([]string{"btcusdt@kline_1m"}, unserved...))
	write(t, c, `{"method":"SUBSCRIBE","params":`+string(params)+`,"id":1}`)
	if got := string(read(t, c)); got != `{"result":null,"id":1}` {
		t.Fatalf("reply %s", got)
	}
	s.Publish([]kline.Update{update("BTCUSDT", oneMin, 60_000, 3, false), update("BTCUSDT", fiveMin, 0, 3, false)})
	s.Publish([]kline.Update{update("BTCUSDT", oneMin, 60_000, 4, true)})
	// The closing event goes at once; the reply may pass it.
	for !closed(t, c) {
	}
	write(t, c, `{"method":"LIST_SUBSCRIPTIONS","id":2}`)
	names, reply := readUntilReply(t, c, "2")
	for _, name := range names {
		if name != "btcusdt@kline_1m" {
			t.Errorf("event of %s, which klagg does not serve", name)
		}
	}
	var list struct{ Result []string }
	if err := json.Unmarshal(reply, &list); err != nil || len(list.Result) != len(unserved)+1 {
		t.Fatalf("listed %v (%v), want all %d", list.Result, err, len(unserved)+1)
	}
}

// TestCanonicalNames: a stream is kept under the name Binance writes it
// with. A client asking for "btcuſdt@kline_1m" (U+017F upper-cases to S)
// gets an acknowledged, silent stream and renames nothing for the others,
// before or after it leaves.
func TestCanonicalNames(t *testing.T) {
	s, url := newServer(t, Config{PushInterval: 5 * time.Millisecond})
	victim := dial(t, url+"/market/stream?streams=btcusdt@kline_1m")
	attacker := dial(t, url+"/market/stream")
	write(t, attacker, `{"method":"SUBSCRIBE","params":["btcuſdt@kline_1m","btcusdT@kline_1m"],"id":1}`)
	if got := string(read(t, attacker)); got != `{"result":null,"id":1}` {
		t.Fatalf("reply %s", got)
	}
	late := dial(t, url+"/market/stream?streams=btcusdt@kline_1m")
	s.Publish([]kline.Update{update("BTCUSDT", oneMin, 60_000, 3, true)})
	for _, c := range []*websocket.Conn{victim, late} {
		var env struct{ Stream string }
		if b := read(t, c); json.Unmarshal(b, &env) != nil || env.Stream != "btcusdt@kline_1m" {
			t.Fatalf("event %s, want stream btcusdt@kline_1m", b)
		}
	}
	write(t, attacker, `{"method":"LIST_SUBSCRIPTIONS","id":2}`)
	if got, _ := readUntilReply(t, attacker, "2"); len(got) != 0 {
		t.Fatalf("the misspelt streams sent %v", got)
	}
	attacker.Close(websocket.StatusNormalClosure, "")
	s.Publish([]kline.Update{update("BTCUSDT", oneMin, 120_000, 1, false)})
	var env struct{ Stream string }
	if b := read(t, late); json.Unmarshal(b, &env) != nil || env.Stream != "btcusdt@kline_1m" {
		t.Fatalf("after the attacker left: %s", b)
	}
}

// TestCombinedProperty: SET_PROPERTY and GET_PROPERTY switch a connection
// between raw and combined events.
func TestCombinedProperty(t *testing.T) {
	s, url := newServer(t, Config{PushInterval: 5 * time.Millisecond})
	c := dial(t, url+"/market/ws/btcusdt@kline_1m")
	write(t, c, `{"method":"GET_PROPERTY","params":["combined"],"id":1}`)
	if got := string(read(t, c)); got != `{"result":false,"id":1}` {
		t.Fatalf("GET_PROPERTY: %s", got)
	}
	write(t, c, `{"method":"SET_PROPERTY","params":["combined",true],"id":"set"}`)
	if got := string(read(t, c)); got != `{"result":null,"id":"set"}` {
		t.Fatalf("SET_PROPERTY: %s", got)
	}
	write(t, c, `{"method":"GET_PROPERTY","params":["combined"],"id":3}`)
	if got := string(read(t, c)); got != `{"result":true,"id":3}` {
		t.Fatalf("GET_PROPERTY after SET: %s", got)
	}
	s.Publish([]kline.Update{update("BTCUSDT", oneMin, 60_000, 3, true)})
	if b := read(t, c); !strings.HasPrefix(string(b), `{"stream":"btcusdt@kline_1m","data":{"e":"kline"`) {
		t.Fatalf("event after SET_PROPERTY combined true: %s", b)
	}
}

// TestContinuousKline: <pair>_perpetual@continuousKline_<i> carries the
// perpetual's klines in Binance's continuous_kline layout.
func TestContinuousKline(t *testing.T) {
	s, url := newServer(t, Config{PushInterval: 5 * time.Millisecond})
	s.Publish([]kline.Update{update("BTCUSDT", oneMin, 60_000, 3, false)})
	c := dial(t, url+"/market/ws/btcusdt_perpetual@continuousKline_1m")
	b := read(t, c)
	if !strings.HasPrefix(string(b), `{"e":"continuous_kline","E":`) || !strings.Contains(string(b), `"ps":"BTCUSDT","ct":"PERPETUAL","k":{"t":60000,"T":119999,"i":"1m"`) {
		t.Fatalf("event %s", b)
	}
	closing := update("BTCUSDT", oneMin, 60_000, 4, true)
	s.Publish([]kline.Update{closing})
	ev := parseEvent(t, read(t, c))
	got, err := ev.K.Kline()
	if err != nil || got != closing.Kline || ev.K.Symbol != "" {
		t.Fatalf("closing event %+v (%v), want %+v and no symbol in k", ev.K, err, closing.Kline)
	}
}

// TestAggTradeStream: <symbol>@aggTrade passes ingest's trades through in
// Binance's layout, in order, to raw and combined clients.
func TestAggTradeStream(t *testing.T) {
	s, url := newServer(t, Config{})
	raw := dial(t, url+"/market/ws/btcusdt@aggTrade")
	combined := dial(t, url+"/market/stream?streams=btcusdt@aggTrade")
	write(t, raw, `{"method":"LIST_SUBSCRIPTIONS","id":1}`)
	read(t, raw) // subscribed: the URL's streams come before any request
	write(t, combined, `{"method":"LIST_SUBSCRIPTIONS","id":1}`)
	read(t, combined)
	// The second carries its own nq (a part was RPI orders): passed on.
	trades := []kline.Trade{
		{ID: 7, Price: 100_50000000, Qty: 1_50000000, FirstID: 10, LastID: 12, Time: 1_000, BuyerMaker: true},
		{ID: 8, Price: 100_60000000, Qty: 25000000, FirstID: 13, LastID: 13, Time: 1_001, NormalQty: 10000000, HasNormalQty: true},
	}
	s.Trades("ETHUSDT", trades) // nobody reads it
	s.Trades("BTCUSDT", trades)
	for _, c := range []*websocket.Conn{raw, combined} {
		for i, want := range trades {
			b := read(t, c)
			sym, got, err := binance.ParseAggTrade(b)
			if !want.HasNormalQty {
				want.NormalQty, want.HasNormalQty = want.Qty, true // nq is q
			}
			if err != nil || string(sym) != "BTCUSDT" || got != want {
				t.Fatalf("trade %d: %s → %+v %v, want %+v", i, b, got, err, want)
			}
		}
	}
	raw.Close(websocket.StatusNormalClosure, "")
	combined.Close(websocket.StatusNormalClosure, "")
	for deadline := time.Now().Add(10 * time.Second); s.tradeSubs.Load() != 0; {
		if time.Now().After(deadline) {
			t.Fatal("trade subscriptions outlive their clients")
		}
		runtimeGosched()
	}
}

// TestPushSpacing: however often a kline changes, no two of its open
// events reach a client closer than the push interval (less the push
// loop's step) by their event times; closing events go at once.
func TestPushSpacing(t *testing.T) {
	const interval = 20 * time.Millisecond
	s, url := newServer(t, Config{PushInterval: interval})
	c := dial(t, url+"/market/ws/btcusdt@kline_1m")
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := int64(1); i <= 300; i++ {
			s.Publish([]kline.Update{update("BTCUSDT", oneMin, 60_000*(1+i/100), i, i%100 == 99)})
			time.Sleep(time.Millisecond) // a kline that changes every millisecond: the load, not a synchronization
		}
	}()
	<-done
	last, opens, closes := int64(0), 0, 0
	for closes < 3 {
		ev := parseEvent(t, read(t, c))
		if ev.K.Closed {
			closes++
			continue
		}
		if opens++; last != 0 && ev.EventTime-last < s.spacing {
			t.Fatalf("open events %d ms apart, push interval %v", ev.EventTime-last, interval)
		}
		last = ev.EventTime
	}
	if step := interval / time.Duration(s.phases); s.spacing < (interval - step).Milliseconds() {
		t.Fatalf("spacing %d ms, push interval %v", s.spacing, interval)
	}
	if opens < 3 {
		t.Fatalf("%d open events", opens)
	}
}

// TestRateLimitGivesReason: a client cut for too many messages reads the
// reason in the close frame, not a bare EOF.
func TestRateLimitGivesReason(t *testing.T) {
	_, url := newServer(t, Config{MaxMsgsPerSecond: 3})
	c := dial(t, url+"/market/ws")
	for i := range 5 {
		if err := c.Write(context.Background(), websocket.MessageText, []byte(`{"method":"LIST_SUBSCRIPTIONS","id":1}`)); err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for {
		_, _, err := c.Read(ctx)
		if err == nil {
			continue
		}
		var ce websocket.CloseError
		if !errors.As(err, &ce) || ce.Code != websocket.StatusPolicyViolation || !strings.Contains(ce.Reason, "too many requests") {
			t.Fatalf("closed with %v, want the reason", err)
		}
		return
	}
}
