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
	pending map[kline.Key]kline.Update
	spare   map[kline.Key]kline.Update
	ready   chan struct{}
}

// NewCoalescer returns an empty Coalescer.
func NewCoalescer() *Coalescer {
	return &Coalescer{
		pending: make(map[kline.Key]kline.Update),
		spare:   make(map[kline.Key]kline.Update),
		ready:   make(chan struct{}, 1),
	}
}

// Publish implements Sink.
func (c *Coalescer) Publish(updates []kline.Update) {
	c.mu.Lock()
	for i := range updates {
		u := &updates[i]
		c.pending[u.Key()] = *u
	}
	c.mu.Unlock()
	select {
	case c.ready <- struct{}{}:
	default:
	}
}

// Ready is signalled after Publish when updates may be pending.
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
