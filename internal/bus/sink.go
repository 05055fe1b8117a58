package bus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/klagg/klagg/internal/kline"
)

// Store is where the Sink copies klines: SQLite's or PostgreSQL's store.
type Store interface {
	Upsert(updates []kline.Update) error
}

// Sink copies the kline stream into a store. It reads with a durable
// consumer and acknowledges a batch only after the store has committed
// it, so a sink that dies leaves what it had not acknowledged to the
// next (at most a few batches), and storing them again changes nothing:
// the store's upserts are idempotent. Each kline is stamped with
// its message's time in the stream, so that a store never replaces a
// correction with the version before it when sinks commit out of order.
type Sink struct {
	js      jetstream.JetStream
	store   Store
	durable string
	batch   int
	log     *slog.Logger

	Stored    atomic.Int64 // klines committed
	Malformed atomic.Int64 // messages that are not klines, acknowledged and left out
}

// NewSink returns a sink from js into store with the durable consumer
// name durable (sinks sharing it share the work).
func NewSink(js jetstream.JetStream, store Store, durable string, log *slog.Logger) *Sink {
	return &Sink{js: js, store: store, durable: durable, batch: 5000, log: log}
}

// committers is how many batches a sink commits at once while it
// receives the next: the store is idle while one commit's rows travel,
// and one receiver keeps two committers busy (BenchmarkSink: one
// committer 78,000 klines/s, two 94,000, three 91,000).
const committers = 2

// received is a batch of messages and the klines among them.
type received struct {
	klines []kline.Update
	msgs   []jetstream.Msg
}

// Run copies until ctx ends.
func (s *Sink) Run(ctx context.Context) error {
	batches := make(chan received)
	var wg sync.WaitGroup
	for range committers {
		wg.Go(func() {
			for b := range batches {
				s.store1(ctx, b)
			}
		})
	}
	for wait := 100 * time.Millisecond; ctx.Err() == nil; wait = min(2*wait, 5*time.Second) {
		cons, err := s.consumer(ctx)
		if err == nil {
			wait = 100 * time.Millisecond
			err = s.receive(ctx, cons, batches)
		}
		if ctx.Err() != nil {
			break
		}
		s.log.Warn("waiting for the kline stream", "err", err, "retry_in", wait)
		select {
		case <-ctx.Done():
		case <-time.After(wait):
		}
	}
	close(batches)
	wg.Wait()
	return nil
}

// receive sends batches from cons until ctx ends or the consumer goes
// away. Messages flow without pause: a sink that fetched a batch, and
// asked for the next only after, left the broker idle between batches
// and itself idle while the broker sent them (BenchmarkSink: 62,000
// klines/s against 94,000).
func (s *Sink) receive(ctx context.Context, cons jetstream.Consumer, batches chan<- received) error {
	// What waits here makes the next batch: room for a whole one, or
	// a busy sink commits many small batches (BenchmarkSink: room for
	// 256 made 68,000 klines/s of 97,000).
	msgs := make(chan jetstream.Msg, s.batch)
	// Unblocks a delivery still waiting for room once this returns: its
	// message is redelivered.
	done := make(chan struct{})
	defer close(done)
	cc, err := cons.Consume(func(m jetstream.Msg) {
		select {
		case msgs <- m:
		case <-done:
		}
	}, jetstream.PullMaxMessages(s.batch), jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
		s.log.Warn("receiving klines from the stream", "err", err)
	}))
	if err != nil {
		return fmt.Errorf("bus: consume the kline stream: %w", err)
	}
	defer cc.Stop()
	for {
		// Wait for one message, then take what else is there: a batch
		// that waited to fill would hold klines back from readers of the
		// store for the whole wait.
		var b received
		select {
		case m := <-msgs:
			s.add(&b, m)
		case <-cc.Closed():
			return errConsumerGone
		case <-ctx.Done():
			return nil
		}
	more:
		for len(b.msgs) < s.batch {
			select {
			case m := <-msgs:
				s.add(&b, m)
			default:
				break more
			}
		}
		if err := s.handOver(ctx, b, batches); err != nil {
			return nil // ctx ended: the batch is redelivered after AckWait
		}
	}
}

