package service

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/klagg/klagg/internal/bus"
	"github.com/klagg/klagg/internal/cluster"
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
