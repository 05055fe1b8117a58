package ingest

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package's tests if any goroutine the router started
// outlives them: fills and repairs are owned and waited for.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
