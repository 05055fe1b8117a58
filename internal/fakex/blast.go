package fakex

import (
	"bufio"
	"crypto/sha1"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/klagg/klagg/internal/binance"
)

// NewBlaster starts the fake exchange in its load mode on a loopback port:
// n symbols (B0000USDT…) with no history, whose trade streams run at rate
// trades per second over all symbols, or as fast as the reader takes them
// (rate 0). It is for measuring klagg's ingest ceiling, not its exactness.
func NewBlaster(n int, rate float64) (*Blaster, error) {
	b := &Blaster{symbols: make([]string, n), rate: rate}
	for i := range b.symbols {
		b.symbols[i] = fmt.Sprintf("B%04dUSDT", i)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("fakex: listen: %w", err)
	}
	b.ln = ln
	b.srv = &http.Server{Handler: b.handler(), ReadHeaderTimeout: 5 * time.Second}
	go b.srv.Serve(ln)
	return b, nil
}

// URL is the REST root; WSURL the WebSocket root.
func (b *Blaster) URL() string   { return "http://" + b.ln.Addr().String() }
func (b *Blaster) WSURL() string { return "ws://" + b.ln.Addr().String() }

// Symbols are the symbols it lists.
func (b *Blaster) Symbols() []string { return b.symbols }

// Sent is the number of trades sent so far.
func (b *Blaster) Sent() int64 { return b.sent.Load() }

// Close stops it.
func (b *Blaster) Close() { b.srv.Close() }

// Blaster is a Binance-shaped exchange with no history whose trade streams
// run as fast as the reader takes them. It writes WebSocket frames itself,
// batching thousands per write, so that it costs little of the CPU that
// klagg is being measured on; coder/websocket flushes every message.
type Blaster struct {
	symbols []string
	rate    float64
	sent    atomic.Int64
	srv     *http.Server
	ln      net.Listener
}

func (b *Blaster) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/fapi/v1/ping", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "{}") })
	mux.HandleFunc("/fapi/v1/time", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintf(w, `{"serverTime":%d}`, time.Now().UnixMilli())
	})
	mux.HandleFunc("/fapi/v1/exchangeInfo", func(w http.ResponseWriter, _ *http.Request) {
		if err := writeExchangeInfo(w, b.symbols); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
		}
	})
	// No history: klagg starts every symbol at aggregate id 0.
	mux.HandleFunc("/fapi/v1/klines", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "[]") })
	mux.HandleFunc("/fapi/v1/aggTrades", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "[]") })
	mux.HandleFunc("/market/stream", b.serveWS)
	return mux
}

// blastSymbol is one stream's position.
type blastSymbol struct {
	name, stream string
	id           int64
	price        int64 // cents
}

// serveWS upgrades by hand and then streams trades of the subscribed
// symbols round-robin, answering SUBSCRIBE, UNSUBSCRIBE and pings.
func (b *Blaster) serveWS(w http.ResponseWriter, r *http.Request) {
	key := r.Header.Get("Sec-WebSocket-Key")
	if key == "" || !strings.EqualFold(r.Header.Get("Upgrade"), "websocket") {
		http.Error(w, "WebSocket only", http.StatusBadRequest)
		return
	}
	conn, rw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return
	}
	defer conn.Close()
	sum := sha1.Sum([]byte(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
	fmt.Fprintf(rw, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n",
		base64.StdEncoding.EncodeToString(sum[:]))
	if err := rw.Flush(); err != nil {
		return
	}

	// The reader turns the client's frames into control frames to send and
	// subscription changes; the writer below owns the subscriptions.
	type change struct {
		add    bool
		stream string
	}
	ctl := make(chan []byte, 64)
	changes := make(chan change, 4096)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			op, payload, err := readClientFrame(rw.Reader)
			if err != nil {
				return
			}
			switch op {
			case 0x1:
				var req struct {
					Method string          `json:"method"`
					Params []string        `json:"params"`
					ID     json.RawMessage `json:"id"`
				}
				if json.Unmarshal(payload, &req) != nil {
					continue
				}
				for _, p := range req.Params {
					changes <- change{add: req.Method == "SUBSCRIBE", stream: p}
				}
				ctl <- appendFrame(nil, 0x1, fmt.Appendf(nil, `{"result":null,"id":%s}`, req.ID))
			case 0x9:
				ctl <- appendFrame(nil, 0xA, payload)
			case 0x8:
				return
			}
		}
	}()

	subs := map[string]*blastSymbol{}
	var order []*blastSymbol
	bySymbol := map[string]string{}
	for _, s := range b.symbols {
		bySymbol[strings.ToLower(s)+"@aggtrade"] = s
	}
	apply := func(c change) {
		name, ok := bySymbol[strings.ToLower(c.stream)]
		if !ok {
			return
		}
		if c.add && subs[name] == nil {
			s := &blastSymbol{name: name, stream: strings.ToLower(name) + "@aggTrade", price: 10_000}
			subs[name] = s
			order = append(order, s)
		} else if !c.add && subs[name] != nil {
			delete(subs, name)
			order = order[:0]
			for _, s := range subs {
				order = append(order, s)
			}
		}
	}
	for _, st := range strings.Split(r.URL.Query().Get("streams"), "/") {
		apply(change{add: true, stream: st})
	}

	bw := bufio.NewWriterSize(conn, 256<<10)
	var buf, frame []byte
	rng := uint64(len(order) + 1)
	next, start, offered := 0, time.Now(), int64(0)
	for {
		select {
		case <-done:
			return
		case f := <-ctl:
			bw.Write(f)
		case c := <-changes:
			apply(c)
			continue
		default:
		}
		n := 4096
		if b.rate > 0 && len(b.symbols) > 0 {
			due := int64(b.rate*float64(len(order))/float64(len(b.symbols))*time.Since(start).Seconds()) - offered
			if due <= 0 {
				bw.Flush()
				time.Sleep(time.Millisecond)
				continue
			}
			n = int(min(due, 4096))
		}
		if len(order) == 0 {
			bw.Flush()
			time.Sleep(10 * time.Millisecond)
			continue
		}
		now := time.Now().UnixMilli()
		for range n {
			s := order[next%len(order)]
			next++
			rng ^= rng << 13
			rng ^= rng >> 7
			rng ^= rng << 17
			s.price = max(100, s.price+int64(rng%3)-1)
			buf = appendAggTrade(buf[:0], s, now, int64(rng>>8%999)+1, rng&(1<<40) != 0)
			s.id++
			frame = appendFrame(frame[:0], 0x1, buf)
			if _, err := bw.Write(frame); err != nil {
				return
			}
		}
		offered += int64(n)
		b.sent.Add(int64(n))
		if err := bw.Flush(); err != nil {
			return
		}
	}
}

