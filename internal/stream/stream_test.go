package stream

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"go.uber.org/goleak"

	"github.com/klagg/klagg/internal/binance"
	"github.com/klagg/klagg/internal/kline"
)

var (
	oneMin  = kline.OneMinute()
	fiveMin = kline.MustInterval("5m")
)

func newServer(t testing.TB, cfg Config) (*Server, string) {
	t.Helper()
	cfg.Intervals = []kline.Interval{oneMin, fiveMin}
	cfg.Symbol = func(s string) (Market, bool) {
		return Market{Precision: kline.Precision{Price: 2, Qty: 3}, Pair: s, ContractType: "PERPETUAL"}, s == "BTCUSDT" || s == "ETHUSDT"
	}
	s := New(cfg)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Run(ctx); close(done) }()
	hs := httptest.NewServer(s)
	t.Cleanup(func() { hs.Close(); cancel(); <-done })
	return s, "ws" + strings.TrimPrefix(hs.URL, "http")
}

func dial(t testing.TB, url string) *websocket.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	c.SetReadLimit(1 << 20)
	t.Cleanup(func() { c.CloseNow() })
	return c
}

func read(t testing.TB, c *websocket.Conn) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, b, err := c.Read(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func write(t testing.TB, c *websocket.Conn, msg string) {
	t.Helper()
	if err := c.Write(context.Background(), websocket.MessageText, []byte(msg)); err != nil {
		t.Fatal(err)
	}
}

func update(sym string, iv kline.Interval, open, trades int64, closed bool) kline.Update {
	k := kline.Empty(iv, open, 100_00000000)
	k.Trades, k.Closed = trades, closed
	k.FirstTradeID, k.LastTradeID = 1, trades
	return kline.Update{Symbol: sym, Interval: iv, Kline: k}
}

func parseEvent(t testing.TB, b []byte) binance.KlineEvent {
	t.Helper()
	ev, err := binance.ParseKlineEvent(b)
	if err != nil {
		t.Fatalf("%v: %s", err, b)
	}
	return ev
}

func TestSubscribeCurrentThenChangesThenClose(t *testing.T) {
	s, url := newServer(t, Config{PushInterval: 5 * time.Millisecond})
	s.Publish([]kline.Update{update("BTCUSDT", oneMin, 60_000, 3, false)})

	c := dial(t, url+"/market/stream")
	write(t, c, `{"method":"SUBSCRIBE","params":["btcusdt@kline_1m"],"id":7}`)
	if got := string(read(t, c)); got != `{"result":null,"id":7}` {
		t.Fatalf("reply %s", got)
	}
	first := read(t, c)
	if !strings.HasPrefix(string(first), `{"stream":"btcusdt@kline_1m","data":{"e":"kline"`) {
		t.Fatalf("current kline not sent on subscribe, got %s", first)
	}
	if ev := parseEvent(t, first); ev.K.Trades != 3 || ev.K.Closed {
		t.Fatalf("current kline: %+v", ev.K)
	}
	// A burst of changes within one push interval arrives coalesced, the
	// newest last.
	for n := int64(4); n <= 200; n++ {
		s.Publish([]kline.Update{update("BTCUSDT", oneMin, 60_000, n, false)})
	}
	var got []int64
	for len(got) == 0 || got[len(got)-1] != 200 {
		got = append(got, parseEvent(t, read(t, c)).K.Trades)
	}
	if len(got) > 50 {
		t.Errorf("%d events for 197 changes: not coalesced", len(got))
	}
	// The close goes out at once, with x:true, then the next kline.
	s.Publish([]kline.Update{update("BTCUSDT", oneMin, 60_000, 201, true), update("BTCUSDT", oneMin, 120_000, 1, false)})
	ev := parseEvent(t, read(t, c))
	if !ev.K.Closed || ev.K.Trades != 201 || ev.K.OpenTime != 60_000 {
		t.Fatalf("closing event: %+v", ev.K)
	}
	if ev := parseEvent(t, read(t, c)); ev.K.Closed || ev.K.OpenTime != 120_000 {
		t.Fatalf("next kline: %+v", ev.K)
	}
	// Other streams are not sent.
	s.Publish([]kline.Update{update("ETHUSDT", oneMin, 120_000, 1, false), update("BTCUSDT", fiveMin, 0, 9, false)})
	s.Publish([]kline.Update{update("BTCUSDT", oneMin, 120_000, 2, false)})
	if ev := parseEvent(t, read(t, c)); ev.Symbol != "BTCUSDT" || ev.K.Interval != "1m" || ev.K.Trades != 2 {
		t.Fatalf("unsubscribed stream leaked: %+v", ev)
	}
	write(t, c, `{"method":"LIST_SUBSCRIPTIONS","id":"x"}`)
	if got := string(read(t, c)); got != `{"result":["btcusdt@kline_1m"],"id":"x"}` {
		t.Fatalf("list: %s", got)
	}
	write(t, c, `{"method":"UNSUBSCRIBE","params":["btcusdt@kline_1m"],"id":8}`)
	if got := string(read(t, c)); got != `{"result":null,"id":8}` {
		t.Fatalf("unsubscribe: %s", got)
	}
	write(t, c, `{"method":"LIST_SUBSCRIPTIONS","id":9}`)
	if got := string(read(t, c)); got != `{"result":[],"id":9}` {
		t.Fatalf("list after unsubscribe: %s", got)
	}
	// Every event and reply written was timed, from its push to the socket.
	var m strings.Builder
	s.WritePrometheus(&m)
	if !strings.Contains(m.String(), `klagg_stream_event_delay_seconds{quantile="0.99"}`) {
		t.Errorf("no event delay in the metrics:\n%s", m.String())
	}
}

func TestRawStreamFromPath(t *testing.T) {
	s, url := newServer(t, Config{PushInterval: 5 * time.Millisecond})
	c := dial(t, url+"/ws/btcusdt@kline_5m")
	s.Publish([]kline.Update{update("BTCUSDT", fiveMin, 0, 5, false)})
	b := read(t, c)
	if !strings.HasPrefix(string(b), `{"e":"kline"`) {
		t.Fatalf("raw stream wraps events: %s", b)
	}
	if ev := parseEvent(t, b); ev.K.Interval != "5m" || ev.K.Trades != 5 {
		t.Fatalf("%+v", ev.K)
	}
}

func TestBadRequestsGetErrors(t *testing.T) {
	_, url := newServer(t, Config{MaxMsgsPerSecond: 100})
	c := dial(t, url+"/market/ws")
	for _, tc := range []struct{ msg, want string }{
		{`not json`, `"code":3`},
		{`{"method":"SUBSCRIBE","params":["btcusdt kline_1m"],"id":1}`, `"code":2`},
		{`{"method":"SUBSCRIBE","params":["btcusdt@kline_1m","nope"],"id":2}`, `not a stream name`},
		{`{"method":"SUBSCRIBE","params":["a/b@kline_1m"],"id":3}`, `"code":2`},
		{`{"method":"SET_PROPERTY","params":["combined"],"id":7}`, `"code":2`},
		{`{"method":"SET_PROPERTY","params":["combined",1],"id":8}`, `"code":1`},
		{`{"method":"GET_PROPERTY","params":["colour"],"id":9}`, `"code":0`},
		{`{"method":"SUBSCRIBE","params":"btcusdt@kline_1m","id":4}`, `"code":1`},
		{`{"method":"DANCE","id":5}`, `unknown variant`},
		{`{"method":"SUBSCRIBE","id":{}}`, `request ID`},
		{`{"method":"SUBSCRIBE","foo":1,"id":6}`, `"code":0`},
	} {
		write(t, c, tc.msg)
		got := string(read(t, c))
		if !strings.Contains(got, `"error":{`) || !strings.Contains(got, tc.want) {
			t.Errorf("%s → %s, want an error with %s", tc.msg, got, tc.want)
		}
	}
	// Still up and answering.
	write(t, c, `{"method":"LIST_SUBSCRIPTIONS","id":10}`)
	if got := string(read(t, c)); got != `{"result":[],"id":10}` {
		t.Fatalf("after errors: %s", got)
	}
}

func TestStreamLimits(t *testing.T) {
	s, url := newServer(t, Config{MaxStreamsPerConn: 2, MaxConns: 1})
	c := dial(t, url+"/market/ws")
	write(t, c, `{"method":"SUBSCRIBE","params":["btcusdt@kline_1m","btcusdt@kline_5m","ethusdt@kline_1m"],"id":1}`)
	if got := string(read(t, c)); !strings.Contains(got, "at most 2 streams") {
		t.Fatalf("stream limit: %s", got)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, resp, err := websocket.Dial(ctx, url+"/market/ws", nil); err == nil || resp == nil || resp.StatusCode != 503 {
		t.Fatalf("second connection over the limit: %v", err)
	}
	if s.Stats().Rejected.Load() != 1 {
		t.Fatal("rejection not counted")
	}
}

// TestSlowClientDropped: a client that stops reading is closed once its
// queue is full, while another client on the same stream keeps receiving.
func TestSlowClientDropped(t *testing.T) {
	s, url := newServer(t, Config{ClientBuffer: 16, PushInterval: time.Millisecond})
	slow := dial(t, url+"/market/ws/btcusdt@kline_1m")
	fast := dial(t, url+"/market/ws/btcusdt@kline_1m")
	for s.Stats().Clients.Load() < 2 || s.subscribers("BTCUSDT", "1m") < 2 {
		runtimeGosched()
	}
	received := make(chan int64, 1<<20)
	go func() {
		for {
			_, b, err := fast.Read(context.Background())
			if err != nil {
				close(received)
				return
			}
			var ev binance.KlineEvent
			json.Unmarshal(b, &ev)
			received <- ev.K.OpenTime
		}
	}()
	// Closing events are each sent: publish until the slow client, whose
	// socket buffers fill, is dropped, letting the fast one catch up every
	// few events so that only the slow one can fall behind.
	open := int64(0)
	waitFast := func(want int64) {
		for got := range received {
			if got == want {
				return
			}
		}
		t.Fatal("fast client was closed")
	}
	for s.Stats().Dropped.Load() == 0 {
		open += 60_000
		if open > 60_000*1_000_000 {
			t.Fatal("slow client never dropped")
		}
		s.Publish([]kline.Update{update("BTCUSDT", oneMin, open, 1, true)})
		if open%(60_000*8) == 0 {
			waitFast(open)
		}
	}
	last := open + 60_000
	s.Publish([]kline.Update{update("BTCUSDT", oneMin, last, 1, true)})
	waitFast(last)
	// The slow client finds the reason when it reads again.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for {
		if _, _, err := slow.Read(ctx); err != nil {
			var ce websocket.CloseError
			if !errors.As(err, &ce) || ce.Code != websocket.StatusPolicyViolation || !strings.Contains(ce.Reason, "too slow") {
				t.Fatalf("slow client closed with %v", err)
			}
			break
		}
	}
	if d := s.Stats().Dropped.Load(); d != 1 {
		t.Fatalf("%d clients dropped, want only the slow one", d)
	}
}

func TestBadHandshakes(t *testing.T) {
	_, url := newServer(t, Config{})
	ctx := context.Background()
	long := "/market/stream?streams=" + strings.Repeat("btcusdt@kline_1m/", 500)
	for _, path := range []string{"/market/other", "/futures/ws", "/marketeer/ws", long} {
		_, resp, err := websocket.Dial(ctx, url+path, nil)
		if err == nil || resp == nil || resp.StatusCode/100 != 4 {
			t.Errorf("%s: want a 4xx, got %v", path, err)
		}
	}
}

// FuzzRequest feeds any message to the request handler, stream-name parser
// and subscriptions together: every message gets exactly one reply, an
// error or a result; nothing panics; and a subscription is served only
// under the very name the client asked for, as Binance writes it.
func FuzzRequest(f *testing.F) {
	for _, s := range []string{
		`{"method":"SUBSCRIBE","params":["btcusdt@kline_1m"],"id":1}`,
		`{"method":"UNSUBSCRIBE","params":["btcusdt@kline_1m"],"id":2}`,
		`{"method":"LIST_SUBSCRIPTIONS","id":3}`,
		`{"method":"SUBSCRIBE","params":[1,2],"id":"a"}`,
		`{"method":null}`, `[]`, `{"id":1e400}`, "\xff", `{"method":"SUBSCRIBE","params":["BTCUSDT@kline_1m"]}`,
		`{"method":"SUBSCRIBE","params":["btcuſdt@kline_1m","btcusdt_perpetual@continuousKline_1m","btcusdt@aggTrade"],"id":4}`,
		`{"method":"SET_PROPERTY","params":["combined",true],"id":5}`, `{"method":"GET_PROPERTY","params":["combined"],"id":6}`,
		`{"method":"SUBSCRIBE","params":["!miniTicker@arr","btcusdt@depth@100ms","ethusdt@kline_1m"],"id":7}`,
	} {
		f.Add([]byte(s))
	}
	s := New(Config{Intervals: []kline.Interval{oneMin}, Symbol: func(s string) (Market, bool) {
		return Market{Pair: s, ContractType: "PERPETUAL"}, s == "BTCUSDT"
	}})
	f.Fuzz(func(t *testing.T, msg []byte) {
		c := &client{s: s, subs: map[string]*sub{}}
		s.request(c, msg)
		if len(c.pending) != 1 {
			t.Fatalf("%d replies to %q", len(c.pending), msg)
		}
		s.mu.Lock()
		for name, sb := range c.subs {
			if sb.name != name || sb.st != nil && sb.st.name != name || sb.ts != nil && sb.ts.name != name {
				t.Fatalf("subscription %q is served as %+v", name, sb)
			}
			if (sb.st != nil || sb.ts != nil) && !strings.Contains(strings.ToLower(name), "btcusdt") {
				t.Fatalf("%q is served", name)
			}
		}
		s.mu.Unlock()
		var reply struct {
			Result any              `json:"result"`
			Error  *binance.WSError `json:"error"`
			ID     json.RawMessage  `json:"id"`
		}
		b := c.pending[0].b
		if err := json.Unmarshal(b, &reply); err != nil || len(reply.ID) == 0 {
			t.Fatalf("reply %s to %q is not a reply: %v", b, msg, err)
		}
		s.unsubscribe(c, nil)
	})
}

// TestClosesBeforeNextKlines: closing events of several streams published
// together reach a client before any stream's next kline, each stream's
// events in order.
func TestClosesBeforeNextKlines(t *testing.T) {
	s, url := newServer(t, Config{PushInterval: 5 * time.Millisecond})
	c := dial(t, url+"/market/ws/btcusdt@kline_1m/ethusdt@kline_1m/btcusdt@kline_5m")
	for s.subscribers("BTCUSDT", "5m") < 1 {
		runtimeGosched()
	}
	for round := int64(1); round <= 20; round++ {
		var us []kline.Update
		for _, sym := range []string{"BTCUSDT", "ETHUSDT"} {
			us = append(us, update(sym, oneMin, round*60_000, round, true), update(sym, oneMin, (round+1)*60_000, 1, false))
		}
		us = append(us, update("BTCUSDT", fiveMin, 0, round, false))
		s.Publish(us)
		seen := map[string]int64{} // newest open time per stream, negated while closed
		for len(seen) < 2 || seen["BTCUSDT"] != (round+1)*60_000 || seen["ETHUSDT"] != (round+1)*60_000 {
			ev := parseEvent(t, read(t, c))
			if ev.K.Interval == "5m" {
				continue
			}
			switch last := seen[ev.Symbol]; {
			case ev.K.Closed && ev.K.OpenTime != round*60_000:
				t.Fatalf("round %d: closing event for %d", round, ev.K.OpenTime)
			case ev.K.Closed:
				seen[ev.Symbol] = -ev.K.OpenTime
			case last != -round*60_000 || ev.K.OpenTime != (round+1)*60_000:
				t.Fatalf("round %d: %s kline %d after %d, before or without the close", round, ev.Symbol, ev.K.OpenTime, last)
			default:
				seen[ev.Symbol] = ev.K.OpenTime
			}
		}
	}
}

// countingConn counts the writes that reach it.
type countingConn struct {
	net.Conn
	writes int
	data   []byte
}

func (c *countingConn) Write(p []byte) (int, error) {
	c.writes++
	c.data = append(c.data, p...)
	return len(p), nil
}

// TestWireCorks: what is written while corked leaves in one write, in
// order; uncorked writes pass straight through.
func TestWireCorks(t *testing.T) {
	cc := &countingConn{}
	w := &wire{Conn: cc}
	w.cork()
	for _, s := range []string{"a", "bb", "ccc"} {
		w.Write([]byte(s))
	}
	if cc.writes != 0 {
		t.Fatalf("%d writes while corked", cc.writes)
	}
	if err := w.uncork(); err != nil || cc.writes != 1 || string(cc.data) != "abbccc" {
		t.Fatalf("uncork: %v, %d writes of %q", err, cc.writes, cc.data)
	}
	w.Write([]byte("d"))
	if err := w.uncork(); err != nil || cc.writes != 2 || string(cc.data) != "abbcccd" {
		t.Fatalf("uncorked: %v, %d writes of %q", err, cc.writes, cc.data)
	}
}

// TestOnePushKeepsOrder drives one push holding both closing events and
// the phase's changes: each client gets its events in one queueing, every
// close before its stream's next kline.
func TestOnePushKeepsOrder(t *testing.T) {
	// One phase, so that one push holds everything for every client.
	s := New(Config{PushInterval: minPhase, Intervals: []kline.Interval{oneMin},
		Symbol: func(string) (Market, bool) { return Market{Precision: kline.Precision{Price: 2, Qty: 3}}, true }})
	names := []string{"btcusdt@kline_1m", "ethusdt@kline_1m"}
	var clients []*client
	for range 3 {
		c := &client{s: s, subs: map[string]*sub{}, ready: make(chan struct{}, 8)} // a signal per queueing
		if !s.join(c) {
			t.Fatal("join refused")
		}
		s.subscribe(c, names)
		clients = append(clients, c)
	}
	var p pusher
	s.push(&p, -1) // the subscriptions; nothing published yet
	var us []kline.Update
	for _, sym := range []string{"BTCUSDT", "ETHUSDT"} {
		us = append(us, update(sym, oneMin, 60_000, 5, true), update(sym, oneMin, 120_000, 1, false))
	}
	s.Publish(us)
	s.push(&p, 0)
	for i, c := range clients {
		if n := len(c.ready); n != 1 {
			t.Errorf("client %d's events queued in %d parts, want 1", i, n)
		}
		var got []string
		closed := map[string]bool{}
		for _, f := range c.pending {
			ev := parseEvent(t, f.b)
			got = append(got, fmt.Sprintf("%s %d %v", ev.Symbol, ev.K.OpenTime, ev.K.Closed))
			if ev.K.Closed {
				closed[ev.Symbol] = true
			} else if !closed[ev.Symbol] {
				t.Errorf("client %d: %s's next kline before its close", i, ev.Symbol)
			}
		}
		if len(got) != 4 {
			t.Errorf("client %d got %v, want two closes and two next klines", i, got)
		}
	}
}

// TestBufferAllowsAPushPerStream: a client reading more streams than its
// buffer holds events is not dropped for what one push brings it, a close
// and a change per stream.
func TestBufferAllowsAPushPerStream(t *testing.T) {
	s := New(Config{PushInterval: minPhase, ClientBuffer: 4, Intervals: []kline.Interval{oneMin, fiveMin},
		Symbol: func(string) (Market, bool) { return Market{Precision: kline.Precision{Price: 2, Qty: 3}}, true }})
	c := &client{s: s, subs: map[string]*sub{}, ready: make(chan struct{}, 1)}
	s.join(c)
	var names []string
	var us []kline.Update
	for _, sym := range []string{"BTCUSDT", "ETHUSDT"} {
		for _, iv := range []kline.Interval{oneMin, fiveMin} {
			names = append(names, strings.ToLower(sym)+"@kline_"+iv.String())
			us = append(us, update(sym, iv, 300_000, 2, true), update(sym, iv, 600_000, 1, false))
		}
	}
	s.subscribe(c, names)
	s.Publish(us)
	var p pusher
	s.push(&p, 0)
	if len(c.pending) != 8 || s.Stats().Dropped.Load() != 0 {
		t.Fatalf("%d events queued, %d clients dropped; want 8 and none", len(c.pending), s.Stats().Dropped.Load())
	}
	// The buffer comes on top (TestSlowClientDropped drops a client).
	s.Publish([]kline.Update{update("BTCUSDT", oneMin, 600_000, 2, true), update("BTCUSDT", oneMin, 900_000, 1, true)})
	s.push(&p, 0)
	if len(c.pending) != 10 || s.Stats().Dropped.Load() != 0 {
		t.Fatalf("%d events queued, %d clients dropped; want 10 and none", len(c.pending), s.Stats().Dropped.Load())
	}
}

// TestPings: the server pings every client; one that answers stays, one
// that does not is closed with the reason.
func TestPings(t *testing.T) {
	s, url := newServer(t, Config{PushInterval: 4 * time.Millisecond, PingInterval: 10 * time.Millisecond, PongTimeout: 200 * time.Millisecond})
	pings := make(chan struct{}, 100)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	good, _, err := websocket.Dial(ctx, url+"/market/ws/btcusdt@kline_1m", &websocket.DialOptions{
		OnPingReceived: func(context.Context, []byte) bool {
			select {
			case pings <- struct{}{}:
			default:
			}
			return true // answer it
		}})
	if err != nil {
		t.Fatal(err)
	}
	defer good.CloseNow()
	go good.Read(ctx) // reading is what answers pings

	mute, err := rawDial(strings.TrimPrefix(url, "ws://"), "/market/ws/btcusdt@kline_1m")
	if err != nil {
		t.Fatal(err)
	}
	defer mute.Close()
	mute.SetReadDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(mute)
	sawPing := false
	for {
		op, payload, err := readServerFrame(r)
		if err != nil {
			t.Fatalf("the mute client was not closed with a reason: %v", err)
		}
		if op == 0x9 {
			sawPing = true
			continue
		}
		if op != 0x8 {
			t.Fatalf("frame %#x %q", op, payload)
		}
		if code := int(payload[0])<<8 | int(payload[1]); !sawPing || code != int(websocket.StatusPolicyViolation) || string(payload[2:]) != "no pong" {
			t.Fatalf("closed with %d %q after a ping: %v", code, payload[2:], sawPing)
		}
		break
	}
	// The client that answers is still pinged, and still there.
	for range 3 {
		select {
		case <-pings:
		case <-ctx.Done():
			t.Fatal("the answering client is no longer pinged")
		}
	}
	mute.Close()
	for s.Stats().Clients.Load() != 1 {
		if ctx.Err() != nil {
			t.Fatalf("%d clients, want the answering one", s.Stats().Clients.Load())
		}
		runtimeGosched()
	}
}

// readServerFrame reads one unmasked, unfragmented frame.
func readServerFrame(r *bufio.Reader) (op byte, payload []byte, err error) {
	var h [2]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return 0, nil, err
	}
	n := int(h[1] & 0x7f)
	switch n {
	case 126:
		var l [2]byte
		if _, err := io.ReadFull(r, l[:]); err != nil {
			return 0, nil, err
		}
		n = int(l[0])<<8 | int(l[1])
	case 127:
		return 0, nil, errors.New("frame too long for a test")
	}
	payload = make([]byte, n)
	_, err = io.ReadFull(r, payload)
	return h[0] & 0x0f, payload, err
}

