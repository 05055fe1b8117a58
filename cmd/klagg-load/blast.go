package main

import (
	"bufio"
	"context"
	"crypto/sha1"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/klagg/klagg/internal/binance"
	"github.com/klagg/klagg/internal/klaggproc"
)

// runBlast measures klagg's ingest ceiling and latency: a minimal exchange
// whose WebSocket sends aggTrade frames as fast as klagg takes them (or at
// -rate), with klagg's real binary reading them.
func runBlast(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("blast", flag.ContinueOnError)
	fs.SetOutput(stderr)
	bin := fs.String("klagg", "", "path to the klagg binary (go build -o /tmp/klagg ./cmd/klagg)")
	symbols := fs.Int("symbols", 1000, "symbols")
	rate := fs.Float64("rate", 0, "trades per second over all symbols (0: as fast as klagg reads)")
	dur := fs.Duration("duration", 20*time.Second, "how long to measure after a warm-up")
	warm := fs.Duration("warmup", 5*time.Second, "time after klagg is live before measuring")
	intervals := fs.String("intervals", "1m,3m,5m,15m,30m,1h,2h,4h,6h,8h,12h,1d,3d,1w,1M", "klagg's intervals")
	writeEvery := fs.Duration("write-every", time.Second, "klagg's database.write_every")
	clients := fs.Int("clients", 0, "WebSocket clients reading klagg's kline streams")
	perClient := fs.Int("streams", 10, "<symbol>@kline_1m streams per client")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *bin == "" {
		return fmt.Errorf("blast: -klagg is required")
	}
	b := &blaster{symbols: make([]string, *symbols), rate: *rate}
	for i := range b.symbols {
		b.symbols[i] = fmt.Sprintf("B%04dUSDT", i)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: b.handler()}
	go srv.Serve(ln)
	defer srv.Close()

	dir, err := os.MkdirTemp("", "klagg-blast")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	k, err := startKlagg(*bin, dir, fmt.Sprintf(`[exchange]
rest_url = "http://%[1]s"
ws_url = "ws://%[1]s"
weight_per_minute = 1000000
[klines]
intervals = [%[2]s]
backfill_limit = 0
[reconcile]
enabled = false
[server]
listen = "127.0.0.1:0"
[log]
status_interval = "5s"
[database]
path = %[4]q
write_every = %[3]q
`, ln.Addr(), quoteList(*intervals), writeEvery.String(), filepath.Join(dir, "k.db")))
	if err != nil {
		return err
	}
	defer k.Stop(time.Minute)
	fmt.Fprintf(stdout, "klagg live with %d symbols after %s\n", *symbols, k.LiveAfter().Round(time.Millisecond))
	readers, err := dialReaders(k.Base(), *clients, *perClient, b.symbols)
	if err != nil {
		return err
	}
	defer readers.close()
	if *clients > 0 {
		fmt.Fprintf(stdout, "%d clients reading %d streams each\n", *clients, *perClient)
	}

	time.Sleep(*warm)
	st0, err := k.Status()
	if err != nil {
		return err
	}
	m0, err := k.Metrics()
	if err != nil {
		return err
	}
	t0, sent0, read0 := time.Now(), b.sent.Load(), readers.bytes.Load()
	var rssMax int
	for end := t0.Add(*dur); time.Now().Before(end); time.Sleep(time.Second) {
		rssMax = max(rssMax, rssMB(k.Pid()))
	}
	st1, err := k.Status()
	if err != nil {
		return err
	}
	secs := time.Since(t0).Seconds()
	m1, err := k.Metrics()
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "offered %.0f trades/s; klagg applied %.0f trades/s (%d frames, %d malformed); writer backlog %d; RSS max %d MB\n",
		float64(b.sent.Load()-sent0)/secs, float64(st1.Trades-st0.Trades)/secs, st1.Frames-st0.Frames, st1.Malformed, st1.WriterBacklog, rssMax)
	fmt.Fprintf(stdout, "trade arrival → kline update handed to consumers (last minute): %s\n", m1.Quantiles("klagg_trade_to_consumer_seconds"))
	if *clients > 0 {
		fmt.Fprintf(stdout, "stream events %.0f/s, %.1f MB/s read by the clients, %g clients dropped; push → socket (last minute): %s\n",
			(m1.Value("klagg_stream_events_total")-m0.Value("klagg_stream_events_total"))/secs,
			float64(readers.bytes.Load()-read0)/secs/1e6, m1.Value("klagg_stream_clients_dropped_total"),
			m1.Quantiles("klagg_stream_event_delay_seconds"))
	}
	return nil
}

