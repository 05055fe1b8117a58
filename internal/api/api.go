// Package api owns klagg's HTTP surface: Binance-compatible REST
// (/fapi/v1/klines, continuousKlines, ticker/price, exchangeInfo, time,
// ping) answered from the store and the live klines, with Binance's
// per-client request weight; klagg's own /api/v1/status, /healthz, /readyz
// and /metrics; the WebSocket streams and chart page it mounts; and the
// access rules in front of all of them (token, CORS, weight budget).
package api

import (
	"bufio"
	"cmp"
	"context"
	"crypto/subtle"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/klagg/klagg/internal/binance"
	"github.com/klagg/klagg/internal/kline"
	"github.com/klagg/klagg/internal/service"
	"github.com/klagg/klagg/internal/store"
	"github.com/klagg/klagg/internal/stream"
)

// Source is the running service the API reports on.
type Source interface {
	Symbols() []store.Symbol                 // live symbols
	Symbol(name string) (store.Symbol, bool) // any symbol with history
	Intervals() []kline.Interval
	Status() service.Status
	Ready() bool
	ExchangeNow() time.Time
	WritePrometheus(w io.Writer) // the source's own metrics
	// ExchangeLists are exchangeInfo's exchange-wide lists by name
	// (store.RateLimits, store.ExchangeFilters), as the exchange gave them.
	ExchangeLists(ctx context.Context) map[string][]byte
	// StoreErr is the store's write error while writes fail, else nil.
	StoreErr() error
	// Unwritten appends the klines of a series the store has not taken
	// while its writes fail, oldest first.
	Unwritten(dst []kline.Kline, symbol string, iv kline.Interval) []kline.Kline
}

// Store reads stored klines.
type Store interface {
	Klines(ctx context.Context, q store.Query) ([]kline.Kline, error)
}

// Streams is the WebSocket API, which also knows the newest live klines.
type Streams interface {
	http.Handler
	Recent(dst []kline.Kline, symbol string, iv kline.Interval) []kline.Kline
	LastTrade(symbol string) (price, time int64, ok bool)
	Stats() *stream.Stats
	WritePrometheus(w io.Writer) // the streams' own metrics
}

// Replayer reads a series' closed klines back from where a cluster keeps
// them for a while (its kline stream), from a time on: REST's last resort
// while the store cannot be read.
type Replayer interface {
	Replay(ctx context.Context, dst []kline.Kline, symbol string, iv kline.Interval, from time.Time) ([]kline.Kline, error)
}

// Config sets up a Server.
type Config struct {
	Source  Source
	Store   Store
	Streams Streams
	Replay  Replayer     // a cluster's kline stream; nil on a single node
	Page    http.Handler // the chart page and its files, at /
	Token   string       // required on every request but health and page files when set
	CORS    []string     // allowed origins; "*" for any
	// WeightPerMinute is each client's REST weight budget per minute, as
	// Binance counts it; 0: none, the weight is only reported.
	WeightPerMinute int
	Now             func() time.Time // the clock of weight minutes and bans [time.Now]
	Conns           *Listener        // the capped listener, for its metrics; optional
	Log             *slog.Logger
}

// Server is klagg's HTTP handler.
type Server struct {
	cfg     Config
	mux     *http.ServeMux
	metrics *metrics.Set
	bufs    sync.Pool
	tails   tails
	// versions is the store's ClosedVersion when it has one; without it
	// every request reads the store.
	versions versioned
	weights  *weights
}