// errConsumerGone is returned when the broker ended a sink's consumption
// (the consumer or the stream was deleted).
var errConsumerGone = errors.New("bus: the sink's consumer went away; creating it again")

// handOver sends b to a committer, telling the broker meanwhile that its
// messages are in progress: while the store fails, the committers retry
// and b waits, and it should not go to another sink that cannot store it
// either.
func (s *Sink) handOver(ctx context.Context, b received, batches chan<- received) error {
	tick := time.NewTicker(AckWait / 2)
	defer tick.Stop()
	for {
		select {
		case batches <- b:
			return nil
		case <-tick.C:
			for _, m := range b.msgs {
				m.InProgress()
			}
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// add appends m to b, and its kline if it is one.
func (s *Sink) add(b *received, m jetstream.Msg) {
	b.msgs = append(b.msgs, m)
	u, err := Decode(m.Data())
	if err != nil {
		s.Malformed.Add(1)
		s.log.Warn("left out a message that is not a kline", "subject", m.Subject(), "err", err)
		return
	}
	// The stream's time orders the versions of one kline for the store:
	// sinks sharing the consumer commit them out of order.
	if md, err := m.Metadata(); err == nil {
		u.Stamp = md.Timestamp.UnixNano()
	}
	b.klines = append(b.klines, u)
}

// store1 commits b and acknowledges its messages.
func (s *Sink) store1(ctx context.Context, b received) {
	if err := s.commit(ctx, b.klines, b.msgs); err != nil {
		return // ctx ended before the store took the batch: it is redelivered
	}
	// Each message is acknowledged on its own: sinks sharing the
	// consumer hold other messages between these, and acknowledging
	// all up to the last would lose theirs if they died.
	for _, m := range b.msgs {
		if err := m.Ack(); err != nil {
			s.log.Warn("acknowledging stored klines failed; they will come again, which changes nothing", "err", err)
			return
		}
	}
}

// commit writes batch, retrying while the store fails, until ctx ends;
// meanwhile it tells the broker that msgs are in progress, so that they
// are not redelivered to another sink that could not store them either.
func (s *Sink) commit(ctx context.Context, batch []kline.Update, msgs []jetstream.Msg) error {
	for wait := 100 * time.Millisecond; ; wait = min(2*wait, AckWait/2) {
		err := s.store.Upsert(batch)
		if err == nil {
			s.Stored.Add(int64(len(batch)))
			return nil
		}
		s.log.Warn("storing klines from the stream failed; retrying", "klines", len(batch), "err", err, "retry_in", wait)
		for _, m := range msgs {
			m.InProgress()
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
	}
}

// AckWait is how long a message a sink fetched waits for its
// acknowledgement before it goes to another sink: a sink that died holds
// back its messages this long. A sink retrying a failing store extends it.
const AckWait = 5 * time.Second

// errNoStream is returned while the stream does not exist yet.
var errNoStream = fmt.Errorf("bus: stream %s does not exist yet", Stream)

func (s *Sink) consumer(ctx context.Context) (jetstream.Consumer, error) {
	st, err := s.js.Stream(ctx, Stream)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil, errNoStream
	}
	if err != nil {
		return nil, fmt.Errorf("bus: %w", err)
	}
	return st.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{
		// A sink that dies leaves its messages to the others after AckWait.
		Durable: s.durable, AckPolicy: jetstream.AckExplicitPolicy, DeliverPolicy: jetstream.DeliverAllPolicy,
		// In flight: the client's buffer, the channel to the batch
		// being received, that batch and the committers'.
		MaxAckPending: (committers + 3) * s.batch, AckWait: AckWait,
	})
}