// readers are WebSocket clients of klagg that only drain their sockets:
// they share the machine with klagg, so they must cost as little as they can.
type readers struct {
	conns []net.Conn
	bytes atomic.Int64
}

// dialReaders connects n clients to klagg at base, each subscribed to
// perClient 1m kline streams, spread over the symbols.
func dialReaders(base string, n, perClient int, symbols []string) (*readers, error) {
	r := &readers{}
	addr := strings.TrimPrefix(base, "http://")
	for c := range n {
		names := make([]string, perClient)
		for j := range names {
			names[j] = strings.ToLower(symbols[(c*perClient+j)%len(symbols)]) + "@kline_1m"
		}
		conn, err := dialRaw(addr, "/market/ws/"+strings.Join(names, "/"))
		if err != nil {
			r.close()
			return nil, fmt.Errorf("client %d: %w", c, err)
		}
		r.conns = append(r.conns, conn)
		go func() {
			buf := make([]byte, 64<<10)
			for {
				n, err := conn.Read(buf)
				r.bytes.Add(int64(n))
				if err != nil {
					return
				}
			}
		}()
	}
	return r, nil
}

func (r *readers) close() {
	for _, c := range r.conns {
		c.Close()
	}
}

// dialRaw opens a WebSocket by hand; a frame's bytes are all a reader needs.
func dialRaw(addr, path string) (net.Conn, error) {
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n", path, addr)
	// Byte by byte, so that no frame after the response is read into a
	// buffer and lost.
	resp, err := http.ReadResponse(bufio.NewReaderSize(conn, 16), nil)
	if err == nil && resp.StatusCode != http.StatusSwitchingProtocols {
		err = fmt.Errorf("status %s", resp.Status)
	}
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("WebSocket handshake for %s: %w", path, err)
	}
	return conn, nil
}

// blaster is a Binance-shaped exchange with no history whose trade streams
// run as fast as the reader takes them. It writes WebSocket frames itself,
// batching thousands per write, so that it costs little of the CPU that
// klagg is being measured on; coder/websocket flushes every message.
type blaster struct {
	symbols []string
	rate    float64
	sent    atomic.Int64
}

func (b *blaster) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/fapi/v1/ping", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "{}") })
	mux.HandleFunc("/fapi/v1/time", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintf(w, `{"serverTime":%d}`, time.Now().UnixMilli())
	})
	mux.HandleFunc("/fapi/v1/exchangeInfo", func(w http.ResponseWriter, _ *http.Request) { writeExchangeInfo(w, b.symbols) })
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
func (b *blaster) serveWS(w http.ResponseWriter, r *http.Request) {
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
func writeExchangeInfo(w io.Writer, symbols []string) {
	infos := make([]binance.SymbolInfo, len(symbols))
	for i, s := range symbols {
		infos[i] = binance.SymbolInfo{Symbol: s, Pair: s, ContractType: "PERPETUAL", Status: "TRADING",
			BaseAsset: strings.TrimSuffix(s, "USDT"), QuoteAsset: "USDT", MarginAsset: "USDT", PricePrecision: 2, QuantityPrecision: 3}
	}
	json.NewEncoder(w).Encode(map[string]any{"timezone": "UTC", "serverTime": time.Now().UnixMilli(), "symbols": infos})
}

func quoteList(csv string) string {
	return `"` + strings.Join(strings.Split(csv, ","), `","`) + `"`
}

// startKlagg runs bin with config (written to dir) and waits until it logs
// that it is live.
func startKlagg(bin, dir, config string) (*klaggproc.Proc, error) {
	conf := filepath.Join(dir, "klagg.toml")
	if err := os.WriteFile(conf, []byte(config), 0o644); err != nil {
		return nil, err
	}
	k, err := klaggproc.Start(bin, conf)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	if err := k.WaitLive(ctx); err != nil {
		k.Kill()
		return nil, err
	}
	return k, nil
}
