package archive

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/klagg/klagg/internal/kline"
	"github.com/klagg/klagg/internal/store"
)

// ImportStore is where an import writes the klines and its ledger: the
// store.
type ImportStore interface {
	Upsert(updates []kline.Update) error
	Klines(ctx context.Context, q store.Query) ([]kline.Kline, error)
	Symbols(ctx context.Context) ([]store.Symbol, error)
	PutSymbols(syms []store.Symbol) error
	AddImported(files []store.Imported) error
	Imported(ctx context.Context) (map[string]store.Imported, error)
}

// Held records the spans of klines stored: coverage.
type Held interface {
	Add(p store.Span) error
	Holds(symbol string, iv kline.Interval, lo, hi int64) bool
}

// ImportConfig sets up an import.
type ImportConfig struct {
	// Symbols are the symbols to import; none is every symbol the archive
	// has 1m klines of, those delisted long ago too (Symbols lists them).
	Symbols []string
	// Since and Until bound the UTC days imported, [Since, Until); a
	// zero Since is each symbol's listing, its first day in the archive.
	Since, Until time.Time
	// Intervals are derived from the 1m klines imported (1m, if listed,
	// is left out: it is what is imported).
	Intervals []kline.Interval
	// Parallel is how many files are read at once [8].
	Parallel int
	// Progress, if set, is told after each file.
	Progress func(ImportProgress)
	Log      *slog.Logger
}

// ImportProgress counts an import's work.
type ImportProgress struct {
	Files     int   `json:"files"`     // to read
	Done      int   `json:"done"`      // read, or skipped as imported before with the same checksum
	Skipped   int   `json:"skipped"`   // of Done: imported before
	Klines    int64 `json:"klines"`    // 1m klines stored
	Derived   int64 `json:"derived"`   // klines of longer intervals derived and stored
	Bytes     int64 `json:"bytes"`     // downloaded
	Corrupt   int   `json:"corrupt"`   // files refused by their checksum or unreadable
	Uncovered int   `json:"uncovered"` // days of the range no file holds
}

