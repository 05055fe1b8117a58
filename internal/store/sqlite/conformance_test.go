package sqlite_test

import (
	"path/filepath"
	"testing"

	"github.com/klagg/klagg/internal/store/sqlite"
	"github.com/klagg/klagg/internal/store/storetest"
)

// TestConformance runs the suite every store passes on SQLite.
func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) storetest.Store {
		s, err := sqlite.Open(filepath.Join(t.TempDir(), "klagg.db"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}, func(t *testing.T, old storetest.Store) storetest.Store {
		path := old.(*sqlite.Store).Path()
		old.Close()
		s, err := sqlite.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	})
}
