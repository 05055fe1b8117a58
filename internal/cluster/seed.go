package cluster

import (
	"context"
	"time"

	"github.com/klagg/klagg/internal/kline"
)

// History seeds and backfills symbols from the exchange: history.History.
type History interface {
	Seed(ctx context.Context, symbol string) (m0 int64, err error)
	Backfill(ctx context.Context, symbol string, m0 int64, progress func()) error
	BackfillRequests() int
	Resync(ctx context.Context, symbol string, since int64) error
}

// Seeds takes a symbol's open klines: the engine.
type Seeds interface {
	Seed(ctx context.Context, symbol string, iv kline.Interval, k kline.Kline, through int64) error
}

// Rechecker has closed 1m klines checked against the exchange's:
// history.Reconciler.
type Rechecker interface {
	Recheck(symbol string, from, to int64)
}

// Resumer starts a symbol's trades at an aggregate id: the router.
type Resumer interface {
	Resume(ctx context.Context, symbol string, next int64, asOf time.Time) error
	ResumeQuiet(ctx context.Context, symbol string, asOf time.Time) (bool, error)
}

// Seeder seeds a symbol this node has taken over from its checkpoint: the
// open klines as its last owner left them, and the trades from the
// checkpoint's aggregate id + 1, with no REST weight for the klines. A
// symbol without a checkpoint to resume from is seeded from the exchange
// as a single node does. It is the registry's History.
type Seeder struct {
	History
	leases *Leases
	engine Seeds
	router Resumer
	ivs    []kline.Interval
	// Recheck, if set, is told the minutes before a checkpoint that its
	// last owner may not have checked against the exchange's: the last
	// RecheckMinutes of them.
	Recheck        Rechecker
	RecheckMinutes int
}

// NewSeeder returns a seeder over hist for the symbols leases takes.
func NewSeeder(hist History, leases *Leases, engine Seeds, router Resumer, ivs []kline.Interval) *Seeder {
	return &Seeder{History: hist, leases: leases, engine: engine, router: router, ivs: ivs}
}

// Seed seeds symbol from its checkpoint where it has one. It returns the
// minute the symbol's owners have built it live since, which the
// checkpoint carries on: the klines before the checkpoint are the earlier
// owners', and stored.
//
// A checkpoint without an aggregate id is of a symbol that had no trade
// since its owner seeded it (a quiet market): its open klines are seeded
// all the same and then resynchronized from the exchange's klines through
// the engine, so that the klines closed since reach the stream (and every
// subscriber) corrected, as after any gap.
func (s *Seeder) Seed(ctx context.Context, symbol string) (int64, error) {
	r, ok := s.leases.Taken(symbol)
	st := r.State
	if !ok || len(st.Open) == 0 || st.Open[0].OpenTime == 0 {
		return s.History.Seed(ctx, symbol)
	}
	for i, iv := range s.ivs {
		if i < len(st.Open) && st.Open[i].OpenTime != 0 {
			if err := s.engine.Seed(ctx, symbol, iv, st.Open[i], 0); err != nil {
				return 0, err
			}
		}
	}
	if s.Recheck != nil && s.RecheckMinutes > 0 {
		// A trade of those minutes that comes now is too late for them
		// here: the exchange's klines are taken instead.
		open := st.Open[0].OpenTime
		s.Recheck.Recheck(symbol, max(r.M0, open-int64(s.RecheckMinutes)*60_000), open-60_000)
	}
	if st.LastID < 0 {
		// A standby that saw no trade since before the checkpoint vouches
		// for it; else the exchange's klines do.
		if ok, err := s.router.ResumeQuiet(ctx, symbol, r.AsOf); ok || err != nil {
			return r.M0, err
		}
		return r.M0, s.History.Resync(ctx, symbol, st.Open[0].OpenTime)
	}
	return r.M0, s.router.Resume(ctx, symbol, st.LastID+1, r.AsOf)
}
