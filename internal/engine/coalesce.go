package engine

import (
	"sync"

	"github.com/klagg/klagg/internal/kline"
)

// Coalescer is a Sink that keeps only the newest version of each kline
// until its consumer drains it. The engine never waits on the consumer and
// no update is lost: a slow consumer sees fewer, newer versions, and memory
// is bounded by the number of distinct klines pending, not by the update rate.
type Coalescer struct {
	mu    sync.Mutex
	cur   *coalesced // what Publish adds to
	spare *coalesced // the drained one, for reuse; nil while draining
	ready chan struct{}
}

// coalesced holds the pending klines. The engine publishes every few
// hundred microseconds some thousand updates, nearly all of them a newer
// version of a series' newest kline: a slice indexed by series takes those
// at a fraction of a map's cost, which was a quarter of the engine's CPU.
type coalesced struct {
	newest []pending // by series: the newest kline published since the drain
	order  []uint32  // series whose newest is set, in the order they came
	// older holds klines of a series older than its newest: the kline a
	// newer one replaced as newest, and corrections.
	older map[coalesceKey]kline.Update
}

type pending struct {
	u   kline.Update
	set bool
}

// coalesceKey identifies a kline by the engine's series id.
type coalesceKey struct {
	series uint32
	open   int64
}

func newCoalesced() *coalesced { return &coalesced{older: map[coalesceKey]kline.Update{}} }

func (p *coalesced) len() int { return len(p.order) + len(p.older) }

// NewCoalescer returns an empty Coalescer.
func NewCoalescer() *Coalescer {
	return &Coalescer{cur: newCoalesced(), spare: newCoalesced(), ready: make(chan struct{}, 1)}
}

// Publish implements Sink. Updates must carry their Series.
func (c *Coalescer) Publish(updates []kline.Update) {
	c.mu.Lock()
	p := c.cur
	first := p.len() == 0
	for i := range updates {
		u := &updates[i]
		if n := int(u.Series) + 1; n > len(p.newest) {
			p.newest = append(p.newest, make([]pending, n-len(p.newest))...)
		}
		n := &p.newest[u.Series]
		switch {
		case !n.set:
			n.u, n.set = *u, true
			p.order = append(p.order, u.Series)
		case u.OpenTime == n.u.OpenTime:
			n.u = *u
		case u.OpenTime > n.u.OpenTime:
			p.older[coalesceKey{u.Series, n.u.OpenTime}] = n.u
			n.u = *u
		default:
			// The newest's open time only grows until the drain, so
			// no key here is ever the newest's.
			p.older[coalesceKey{u.Series, u.OpenTime}] = *u
		}
	}
	c.mu.Unlock()
	if !first {
		// The consumer was told when the first arrived. Waking it on every
		// publish costs the engine a scheduler round trip each time, which
		// was most of its latency under load.
		return
	}
	select {
	case c.ready <- struct{}{}:
	default:
	}
}

// Ready is signalled when Publish adds to an empty Coalescer; a consumer
// that is told drains everything, or keeps draining until it finds nothing.
func (c *Coalescer) Ready() <-chan struct{} { return c.ready }

// Len is the number of klines pending.
func (c *Coalescer) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cur.len()
}

// Drain appends every pending update to dst and empties the Coalescer.
// One goroutine at a time may drain.
func (c *Coalescer) Drain(dst []kline.Update) []kline.Update {
	c.mu.Lock()
	p := c.cur
	c.cur, c.spare = c.spare, nil
	c.mu.Unlock()
	for _, u := range p.older {
		dst = append(dst, u)
	}
	clear(p.older)
	for _, s := range p.order {
		n := &p.newest[s]
		dst = append(dst, n.u)
		*n = pending{}
	}
	p.order = p.order[:0]
	c.mu.Lock()
	c.spare = p
	c.mu.Unlock()
	return dst
}
