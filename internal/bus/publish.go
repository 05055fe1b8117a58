package bus

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/klagg/klagg/internal/kline"
)

// Drain is how long a stopping publisher goes on publishing what is queued.
const Drain = 10 * time.Second

// Publisher publishes the closed klines the engine makes. It is an engine
// sink: Publish only queues, so the engine never waits for the broker; Run
// publishes what is queued and keeps what the broker did not acknowledge
// for the next round, so a broker election or a lost link delays klines
// and loses none.
type Publisher struct {
	js      jetstream.JetStream
	onAcked func([]kline.Update)
	log     *slog.Logger

	mu      sync.Mutex
	pending []queued
	queued  uint64        // klines ever queued
	acked   uint64        // every kline queued up to this one is acknowledged
	ackedCh chan struct{} // closed and replaced when acked grows
	wake    chan struct{}
	// unconfirmed are klines acknowledged after one queued before them
	// failed: onAcked is told of them once that one is acknowledged too.
	unconfirmed []kline.Update

	Published atomic.Int64 // acknowledged by the broker
	Failures  atomic.Int64 // publish attempts that failed, to be retried
}

// NewPublisher returns a publisher to js; start it with Run. acked, if
// set, is told of the klines acknowledged, each only once every kline
// queued before it is too: what the cluster holds for certain.
func NewPublisher(js jetstream.JetStream, acked func([]kline.Update), log *slog.Logger) *Publisher {
	return &Publisher{js: js, onAcked: acked, log: log, wake: make(chan struct{}, 1), ackedCh: make(chan struct{})}
}

// queued is a kline waiting for the broker, numbered in queueing order.
type queued struct {
	u   kline.Update
	seq uint64
}

// Mark returns the number of klines queued so far; WaitAcked(mark) waits
// until all of them are acknowledged.
func (p *Publisher) Mark() uint64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.queued
}

// WaitAcked waits until every kline queued before Mark returned mark is
// acknowledged by the broker: a cluster's checkpoint may then say the
// klines are published.
func (p *Publisher) WaitAcked(ctx context.Context, mark uint64) error {
	for {
		p.mu.Lock()
		acked, ch := p.acked, p.ackedCh
		p.mu.Unlock()
		if acked >= mark {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Publish implements the engine's Sink: it queues the closed klines.
func (p *Publisher) Publish(us []kline.Update) {
	n := 0
	p.mu.Lock()
	for i := range us {
		if us[i].Closed {
			p.queued++
			p.pending = append(p.pending, queued{us[i], p.queued})
			n++
		}
	}
	p.mu.Unlock()
	if n > 0 {
		select {
		case p.wake <- struct{}{}:
		default:
		}
	}
}

// Pending is the number of klines queued and not yet acknowledged.
func (p *Publisher) Pending() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.pending)
}

// Run publishes until ctx ends, then for up to Drain more to publish what
// is still queued: a node that stops hands over only published klines.
func (p *Publisher) Run(ctx context.Context) error {
	backoff := 100 * time.Millisecond
	retry := time.NewTimer(time.Hour)
	retry.Stop()
	pctx := ctx
	for {
		select {
		case <-pctx.Done():
			if pctx != ctx || p.Pending() == 0 {
				if n := p.Pending(); n > 0 {
					return fmt.Errorf("%d closed klines not published to JetStream at stop; the node that takes their symbols over rebuilds them", n)
				}
				return nil
			}
			var cancel context.CancelFunc
			pctx, cancel = context.WithTimeout(context.Background(), Drain)
			defer cancel()
			retry.Reset(0)
			continue
		case <-p.wake:
		case <-retry.C:
		}
		p.mu.Lock()
		batch := p.pending
		p.pending = nil
		p.mu.Unlock()
		failed := p.publish(pctx, batch)
		p.confirm(batch, failed)
		p.mu.Lock()
		p.pending = append(failed, p.pending...)
		acked := p.queued
		for _, q := range p.pending {
			acked = min(acked, q.seq-1)
		}
		if acked > p.acked {
			p.acked = acked
			close(p.ackedCh)
			p.ackedCh = make(chan struct{})
		}
		p.mu.Unlock()
		if len(failed) == 0 {
			backoff = 100 * time.Millisecond
			if pctx != ctx && p.Pending() == 0 {
				return nil
			}
			continue
		}
		p.Failures.Add(int64(len(failed)))
		p.log.Warn("publishing klines to JetStream failed; retrying", "klines", len(failed), "retry_in", backoff)
		retry.Reset(backoff)
		// At most a second: a broker election lasts about five, and
		// klines should reach the stream soon after it, not up to one
		// more backoff later. A failed round costs the broker little.
		backoff = min(2*backoff, time.Second)
	}
}

// confirm tells onAcked of the klines of batch acknowledged, or keeps them
// until those of failed, queued before some of them, are.
func (p *Publisher) confirm(batch, failed []queued) {
	if p.onAcked == nil {
		return
	}
	if len(failed) == 0 {
		for _, q := range batch {
			p.unconfirmed = append(p.unconfirmed, q.u)
		}
		p.onAcked(p.unconfirmed)
		clear(p.unconfirmed)
		p.unconfirmed = p.unconfirmed[:0]
		return
	}
	lost := make(map[uint64]bool, len(failed))
	for _, q := range failed {
		lost[q.seq] = true
	}
	for _, q := range batch {
		if !lost[q.seq] {
			p.unconfirmed = append(p.unconfirmed, q.u)
		}
	}
}

// publish sends batch asynchronously, waits for the acknowledgements and
// returns the klines not acknowledged.
func (p *Publisher) publish(ctx context.Context, batch []queued) (failed []queued) {
	futures := make([]jetstream.PubAckFuture, 0, len(batch))
	sent := 0
	for i := range batch {
		u := &batch[i].u
		body := Encode(u)
		msg := &nats.Msg{Subject: Subject(u.Symbol, u.Interval.String()), Data: body, Header: nats.Header{}}
		msg.Header.Set(jetstream.MsgIDHeader, MsgID(u, body))
		f, err := p.js.PublishMsgAsync(msg)
		if err != nil {
			break
		}
		futures = append(futures, f)
		sent++
	}
	failed = append(failed, batch[sent:]...)
	timeout := time.NewTimer(10 * time.Second)
	defer timeout.Stop()
	for i, f := range futures {
		select {
		case <-f.Ok():
			p.Published.Add(1)
		case err := <-f.Err():
			p.log.Debug("kline not acknowledged", "err", err)
			failed = append(failed, batch[i])
		case <-timeout.C:
			failed = append(failed, batch[i:len(futures)]...)
			return failed
		case <-ctx.Done():
			return append(failed, batch[i:len(futures)]...)
		}
	}
	return failed
}
