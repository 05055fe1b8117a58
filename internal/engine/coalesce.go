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
	mu      sync.Mutex
	pending map[coalesceKey]kline.Update
	spare   map[coalesceKey]kline.Update
	ready   chan struct{}
}

// coalesceKey identifies a kline by the engine's series id, which is
// cheaper to hash than names.
type coalesceKey struct {
	series uint32
	open   int64
}

// NewCoalescer returns an empty Coalescer.
func NewCoalescer() *Coalescer {
	return &Coalescer{
		pending: make(map[coalesceKey]kline.Update),
		spare:   make(map[coalesceKey]kline.Update),
		ready:   make(chan struct{}, 1),
	}
}

// Publish implements Sink. Updates must carry their Series.
func (c *Coalescer) Publish(updates []kline.Update) {
	c.mu.Lock()
	first := len(c.pending) == 0
	for i := range updates {
		u := &updates[i]
		c.pending[coalesceKey{u.Series, u.OpenTime}] = *u
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
	return len(c.pending)
}

// Drain appends every pending update to dst and empties the Coalescer.
// One goroutine at a time may drain.
func (c *Coalescer) Drain(dst []kline.Update) []kline.Update {
	c.mu.Lock()
	p := c.pending
	c.pending, c.spare = c.spare, nil
	c.mu.Unlock()
	for _, u := range p {
		dst = append(dst, u)
	}
	clear(p)
	c.mu.Lock()
	c.spare = p
	c.mu.Unlock()
	return dst
}
