package kline

import "fmt"

// Series accumulates the trades of one symbol, in any order, into gap-free
// klines of one fixed-length interval (in practice 1m, from which every
// other interval is rolled up). It is what `klagg build` and the oracle tests
// use; the live engine keeps only the open klines instead.
type Series struct {
	iv    Interval
	first int64 // open time of ks[0]
	ks    []Kline
	seen  idSet
	dups  int
}

// NewSeries returns an empty series of iv, which must have a fixed length.
func NewSeries(iv Interval) (*Series, error) {
	if iv.ms == 0 {
		return nil, fmt.Errorf("series interval %s has no fixed length", iv)
	}
	return &Series{iv: iv}, nil
}

// Add applies t unless its aggregate id was already applied; it reports
// whether t was new.
func (s *Series) Add(t *Trade) bool {
	if !s.seen.add(t.ID) {
		s.dups++
		return false
	}
	open := s.iv.Open(t.Time)
	if len(s.ks) == 0 {
		s.first = open
	}
	if open < s.first {
		n := int((s.first - open) / s.iv.ms)
		grown := make([]Kline, n, n+len(s.ks))
		s.ks = append(grown, s.ks...)
		s.first = open
	}
	i := int((open - s.first) / s.iv.ms)
	for len(s.ks) <= i {
		s.ks = append(s.ks, Kline{})
	}
	s.ks[i].Add(t)
	return true
}

// Duplicates is the number of trades ignored as repeated aggregate ids.
func (s *Series) Duplicates() int { return s.dups }

// Klines returns the klines from the first traded one to the last, with the
// intervals in between that saw no trade filled at the previous close. The
// returned klines are marked closed; the caller decides otherwise.
func (s *Series) Klines() []Kline {
	prevClose := int64(0)
	for i := range s.ks {
		k := &s.ks[i]
		open := s.first + int64(i)*s.iv.ms
		if k.Trades == 0 {
			*k = Empty(s.iv, open, prevClose)
		}
		k.OpenTime, k.CloseTime, k.Closed = open, s.iv.CloseTime(open), true
		prevClose = k.Close
	}
	return s.ks
}

// idSet is a set of aggregate ids: a bitmap in pages of 64Ki ids, because
// ids of one symbol are dense and a map entry per id would cost ~50 bytes.
type idSet struct {
	pages    map[int64]*[1024]uint64
	lastKey  int64
	lastPage *[1024]uint64
}

func (s *idSet) add(id int64) bool {
	key := id >> 16
	p := s.lastPage
	if p == nil || key != s.lastKey {
		if s.pages == nil {
			s.pages = make(map[int64]*[1024]uint64)
		}
		p = s.pages[key]
		if p == nil {
			p = new([1024]uint64)
			s.pages[key] = p
		}
		s.lastKey, s.lastPage = key, p
	}
	w, b := (id>>6)&1023, uint64(1)<<(id&63)
	if p[w]&b != 0 {
		return false
	}
	p[w] |= b
	return true
}
