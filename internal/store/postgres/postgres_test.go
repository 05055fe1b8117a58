package postgres

import (
	"context"
	"fmt"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/klagg/klagg/internal/kline"
	"github.com/klagg/klagg/internal/store/storetest"
)

// TestConformance runs the suite every store passes on PostgreSQL.
func TestConformance(t *testing.T) {
	urls := map[storetest.Store]string{}
	storetest.Run(t, func(t *testing.T) storetest.Store {
		u := storetest.PostgresSchema(t)
		s, err := Open(context.Background(), u)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		urls[s] = u
		return s
	}, func(t *testing.T, old storetest.Store) storetest.Store {
		old.Close()
		s, err := Open(context.Background(), urls[old])
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	})
}

// TestMigrationsOnce: opening the store again, or from several nodes at
// once, migrates once.
func TestMigrationsOnce(t *testing.T) {
	u := storetest.PostgresSchema(t)
	errs := make(chan error, 4)
	for range 4 {
		go func() {
			s, err := Open(context.Background(), u)
			if err == nil {
				s.Close()
			}
			errs <- err
		}()
	}
	for range 4 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	s, err := Open(context.Background(), u)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var v int
	if err := s.pool.QueryRow(context.Background(), `SELECT version FROM klagg_schema`).Scan(&v); err != nil || v != len(migrations) {
		t.Fatalf("schema version %d (%v), want %d", v, err, len(migrations))
	}
}

// BenchmarkUpsert writes batches of 1,000 new klines, then (Replay) the
// same klines again, which must change nothing.
func BenchmarkUpsert(b *testing.B) {
	u := storetest.PostgresSchema(b)
	s, err := Open(context.Background(), u)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	const batch = 5000
	mk := func(n int) []kline.Update {
		us := make([]kline.Update, batch)
		for i := range us {
			open := int64(n*batch+i) * 60_000
			us[i] = kline.Update{Symbol: "BTCUSDT", Interval: kline.OneMinute(), Kline: storetest.Kline(open, int64(i))}
		}
		return us
	}
	b.Run("New", func(b *testing.B) {
		for n := 0; b.Loop(); n++ {
			if err := s.Upsert(mk(n)); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.N*batch)/b.Elapsed().Seconds(), "klines/s")
	})
	b.Run("TwoWriters", func(b *testing.B) {
		var id atomic.Int64
		b.SetParallelism(1) // one writer per core
		b.RunParallel(func(pb *testing.PB) {
			sym := fmt.Sprintf("S%dUSDT", id.Add(1))
			for n := 0; pb.Next(); n++ {
				us := mk(n + 1_000)
				for i := range us {
					us[i].Symbol = sym
				}
				if err := s.Upsert(us); err != nil {
					b.Error(err)
					return
				}
			}
		})
		b.ReportMetric(float64(b.N*batch)/b.Elapsed().Seconds(), "klines/s")
	})
	b.Run("Replay", func(b *testing.B) {
		us := mk(0)
		for b.Loop() {
			if err := s.Upsert(us); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.N*batch)/b.Elapsed().Seconds(), "klines/s")
	})
}

// TestMissingSchema: a search_path naming no schema is refused with words
// that say what to do.
func TestMissingSchema(t *testing.T) {
	u, err := url.Parse(storetest.PostgresSchema(t))
	if err != nil {
		t.Fatal(err)
	}
	q := u.Query()
	q.Set("search_path", q.Get("search_path")+"_missing")
	u.RawQuery = q.Encode()
	s, err := Open(context.Background(), u.String())
	if err == nil {
		s.Close()
		t.Fatal("opened a database whose search_path names no schema")
	}
	if !strings.Contains(err.Error(), "CREATE SCHEMA") {
		t.Fatalf("error %q does not say to create the schema", err)
	}
}
