package fakex

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"

	"github.com/klagg/klagg/internal/decimal"
	"github.com/klagg/klagg/internal/kline"
)

// wsConn is one client connection: a reader for SUBSCRIBE and friends, and
// a writer fed through out.
type wsConn struct {
	x        *Exchange
	c        *websocket.Conn
	raw      *stallConn
	combined bool
	out      chan []byte
	ctx      context.Context
	cancel   context.CancelFunc

	mu      sync.Mutex
	subs    map[string]bool
	stalled bool
	dead    bool
}

func (x *Exchange) handleWS(w http.ResponseWriter, r *http.Request) {
	var streams []string
	combined := strings.HasPrefix(r.URL.Path, "/market/stream")
	if combined {
		if s := r.URL.Query().Get("streams"); s != "" {
			streams = strings.Split(s, "/")
		}
	} else if rest := strings.TrimPrefix(r.URL.Path, "/market/ws/"); rest != "" {
		streams = strings.Split(rest, "/")
	}
	if len(streams) > x.cfg.MaxStreamsPerConn {
		http.Error(w, fmt.Sprintf("too many streams: %d > %d", len(streams), x.cfg.MaxStreamsPerConn), http.StatusBadRequest)
		return
	}
	c, err := websocket.Accept(w, r, nil)
	if err != nil {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	raw, _ := r.Context().Value(connKey{}).(*stallConn)
	wc := &wsConn{x: x, c: c, raw: raw, combined: combined, out: make(chan []byte, 1<<16), ctx: ctx, cancel: cancel, subs: map[string]bool{}}
	for _, s := range streams {
		wc.subs[strings.ToLower(s)] = true
	}
	x.mu.Lock()
	x.conns[wc] = true
	x.stats.Connections++
	x.mu.Unlock()
	defer func() {
		x.mu.Lock()
		delete(x.conns, wc)
		x.mu.Unlock()
		wc.kill()
	}()
	go wc.writer()
	wc.reader()
}

func (wc *wsConn) kill() {
	wc.mu.Lock()
	wc.dead = true
	wc.mu.Unlock()
	wc.cancel()
	wc.c.CloseNow()
}

func (wc *wsConn) cut(reason string) {
	wc.mu.Lock()
	wc.dead = true
	wc.mu.Unlock()
	go func() {
		wc.c.Close(websocket.StatusGoingAway, reason)
		wc.cancel()
	}()
}

func (wc *wsConn) stall() {
	wc.mu.Lock()
	wc.stalled = true
	wc.mu.Unlock()
	if wc.raw != nil {
		wc.raw.stall()
	}
}

func (wc *wsConn) malformed(n int) {
	bad := []string{
		`{"stream":"s000usdt@aggTrade","data":{"e":"aggTrade","a":`,
		`not json at all`,
		`{"stream":"s000usdt@aggTrade","data":{"e":"aggTrade","E":1,"a":"x","s":"S000USDT"}}`,
		`{"stream":"s000usdt@markPrice","data":{"e":"markPriceUpdate","s":"S000USDT","p":"1"}}`,
		`{"e":"somethingNew","E":1}`,
	}
	for i := 0; i < n; i++ {
		wc.send([]byte(bad[i%len(bad)]))
	}
}

// send queues a frame; a client too slow to take 64Ki frames is cut, as
// Binance does.
func (wc *wsConn) send(frame []byte) {
	wc.mu.Lock()
	skip := wc.stalled || wc.dead
	wc.mu.Unlock()
	if skip {
		return
	}
	select {
	case wc.out <- frame:
	default:
		wc.cut("client too slow")
	}
}

// deliver sends the new trades of subscribed symbols.
func (wc *wsConn) deliver(fresh map[string][]kline.Trade, now int64) {
	wc.mu.Lock()
	var want []string
	for s := range wc.subs {
		if sym, kind, ok := streamSymbol(s); ok && kind == "aggtrade" && len(fresh[sym]) > 0 {
			want = append(want, sym)
		}
	}
	wc.mu.Unlock()
	n := 0
	for _, sym := range want {
		prec := wc.x.Precision(sym)
		for _, t := range fresh[sym] {
			wc.send(aggTradeFrame(sym, &t, prec, now, wc.combined))
			n++
		}
	}
	if n > 0 {
		wc.x.mu.Lock()
		wc.x.stats.TradesSent += n
		wc.x.mu.Unlock()
	}
}

func aggTradeFrame(sym string, t *kline.Trade, p kline.Precision, now int64, combined bool) []byte {
	var b []byte
	if combined {
		b = append(b, `{"stream":"`...)
		b = append(b, strings.ToLower(sym)...)
		b = append(b, `@aggTrade","data":`...)
	}
	b = append(b, `{"e":"aggTrade","E":`...)
	b = strconv.AppendInt(b, max(now, t.Time), 10)
	b = append(b, `,"a":`...)
	b = strconv.AppendInt(b, t.ID, 10)
	b = append(b, `,"s":"`...)
	b = append(b, sym...)
	b = append(b, `","p":"`...)
	b = p.AppendPrice(b, t.Price)
	b = append(b, `","q":"`...)
	b = decimal.Append(b, t.Qty, p.Qty)
	b = append(b, `","nq":"`...)
	b = decimal.Append(b, t.Qty, p.Qty)
	b = append(b, `","f":`...)
	b = strconv.AppendInt(b, t.FirstID, 10)
	b = append(b, `,"l":`...)
	b = strconv.AppendInt(b, t.LastID, 10)
	b = append(b, `,"T":`...)
	b = strconv.AppendInt(b, t.Time, 10)
	b = append(b, `,"m":`...)
	b = strconv.AppendBool(b, t.BuyerMaker)
	b = append(b, '}')
	if combined {
		b = append(b, '}')
	}
	return b
}

func (wc *wsConn) writer() {
	ping := time.NewTicker(wc.x.cfg.PingInterval)
	defer ping.Stop()
	life := time.NewTimer(wc.x.cfg.Lifetime)
	defer life.Stop()
	for {
		select {
		case <-wc.ctx.Done():
			return
		case f := <-wc.out:
			if err := wc.c.Write(wc.ctx, websocket.MessageText, f); err != nil {
				wc.kill()
				return
			}
		case <-ping.C:
			wc.mu.Lock()
			stalled := wc.stalled
			wc.mu.Unlock()
			if !stalled {
				ctx, cancel := context.WithTimeout(wc.ctx, 10*time.Minute)
				go func() { defer cancel(); wc.c.Ping(ctx) }()
			}
		case <-life.C:
			wc.x.mu.Lock()
			wc.x.stats.LifetimeCuts++
			wc.x.mu.Unlock()
			wc.cut("connection lifetime reached")
		}
	}
}

type request struct {
	Method string          `json:"method"`
	Params json.RawMessage `json:"params"`
	ID     json.RawMessage `json:"id"`
}

func (wc *wsConn) reader() {
	window, count := time.Now(), 0
	for {
		_, msg, err := wc.c.Read(wc.ctx)
		if err != nil {
			return
		}
		if time.Since(window) >= time.Second {
			window, count = time.Now(), 0
		}
		count++
		if count > wc.x.cfg.MaxMsgsPerSecond {
			wc.x.mu.Lock()
			wc.x.stats.MessagesLimit++
			wc.x.mu.Unlock()
			wc.c.Close(websocket.StatusPolicyViolation, "Too many requests")
			return
		}
		wc.answer(msg)
	}
}

func (wc *wsConn) reply(v any) {
	b, _ := json.Marshal(v)
	wc.send(b)
}

func (wc *wsConn) answer(msg []byte) {
	var req request
	if err := json.Unmarshal(msg, &req); err != nil {
		wc.reply(wsError(3, "Invalid JSON: "+err.Error(), nil))
		return
	}
	id := req.ID
	if len(id) == 0 {
		id = json.RawMessage("null")
	}
	var params []string
	if len(req.Params) > 0 && json.Unmarshal(req.Params, &params) != nil {
		wc.reply(wsError(2, "Invalid request: params must be a list of strings", id))
		return
	}
	wc.reply(wc.apply(req.Method, params, id))
}

func wsError(code int, msg string, id json.RawMessage) map[string]any {
	return map[string]any{"error": map[string]any{"code": code, "msg": msg}, "id": id}
}

// apply carries out one request on the subscription set and returns the reply.
func (wc *wsConn) apply(method string, params []string, id json.RawMessage) map[string]any {
	wc.mu.Lock()
	defer wc.mu.Unlock()
	switch method {
	case "SUBSCRIBE":
		n := len(wc.subs)
		for _, p := range params {
			if !wc.subs[strings.ToLower(p)] {
				n++
			}
		}
		if n > wc.x.cfg.MaxStreamsPerConn {
			return wsError(2, fmt.Sprintf("Invalid request: too many streams (max %d)", wc.x.cfg.MaxStreamsPerConn), id)
		}
		for _, p := range params {
			wc.subs[strings.ToLower(p)] = true
		}
		wc.x.mu.Lock()
		wc.x.stats.Subscribes++
		wc.x.mu.Unlock()
	case "UNSUBSCRIBE":
		for _, p := range params {
			delete(wc.subs, strings.ToLower(p))
		}
	case "LIST_SUBSCRIPTIONS":
		return map[string]any{"result": sortedKeys(wc.subs), "id": id}
	default:
		return wsError(2, "Invalid request: unknown method "+strconv.Quote(method), id)
	}
	return map[string]any{"result": nil, "id": id}
}
