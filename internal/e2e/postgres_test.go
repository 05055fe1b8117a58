package e2e

import (
	"testing"
	"time"

	"github.com/klagg/klagg/internal/fakex"
)

// TestPostgresStore runs the real binary with database.url on the local
// PostgreSQL, through a kill -9 and a restart: every closed kline of
// every interval it stored equals the exchange's, with no gap, and a
// clean stop leaves every open kline flushed.
func TestPostgresStore(t *testing.T) {
	r := newRun(t, fakex.Config{}, "")
	r.usePostgres()
	r.startKlagg()
	r.until(4 * time.Minute)
	r.kill()
	r.until(6 * time.Minute)
	r.startKlagg()
	r.until(10 * time.Minute)
	r.stop()
	r.check(10 * time.Minute)
	r.checkSnapshot()
}