// New returns the API handler.
func New(cfg Config) *Server {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	s := &Server{cfg: cfg, mux: http.NewServeMux(), metrics: metrics.NewSet(), weights: newWeights(cfg.WeightPerMinute, cfg.Now)}
	s.bufs.New = func() any { b := make([]byte, 0, 64<<10); return &b }
	s.versions, _ = cfg.Store.(versioned)
	m := s.mux
	m.HandleFunc("GET /fapi/v1/klines", s.klines)
	m.HandleFunc("GET /fapi/v1/continuousKlines", s.continuousKlines)
	m.HandleFunc("GET /fapi/v1/ticker/price", s.tickerPrice)
	m.HandleFunc("GET /fapi/v2/ticker/price", s.tickerPrice)
	m.HandleFunc("GET /fapi/v1/exchangeInfo", s.exchangeInfo)
	m.HandleFunc("GET /fapi/v1/time", s.time)
	m.HandleFunc("GET /fapi/v1/ping", func(w http.ResponseWriter, _ *http.Request) { writeJSON(w, struct{}{}) })
	for _, method := range []string{"GET", "POST", "PUT", "DELETE", "PATCH"} {
		m.HandleFunc(method+" /fapi/", s.unserved)
	}
	m.HandleFunc("GET /api/v1/status", s.status)
	m.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("ok\n")) })
	m.HandleFunc("GET /readyz", s.readyz)
	m.HandleFunc("GET /metrics", s.writeMetrics)
	for _, prefix := range []string{"", "/market", "/public", "/private"} {
		for _, p := range []string{"/ws/", "/ws", "/stream"} {
			m.Handle("GET "+prefix+p, cfg.Streams)
		}
	}
	if cfg.Page != nil {
		m.Handle("GET /", cfg.Page)
	}
	return s
}

// ServeHTTP applies CORS and the token, then routes, counting every
// request by route and status code.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rec := &recorder{ResponseWriter: w, code: http.StatusOK}
	defer func() {
		route := r.Pattern
		if route == "" {
			route = "unmatched"
		}
		s.metrics.GetOrCreateCounter(fmt.Sprintf(`klagg_api_requests_total{route=%q,code="%d"}`, route, rec.code)).Inc()
	}()
	if s.cors(rec, r) {
		return
	}
	if !s.authorized(r) {
		writeError(rec, &binance.APIError{Status: http.StatusUnauthorized, Code: -2015, Msg: "Invalid API-key: this klagg requires its token (Authorization: Bearer <token>, X-MBX-APIKEY or ?token=)."})
		return
	}
	if strings.HasPrefix(r.URL.Path, "/fapi/") && !s.weigh(rec, r) {
		return
	}
	s.mux.ServeHTTP(rec, r)
}

// open paths need no token: health probes, and the chart page's files,
// which carry no data and pass the token from the page's URL to the API.
func open(path string) bool {
	return path == "/healthz" || path == "/readyz" || path == "/" || strings.HasPrefix(path, "/assets/")
}

func (s *Server) authorized(r *http.Request) bool {
	if s.cfg.Token == "" || open(r.URL.Path) {
		return true
	}
	got := r.URL.Query().Get("token")
	// The scheme is case-insensitive (RFC 9110 §11.1): "bearer" is Bearer.
	if h := r.Header.Get("Authorization"); len(h) > 7 && strings.EqualFold(h[:7], "Bearer ") {
		got = strings.TrimSpace(h[7:])
	} else if h := r.Header.Get("X-MBX-APIKEY"); h != "" {
		got = h
	}
	return subtle.ConstantTimeCompare([]byte(got), []byte(s.cfg.Token)) == 1
}

// cors sets the CORS headers for an allowed origin and answers preflight
// requests; it reports whether the request was answered.
func (s *Server) cors(w http.ResponseWriter, r *http.Request) bool {
	origin := r.Header.Get("Origin")
	if origin == "" || len(s.cfg.CORS) == 0 {
		return false
	}
	if !slices.Contains(s.cfg.CORS, "*") && !slices.Contains(s.cfg.CORS, origin) {
		return false
	}
	h := w.Header()
	h.Set("Access-Control-Allow-Origin", origin)
	h.Add("Vary", "Origin")
	if r.Method == http.MethodOptions {
		h.Set("Access-Control-Allow-Methods", "GET")
		h.Set("Access-Control-Allow-Headers", "Authorization, X-MBX-APIKEY")
		h.Set("Access-Control-Max-Age", "600")
		w.WriteHeader(http.StatusNoContent)
		return true
	}
	return false
}

func (s *Server) klines(w http.ResponseWriter, r *http.Request) {
	q, aerr := binance.ParseKlinesQuery(r.URL.Query())
	if aerr != nil {
		writeError(w, aerr)
		return
	}
	s.serveKlines(w, r, q)
}

