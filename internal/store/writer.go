package store

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/klagg/klagg/internal/kline"
)

// Source is where the writer takes updates from: in the service, the
// engine's Coalescer.
type Source interface {
	Ready() <-chan struct{}
	Drain(dst []kline.Update) []kline.Update
}

// Upserter is the store a Writer writes to: SQLite's or PostgreSQL's.
type Upserter interface {
	Upsert(updates []kline.Update) error
}

// Writer is the one goroutine that writes engine updates to the store, in
// batches of up to BatchSize rows per transaction. When a write fails (disk
// full, database locked) the batch is kept, merged with newer updates by
// key, and retried with backoff: nothing is dropped, and memory stays
// bounded by the number of distinct klines.
type Writer struct {
	store     Upserter
	src       Source
	log       *slog.Logger
	batchSize int
	every     time.Duration

	// bulk carries batches of closed klines from elsewhere (backfill,
	// reads through), written by the same goroutine with the same retries.
	bulk chan bulkBatch

	written  atomic.Int64
	failures atomic.Int64
	backlog  atomic.Int64

	// stored is told of every update once the store holds it, so that
	// readers of what it does not hold yet (the head) can let it go.
	stored func(updates []kline.Update)
	// failing is the last write's error while writes fail; nil once one
	// succeeds.
	failing atomic.Pointer[error]
}

// NewWriter returns a writer from src into s that writes at most once per
// every. Under load every open kline changes all the time; writing them
// once a second instead of as fast as SQLite goes keeps the writer from
// taking a core from ingest, and what a crash loses in between is read back
// from the exchange on the next start. stored, if not nil, is told of each
// batch of updates the store has taken.
func NewWriter(s Upserter, src Source, every time.Duration, stored func(updates []kline.Update), log *slog.Logger) *Writer {
	if stored == nil {
		stored = func([]kline.Update) {}
	}
	return &Writer{store: s, src: src, log: log, batchSize: 5000, every: every, stored: stored, bulk: make(chan bulkBatch, 16)}
}

// writeBySymbol writes ups one symbol per transaction and returns those of
// the symbols whose write failed.
func (w *Writer) writeBySymbol(ups []kline.Update) []kline.Update {
	bySym := map[string][]kline.Update{}
	for _, u := range ups {
		bySym[u.Symbol] = append(bySym[u.Symbol], u)
	}
	var left []kline.Update
	for sym, us := range bySym {
		if err := w.store.Upsert(us); err != nil {
			w.log.Warn("writing a symbol's klines failed; keeping them and retrying", "symbol", sym, "klines", len(us), "err", err)
			left = append(left, us...)
			continue
		}
		w.stored(us)
		w.written.Add(int64(len(us)))
		w.backlog.Add(-int64(len(us)))
	}
	return left
}

// bulkBatch is a batch given to Write or WriteNow.
type bulkBatch struct {
	updates []kline.Update
	stored  func() // called once the store holds them; may be nil
	now     bool   // written at once, not at the writer's next turn
}

