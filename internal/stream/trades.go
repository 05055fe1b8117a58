package stream

import (
	"slices"
	"time"

	"github.com/klagg/klagg/internal/binance"
	"github.com/klagg/klagg/internal/kline"
)

// Trades sends symbol's trades, in the order ingest accepted them (each
// once, gaps repaired), to the clients of its <symbol>@aggTrade stream. It
// is called on ingest's path, so it costs an atomic load while nobody
// reads a trade stream.
func (s *Server) Trades(symbol string, trades []kline.Trade) {
	if s.tradeSubs.Load() == 0 || len(trades) == 0 {
		return
	}
	s.tmu.RLock()
	ts := s.trades[symbol]
	var subs []*sub
	if ts != nil {
		subs = slices.Clone(ts.subs)
	}
	s.tmu.RUnlock()
	if len(subs) == 0 {
		return
	}
	m, ok := s.cfg.Symbol(symbol)
	if !ok {
		return
	}
	now, due := s.cfg.Now().UnixMilli(), time.Now()
	raw, combined := make([]frame, len(trades)), make([]frame, len(trades))
	for i := range trades {
		t := &trades[i]
		b := make([]byte, 0, 300)
		b = append(b, `{"stream":"`...)
		b = append(b, ts.name...)
		b = append(b, `","data":`...)
		start := len(b)
		b = binance.AppendAggTrade(b, symbol, t, m.Precision, max(now, t.Time))
		end := len(b)
		b = append(b, '}')
		combined[i], raw[i] = frame{b, due}, frame{b[start:end:end], due}
	}
	for _, sb := range subs {
		if sb.c.combined.Load() {
			sb.c.queueTrades(combined)
		} else {
			sb.c.queueTrades(raw)
		}
	}
}

// addTrade adds sb to symbol's trade stream, made if new.
func (s *Server) addTrade(symbol string, sb *sub) {
	s.tmu.Lock()
	defer s.tmu.Unlock()
	ts := s.trades[symbol]
	if ts == nil {
		ts = &tradeStream{name: sb.name, symbol: symbol}
		s.trades[symbol] = ts
	}
	sb.ts = ts
	ts.subs = append(ts.subs, sb)
	s.tradeSubs.Add(1)
}

// untrade removes sb from its trade stream.
func (s *Server) untrade(sb *sub) {
	s.tmu.Lock()
	defer s.tmu.Unlock()
	ts := sb.ts
	if i := slices.Index(ts.subs, sb); i >= 0 {
		ts.subs = slices.Delete(ts.subs, i, i+1)
		s.tradeSubs.Add(-1)
	}
	if len(ts.subs) == 0 {
		delete(s.trades, ts.symbol)
	}
}
