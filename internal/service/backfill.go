package service

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/klagg/klagg/internal/store"
	"github.com/klagg/klagg/internal/symbols"
)

// parallel runs f over names with a few workers; REST weight, not
// concurrency, is the limit, and the client enforces it.
func (s *Service) parallel(ctx context.Context, names []string, f func(int, string) error) error {
	var wg sync.WaitGroup
	var mu sync.Mutex
	var first error
	next := atomic.Int64{}
	for range min(4, len(names)) {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= len(names) || ctx.Err() != nil {
					return
				}
				if err := f(i, names[i]); err != nil {
					mu.Lock()
					if first == nil {
						first = err
					}
					mu.Unlock()
					return
				}
			}
		})
	}
	wg.Wait()
	if first == nil {
		first = ctx.Err()
	}
	return first
}

// Backfill stores the closed klines of every interval for every symbol
// that klagg does not hold, of the last klines.backfill_limit (or since
// what is held ends), and returns: the `klagg backfill` command.
func (s *Service) Backfill(ctx context.Context) (err error) {
	defer func() { err = errors.Join(err, s.Store.Close()) }()
	// Every write goes through the one writer, stopped (and flushed) last.
	wCtx, stopW := context.WithCancel(context.Background())
	var wWG sync.WaitGroup
	var writeErr error
	wWG.Go(func() { writeErr = s.writer.Run(wCtx) })
	defer func() {
		stopW()
		wWG.Wait()
		if writeErr != nil {
			err = errors.Join(err, fmt.Errorf("writing the backfilled klines failed: %w", writeErr))
		}
	}()
	if err := s.Coverage.Load(ctx); err != nil {
		return err
	}
	if err := s.syncTime(ctx); err != nil {
		return err
	}
	info, err := s.Client.ExchangeInfo(ctx)
	if err != nil {
		return fmt.Errorf("read exchangeInfo from %s: %w", s.cfg.Exchange.RESTURL, err)
	}
	var syms []store.Symbol
	var names []string
	for _, i := range info.Symbols {
		if s.Registry.Keeps(i) && symbols.ClassOf(i.Status) != symbols.ClassPending {
			syms = append(syms, symbols.Record(i))
			names = append(names, i.Symbol)
		}
	}
	if err := s.Store.PutSymbols(syms); err != nil {
		return err
	}
	m0 := s.ExchangeNow().UnixMilli()
	m0 -= m0 % 60_000
	total, done := len(names)*s.History.BackfillRequests(), atomic.Int64{}
	start := time.Now()
	err = s.parallel(ctx, names, func(_ int, name string) error {
		return s.History.Backfill(ctx, name, m0, func() {
			if s.Progress != nil {
				s.Progress(int(done.Add(1)), total)
			}
		})
	})
	_, weight := s.Client.Weight().Used()
	s.log.Info("backfill done", "symbols", len(names), "klines", s.History.Backfills.Load(),
		"requests", s.History.Requests.Load(), "weight", weight, "took", time.Since(start).Round(time.Millisecond))
	return err
}
