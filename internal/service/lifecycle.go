package service

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/klagg/klagg/internal/binance"
	"github.com/klagg/klagg/internal/bus"
	"github.com/klagg/klagg/internal/run"
)

// Tiers adds the service's parts to g, in the order they start; g stops
// them in reverse:
//
//  0. coverage: which klines are held, recorded after the last write;
//  1. store: the one writer (and, in a cluster, the publisher of closed
//     klines), stopped last, so that it flushes what the engine closed last;
//  2. engine: the engine (and the open klines sent to the serve nodes);
//     before it stops, a cluster node hands its symbols over with a last
//     checkpoint, which needs the engine;
//  3. inputs: discovery (the exchange's clock and exchangeInfo, retried
//     until they answer), then the symbol registry, router and repairs,
//     ingest, the clock, reconciliation, the cluster's leases, sink and feed,
//     and the status line. Every input but discovery waits for it.
//
// Callers add what serves the service's output (HTTP, streams) as a tier
// after these, so that it stops first.
func (s *Service) Tiers(g *run.Group) {
	s.started = time.Now()
	// Stopped after the writer and the publisher: their last commit and
	// acknowledgement are recorded held.
	g.Tier("coverage").Add("coverage", s.Coverage.Run)
	w := g.Tier("store").Add("store writer", func(ctx context.Context) error {
		if err := s.writer.Run(ctx); err != nil {
			return fmt.Errorf("final write to the store failed; the newest klines are lost: %w", err)
		}
		return nil
	})
	if s.Publisher != nil {
		w.Add("publisher", s.Publisher.Run)
	}
	eng := g.Tier("engine").Add("engine", s.Engine.Run)
	if s.Opens != nil {
		eng.Add("open klines", s.Opens.Run)
	}
	if s.Leases != nil {
		// The inputs are stopped and the engine runs: the last
		// checkpoints hand every symbol over as it stands.
		eng.BeforeStop(func() {
			ctx, cancel := context.WithTimeout(context.Background(), bus.Drain)
			defer cancel()
			if err := s.Leases.Release(ctx); err != nil {
				s.log.Warn("releasing the symbol leases failed; other nodes take the symbols over after cluster.staleness", "err", err)
			}
		})
	}

	discovered := make(chan struct{})
	var info *binance.ExchangeInfo
	// after runs f once discovery has succeeded.
	after := func(f func(context.Context) error) func(context.Context) error {
		return func(ctx context.Context) error {
			select {
			case <-ctx.Done():
				return nil
			case <-discovered:
			}
			return f(ctx)
		}
	}
	in := g.Tier("inputs").Add("discovery", func(ctx context.Context) error {
		i, err := s.discover(ctx)
		if err != nil {
			return s.startErr(ctx, err)
		}
		info = i
		close(discovered)
		return nil
	})
	in.Add("symbols", after(func(ctx context.Context) error { return s.Registry.Run(ctx, info) }))
	in.Add("router", after(s.Router.Run))
	in.Add("repairs", after(func(ctx context.Context) error { return s.Router.RunRepairs(ctx, s.History) }))
	in.Add("ingest", after(s.Ingest.Run))
	in.Add("clock", after(func(ctx context.Context) error { s.tick(ctx); return nil }))
	in.Add("time sync", after(func(ctx context.Context) error { s.syncClock(ctx); return nil }))
	if s.Reconciler != nil {
		in.Add("reconciler", after(func(ctx context.Context) error { return s.Reconciler.Run(ctx, s.Engine) }))
	}
	if s.Leases != nil {
		in.Add("cluster leases", after(func(ctx context.Context) error { return s.Leases.Run(ctx, s.Registry) }))
	}
	if s.Sink != nil {
		in.Add("kline sink", after(s.Sink.Run))
	}
	if s.Feed != nil {
		in.Add("cluster feed", after(s.Feed.Run))
	}
	if s.cfg.History.Enabled {
		if s.cfg.Clustered() {
			// One node at a time must import: not built yet.
			s.log.Warn("history.enabled is not supported in a cluster yet; run klagg import against the cluster's database instead")
		} else {
			in.Add("history import", after(s.importHistory))
		}
	}
	in.Add("status", after(func(ctx context.Context) error { s.status(ctx); return nil }))
}

// Close closes what the service holds once its parts have stopped: the
// store and the NATS link.
func (s *Service) Close() error {
	err := s.Store.Close()
	if s.nc != nil {
		s.nc.Close()
	}
	s.log.Info("stopped", "klines_written", s.writer.Written())
	return err
}

// Run runs the service alone until ctx ends, then stops it, flushes the
// store and closes it.
func (s *Service) Run(ctx context.Context) error {
	var g run.Group
	s.Tiers(&g)
	return errors.Join(g.Run(ctx), s.Close())
}

// discover loads what earlier runs stored of the symbols and which klines
// they held, then reads the
// exchange's clock and exchangeInfo, retrying until the exchange answers.
func (s *Service) discover(ctx context.Context) (*binance.ExchangeInfo, error) {
	stored, err := s.Store.Symbols(ctx)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	for _, y := range stored {
		s.known[y.Name] = y
	}
	s.mu.Unlock()
	if err := s.Coverage.Load(ctx); err != nil {
		return nil, err
	}
	// The exchange may be down or refusing for a while: keep trying, and
	// say so each time.
	if err := s.untilReached(ctx, "reach the exchange's clock", s.syncTime); err != nil {
		return nil, err
	}
	var info *binance.ExchangeInfo
	err = s.untilReached(ctx, "read exchangeInfo", func(ctx context.Context) error {
		var err error
		info, err = s.Client.ExchangeInfo(ctx)
		return err
	})
	if err != nil {
		return nil, err
	}
	kept := 0
	for _, i := range info.Symbols {
		if s.Registry.Keeps(i) {
			kept++
		}
	}
	if kept == 0 {
		return nil, fmt.Errorf("exchangeInfo lists no %s USDT contract matching symbols.include/exclude", strings.Join(s.cfg.Symbols.ContractTypes, " or "))
	}
	s.log.Info("symbols", "count", kept, "intervals", len(s.cfg.Intervals))
	return info, nil
}

// untilReached runs f until it succeeds or ctx ends, logging each failure
// at once: an exchange that does not answer must not look like a hang.
func (s *Service) untilReached(ctx context.Context, what string, f func(context.Context) error) error {
	wait := time.Second
	for {
		err := f(ctx)
		if err == nil || ctx.Err() != nil {
			return err
		}
		s.log.Error("cannot "+what+"; retrying", "url", s.cfg.Exchange.RESTURL, "err", err, "retry_in", wait)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
		wait = min(2*wait, 30*time.Second)
	}
}

// startErr reports a startup failure, or nothing if the user stopped us.
func (s *Service) startErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return nil
	}
	return err
}