// Import stores the 1m klines of cfg.Symbols in [Since, Until) from the
// archive's files: each whole month from its monthly file, the rest (and
// any day a monthly file lacks) from daily files. Every file is checked
// against its checksum; one in the ledger with the same checksum is
// skipped, so a killed import goes on where it stopped, and one the
// archive re-uploaded is imported again. The minutes a file holds are
// recorded held in runs; a minute no file holds is left to the exchange's
// REST (the exchange's own gaps among them) and counted in Uncovered by
// the day.
func Import(ctx context.Context, b *Bucket, st ImportStore, held Held, cfg ImportConfig) (ImportProgress, error) {
	if cfg.Parallel <= 0 {
		cfg.Parallel = 8
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	since, until := day(cfg.Since), day(cfg.Until)
	if !cfg.Since.IsZero() && !since.Before(until) {
		return ImportProgress{}, fmt.Errorf("archive: nothing to import: %s is not before %s", since.Format(time.DateOnly), until.Format(time.DateOnly))
	}
	ledger, err := st.Imported(ctx)
	if err != nil {
		return ImportProgress{}, err
	}
	if len(cfg.Symbols) == 0 {
		if cfg.Symbols, err = Symbols(ctx, b); err != nil {
			return ImportProgress{}, err
		}
		cfg.Log.Info("importing every symbol the archive has", "symbols", len(cfg.Symbols))
	}
	im := &importer{b: b, st: st, held: held, cfg: cfg, ledger: ledger, seen: map[string]store.Symbol{}}
	var plan []string
	from := map[string]time.Time{} // by symbol, the first day imported
	for _, sym := range cfg.Symbols {
		files, first, err := im.plan(ctx, sym, since, until)
		if err != nil {
			return im.progress(), err
		}
		plan, from[sym] = append(plan, files...), first
	}
	im.files.Store(int64(len(plan)))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(cfg.Parallel)
	for _, key := range plan {
		g.Go(func() error { return im.file(gctx, key) })
	}
	if err := g.Wait(); err != nil {
		return im.progress(), err
	}
	if err := im.record(ctx); err != nil {
		return im.progress(), err
	}
	// The klines longer than a day span files: derived once every file
	// is in, from the minutes stored.
	for _, sym := range cfg.Symbols {
		if err := im.deriveAcross(ctx, sym, from[sym], until); err != nil {
			return im.progress(), err
		}
	}
	return im.progress(), nil
}

type importer struct {
	b      *Bucket
	st     ImportStore
	held   Held
	cfg    ImportConfig
	ledger map[string]store.Imported
	daily  sync.Map // the daily files listed, by key: a day a monthly file lacks is read from its own

	mu                                       sync.Mutex              // serializes writes and progress
	seen                                     map[string]store.Symbol // symbols imported: their precisions and first kline, under mu
	files, done, skipped, corrupt, uncovered atomic.Int64
	klines, derived, bytes                   atomic.Int64
}

func (im *importer) progress() ImportProgress {
	return ImportProgress{Files: int(im.files.Load()), Done: int(im.done.Load()), Skipped: int(im.skipped.Load()),
		Klines: im.klines.Load(), Derived: im.derived.Load(), Bytes: im.bytes.Load(), Corrupt: int(im.corrupt.Load()), Uncovered: int(im.uncovered.Load())}
}

// plan returns the files holding symbol's 1m klines of the days in
// [since, until): a month's file where the month is whole in the range
// and listed, else the days' files; and since, which a zero since makes
// the day of the symbol's first file (its listing).
func (im *importer) plan(ctx context.Context, symbol string, since, until time.Time) ([]string, time.Time, error) {
	_, monthly, err := im.b.List(ctx, KlinesPrefix(symbol, "1m", true))
	if err != nil {
		return nil, since, err
	}
	_, daily, err := im.b.List(ctx, KlinesPrefix(symbol, "1m", false))
	if err != nil {
		return nil, since, err
	}
	if since.IsZero() {
		if since, err = listing(symbol, monthly, daily); err != nil {
			return nil, since, err
		}
	}
	has := map[string]bool{}
	for _, o := range monthly {
		has[o.Key] = true
	}
	for _, o := range daily {
		has[o.Key] = true
		im.daily.Store(o.Key, true)
	}
	var out []string
	for d := since; d.Before(until); {
		month := time.Date(d.Year(), d.Month(), 1, 0, 0, 0, 0, time.UTC)
		next := month.AddDate(0, 1, 0)
		key := MonthlyKey(symbol, "1m", month)
		if d.Equal(month) && !next.After(until) && has[key] {
			out = append(out, key)
			d = next
			continue
		}
		key = DailyKey(symbol, "1m", d)
		if has[key] {
			out = append(out, key)
		} else {
			im.uncovered.Add(1)
			im.cfg.Log.Warn("the archive has no file of this day; its klines are read from the exchange when asked for", "symbol", symbol, "day", d.Format(time.DateOnly))
		}
		d = d.AddDate(0, 0, 1)
	}
	return out, since, nil
}

// file imports one file, unless the ledger has it with the same checksum.
func (im *importer) file(ctx context.Context, key string) error {
	defer im.report()
	sum, err := im.b.Checksum(ctx, key)
	if err != nil {
		return im.refuse(key, err)
	}
	if f, ok := im.ledger[key]; ok && strings.EqualFold(f.Checksum, sum) {
		im.skipped.Add(1)
		im.done.Add(1)
		return nil
	}
	data, sum, err := im.b.Fetch(ctx, key)
	if err != nil {
		return im.refuse(key, err)
	}
	im.bytes.Add(int64(len(data)))
	ks, prec, err := ParseKlinesFile(data)
	if err != nil {
		return im.refuse(key, err)
	}
	symbol := strings.SplitN(path.Base(key), "-", 2)[0]
	if err := im.store(key, symbol, ks, sum, len(data)); err != nil {
		return err
	}
	im.saw(symbol, ks, prec)
	if !strings.Contains(key, "/monthly/") {
		return nil
	}
	// A day the monthly file lacks (a known defect of the archive) is
	// read from that day's file.
	days := map[int64]bool{}
	for _, k := range ks {
		days[k.OpenTime-k.OpenTime%86_400_000] = true
	}
	month, err := time.Parse("2006-01", strings.TrimSuffix(strings.TrimPrefix(path.Base(key), symbol+"-1m-"), ".zip"))
	if err != nil {
		return nil
	}
	for d := month; d.Before(month.AddDate(0, 1, 0)); d = d.AddDate(0, 0, 1) {
		if days[d.UnixMilli()] {
			continue
		}
		dk := DailyKey(symbol, "1m", d)
		if _, ok := im.daily.Load(dk); !ok {
			im.uncovered.Add(1)
			im.cfg.Log.Warn("a monthly archive file lacks a day the archive has no daily file of; its klines are read from the exchange when asked for", "file", key, "day", d.Format(time.DateOnly))
			continue
		}
		im.files.Add(1)
		if err := im.file(ctx, dk); err != nil {
			return err
		}
	}
	return nil
}

// store writes a file's klines, the runs of minutes they hold, and the
// file in the ledger, in that order: a crash leaves the file to import
// again, never a span without its klines.
func (im *importer) store(key, symbol string, ks []kline.Kline, sum string, size int) error {
	one := kline.OneMinute()
	ups := make([]kline.Update, len(ks))
	for i, k := range ks {
		k.Closed = true
		ups[i] = kline.Update{Symbol: symbol, Interval: one, Kline: k}
	}
	derived, spans := Derive(symbol, im.cfg.Intervals, ks)
	ups = append(ups, derived...)
	im.mu.Lock()
	defer im.mu.Unlock()
	if err := im.st.Upsert(ups); err != nil {
		return fmt.Errorf("archive: store the klines of %s: %w", key, err)
	}
	// Held in runs of minutes; a minute the file lacks is the exchange's
	// to say (a gap of its own, or the file's defect).
	for _, r := range runs(one, ks) {
		spans = append(spans, store.Span{Symbol: symbol, Interval: one, From: ks[r[0]].OpenTime, To: ks[r[1]].OpenTime})
	}
	for _, p := range spans {
		if err := im.held.Add(p); err != nil {
			return err
		}
	}
	if err := im.st.AddImported([]store.Imported{{Name: key, Checksum: sum, Size: int64(size)}}); err != nil {
		return err
	}
	im.klines.Add(int64(len(ks)))
	im.derived.Add(int64(len(derived)))
	im.done.Add(1)
	return nil
}

// Symbols returns every symbol the archive has daily 1m klines of, by
// name: the USDⓈ-M contracts trading now and those delisted (some as
// <SYMBOL>SETTLED).
func Symbols(ctx context.Context, b *Bucket) ([]string, error) {
	const prefix = "data/futures/um/daily/klines/"
	folders, _, err := b.List(ctx, prefix)
	if err != nil {
		return nil, fmt.Errorf("archive: list its symbols: %w", err)
	}
	out := make([]string, 0, len(folders))
	for _, f := range folders {
		if s := strings.TrimSuffix(strings.TrimPrefix(f, prefix), "/"); s != "" {
			out = append(out, s)
		}
	}
	if len(out) == 0 {
		return nil, errors.New("archive: it lists no symbol under " + prefix)
	}
	return out, nil
}

// saw notes a symbol's precisions and first kline from a file of it.
func (im *importer) saw(symbol string, ks []kline.Kline, p kline.Precision) {
	if len(ks) == 0 {
		return
	}
	im.mu.Lock()
	defer im.mu.Unlock()
	y, ok := im.seen[symbol]
	if !ok || ks[0].OpenTime < y.OnboardDate {
		y.OnboardDate = ks[0].OpenTime
	}
	y.Name, y.PricePrecision, y.QuantityPrecision = symbol, max(y.PricePrecision, p.Price), max(y.QuantityPrecision, p.Qty)
	im.seen[symbol] = y
}

// record stores the symbols imported that the store does not know (one
// delisted, or an import before klagg first ran): their klines are served
// under their names with the precisions their files are written in.
// What the exchange says of a symbol it lists wins over this.
func (im *importer) record(ctx context.Context) error {
	known, err := im.st.Symbols(ctx)
	if err != nil {
		return fmt.Errorf("archive: read the symbols stored: %w", err)
	}
	im.mu.Lock()
	defer im.mu.Unlock()
	for _, y := range known {
		delete(im.seen, y.Name)
	}
	var fresh []store.Symbol
	for _, y := range im.seen {
		fresh = append(fresh, y)
	}
	if len(fresh) == 0 {
		return nil
	}
	if err := im.st.PutSymbols(fresh); err != nil {
		return fmt.Errorf("archive: store the symbols imported: %w", err)
	}
	return nil
}

// runs returns the runs [i, j] of ks (sorted by open time) whose klines
// follow each other without a slot of iv between.
func runs(iv kline.Interval, ks []kline.Kline) [][2]int {
	var out [][2]int
	for i := 0; i < len(ks); {
		j := i
		for j+1 < len(ks) && ks[j+1].OpenTime == iv.Next(ks[j].OpenTime) {
			j++
		}
		out = append(out, [2]int{i, j})
		i = j + 1
	}
	return out
}

// Derive returns the klines of ivs (1m left out) that ks, closed 1m
// klines sorted by open time, hold every minute of, aggregated as Binance
// aggregates them (kline.Rollup: a minute without trades sets no price),
// and the spans of slots they fill. A slot a missing minute falls in is
// left out: the exchange's klines say what it holds.
func Derive(symbol string, ivs []kline.Interval, ks []kline.Kline) ([]kline.Update, []store.Span) {
	var out []kline.Update
	var spans []store.Span
	for _, r := range runs(kline.OneMinute(), ks) {
		run := ks[r[0] : r[1]+1]
		first, last := run[0].OpenTime, run[len(run)-1].CloseTime
		for _, iv := range ivs {
			if iv == kline.OneMinute() {
				continue
			}
			n := len(out)
			for _, k := range kline.Rollup(iv, run) {
				if k.OpenTime < first || k.CloseTime > last {
					continue // the run holds part of it
				}
				out = append(out, kline.Update{Symbol: symbol, Interval: iv, Kline: k})
			}
			if len(out) > n { // consecutive slots
				spans = append(spans, store.Span{Symbol: symbol, Interval: iv, From: out[n].OpenTime, To: out[len(out)-1].OpenTime})
			}
		}
	}
	return out, spans
}

// refuse counts a file that cannot be imported now and goes on with the
// others; only a stop ends the import.
func (im *importer) refuse(key string, err error) error {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	im.corrupt.Add(1)
	im.done.Add(1)
	im.cfg.Log.Warn("an archive file was not imported; the next import tries it again, and its klines are read from the exchange when asked for", "file", key, "err", err)
	return nil
}

func (im *importer) report() {
	if im.cfg.Progress != nil {
		im.cfg.Progress(im.progress())
	}
}

// deriveAcross derives the klines of symbol's intervals longer than a
// day (3d, 1w, 1M) opening in [since, until) that no file held whole, from
// the minutes stored, where every minute is held and stored.
func (im *importer) deriveAcross(ctx context.Context, symbol string, since, until time.Time) error {
	one := kline.OneMinute()
	for _, iv := range im.cfg.Intervals {
		if iv.Duration() <= 24*time.Hour {
			continue // inside a day, and so inside any file
		}
		for open := iv.Open(since.UnixMilli()); open < until.UnixMilli(); open = iv.Next(open) {
			lastMin := iv.CloseTime(open) + 1 - one.Duration().Milliseconds()
			if im.held.Holds(symbol, iv, open, open) || !im.held.Holds(symbol, one, open, lastMin) {
				continue
			}
			slots := int(one.Slots(open, lastMin))
			ks, err := im.st.Klines(ctx, store.Query{Symbol: symbol, Interval: one, Start: open, End: lastMin, Limit: slots})
			if err != nil {
				return fmt.Errorf("archive: read %s's minutes to derive its %s kline of %s: %w", symbol, iv, time.UnixMilli(open).UTC().Format(time.DateOnly), err)
			}
			if len(ks) != slots {
				continue // the exchange's own gap: its kline says what it holds
			}
			ups, spans := Derive(symbol, []kline.Interval{iv}, ks)
			if err := im.st.Upsert(ups); err != nil {
				return fmt.Errorf("archive: store %s's %s klines: %w", symbol, iv, err)
			}
			for _, p := range spans {
				if err := im.held.Add(p); err != nil {
					return err
				}
			}
			im.derived.Add(int64(len(ups)))
		}
	}
	return nil
}

// listing returns the first day of symbol's 1m files listed: its listing
// day, or the first of its listing month.
func listing(symbol string, monthly, daily []Object) (time.Time, error) {
	var first time.Time
	for _, o := range append(monthly, daily...) {
		name := strings.TrimSuffix(strings.TrimPrefix(path.Base(o.Key), symbol+"-1m-"), ".zip")
		t, err := time.Parse(time.DateOnly, name)
		if err != nil {
			if t, err = time.Parse("2006-01", name); err != nil {
				continue
			}
		}
		if first.IsZero() || t.Before(first) {
			first = t
		}
	}
	if first.IsZero() {
		return first, fmt.Errorf("archive: the archive has no 1m klines of %s (is it spelled as Binance spells it?)", symbol)
	}
	return first, nil
}

// day is t's UTC day.
func day(t time.Time) time.Time {
	t = t.UTC()
	return time.Date(t.Year(), t.Month(), t.Day(), 0, 0, 0, 0, time.UTC)
}
