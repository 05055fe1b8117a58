package service

import (
	"context"
	"fmt"
	"math"
	"time"
)

// syncTime measures the offset of the exchange's clock to the local one.
func (s *Service) syncTime(ctx context.Context) error {
	t0 := time.Now()
	st, err := s.Client.Urgent().ServerTime(ctx)
	if err != nil {
		return fmt.Errorf("reach the exchange at %s: %w", s.cfg.Exchange.RESTURL, err)
	}
	rtt := time.Since(t0)
	s.offset.Store(st.Sub(t0.Add(rtt / 2)).Milliseconds())
	return nil
}

// tick tells the engine the exchange time four times a second, and
// measures the trade rate.
func (s *Service) tick(ctx context.Context) {
	// Klines without a later trade close by the clock, grace after their
	// close time. Every interval closes on a minute, so besides the
	// regular tick a timer fires at each minute + grace: closing events
	// then come within grace + a few ms, as Binance's own, without a fast
	// tick taking the engine from trades all the time.
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	grace := s.cfg.Klines.Grace.Duration
	target := time.Time{}
	untilClose := func() time.Duration {
		now := s.ExchangeNow()
		target = now.Truncate(time.Minute).Add(grace % time.Minute)
		for !target.After(now) {
			target = target.Add(time.Minute)
		}
		return target.Sub(now) + time.Millisecond
	}
	closer := time.NewTimer(untilClose())
	defer closer.Stop()
	retries := 0
	lastAt, lastN := time.Now(), s.Router.Stats().Forwarded.Load()
	for {
		select {
		case <-ctx.Done():
			return
		case <-closer.C:
			now, ok := s.clock()
			if ok {
				s.Engine.Tick(ctx, now, s.Router.Holds(), s.Router.Released())
			}
			// The clock is held at the streams' watermark: while it lags
			// the target, look again shortly.
			if (!ok || now.Before(target)) && retries < 50 {
				retries++
				closer.Reset(10 * time.Millisecond)
			} else {
				retries = 0
				closer.Reset(untilClose())
			}
		case <-t.C:
			if now, ok := s.clock(); ok {
				s.Engine.Tick(ctx, now, s.Router.Holds(), s.Router.Released())
			}
			if d := time.Since(lastAt); d >= time.Second {
				n := s.Router.Stats().Forwarded.Load()
				s.rate.Store(math.Float64bits(float64(n-lastN) / d.Seconds()))
				lastAt, lastN = time.Now(), n
			}
		}
	}
}

// syncClock re-measures the offset to the exchange's clock periodically. It
// is not part of tick: a request can wait a minute for REST weight, and
// klines must go on closing meanwhile.
func (s *Service) syncClock(ctx context.Context) {
	t := time.NewTicker(s.cfg.Exchange.TimeSync.Duration)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := s.syncTime(ctx); err != nil && ctx.Err() == nil {
				s.log.Warn("exchange time sync failed", "err", err)
			}
		}
	}
}

// clock is the time up to which the engine may close klines: exchange time,
// held back to what every connected connection has delivered, so that no
// kline closes while its trades are in flight. Symbols missing trades are
// held back further, each on its own (Router.Holds).
func (s *Service) clock() (time.Time, bool) {
	w := s.Router.Watermark()
	if w == 0 {
		return time.Time{}, false
	}
	return time.UnixMilli(min(s.ExchangeNow().UnixMilli(), w)), true
}
