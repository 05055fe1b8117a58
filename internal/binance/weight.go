package binance

import (
	"net/http"
	"sync"
	"time"
)

// Binance's weights of the market-data endpoints klagg serves (DESIGN §6).
const (
	WeightDefault         = 1 // exchangeInfo, time, ping, one symbol's ticker/price
	WeightTickerPriceAll  = 2 // ticker/price without a symbol
	banFirst              = 2 * time.Minute
	banMax                = 72 * time.Hour
	rememberOffenderAfter = 24 * time.Hour
)

// WeightMeter counts each client's request weight over wall-clock minutes,
// as Binance counts an IP's, and with a budget refuses as Binance does: a
// client over it gets a 429; one that goes on in the same minute is banned
// with a 418, for two minutes at first and twice as long each time after,
// up to three days.
type WeightMeter struct {
	limit int // per client per minute; 0: count only

	mu      sync.Mutex
	minute  int64 // Unix minute of the counts
	clients map[string]*meterClient
}

type meterClient struct {
	used       int
	warned     bool // a 429 was sent this minute
	bannedTill time.Time
	bans       int
	lastBan    time.Time
}

// NewWeightMeter returns a meter with a budget of limit per client per
// minute, or none when limit is 0.
func NewWeightMeter(limit int) *WeightMeter {
	return &WeightMeter{limit: limit, clients: map[string]*meterClient{}}
}

// Charge counts a request of weight by client at now. It returns the
// client's weight in the current minute and, when the request must be
// refused, the status (429 or 418) and how long until the client may try
// again; status is 0 for a request to serve.
func (m *WeightMeter) Charge(client string, weight int, now time.Time) (used, status int, retry time.Duration) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if minute := now.Unix() / 60; minute != m.minute {
		m.minute = minute
		for k, c := range m.clients {
			// Offenders are remembered for a while, so that bans grow.
			if c.bans == 0 || now.Sub(c.lastBan) > rememberOffenderAfter {
				delete(m.clients, k)
			} else {
				c.used, c.warned = 0, false
			}
		}
	}
	c := m.clients[client]
	if c == nil {
		c = &meterClient{}
		m.clients[client] = c
	}
	switch {
	case now.Before(c.bannedTill):
		return c.used, http.StatusTeapot, c.bannedTill.Sub(now)
	case m.limit > 0 && c.used+weight > m.limit:
		if !c.warned {
			c.warned = true
			return c.used, http.StatusTooManyRequests, time.Unix((m.minute+1)*60, 0).Sub(now)
		}
		ban := min(banFirst<<min(c.bans, 20), banMax)
		c.bans++
		c.bannedTill, c.lastBan = now.Add(ban), now
		return c.used, http.StatusTeapot, ban
	}
	c.used += weight
	return c.used, 0, 0
}
