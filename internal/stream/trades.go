package stream

import (
	"context"
	"slices"
	"time"

	"github.com/coder/websocket"

	"github.com/klagg/klagg/internal/binance"
	"github.com/klagg/klagg/internal/kline"
)

// tradeBatch is one symbol's trades on their way to its aggTrade clients.
type tradeBatch struct {
	symbol string
	trades []kline.Trade
	due    time.Time
}

// tradeQueue is how many batches may wait for the fan-out: at 100,000
// trades/s in batches of one, about 40 ms.
const tradeQueue = 4096

// Trades sends symbol's trades, in the order ingest accepted them (each
// once, gaps repaired), to the clients of its <symbol>@aggTrade stream. It
// is called on ingest's path, which every trade passes before the engine,
// so it only queues the batch: the fan-out
// runs on the server's own goroutine (Run), and its clients cannot delay
// kline building. The trades are read, never changed.
func (s *Server) Trades(symbol string, trades []kline.Trade) {
	if len(trades) == 0 || s.tradeSubs.Load() == 0 {
		return
	}
	select {
	case s.tradeQ <- tradeBatch{symbol, trades, time.Now()}:
	default:
		// The fan-out is a whole queue behind: its clients would miss
		// these trades. They are closed, as slow clients are, rather than
		// sent a sequence with a hole or allowed to hold ingest back.
		s.dropTradeClients()
	}
}

// fanTrades sends the queued trade batches to their clients until ctx ends.
func (s *Server) fanTrades(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case b := <-s.tradeQ:
			s.fanOut(b)
		}
	}
}

func (s *Server) fanOut(b tradeBatch) {
	s.tmu.RLock()
	ts := s.trades[b.symbol]
	var subs []*sub
	if ts != nil {
		subs = slices.Clone(ts.subs)
	}
	s.tmu.RUnlock()
	if len(subs) == 0 {
		return
	}
	m, ok := s.cfg.Symbol(b.symbol)
	if !ok {
		return
	}
	now := s.cfg.Now().UnixMilli()
	raw, combined := make([]frame, len(b.trades)), make([]frame, len(b.trades))
	for i := range b.trades {
		t := &b.trades[i]
		buf := make([]byte, 0, 300)
		buf = append(buf, `{"stream":"`...)
		buf = append(buf, ts.name...)
		buf = append(buf, `","data":`...)
		start := len(buf)
		buf = binance.AppendAggTrade(buf, b.symbol, t, m.Precision, max(now, t.Time))
		end := len(buf)
		buf = append(buf, '}')
		combined[i], raw[i] = frame{buf, b.due}, frame{buf[start:end:end], b.due}
	}
	for _, sb := range subs {
		if sb.c.combined.Load() {
			sb.c.queueTrades(combined)
		} else {
			sb.c.queueTrades(raw)
		}
	}
}

// dropTradeClients closes every client of an aggTrade stream.
func (s *Server) dropTradeClients() {
	s.tmu.RLock()
	defer s.tmu.RUnlock()
	for _, ts := range s.trades {
		for _, sb := range ts.subs {
			if !sb.c.closing.Load() {
				s.stats.Dropped.Add(1)
				sb.c.close(websocket.StatusTryAgainLater, "aggTrade streams fell behind; reconnect")
			}
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
