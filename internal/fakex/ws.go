package fakex

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"

	"github.com/klagg/klagg/internal/binance"
	"github.com/klagg/klagg/internal/kline"
)

// wsConn is one client connection: a reader for SUBSCRIBE and friends, and
// a writer fed through out.
type wsConn struct {
	x        *Exchange
	c        *websocket.Conn
	raw      *stallConn
	combined atomic.Bool // SET_PROPERTY changes it
	out      chan []byte
	ctx      context.Context
	cancel   context.CancelFunc

	mu      sync.Mutex
	subs    map[string]bool
	stalled bool
	dead    bool
}

func (x *Exchange) handleWS(w http.ResponseWriter, r *http.Request) {
	su, ok := binance.ParseStreamURL(r.URL)
	if !ok || su.Root != "market" {
		// Since 2026-04-23 only /market carries trades and klines.
		http.NotFound(w, r)
		return
	}
	streams, combined := su.Names, su.Combined
	if len(streams) > x.cfg.MaxStreamsPerConn {
		http.Error(w, fmt.Sprintf("too many streams: %d > %d", len(streams), x.cfg.MaxStreamsPerConn), http.StatusBadRequest)
		return
	}
	if len(r.RequestURI) > binance.MaxURLLength {
		http.Error(w, "URI too long", http.StatusBadRequest)
		return
	}
	for i := 0; i < len(r.RequestURI); i++ {
		if r.RequestURI[i] >= 0x80 {
			// Stream names that are not ASCII must be percent-encoded.
			http.Error(w, "invalid characters in the request URI", http.StatusBadRequest)
			return
		}
	}
	if bad := x.refusedStream(streams); bad != "" {
		http.Error(w, "invalid stream "+bad, http.StatusBadRequest)
		return
	}
	c, err := websocket.Accept(w, r, nil)
	if err != nil {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	raw, _ := r.Context().Value(connKey{}).(*stallConn)
	wc := &wsConn{x: x, c: c, raw: raw, out: make(chan []byte, 1<<16), ctx: ctx, cancel: cancel, subs: map[string]bool{}}
	wc.combined.Store(combined)
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
		// Subscriptions are kept lower-cased, as Binance matches them.
		if n, ok := binance.ParseStreamName(s); ok && strings.EqualFold(n.Kind, binance.KindAggTrade) && len(fresh[n.Symbol]) > 0 {
			want = append(want, n.Symbol)
		}
	}
	wc.mu.Unlock()
	n := 0
	for _, sym := range want {
		prec := wc.x.Precision(sym)
		for _, t := range fresh[sym] {
			wc.send(aggTradeFrame(sym, &t, prec, now, wc.combined.Load()))
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
	event := func(b []byte) []byte { return binance.AppendAggTrade(b, sym, t, p, max(now, t.Time)) }
	if combined {
		return binance.AppendCombined(nil, binance.AggTradeStream(sym), event)
	}
	return event(nil)
}

// deliverKlines sends the current kline of each kline stream subscribed,
// as Binance does every 250 ms for a kline that has trades.
func (wc *wsConn) deliverKlines(now int64) {
	wc.mu.Lock()
	var want []binance.StreamName
	for s := range wc.subs {
		if n, ok := binance.ParseStreamName(s); ok && n.Kind == binance.KindKline {
			want = append(want, n)
		}
	}
	wc.mu.Unlock()
	for _, n := range want {
		sym := n.Symbol
		iv, err := kline.ParseInterval(n.Interval)
		if err != nil {
			continue
		}
		k, p, ok := wc.x.currentKline(sym, iv, now)
		if !ok || k.Trades == 0 {
			continue
		}
		event := func(b []byte) []byte { return binance.AppendKlineEvent(b, sym, iv.String(), now, &k, p) }
		if wc.combined.Load() {
			wc.send(binance.AppendCombined(nil, binance.KlineStream(sym, iv.String()), event))
		} else {
			wc.send(event(nil))
		}
	}
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
		if len(msg) > binance.MaxRequestBytes {
			continue // Binance ignores a frame this large, without a reply
		}
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
	b, err := json.Marshal(v)
	if err != nil {
		b = binance.AppendWSReply(nil, nil, &binance.WSError{Code: 3, Msg: err.Error()}, nil)
	}
	wc.send(b)
}

func (wc *wsConn) answer(msg []byte) {
	req, werr := binance.ParseWSRequest(msg)
	if werr != nil {
		wc.send(binance.AppendWSReply(nil, nil, werr, req.ID))
		return
	}
	switch req.Method {
	case binance.MethodSetProperty, binance.MethodGetProperty:
		_, v, werr := req.Property()
		switch {
		case werr != nil:
			wc.send(binance.AppendWSReply(nil, nil, werr, req.ID))
		case req.Method == binance.MethodSetProperty:
			wc.combined.Store(v)
			wc.send(binance.AppendWSReply(nil, nil, nil, req.ID))
		default:
			wc.send(binance.AppendWSReply(nil, wc.combined.Load(), nil, req.ID))
		}
		return
	}
	params, werr := req.Streams()
	if werr != nil {
		wc.send(binance.AppendWSReply(nil, nil, werr, req.ID))
		return
	}
	wc.reply(wc.apply(req.Method, params, req.ID))
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
	}
	return map[string]any{"result": nil, "id": id}
}
