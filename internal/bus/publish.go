package bus

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/klagg/klagg/internal/kline"
)

// Publisher publishes the closed klines the engine makes. It is an engine
// sink: Publish only queues, so the engine never waits for the broker; Run
// publishes what is queued and keeps what the broker did not acknowledge
// for the next round, so a broker election or a lost link delays klines
// and loses none.
type Publisher struct {
	js  jetstream.JetStream
	log *slog.Logger

	mu      sync.Mutex
	pending []kline.Update
	wake    chan struct{}

	Published atomic.Int64 // acknowledged by the broker
	Failures  atomic.Int64 // publish attempts that failed, to be retried
}

// NewPublisher returns a publisher to js; start it with Run.
func NewPublisher(js jetstream.JetStream, log *slog.Logger) *Publisher {
	return &Publisher{js: js, log: log, wake: make(chan struct{}, 1)}
}

// Publish implements the engine's Sink: it queues the closed klines.
func (p *Publisher) Publish(us []kline.Update) {
	n := 0
	p.mu.Lock()
	for i := range us {
		if us[i].Closed {
			p.pending = append(p.pending, us[i])
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

// Run publishes until ctx ends.
func (p *Publisher) Run(ctx context.Context) error {
	backoff := 100 * time.Millisecond
	retry := time.NewTimer(time.Hour)
	retry.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-p.wake:
		case <-retry.C:
		}
		p.mu.Lock()
		batch := p.pending
		p.pending = nil
		p.mu.Unlock()
		failed := p.publish(ctx, batch)
		if len(failed) == 0 {
			backoff = 100 * time.Millisecond
			continue
		}
		p.Failures.Add(int64(len(failed)))
		p.mu.Lock()
		p.pending = append(failed, p.pending...)
		p.mu.Unlock()
		p.log.Warn("publishing klines to JetStream failed; retrying", "klines", len(failed), "retry_in", backoff)
		retry.Reset(backoff)
		backoff = min(2*backoff, 5*time.Second)
	}
}

// publish sends batch asynchronously, waits for the acknowledgements and
// returns the klines not acknowledged.
func (p *Publisher) publish(ctx context.Context, batch []kline.Update) (failed []kline.Update) {
	futures := make([]jetstream.PubAckFuture, 0, len(batch))
	sent := 0
	for i := range batch {
		u := &batch[i]
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