// TestRunWaitsForClients: when Run returns, every client's handler has
// ended and the client has its close frame with the reason: klagg may exit
// at once without cutting a close short.
func TestRunWaitsForClients(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent(), goleak.IgnoreAnyFunction("github.com/VictoriaMetrics/metrics.summariesSwapCron"))
	cfg := Config{Intervals: []kline.Interval{oneMin}, Symbol: func(string) (Market, bool) { return Market{}, true }}
	s := New(cfg)
	ctx, cancel := context.WithCancel(context.Background())
	run := make(chan error)
	go func() { run <- s.Run(ctx) }()
	const n = 3
	handlers := make(chan struct{}, n)
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.ServeHTTP(w, r)
		handlers <- struct{}{}
	}))
	defer hs.Close()
	url := "ws" + strings.TrimPrefix(hs.URL, "http") + "/market/ws/btcusdt@kline_1m"
	closes := make(chan error, n)
	for range n {
		c := dial(t, url)
		write(t, c, `{"method":"LIST_SUBSCRIPTIONS","id":1}`)
		read(t, c) // the handler has joined and reads
		go func() {
			for {
				if _, _, err := c.Read(context.Background()); err != nil {
					closes <- err
					return
				}
			}
		}()
	}
	cancel()
	if err := <-run; err != nil {
		t.Fatal(err)
	}
	if got := len(handlers); got != n {
		t.Fatalf("Run returned with %d of %d client handlers still running", n-got, n)
	}
	for range n {
		if err := <-closes; websocket.CloseStatus(err) != websocket.StatusGoingAway || !strings.Contains(err.Error(), "server shutting down") {
			t.Fatalf("client closed with %v, want going away and the reason", err)
		}
	}
}

