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
	"errors"
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
	"github.com/klagg/klagg/internal/query"
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
	// Readiness is nil while klagg serves all it should, else why not:
	// the one answer of /readyz and the status.
	Readiness() error
	ExchangeNow() time.Time
	WritePrometheus(w io.Writer) // the source's own metrics
	// ExchangeLists are exchangeInfo's exchange-wide lists by name
	// (store.RateLimits, store.ExchangeFilters), as the exchange gave them.
	ExchangeLists(ctx context.Context) map[string][]byte
}

// Klines answers Binance's klines query whole, as a JSON array, or fails:
// the one read model (query.Querier).
type Klines interface {
	AppendKlines(ctx context.Context, b []byte, q binance.KlinesQuery, prec kline.Precision) ([]byte, error)
}

// Prices knows each symbol's last price (head.Head).
type Prices interface {
	Price(symbol string, now int64) (price, time int64, ok bool)
}

// Streams is the WebSocket API.
type Streams interface {
	http.Handler
	Stats() *stream.Stats
	WritePrometheus(w io.Writer) // the streams' own metrics
}

// Config sets up a Server.
type Config struct {
	Source  Source
	Klines  Klines
	Prices  Prices
	Streams Streams
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
	weights *weights
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
	requested(r.Context())
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
	b, err := s.cfg.Klines.AppendKlines(ctx, (*bp)[:0], q, prec)
	if err != nil {
		s.cfg.Log.Warn("answering klines failed", "symbol", q.Symbol, "interval", q.Interval, "err", err)
		msg := "Internal error; unable to read klines from the database. Please try again."
		if errors.Is(err, query.ErrIncomplete) {
			// Never a short answer: the client is told why there is none.
			msg = "Internal error; unable to process your request: " + strings.TrimPrefix(err.Error(), query.ErrIncomplete.Error()+": ") + ". Please try again."
		}
		writeError(w, &binance.APIError{Status: http.StatusServiceUnavailable, Code: -1001, Msg: msg})
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Write(b)
	if cap(b) <= 1<<20 { // a pooled buffer never holds more than one large answer
		*bp = b
		s.bufs.Put(bp)
	}
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
	if err := s.cfg.Source.Readiness(); err != nil {
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
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
