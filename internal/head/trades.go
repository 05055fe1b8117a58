package head

import (
	"sync"

	"github.com/klagg/klagg/internal/kline"
)

// lastTrade is a symbol's newest trade.
type lastTrade struct {
	mu          sync.Mutex
	price, time int64
}

// Trades records the newest of trades as symbol's last trade. It runs for
// every batch ingest accepts, so the common case takes only a read lock.
func (h *Head) Trades(symbol string, trades []kline.Trade) {
	if len(trades) == 0 {
		return
	}
	t := &trades[len(trades)-1]
	h.tmu.RLock()
	l := h.last[symbol]
	h.tmu.RUnlock()
	if l == nil {
		h.tmu.Lock()
		if l = h.last[symbol]; l == nil {
			l = &lastTrade{}
			h.last[symbol] = l
		}
		h.tmu.Unlock()
	}
	l.mu.Lock()
	if t.Time >= l.time {
		l.price, l.time = t.Price, t.Time
	}
	l.mu.Unlock()
}

// Price returns symbol's last price and its time: the newest trade's since
// klagg started, else the close of the newest 1m kline, at its close time
// or now, whichever is earlier.
func (h *Head) Price(symbol string, now int64) (price, time int64, ok bool) {
	h.tmu.RLock()
	l := h.last[symbol]
	h.tmu.RUnlock()
	if l != nil {
		l.mu.Lock()
		defer l.mu.Unlock()
		return l.price, l.time, true
	}
	k, ok := h.Newest(symbol, kline.OneMinute())
	if !ok {
		return 0, 0, false
	}
	return k.Close, min(k.CloseTime, now), true
}
