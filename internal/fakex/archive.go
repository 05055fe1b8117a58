package fakex

import (
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/klagg/klagg/internal/archive"
	"github.com/klagg/klagg/internal/kline"
)

// The fake archive: Binance's public archive of the exchange's own 1m
// klines (data.binance.vision, DESIGN §8), served under /archive as the
// bucket's S3 address serves it, listing and files alike. A day's file is
// published ArchiveDelay after the day ends, a month's 15 days after the
// month ends; so the newest days, and the month running, are not there
// yet (a 404), as on Binance.
//
// Unless Config.Plain, it has the archive's known defects: each monthly
// file lacks its month's third day (the daily file has it), files of odd
// days have no header row, one row of each daily file of the 5th is there
// twice, the newest daily file of the first symbol is published two days
// late, and that of the second symbol is corrupt (its bytes do not match
// its .CHECKSUM).

const archiveMonthDelay = 15 * 24 * time.Hour

// archiveFiles implements archive.Published over the exchange.
type archiveFiles struct {
	x     *Exchange
	mu    sync.Mutex
	cache map[string][]byte
}

// ArchiveURL is the base URL of the fake archive, for klagg import -from.
func (x *Exchange) ArchiveURL() string { return x.URL() + "/archive" }

// archiveFile is one file the archive publishes.
type archiveFile struct {
	symbol  string
	monthly bool
	from    time.Time // the day or month
	out     time.Time // when published
}

func (f archiveFile) key() string {
	if f.monthly {
		return archive.MonthlyKey(f.symbol, "1m", f.from)
	}
	return archive.DailyKey(f.symbol, "1m", f.from)
}

// files returns what the archive publishes by now, by key.
func (a *archiveFiles) files() map[string]archiveFile {
	x := a.x
	x.mu.Lock()
	now := time.UnixMilli(x.nowLocked()).UTC()
	type span struct {
		name        string
		first, last int64
		trading     bool
	}
	var spans []span
	for _, s := range x.symbols {
		h := s.history()
		if len(h) == 0 {
			continue
		}
		spans = append(spans, span{s.name, h[0].Time, h[len(h)-1].Time, s.status == "TRADING"})
	}
	plain := x.cfg.Plain
	delay := x.cfg.ArchiveDelay
	x.mu.Unlock()
	out := map[string]archiveFile{}
	for i, s := range spans {
		first := day(time.UnixMilli(s.first))
		end := now // the last day a file may hold
		if !s.trading {
			end = time.UnixMilli(s.last).UTC()
		}
		var newest archiveFile
		for d := first; !d.After(end); d = d.AddDate(0, 0, 1) {
			f := archiveFile{symbol: s.name, from: d, out: d.AddDate(0, 0, 1).Add(delay)}
			if f.out.After(now) {
				break
			}
			out[f.key()], newest = f, f
			if m := d.AddDate(0, 0, 1); m.Day() == 1 {
				month := m.AddDate(0, -1, 0)
				mf := archiveFile{symbol: s.name, monthly: true, from: month, out: m.Add(archiveMonthDelay)}
				if !mf.out.After(now) && !month.Before(first) {
					out[mf.key()] = mf
				}
			}
		}
		if !plain && i == 0 && newest.symbol != "" && newest.out.Add(2*24*time.Hour).After(now) {
			delete(out, newest.key()) // late
		}
	}
	return out
}

func day(t time.Time) time.Time {
	t = t.UTC()
	return time.Date(t.Year(), t.Month(), t.Day(), 0, 0, 0, 0, time.UTC)
}

// Keys implements archive.Published.
func (a *archiveFiles) Keys() []archive.Object {
	files := a.files()
	out := make([]archive.Object, 0, 2*len(files))
	for key, f := range files {
		out = append(out, archive.Object{Key: key, Modified: f.out}, archive.Object{Key: key + ".CHECKSUM", Modified: f.out})
	}
	slices.SortFunc(out, func(a, b archive.Object) int { return strings.Compare(a.Key, b.Key) })
	return out
}

// File implements archive.Published.
func (a *archiveFiles) File(key string) ([]byte, error) {
	name, sum := strings.CutSuffix(key, ".CHECKSUM")
	f, ok := a.files()[name]
	if !ok {
		return nil, archive.ErrNotFound
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	data, ok := a.cache[name]
	if !ok {
		var err error
		if data, err = a.make(f); err != nil {
			return nil, err
		}
		a.cache[name] = data
	}
	if !sum {
		return data, nil
	}
	base := name[strings.LastIndexByte(name, '/')+1:]
	if !a.x.cfg.Plain && a.corrupt(f) {
		return archive.ChecksumFile([]byte("the bytes as uploaded"), base), nil
	}
	return archive.ChecksumFile(data, base), nil
}

// corrupt reports whether f is the file the archive has corrupt: the
// second symbol's newest daily file.
func (a *archiveFiles) corrupt(f archiveFile) bool {
	x := a.x
	x.mu.Lock()
	second := len(x.symbols) > 1 && x.symbols[1].name == f.symbol
	x.mu.Unlock()
	if !second || f.monthly {
		return false
	}
	_, later := a.files()[archive.DailyKey(f.symbol, "1m", f.from.AddDate(0, 0, 1))]
	return !later
}

// make builds f's zip from the exchange's trades.
func (a *archiveFiles) make(f archiveFile) ([]byte, error) {
	x := a.x
	x.mu.Lock()
	s := x.bySym[f.symbol]
	trades, prec := s.history(), s.prec
	plain := x.cfg.Plain
	x.mu.Unlock()
	to := f.from.AddDate(0, 0, 1)
	if f.monthly {
		to = f.from.AddDate(0, 1, 0)
	}
	ks := Reference(trades, kline.OneMinute(), f.from.UnixMilli(), to.UnixMilli()-1)
	if !plain {
		if f.monthly {
			third := f.from.AddDate(0, 0, 2).UnixMilli()
			ks = slices.DeleteFunc(ks, func(k kline.Kline) bool { return k.OpenTime >= third && k.OpenTime < third+86_400_000 })
		} else if f.from.Day() == 5 && len(ks) > 10 {
			ks = slices.Insert(ks, 10, ks[10])
		}
	}
	header := plain || f.from.Day()%2 == 0
	name := f.key()
	return archive.KlinesZip(name[strings.LastIndexByte(name, '/')+1:], ks, prec, header)
}