// appendAggTrade writes s's next trade in Binance's combined-stream layout.
// Written by hand for speed rather than with internal/binance's writer:
// the blaster must offer more trades than klagg reads, on the same two
// cores, and that writer (decimals by precision, the event in a closure)
// cut what it offered from 1.05M to 0.9M trades/s, below klagg's rate.
// TestBlastFrame checks that Binance's reader takes it as the trade meant.
func appendAggTrade(b []byte, s *blastSymbol, now, qty int64, buyerMaker bool) []byte {
	b = append(b, `{"stream":"`...)
	b = append(b, s.stream...)
	b = append(b, `","data":{"e":"aggTrade","E":`...)
	b = strconv.AppendInt(b, now, 10)
	b = append(b, `,"a":`...)
	b = strconv.AppendInt(b, s.id, 10)
	b = append(b, `,"s":"`...)
	b = append(b, s.name...)
	b = append(b, `","p":"`...)
	b = strconv.AppendInt(b, s.price/100, 10)
	b = append(b, '.', byte('0'+s.price/10%10), byte('0'+s.price%10))
	b = append(b, `","q":"0.`...)
	b = append(b, byte('0'+qty/100%10), byte('0'+qty/10%10), byte('0'+qty%10))
	b = append(b, `","nq":"0.001","f":`...)
	b = strconv.AppendInt(b, 3*s.id, 10)
	b = append(b, `,"l":`...)
	b = strconv.AppendInt(b, 3*s.id+2, 10)
	b = append(b, `,"T":`...)
	b = strconv.AppendInt(b, now, 10)
	b = append(b, `,"m":`...)
	b = strconv.AppendBool(b, buyerMaker)
	return append(b, "}}"...)
}

// appendFrame appends an unmasked, unfragmented server frame.
func appendFrame(b []byte, op byte, payload []byte) []byte {
	b = append(b, 0x80|op)
	switch n := len(payload); {
	case n < 126:
		b = append(b, byte(n))
	case n < 1<<16:
		b = append(b, 126, byte(n>>8), byte(n))
	default:
		b = append(b, 127)
		b = binary.BigEndian.AppendUint64(b, uint64(n))
	}
	return append(b, payload...)
}

// readClientFrame reads one (masked) client frame.
func readClientFrame(r *bufio.Reader) (op byte, payload []byte, err error) {
	var h [2]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return 0, nil, err
	}
	n := uint64(h[1] & 0x7f)
	switch n {
	case 126:
		var l [2]byte
		if _, err := io.ReadFull(r, l[:]); err != nil {
			return 0, nil, err
		}
		n = uint64(binary.BigEndian.Uint16(l[:]))
	case 127:
		var l [8]byte
		if _, err := io.ReadFull(r, l[:]); err != nil {
			return 0, nil, err
		}
		n = binary.BigEndian.Uint64(l[:])
	}
	if n > 1<<20 {
		return 0, nil, errors.New("client frame too large")
	}
	var mask [4]byte
	if h[1]&0x80 != 0 {
		if _, err := io.ReadFull(r, mask[:]); err != nil {
			return 0, nil, err
		}
	}
	payload = make([]byte, n)
	if _, err := io.ReadFull(r, payload); err != nil {
		return 0, nil, err
	}
	for i := range payload {
		payload[i] ^= mask[i%4]
	}
	return h[0] & 0x0f, payload, nil
}

// writeExchangeInfo lists symbols as TRADING USDT perpetuals with 2 price
// and 3 quantity decimals.
func writeExchangeInfo(w io.Writer, symbols []string) error {
	infos := make([]binance.SymbolInfo, len(symbols))
	for i, s := range symbols {
		infos[i] = binance.SymbolInfo{Symbol: s, Pair: s, ContractType: "PERPETUAL", Status: "TRADING",
			BaseAsset: strings.TrimSuffix(s, "USDT"), QuoteAsset: "USDT", MarginAsset: "USDT", PricePrecision: 2, QuantityPrecision: 3}
	}
	info, err := exchangeInfo(time.Now().UnixMilli(), 2400, infos)
	if err != nil {
		return err
	}
	return json.NewEncoder(w).Encode(info)
}