// Write queues closed klines (a backfill page) for the writer and returns
// once it has taken them; it waits while the writer is behind or failing,
// so a slow or full disk slows the backfill instead of filling memory.
// stored, if not nil, is called on the writer's goroutine once the store
// holds them.
func (w *Writer) Write(ctx context.Context, updates []kline.Update, stored func()) error {
	select {
	case w.bulk <- bulkBatch{updates: updates, stored: stored}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// WriteNow writes closed klines at once and returns once the store holds
// them: a client waits for them.
func (w *Writer) WriteNow(ctx context.Context, updates []kline.Update) error {
	done := make(chan struct{})
	select {
	case w.bulk <- bulkBatch{updates: updates, stored: func() { close(done) }, now: true}:
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		if err := w.Failing(); err != nil {
			return fmt.Errorf("the store does not take klines: %w", err)
		}
		return ctx.Err()
	}
}

// Written is the number of kline rows written so far.
func (w *Writer) Written() int64 { return w.written.Load() }

// Failures is the number of failed write attempts.
func (w *Writer) Failures() int64 { return w.failures.Load() }

// Failing returns the error of the last write while writes fail, and nil
// once one succeeds.
func (w *Writer) Failing() error {
	if err := w.failing.Load(); err != nil {
		return *err
	}
	return nil
}

// Backlog is the number of updates drained but not yet written.
func (w *Writer) Backlog() int64 { return w.backlog.Load() }

// Run writes until ctx ends, then drains and writes what is left and
// returns. Callers stop the engine first so the final drain is complete.
// It returns the last write error if the final flush failed.
func (w *Writer) Run(ctx context.Context) error {
	var (
		batch   []kline.Update
		bulk    []kline.Update // taken from Write, not yet written
		told    []func()       // to call once what was taken from Write is stored
		retry   map[kline.Key]kline.Update
		backoff = 100 * time.Millisecond
		timer   *time.Timer
		wait    <-chan time.Time
		last    time.Time
	)
	arm := func(d time.Duration) <-chan time.Time {
		if timer == nil {
			timer = time.NewTimer(d)
		} else {
			timer.Reset(d)
		}
		return timer.C
	}
	flush := func() error {
		batch = w.src.Drain(batch[:0])
		batch = append(batch, bulk...)
		clear(bulk)
		bulk = bulk[:0]
		if len(retry) > 0 {
			// Newer drained versions win over the ones that failed.
			for i := range batch {
				delete(retry, batch[i].Key())
			}
			for _, u := range retry {
				batch = append(batch, u)
			}
			clear(retry)
		}
		w.backlog.Store(int64(len(batch)))
		for off := 0; off < len(batch); off += w.batchSize {
			chunk := batch[off:min(off+w.batchSize, len(batch))]
			if err := w.store.Upsert(chunk); err != nil {
				w.failures.Add(1)
				// One symbol's damaged rows must not stop the others:
				// write the rest symbol by symbol, keep what still fails.
				left := w.writeBySymbol(batch[off:])
				if len(left) == 0 {
					return nil
				}
				if retry == nil {
					retry = make(map[kline.Key]kline.Update)
				}
				for _, u := range left {
					retry[u.Key()] = u
				}
				return err
			}
			w.stored(chunk)
			w.written.Add(int64(len(chunk)))
			w.backlog.Add(-int64(len(chunk)))
		}
		return nil
	}
	for {
		bulkIn := w.bulk
		if len(retry) > 0 || len(bulk) >= w.batchSize {
			bulkIn = nil // hold Write back until these are written
		}
		select {
		case b := <-bulkIn:
			bulk = append(bulk, b.updates...)
			if b.stored != nil {
				told = append(told, b.stored)
			}
			switch {
			case b.now && len(retry) == 0:
			case wait != nil:
				continue
			default:
				if d := w.every - time.Since(last); d > 0 {
					wait = arm(d)
					continue
				}
			}
		case <-ctx.Done():
			for drained := false; !drained; {
				select {
				case b := <-w.bulk:
					bulk = append(bulk, b.updates...)
					if b.stored != nil {
						told = append(told, b.stored)
					}
				default:
					drained = true
				}
			}
			var err error
			// A few quick attempts: the final flush must not be lost to a
			// momentary lock, but shutdown must not hang on a dead disk.
			for attempt := 0; attempt < 5; attempt++ {
				if err = flush(); err == nil {
					tell(told)
					return nil
				}
				w.log.Error("final kline flush failed, retrying", "err", err, "pending", len(retry))
				time.Sleep(time.Duration(attempt+1) * 200 * time.Millisecond)
			}
			return err
		case <-w.src.Ready():
			if wait != nil {
				continue // backing off or waiting; the timer will drain
			}
			if d := w.every - time.Since(last); d > 0 {
				wait = arm(d)
				continue
			}
		case <-wait:
			wait = nil
		}
		last = time.Now()
		if err := flush(); err != nil {
			w.failing.Store(&err)
			w.log.Error("writing klines failed; keeping them and retrying", "err", err, "pending", len(retry), "retry_in", backoff)
			wait = arm(backoff)
			backoff = min(2*backoff, 10*time.Second)
			continue
		}
		backoff = 100 * time.Millisecond
		if len(retry) == 0 {
			w.failing.Store(nil)
			told = tell(told)
		}
	}
}

// tell calls each of fs and returns fs emptied.
func tell(fs []func()) []func() {
	for i, f := range fs {
		f()
		fs[i] = nil
	}
	return fs[:0]
}

// WritePrometheus writes the writer's counters in Prometheus's text format.
func (w *Writer) WritePrometheus(out io.Writer) {
	metrics.WriteCounterUint64(out, "klagg_klines_written_total", uint64(w.written.Load()))
	metrics.WriteCounterUint64(out, "klagg_store_write_failures_total", uint64(w.failures.Load()))
}
