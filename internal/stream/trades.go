package stream

import (
	"slices"
	"sync"
	"time"

	"github.com/klagg/klagg/internal/binance"
	"github.com/klagg/klagg/internal/kline"
)

// Trades sends symbol's trades, in the order ingest accepted them (each
// once, gaps repaired), to the clients of its <symbol>@aggTrade stream. It
// is called on ingest's path, so it costs an atomic load while nobody
// reads a trade stream.
func (s *Server) Trades(symbol string, trades []kline.Trade) {
	if len(trades) == 0 {
		return
	}
	s.keepLast(symbol, &trades[len(trades)-1])
	if s.tradeSubs.Load() == 0 {
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

// lastTrade is a symbol's newest trade, for ticker/price.
type lastTrade struct {
	mu          sync.Mutex
	price, time int64
}

// keepLast records t as symbol's newest trade. It runs for every batch of
// trades, so the common case takes only a read lock.
func (s *Server) keepLast(symbol string, t *kline.Trade) {
	s.lmu.RLock()
	l := s.last[symbol]
	s.lmu.RUnlock()
	if l == nil {
		s.lmu.Lock()
		if l = s.last[symbol]; l == nil {
			l = &lastTrade{}
			s.last[symbol] = l
		}
		s.lmu.Unlock()
	}
	l.mu.Lock()
	if t.Time >= l.time {
		l.price, l.time = t.Price, t.Time
	}
	l.mu.Unlock()
}

// LastTrade returns the price and time of symbol's newest trade since
// klagg started.
func (s *Server) LastTrade(symbol string) (price, time int64, ok bool) {
	s.lmu.RLock()
	l := s.last[symbol]
	s.lmu.RUnlock()
	if l == nil {
		return 0, 0, false
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.price, l.time, true
}
