package cluster

import (
	"context"
	"testing"
	"time"

	"github.com/klagg/klagg/internal/engine"
	"github.com/klagg/klagg/internal/kline"
)

type seeded struct{ n int }

func (s *seeded) Seed(context.Context, string, kline.Interval, kline.Kline, int64) error {
	s.n++
	return nil
}

type resumed struct{ next int64 }

func (r *resumed) Resume(_ context.Context, _ string, next int64, _ time.Time) error {
	r.next = next
	return nil
}

func (r *resumed) ResumeQuiet(context.Context, string, time.Time) (bool, error) { return false, nil }

type rechecked struct{ from, to int64 }

func (r *rechecked) Recheck(_ string, from, to int64) { r.from, r.to = from, to }

// TestSeederRechecks: a symbol taken over is seeded from its checkpoint,
// its trades resumed after the checkpoint's last, and the minutes its
// last owner closed shortly before it (no earlier than the minute it was
// built live since) rechecked against the exchange's.
func TestSeederRechecks(t *testing.T) {
	const open = int64(100 * 60_000)
	ivs := []kline.Interval{kline.OneMinute(), kline.MustInterval("5m")}
	for _, tc := range []struct {
		m0, from int64
	}{
		{0, open - 3*60_000},
		{open - 60_000, open - 60_000},
	} {
		l := &Leases{taken: map[string]Resume{"A": {State: engine.State{Symbol: "A", LastID: 41,
			Open: []kline.Kline{{OpenTime: open}, {OpenTime: kline.MustInterval("5m").Open(open)}}}, M0: tc.m0}}}
		e, r, rc := &seeded{}, &resumed{}, &rechecked{}
		s := NewSeeder(nil, l, e, r, ivs)
		s.Recheck, s.RecheckMinutes = rc, 3
		m0, err := s.Seed(context.Background(), "A")
		if err != nil || m0 != tc.m0 || e.n != 2 || r.next != 42 {
			t.Fatalf("seed: m0 %d %v, %d klines seeded, resumed at %d", m0, err, e.n, r.next)
		}
		if rc.from != tc.from || rc.to != open-60_000 {
			t.Errorf("m0 %d: rechecked [%d, %d], want [%d, %d]", tc.m0, rc.from/60_000, rc.to/60_000, tc.from/60_000, open/60_000-1)
		}
	}
}
