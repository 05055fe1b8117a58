package cluster

import (
	"testing"

	"github.com/klagg/klagg/internal/kline"
)

// TestUnsunk: what is at or below the sinks' floor goes, and arrives no
// more; beyond maxUnsunk the oldest go.
func TestUnsunk(t *testing.T) {
	var s unsunk
	iv := kline.OneMinute()
	add := func(seq uint64, sym string, open int64) {
		s.add(&kline.Update{Symbol: sym, Interval: iv, Kline: kline.Kline{OpenTime: open}}, seq)
	}
	opens := func(sym string) (out []int64) {
		for _, k := range s.Unwritten(nil, sym, iv) {
			out = append(out, k.OpenTime)
		}
		return out
	}
	add(1, "A", 0)
	add(2, "B", 0)
	add(3, "A", 60_000)
	s.stored(2)
	if a, b := opens("A"), opens("B"); len(a) != 1 || a[0] != 60_000 || len(b) != 0 || s.n != 1 {
		t.Fatalf("after floor 2: A %v, B %v, n %d; want A [60000], B none, n 1", a, b, s.n)
	}
	add(2, "B", 0) // at the floor: stored already
	if b := opens("B"); len(b) != 0 {
		t.Fatalf("a kline at the floor was kept: %v", b)
	}
	for seq := uint64(4); seq < 4+maxUnsunk; seq++ {
		add(seq, "C", int64(seq)*60_000)
	}
	if s.n > maxUnsunk || s.n < maxUnsunk*8/10 {
		t.Fatalf("%d kept after %d added; want at most %d, most of them", s.n, maxUnsunk+1, maxUnsunk)
	}
	if a := opens("A"); len(a) != 0 {
		t.Fatalf("the oldest were not the ones dropped: A keeps %v", a)
	}
	if c := opens("C"); c[len(c)-1] != int64(3+maxUnsunk)*60_000 {
		t.Fatalf("the newest was dropped: C ends at %d", c[len(c)-1])
	}
}
