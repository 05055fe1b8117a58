package cluster

import (
	"slices"
	"sync"

	"github.com/klagg/klagg/internal/kline"
)

// unsunk keeps the closed klines of the stream that the sinks have not
// all acknowledged yet, so that a serve node's REST answers include them
// while PostgreSQL lacks them (a sink behind, or the database down). The
// feed adds what it reads from the stream and drops what falls below the
// sinks' acknowledgement floor; REST reads it.
type unsunk struct {
	mu     sync.Mutex
	series map[[2]string][]sunkEntry // by stream sequence
	n      int
	floor  uint64 // every sequence up to it is stored
}

type sunkEntry struct {
	seq uint64
	k   kline.Kline
}

// maxUnsunk bounds what is kept while no sink acknowledges anything: an
// hour of the whole market's closed klines (2,000 symbols, 13 intervals)
// is about 160,000. Beyond it the oldest go, and REST lacks them until
// the sinks store them.
const maxUnsunk = 500_000

// add keeps u, read from the stream at sequence seq, unless the sinks
// have already stored it.
func (s *unsunk) add(u *kline.Update, seq uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if seq <= s.floor {
		return
	}
	if s.series == nil {
		s.series = map[[2]string][]sunkEntry{}
	}
	key := [2]string{u.Symbol, u.Interval.String()}
	s.series[key] = append(s.series[key], sunkEntry{seq, u.Kline})
	if s.n++; s.n > maxUnsunk {
		// A tenth at a time: each drop walks every series.
		s.dropLocked(s.oldestLocked() + maxUnsunk/10)
	}
}

// stored drops what is at or below floor, the sinks' acknowledgement floor.
func (s *unsunk) stored(floor uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.dropLocked(floor)
}

func (s *unsunk) dropLocked(floor uint64) {
	s.floor = max(s.floor, floor)
	for key, es := range s.series {
		i := 0
		for i < len(es) && es[i].seq <= s.floor {
			i++
		}
		s.n -= i
		if i == len(es) {
			delete(s.series, key)
		} else if i > 0 {
			s.series[key] = slices.Clone(es[i:]) // let the dropped ones go
		}
	}
}

// oldestLocked is the lowest sequence kept.
func (s *unsunk) oldestLocked() uint64 {
	oldest := uint64(1<<64 - 1)
	for _, es := range s.series {
		oldest = min(oldest, es[0].seq)
	}
	return oldest
}

// Unwritten appends to dst the klines of symbol and iv the sinks have not
// stored yet, by open time, the newest version of each.
func (s *unsunk) Unwritten(dst []kline.Kline, symbol string, iv kline.Interval) []kline.Kline {
	s.mu.Lock()
	es := s.series[[2]string{symbol, iv.String()}]
	at := len(dst)
	for _, e := range es {
		dst = append(dst, e.k)
	}
	s.mu.Unlock()
	return append(dst[:at], kline.ByOpenTime(dst[at:])...)
}