// TestOversizedFrame: a frame over the request limit closes the client
// with 1009 and the reason, not a bare cut.
func TestOversizedFrame(t *testing.T) {
	_, url := newServer(t, Config{})
	c := dial(t, url+"/ws")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Write(ctx, websocket.MessageText, bytes.Repeat([]byte("x"), maxRequest+1)); err != nil {
		t.Fatal(err)
	}
	for {
		if _, _, err := c.Read(ctx); err != nil {
			if websocket.CloseStatus(err) != websocket.StatusMessageTooBig {
				t.Fatalf("closed with %v, want 1009", err)
			}
			return
		}
	}
}

// TestNoClosingEventForAPartialKline: a kline closed while its symbol
// lacked trades gets no closing event; the repair's correction is its
// closing event, whole.
func TestNoClosingEventForAPartialKline(t *testing.T) {
	s, url := newServer(t, Config{PushInterval: 5 * time.Millisecond})
	s.Publish([]kline.Update{update("BTCUSDT", oneMin, 60_000, 3, false)})
	c := dial(t, url+"/ws/btcusdt@kline_1m")
	if ev := parseEvent(t, read(t, c)); ev.K.Closed || ev.K.Trades != 3 {
		t.Fatalf("current kline: %+v", ev.K)
	}
	partial := update("BTCUSDT", oneMin, 60_000, 4, true)
	partial.Partial = true
	s.Publish([]kline.Update{partial, update("BTCUSDT", oneMin, 120_000, 1, false)})
	if ev := parseEvent(t, read(t, c)); ev.K.Closed || ev.K.OpenTime != 120_000 {
		t.Fatalf("after a partial close, want the next kline and no closing event: %+v", ev.K)
	}
	s.Publish([]kline.Update{update("BTCUSDT", oneMin, 60_000, 9, true)}) // the correction
	if ev := parseEvent(t, read(t, c)); !ev.K.Closed || ev.K.OpenTime != 60_000 || ev.K.Trades != 9 {
		t.Fatalf("the correction's closing event: %+v", ev.K)
	}
}
