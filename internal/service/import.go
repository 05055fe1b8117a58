package service

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/klagg/klagg/internal/archive"
)

// Import stores the 1m klines of Binance's public archive for cfg's
// symbols and days, read from from (the archive's URL, a bucket's URL or
// a folder laid out like it; "" is Binance's own), and the klines of
// cfg.Intervals (by default the configured ones) derived from them,
// records them held, and returns: the `klagg import` command. It needs no exchange: what the
// files hold is enough. A log line every 10 s says how far it is.
func (s *Service) Import(ctx context.Context, from string, cfg archive.ImportConfig) (err error) {
	defer func() { err = errors.Join(err, s.Store.Close()) }()
	if err := s.Coverage.Load(ctx); err != nil {
		return err
	}
	b, err := archive.OpenBucket(from, nil)
	if err != nil {
		return err
	}
	if cfg.Intervals == nil {
		cfg.Intervals = s.cfg.Intervals
	}
	var last atomic.Pointer[archive.ImportProgress]
	last.Store(&archive.ImportProgress{})
	bar := cfg.Progress
	cfg.Progress = func(p archive.ImportProgress) {
		last.Store(&p)
		if s.Progress != nil {
			s.Progress(p.Done, p.Files)
		}
		if bar != nil {
			bar(p)
		}
	}
	cfg.Log = s.log.With("part", "import")
	start := time.Now()
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
				p := last.Load()
				s.log.Info("importing", "files_done", p.Done, "files", p.Files, "klines", p.Klines, "bytes", p.Bytes,
					"rate_files_per_s", fmt.Sprintf("%.1f", float64(p.Done)/time.Since(start).Seconds()), "left", eta(start, p.Done, p.Files))
			}
		}
	}()
	p, err := archive.Import(ctx, b, s.Store, s.Coverage, cfg)
	close(done)
	<-stopped
	s.log.Info("import done", "files", p.Files, "skipped_as_imported", p.Skipped, "klines", p.Klines, "derived", p.Derived, "bytes", p.Bytes,
		"corrupt", p.Corrupt, "days_without_file", p.Uncovered, "took", time.Since(start).Round(time.Millisecond))
	if err == nil && p.Corrupt > 0 {
		err = fmt.Errorf("%d archive files could not be imported (see the log); run the import again to retry them", p.Corrupt)
	}
	return err
}

// eta is the time left at the rate so far.
func eta(start time.Time, done, total int) string {
	if done == 0 {
		return "unknown"
	}
	left := time.Duration(float64(time.Since(start)) * float64(total-done) / float64(done))
	return left.Round(time.Second).String()
}
