package service

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/klagg/klagg/internal/bus"
	"github.com/klagg/klagg/internal/cluster"
	"github.com/klagg/klagg/internal/kline"
	"github.com/klagg/klagg/internal/store"
)

// joinCluster connects to NATS and makes sure the kline stream and the
// cluster's buckets are there.
func (s *Service) joinCluster() (jetstream.JetStream, cluster.Buckets, error) {
	c := &s.cfg.Cluster
	nc, err := cluster.Connect(c.NATSURL, c.Node, s.log.With("part", "nats"))
	if err != nil {
		return nil, cluster.Buckets{}, err
	}
	s.nc = nc
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, cluster.Buckets{}, fmt.Errorf("cluster: %w", err)
	}
	// JetStream answers nothing while its servers elect a leader (a NATS
	// cluster starting with klagg, or a server restarting), and a request
	// sent as the link drops is lost: each attempt has its own deadline,
	// and they go on for a minute.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var b cluster.Buckets
	for attempt := 0; ; attempt++ {
		actx, acancel := context.WithTimeout(ctx, 10*time.Second)
		_, err = bus.EnsureStream(actx, js, c.Replicas)
		if err != nil {
			err = fmt.Errorf("%w (is JetStream enabled on the NATS servers at %s? nats-server -js)", err, c.NATSURL)
		} else {
			b, err = cluster.EnsureBuckets(actx, js, c.Replicas)
		}
		acancel()
		if err == nil {
			return js, b, nil
		}
		if errors.Is(err, jetstream.ErrJetStreamNotEnabled) || errors.Is(err, jetstream.ErrJetStreamNotEnabledForAccount) {
			nc.Close() // the servers' configuration: waiting changes nothing
			return nil, cluster.Buckets{}, err
		}
		if attempt%10 == 0 { // once every ten seconds or so is enough to read
			s.log.Warn("waiting for JetStream; retrying for a minute", "err", err)
		}
		select {
		case <-ctx.Done():
			nc.Close()
			return nil, cluster.Buckets{}, err
		case <-time.After(time.Second):
		}
	}
}

// lastStored is what a cluster node knows it holds of a series: the sinks
// store the cluster's live klines, and no node sees them all, so history
// goes on from the newest stored kline of each series (or fetches the last
// depth klines) as it did before klagg kept spans.
type lastStored struct {
	st    Store
	depth int
	log   *slog.Logger
}

func (l lastStored) Wanted(symbol string, iv kline.Interval, end int64) []store.Span {
	end = iv.Open(end)
	start := end
	for range l.depth {
		start = iv.Prev(start)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	last, ok, err := l.st.Last(ctx, symbol, iv)
	switch {
	case err != nil:
		l.log.Warn("reading the newest stored kline failed; fetching the last klines.backfill_limit", "symbol", symbol, "interval", iv, "err", err)
	case ok && last.Closed && last.OpenTime < end:
		start = iv.Next(last.OpenTime)
	case ok && last.OpenTime < end:
		start = last.OpenTime // stored while open: fetched again
	}
	if start >= end {
		return nil
	}
	return []store.Span{{Symbol: symbol, Interval: iv, From: start, To: iv.Prev(end)}}
}

func (l lastStored) Add(p store.Span) error { return l.st.AddSpans([]store.Span{p}) }

// Ended is not known to a cluster node's history.
func (lastStored) Ended(string) bool { return false }

// Missing knows nothing held: a read through fetches all it is asked.
func (l lastStored) Missing(symbol string, iv kline.Interval, lo, hi int64) []store.Span {
	return []store.Span{{Symbol: symbol, Interval: iv, From: lo, To: hi}}
}
