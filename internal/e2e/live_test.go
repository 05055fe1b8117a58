package e2e

import (
	"testing"
	"time"

	"github.com/klagg/klagg/internal/fakex"
)

func TestSteadyState(t *testing.T) {
	r := newRun(t, fakex.Config{Symbols: 50}, "")
	r.startKlagg()
	r.until(30 * time.Minute)
	r.stop()
	r.check(30 * time.Minute)
}
