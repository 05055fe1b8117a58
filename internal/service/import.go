package service

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"time"

	"github.com/klagg/klagg/internal/archive"
)

// Import stores the 1m klines of Binance's public archive for cfg's
// symbols and days, read from from (the archive's URL, a bucket's URL or
// a folder laid out like it; "" is Binance's own), and the klines of
// cfg.Intervals (by default the configured ones) derived from them,
// records them held, and returns: the `klagg import` command. It needs no
// exchange: what the files hold is enough. A log line every 10 s says how
// far it is.
func (s *Service) Import(ctx context.Context, from string, cfg archive.ImportConfig) (err error) {
	defer func() { err = errors.Join(err, s.Store.Close()) }()
	if err := s.Coverage.Load(ctx); err != nil {
		return err
	}
	p, err := s.importArchive(ctx, from, cfg)
	if err == nil && p.Corrupt > 0 {
		err = fmt.Errorf("%d archive files could not be imported (see the log); run the import again to retry them", p.Corrupt)
	}
	return err
}

// importArchive runs one import, saying how far it is in s.imported, in
// Progress and in the log every 10 s.
func (s *Service) importArchive(ctx context.Context, from string, cfg archive.ImportConfig) (archive.ImportProgress, error) {
	b, err := archive.OpenBucket(from, nil)
	if err != nil {
		return archive.ImportProgress{}, err
	}
	if cfg.Intervals == nil {
		cfg.Intervals = s.cfg.Intervals
	}
	s.imported.Store(&ImportStatus{Running: true})
	bar := cfg.Progress
	start := time.Now()
	cfg.Progress = func(p archive.ImportProgress) {
		s.imported.Store(&ImportStatus{ImportProgress: p, Running: true, Left: eta(start, p.Done, p.Files)})
		if s.Progress != nil {
			s.Progress(p.Done, p.Files)
		}
		if bar != nil {
			bar(p)
		}
	}
	cfg.Log = s.log.With("part", "import")
	done := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		t := time.NewTicker(10 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				st := s.imported.Load()
				s.log.Info("importing", "files_done", st.Done, "files", st.Files, "klines", st.Klines, "derived", st.Derived, "bytes", st.Bytes,
					"rate_files_per_s", fmt.Sprintf("%.1f", float64(st.Done)/time.Since(start).Seconds()), "left", st.Left)
			}
		}
	}()
	p, err := archive.Import(ctx, b, s.Store, s.Coverage, cfg)
	close(done)
	<-stopped
	s.imported.Store(&ImportStatus{ImportProgress: p})
	s.log.Info("import done", "files", p.Files, "skipped_as_imported", p.Skipped, "klines", p.Klines, "derived", p.Derived, "bytes", p.Bytes,
		"corrupt", p.Corrupt, "days_without_file", p.Uncovered, "took", time.Since(start).Round(time.Millisecond))
	return p, err
}

// ImportStatus is how far an import of the archive is, for the status.
type ImportStatus struct {
	archive.ImportProgress
	Running bool   `json:"running"`
	Left    string `json:"left,omitempty"` // time left at the rate so far
}

// importHistory imports the archive in the background ([history]) once
// the service is live, for the symbols the exchange lists then, and again every
// history.every for the days published since: what is imported already
// is skipped by its checksum.
func (s *Service) importHistory(ctx context.Context) error {
	h := s.cfg.History
	cfg := archive.ImportConfig{Parallel: h.Parallel}
	if h.Since != "listing" {
		since, err := time.Parse(time.DateOnly, h.Since)
		if err != nil {
			return fmt.Errorf("history.since: %w", err)
		}
		cfg.Since = since
	}
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for !s.Registry.Ready() {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
	for {
		// Every symbol the exchange lists, those no longer trading too:
		// their history is as much the market's.
		cfg.Symbols = cfg.Symbols[:0]
		for name := range s.Registry.View().Symbols {
			cfg.Symbols = append(cfg.Symbols, name)
		}
		slices.Sort(cfg.Symbols)
		cfg.Until = s.ExchangeNow().UTC()
		s.log.Info("importing the archive's history in the background", "symbols", len(cfg.Symbols), "since", h.Since, "from", h.From)
		if _, err := s.importArchive(ctx, h.From, cfg); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			// The archive unreachable, a disk full: the live service goes
			// on, and the next round tries again.
			s.log.Warn("importing the archive's history failed; trying again later", "err", err, "retry_in", h.Every)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(h.Every.Duration):
		}
	}
}

// writeImportMetrics writes the import's progress for /metrics.
func (s *Service) writeImportMetrics(w io.Writer) {
	st := s.imported.Load()
	if st == nil {
		return
	}
	running := 0
	if st.Running {
		running = 1
	}
	fmt.Fprintf(w, "# HELP klagg_import_running Whether an import of Binance's archive runs.\n# TYPE klagg_import_running gauge\nklagg_import_running %d\n", running)
	fmt.Fprintf(w, "# HELP klagg_import_files Archive files the import reads, and has read.\n# TYPE klagg_import_files gauge\nklagg_import_files{state=\"planned\"} %d\nklagg_import_files{state=\"done\"} %d\nklagg_import_files{state=\"corrupt\"} %d\n", st.Files, st.Done, st.Corrupt)
	fmt.Fprintf(w, "# HELP klagg_import_klines Klines the import stored: 1m from the files, and derived.\n# TYPE klagg_import_klines gauge\nklagg_import_klines{source=\"archive\"} %d\nklagg_import_klines{source=\"derived\"} %d\n", st.Klines, st.Derived)
	fmt.Fprintf(w, "# HELP klagg_import_bytes Bytes the import downloaded.\n# TYPE klagg_import_bytes gauge\nklagg_import_bytes %d\n", st.Bytes)
}

// eta is the time left at the rate so far.
func eta(start time.Time, done, total int) string {
	if done == 0 {
		return "unknown"
	}
	left := time.Duration(float64(time.Since(start)) * float64(total-done) / float64(done))
	return left.Round(time.Second).String()
}
