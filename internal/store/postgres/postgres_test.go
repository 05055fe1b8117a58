package postgres

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"sync/atomic"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/klagg/klagg/internal/kline"
	"github.com/klagg/klagg/internal/store/storetest"
)

// testURL is the PostgreSQL the tests use: $KLAGG_POSTGRES_URL, else the
// project machines' local one.
func testURL() string {
	if u := os.Getenv("KLAGG_POSTGRES_URL"); u != "" {
		return u
	}
	return "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"
}

// freshSchema makes a schema of its own for one test, dropped after it,
// and returns a URL whose connections use it; it skips the test where
// PostgreSQL cannot be reached (failing in CI).
func freshSchema(t testing.TB) string {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, testURL())
	if err != nil {
		msg := "PostgreSQL not reachable at " + testURL() + " (set KLAGG_POSTGRES_URL): " + err.Error()
		if os.Getenv("CI") != "" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	defer conn.Close(ctx)
	b := make([]byte, 6)
	rand.Read(b)
	schema := "klagg_test_" + hex.EncodeToString(b)
	if _, err := conn.Exec(ctx, "CREATE SCHEMA "+schema); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c, err := pgx.Connect(context.Background(), testURL())
		if err == nil {
			c.Exec(context.Background(), "DROP SCHEMA "+schema+" CASCADE")
			c.Close(context.Background())
		}
	})
	u, err := url.Parse(testURL())
	if err != nil {
		t.Fatal(err)
	}
	q := u.Query()
	q.Set("search_path", schema)
	u.RawQuery = q.Encode()
	return u.String()
}

// TestConformance runs the suite every store passes on PostgreSQL.
func TestConformance(t *testing.T) {
	urls := map[storetest.Store]string{}
	storetest.Run(t, func(t *testing.T) storetest.Store {
		u := freshSchema(t)
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
	u := freshSchema(t)
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
	u := freshSchema(b)
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
