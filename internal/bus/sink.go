package bus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/klagg/klagg/internal/kline"
)

// Store is where the Sink copies klines: SQLite's or PostgreSQL's store.
type Store interface {
	Upsert(updates []kline.Update) error
}

// Sink copies the kline stream into a store. It reads with a durable
// consumer and acknowledges a batch only after the store has committed
// it, so a sink that dies redoes at most its last batch, which changes
// nothing: the store's upserts are idempotent. Each kline is stamped with
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

// copiers is how many batches a sink has in hand: one fetches and decodes
// while the other waits for the store to commit, which alone leaves both
// the store and the sink half idle (BenchmarkSink: +25 %; three gained
// nothing).
const copiers = 2

// Run copies until ctx ends.
func (s *Sink) Run(ctx context.Context) error {
	var cons jetstream.Consumer
	for wait := 100 * time.Millisecond; cons == nil; wait = min(2*wait, 5*time.Second) {
		c, err := s.consumer(ctx)
		if err == nil {
			cons = c
			break
		}
		if ctx.Err() != nil {
			return nil
		}
		s.log.Warn("waiting for the kline stream", "err", err, "retry_in", wait)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
	}
	var wg sync.WaitGroup
	for range copiers {
		wg.Go(func() { s.copy(ctx, cons) })
	}
	wg.Wait()
	return nil
}

// copy moves batches from cons to the store until ctx ends.
func (s *Sink) copy(ctx context.Context, cons jetstream.Consumer) {
	for ctx.Err() == nil {
		// Wait for one message, then take what else is there: a batch
		// that waited to fill would hold klines back from readers of the
		// store for the whole wait.
		var batch []kline.Update
		var got []jetstream.Msg
		err := s.fetch(cons, &batch, &got, 1, true)
		if err == nil && len(got) > 0 {
			err = s.fetch(cons, &batch, &got, s.batch-1, false)
		}
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			s.log.Warn("fetching klines failed; retrying", "err", err)
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
			continue
		}
		if len(got) == 0 {
			continue
		}
		if err := s.commit(ctx, batch, got); err != nil {
			return // ctx ended before the store took the batch: it is redelivered
		}
		// Each message is acknowledged on its own: sinks sharing the
		// consumer hold other messages between these, and acknowledging
		// all up to the last would lose theirs if they died.
		for _, m := range got {
			if err := m.Ack(); err != nil {
				s.log.Warn("acknowledging stored klines failed; they will come again, which changes nothing", "err", err)
				break
			}
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

// fetch appends up to n messages to got, and the klines among them to
// batch: waiting up to a second for them, or only for what is there.
func (s *Sink) fetch(cons jetstream.Consumer, batch *[]kline.Update, got *[]jetstream.Msg, n int, wait bool) error {
	var msgs jetstream.MessageBatch
	var err error
	if wait {
		msgs, err = cons.Fetch(n, jetstream.FetchMaxWait(time.Second))
	} else {
		msgs, err = cons.FetchNoWait(n)
	}
	if err != nil {
		return err
	}
	for m := range msgs.Messages() {
		*got = append(*got, m)
		u, err := Decode(m.Data())
		if err != nil {
			s.Malformed.Add(1)
			s.log.Warn("left out a message that is not a kline", "subject", m.Subject(), "err", err)
			continue
		}
		// The stream's time orders the versions of one kline for the
		// store: sinks sharing the consumer commit them out of order.
		if md, err := m.Metadata(); err == nil {
			u.Stamp = md.Timestamp.UnixNano()
		}
		*batch = append(*batch, u)
	}
	if err := msgs.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) && !errors.Is(err, nats.ErrTimeout) {
		s.log.Debug("fetch ended early", "err", err)
	}
	return nil
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
		MaxAckPending: 2 * copiers * s.batch, AckWait: AckWait,
	})
}
