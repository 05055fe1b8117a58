package api

import (
	"fmt"
	"net/http"
	"net/url"

	"github.com/klagg/klagg/internal/binance"
	"github.com/klagg/klagg/internal/kline"
)

// continuousKlines answers /fapi/v1/continuousKlines: the perpetual
// contract of a pair is the symbol of the same name, and its continuous
// klines are that symbol's klines.
func (s *Server) continuousKlines(w http.ResponseWriter, r *http.Request) {
	in := r.URL.Query()
	for _, name := range []string{"pair", "contractType"} {
		if len(in[name]) > 1 {
			writeError(w, binance.BadRequest(-1101, fmt.Sprintf("Duplicate values for parameter '%s'.", name)))
			return
		}
	}
	pair, ct := in.Get("pair"), in.Get("contractType")
	switch {
	case pair == "":
		writeError(w, binance.Mandatory("pair"))
		return
	case ct == "":
		writeError(w, binance.Mandatory("contractType"))
		return
	case ct != "PERPETUAL":
		writeError(w, binance.BadRequest(-1130, fmt.Sprintf("Data sent for parameter 'contractType' is not valid: klagg keeps perpetual contracts only, not %s.", ct)))
		return
	}
	if sym, ok := s.cfg.Source.Symbol(pair); !ok || sym.ContractType != "PERPETUAL" || (sym.Pair != "" && sym.Pair != pair) {
		writeError(w, binance.BadRequest(-1121, "Invalid pair."))
		return
	}
	q := url.Values{}
	for k, v := range in {
		if k != "pair" && k != "contractType" {
			q[k] = v
		}
	}
	q["symbol"] = []string{pair}
	kq, aerr := binance.ParseKlinesQuery(q)
	if aerr != nil {
		writeError(w, aerr)
		return
	}
	s.serveKlines(w, r, kq)
}

// tickerPrice answers /fapi/v1/ticker/price and /fapi/v2/ticker/price: the
// newest trade's price and time, of one symbol or of every live one.
func (s *Server) tickerPrice(w http.ResponseWriter, r *http.Request) {
	type price struct {
		Symbol string `json:"symbol"`
		Price  string `json:"price"`
		Time   int64  `json:"time"`
	}
	of := func(name string, prec kline.Precision) (price, bool) {
		p, t, ok := s.cfg.Prices.Price(name, s.cfg.Source.ExchangeNow().UnixMilli())
		return price{name, string(prec.AppendPrice(nil, p)), t}, ok
	}
	if name := r.URL.Query().Get("symbol"); name != "" {
		y, ok := s.cfg.Source.Symbol(name)
		if !ok {
			writeError(w, binance.BadRequest(-1121, "Invalid symbol."))
			return
		}
		p, ok := of(name, kline.Precision{Price: y.PricePrecision, Qty: y.QuantityPrecision})
		if !ok {
			writeError(w, &binance.APIError{Status: http.StatusServiceUnavailable, Code: -1001, Msg: "Internal error; klagg has no price of " + name + " yet. Please try again."})
			return
		}
		writeJSON(w, p)
		return
	}
	out := []price{}
	for _, y := range s.cfg.Source.Symbols() {
		if p, ok := of(y.Name, kline.Precision{Price: y.PricePrecision, Qty: y.QuantityPrecision}); ok {
			out = append(out, p)
		}
	}
	writeJSON(w, out)
}

// unserved answers every other /fapi/ request in Binance's error shape:
// klagg has no order book, mark price or 24 h statistics to answer them
// exactly, and does not make them up.
func (s *Server) unserved(w http.ResponseWriter, r *http.Request) {
	writeError(w, &binance.APIError{Status: http.StatusNotFound, Code: -1000, Msg: fmt.Sprintf(
		"klagg does not serve %s %s: it keeps klines only (klines, continuousKlines, ticker/price, exchangeInfo, time, ping); ask Binance for the rest.",
		r.Method, r.URL.Path)})
}