// serveKlines answers a klines query of any kind of kline request.
func (s *Server) serveKlines(w http.ResponseWriter, r *http.Request, q binance.KlinesQuery) {
	sym, ok := s.cfg.Source.Symbol(q.Symbol)
	if !ok {
		writeError(w, binance.BadRequest(-1121, "Invalid symbol."))
		return
	}
	if !slices.ContainsFunc(s.cfg.Source.Intervals(), func(v kline.Interval) bool { return v.String() == q.Interval.String() }) {
		writeError(w, binance.BadRequest(-1120, fmt.Sprintf("Invalid interval: this klagg keeps %s (klines.intervals in its config).", strings.Join(intervalNames(s.cfg.Source.Intervals()), ", "))))
		return
	}
	// A slow database gets a clear error rather than a hung client.
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	defer cancel()
	prec := kline.Precision{Price: sym.PricePrecision, Qty: sym.QuantityPrecision}
	bp := s.bufs.Get().(*[]byte)
	b, err := s.appendKlines(ctx, (*bp)[:0], q, prec)
	if err != nil {
		ks, ok := s.withoutStore(r.Context(), q)
		if !ok {
			s.cfg.Log.Warn("reading klines failed", "symbol", q.Symbol, "interval", q.Interval, "err", err)
			writeError(w, &binance.APIError{Status: http.StatusServiceUnavailable, Code: -1001, Msg: "Internal error; unable to read klines from the database. Please try again."})
			return
		}
		s.cfg.Log.Debug("answered from memory: reading klines failed", "symbol", q.Symbol, "interval", q.Interval, "err", err)
		b = appendArray((*bp)[:0], ks, prec)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Write(b)
	if cap(b) <= 1<<20 { // a pooled buffer never holds more than one large answer
		*bp = b
		s.bufs.Put(bp)
	}
}

// appendKlines appends the answer to q as a JSON array: from the tail cache
// for the latest klines, else from the store.
func (s *Server) appendKlines(ctx context.Context, b []byte, q binance.KlinesQuery, prec kline.Precision) ([]byte, error) {
	if q.Start < 0 && q.End < 0 && s.versions != nil && s.cfg.Source.StoreErr() == nil {
		return s.appendLatest(ctx, b, q, prec)
	}
	ks, err := s.read(ctx, q)
	if err != nil {
		return nil, err
	}
	return appendArray(b, ks, prec), nil
}

// openingFrom returns the index of the first of ks (by open time) opening
// at or after t.
func openingFrom(ks []kline.Kline, t int64) int {
	i, _ := slices.BinarySearchFunc(ks, t, func(k kline.Kline, t int64) int { return cmp.Compare(k.OpenTime, t) })
	return i
}

// appendArray appends ks as Binance's JSON array of kline arrays.
func appendArray(b []byte, ks []kline.Kline, prec kline.Precision) []byte {
	b = append(b, '[')
	for i := range ks {
		if i > 0 {
			b = append(b, ',')
		}
		b = binance.AppendKlineArray(b, &ks[i], prec)
	}
	return append(b, ']')
}

// withoutStore answers q from the klines in memory alone, or with those
// of a cluster's kline stream under them, where they hold every kline of
// the answer, and reports whether they do. While the store cannot be read
// (a cluster's PostgreSQL down), every closed kline it may lack is in
// memory (the writer's backlog, or the stream's klines the sinks have not
// stored), each in its newest version, and the stream holds every version
// the cluster published in its retention; so an answer whose every
// interval slot is there is the one the store would give, and any other
// is refused rather than given with a hole.
func (s *Server) withoutStore(ctx context.Context, q binance.KlinesQuery) ([]kline.Kline, bool) {
	var recent [2]kline.Kline
	live := s.cfg.Streams.Recent(recent[:0], q.Symbol, q.Interval)
	if len(live) == 0 || q.End == 0 {
		return nil, false
	}
	newest := live[len(live)-1].OpenTime
	ks := s.cfg.Source.Unwritten(nil, q.Symbol, q.Interval)
	ks = merge(ks, live)
	if sel, ok := answer(ks, q, newest); ok || s.cfg.Replay == nil {
		return sel, ok
	}
	// The first slot the answer may hold: a kline is published when it
	// closes, after its open time.
	iv := q.Interval
	from := iv.Open(max(q.Start, 0))
	if q.Start < 0 {
		from = newest
		if q.End >= 0 {
			from = min(from, iv.Open(q.End))
		}
		for range q.Limit - 1 {
			from = iv.Prev(from)
		}
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	old, err := s.cfg.Replay.Replay(ctx, nil, q.Symbol, iv, time.UnixMilli(from))
	if err != nil {
		s.cfg.Log.Debug("reading klines back from the cluster's stream failed", "symbol", q.Symbol, "interval", iv, "err", err)
		return nil, false
	}
	return answer(merge(old, ks), q, newest)
}

// answer selects the answer to q from ks, klines by open time, the newest
// of which opens at newest, and reports whether ks held all of it.
func answer(ks []kline.Kline, q binance.KlinesQuery, newest int64) ([]kline.Kline, bool) {
	iv := q.Interval
	if q.End >= 0 { // klines opening after End are not asked for
		ks = ks[:openingFrom(ks, q.End+1)]
	}
	if len(ks) == 0 {
		return nil, false
	}
	// The answer holds the first Limit klines from Start, or the last Limit
	// up to End (or the newest); the store may have the rest.
	var sel []kline.Kline
	if q.Start >= 0 {
		first := iv.Open(q.Start)
		if first < q.Start {
			first = iv.Next(first)
		}
		i := openingFrom(ks, first)
		if i == len(ks) || ks[i].OpenTime != first {
			return nil, false
		}
		sel = ks[i:min(len(ks), i+q.Limit)]
	} else {
		if len(ks) < q.Limit {
			return nil, false
		}
		sel = ks[len(ks)-q.Limit:]
	}
	for i := 1; i < len(sel); i++ {
		if sel[i].OpenTime != iv.Next(sel[i-1].OpenTime) {
			return nil, false
		}
	}
	// Nothing is missing after the last: the limit reached from Start, the
	// last slot before End, or the live kline.
	last := sel[len(sel)-1].OpenTime
	if !((q.Start >= 0 && len(sel) == q.Limit) || (q.End >= 0 && iv.Next(last) > q.End) || last == newest) {
		return nil, false
	}
	return sel, true
}

// read answers q from the store, with the klines in memory (the open one and
// the one that closed last, which the store may not have yet) in place of
// the store's older copies, or after the stored ones when newer.
func (s *Server) read(ctx context.Context, q binance.KlinesQuery) ([]kline.Kline, error) {
	if q.End == 0 {
		return nil, nil // the klines opening at or before the epoch: none
	}
	sq := store.Query{Symbol: q.Symbol, Interval: q.Interval, Limit: q.Limit}
	switch {
	case q.Start >= 0:
		sq.Start = max(q.Start, 1)
		if q.End >= 0 {
			sq.End = q.End
		}
	case q.End >= 0:
		sq.End, sq.FromEnd = q.End, true
	default:
		sq.FromEnd = true
	}
	ks, err := s.cfg.Store.Klines(ctx, sq)
	if err != nil {
		return nil, err
	}
	// While the store's writes fail, it lacks what it has not taken:
	// those klines come from memory, so the answer stays exact.
	mem := s.cfg.Source.Unwritten(nil, q.Symbol, q.Interval)
	if len(mem) > 0 {
		ks = merge(ks, mem)
	}
	var recent [2]kline.Kline
	for _, m := range s.cfg.Streams.Recent(recent[:0], q.Symbol, q.Interval) {
		if (q.Start >= 0 && m.OpenTime < q.Start) || (q.End >= 0 && m.OpenTime > q.End) {
			continue
		}
		ks = overlay(ks, m)
	}
	if len(mem) > 0 {
		ks = slices.DeleteFunc(ks, func(k kline.Kline) bool {
			return (q.Start >= 0 && k.OpenTime < q.Start) || (q.End >= 0 && k.OpenTime > q.End)
		})
	}
	if len(ks) > q.Limit {
		if sq.FromEnd {
			ks = ks[len(ks)-q.Limit:]
		} else {
			ks = ks[:q.Limit]
		}
	}
	return ks, nil
}

// merge lays mem, klines by open time, over ks, stored klines by open time.
func merge(ks, mem []kline.Kline) []kline.Kline {
	out := make([]kline.Kline, 0, len(ks)+len(mem))
	i, j := 0, 0
	for i < len(ks) || j < len(mem) {
		switch {
		case j == len(mem) || (i < len(ks) && ks[i].OpenTime < mem[j].OpenTime):
			out = append(out, ks[i])
			i++
		case i == len(ks) || mem[j].OpenTime < ks[i].OpenTime:
			out = append(out, mem[j])
			j++
		default: // the same kline: memory's is newer
			out = append(out, mem[j])
			i, j = i+1, j+1
		}
	}
	return out
}

func intervalNames(ivs []kline.Interval) []string {
	names := make([]string, len(ivs))
	for i, v := range ivs {
		names[i] = v.String()
	}
	return names
}

// symbolInfo is one exchangeInfo symbol klagg has no exchange object of
// (a database from before klagg kept them): the fields Binance clients
// read, with the values klagg knows.
type symbolInfo struct {
	binance.SymbolInfo
	BaseAssetPrec  int    `json:"baseAssetPrecision"`
	QuotePrecision int    `json:"quotePrecision"`
	UnderlyingType string `json:"underlyingType"`
	Filters        []any  `json:"filters"`
	OrderTypes     []any  `json:"orderTypes"`
	TimeInForce    []any  `json:"timeInForce"`
}

// exchangeInfo lists the symbols klagg keeps as the exchange gave them,
// filters and all, with their current status, and the exchange's rate
// limits and filters.
func (s *Server) exchangeInfo(w http.ResponseWriter, r *http.Request) {
	syms := s.cfg.Source.Symbols()
	lists := s.cfg.Source.ExchangeLists(r.Context())
	out := binance.NewExchangeInfoAnswer(s.cfg.Source.ExchangeNow().UnixMilli(), lists[store.RateLimits], lists[store.ExchangeFilters])
	for _, y := range syms {
		if len(y.Info) > 0 && json.Valid(y.Info) {
			out.Symbols = append(out.Symbols, y.Info)
			continue
		}
		b, err := json.Marshal(symbolInfo{SymbolInfo: binance.SymbolInfo{Symbol: y.Name, Pair: cmp.Or(y.Pair, y.Name), ContractType: y.ContractType,
			DeliveryDate: 4133404800000, OnboardDate: y.OnboardDate, Status: y.Status, BaseAsset: y.BaseAsset,
			QuoteAsset: y.QuoteAsset, MarginAsset: y.QuoteAsset, PricePrecision: y.PricePrecision,
			QuantityPrecision: y.QuantityPrecision}, BaseAssetPrec: 8, QuotePrecision: 8, UnderlyingType: "COIN",
			Filters: []any{}, OrderTypes: []any{}, TimeInForce: []any{}})
		if err == nil {
			out.Symbols = append(out.Symbols, b)
		}
	}
	writeJSON(w, out)
}

func (s *Server) time(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, map[string]int64{"serverTime": s.cfg.Source.ExchangeNow().UnixMilli()})
}

// Status is /api/v1/status: the service's figures and the stream clients.
type Status struct {
	service.Status
	IntervalNames []string `json:"interval_names"`
	StreamClients int64    `json:"stream_clients"`
	StreamDropped int64    `json:"stream_clients_dropped"`
}

func (s *Server) status(w http.ResponseWriter, _ *http.Request) {
	st := s.cfg.Streams.Stats()
	writeJSON(w, Status{s.cfg.Source.Status(), intervalNames(s.cfg.Source.Intervals()), st.Clients.Load(), st.Dropped.Load()})
}

func (s *Server) readyz(w http.ResponseWriter, _ *http.Request) {
	if err := s.cfg.Source.StoreErr(); err != nil {
		http.Error(w, fmt.Sprintf("store failing: %v", err), http.StatusServiceUnavailable)
		return
	}
	if !s.cfg.Source.Ready() {
		http.Error(w, "catching up", http.StatusServiceUnavailable)
		return
	}
	w.Write([]byte("ready\n"))
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, e *binance.APIError) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(e.Status)
	json.NewEncoder(w).Encode(binance.ErrorBody{Code: e.Code, Msg: e.Msg})
}

// recorder keeps the status code for the request counter, and still lets
// the WebSocket handler take over the connection.
type recorder struct {
	http.ResponseWriter
	code    int
	written bool
}

func (r *recorder) WriteHeader(code int) {
	if !r.written {
		r.code, r.written = code, true
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *recorder) Write(b []byte) (int, error) {
	r.written = true
	return r.ResponseWriter.Write(b)
}

func (r *recorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

func (r *recorder) Flush() {
	if f, ok := r.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (r *recorder) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	c, rw, err := http.NewResponseController(r.ResponseWriter).Hijack()
	if err == nil {
		r.code = http.StatusSwitchingProtocols
	}
	return c, rw, err
}
