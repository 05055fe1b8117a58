package cluster

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/klagg/klagg/internal/bus"
	"github.com/klagg/klagg/internal/kline"
)

// maxReplays is how many Replays run at once on a node: they are the last
// resort of REST while PostgreSQL cannot be read, and each is a consumer
// on the stream's leader.
const maxReplays = 4

// Replay appends to dst the closed klines of symbol and iv that the kline
// stream holds (the last bus.Retention) published at or after from, each
// in its newest version, by open time. A kline is published once it
// closes, so from at or before a kline's open time finds it.
func (f *Feed) Replay(ctx context.Context, dst []kline.Kline, symbol string, iv kline.Interval, from time.Time) ([]kline.Kline, error) {
	select {
	case f.replays <- struct{}{}:
		defer func() { <-f.replays }()
	case <-ctx.Done():
		return dst, ctx.Err()
	}
	subject := bus.Subject(symbol, iv.String())
	st, err := f.js.Stream(ctx, bus.Stream)
	if err != nil {
		return dst, fmt.Errorf("cluster: replay %s: %w", subject, err)
	}
	// The subject's last message now is where the replay ends.
	last, err := st.GetLastMsgForSubject(ctx, subject)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return dst, nil
	}
	if err != nil {
		return dst, fmt.Errorf("cluster: replay %s: %w", subject, err)
	}
	if last.Time.Before(from) {
		return dst, nil
	}
	cons, err := st.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{subject},
		DeliverPolicy:  jetstream.DeliverByStartTimePolicy,
		OptStartTime:   &from,
		// Gone from the server soon after: while PostgreSQL is down, every
		// deep REST request makes one.
		InactiveThreshold: 10 * time.Second,
	})
	if err != nil {
		return dst, fmt.Errorf("cluster: replay %s: %w", subject, err)
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(1000))
	if err != nil {
		return dst, fmt.Errorf("cluster: replay %s: %w", subject, err)
	}
	defer it.Stop()
	at := len(dst)
	for {
		m, err := it.Next(jetstream.NextContext(ctx))
		if err != nil {
			return dst[:at], fmt.Errorf("cluster: replay %s: %w", subject, err)
		}
		md, err := m.Metadata()
		if err != nil {
			return dst[:at], fmt.Errorf("cluster: replay %s: %w", subject, err)
		}
		if u, err := bus.Decode(m.Data()); err == nil && u.Closed {
			dst = append(dst, u.Kline)
		}
		if md.Sequence.Stream >= last.Sequence {
			break
		}
	}
	// By open time; a correction comes later in the stream than the
	// version it replaces, and the stable sort keeps that order.
	out := dst[at:]
	slices.SortStableFunc(out, func(a, b kline.Kline) int { return cmp.Compare(a.OpenTime, b.OpenTime) })
	kept := out[:0]
	for _, k := range out {
		if n := len(kept); n > 0 && kept[n-1].OpenTime == k.OpenTime {
			kept[n-1] = k
			continue
		}
		kept = append(kept, k)
	}
	return dst[:at+len(kept)], nil
}
