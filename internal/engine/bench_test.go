package engine

import (
	"context"
	"testing"
	"time"

	"github.com/klagg/klagg/internal/kline"
	"github.com/klagg/klagg/internal/synth"
)

type nopSink struct{}

func (nopSink) Publish([]kline.Update) {}

// benchTrades makes batches of 100 trades for each of n symbols, in the
// order a live feed would interleave them.
func benchTrades(n, batches int) (syms []string, bs [][]kline.Trade) {
	streams := make([]*synth.Stream, n)
	for i := range streams {
		m := synth.DefaultMarket(i, 5, t0)
		m.MeanGapMs = 50
		streams[i] = synth.NewStream(m)
		syms = append(syms, m.Symbol)
	}
	for b := range batches {
		ts := make([]kline.Trade, 100)
		for j := range ts {
			ts[j] = streams[b%n].Next()
		}
		bs = append(bs, ts)
	}
	return syms, bs
}

// BenchmarkApply is the engine's per-core cost: trades applied to 7
// intervals, on the calling goroutine, one op per trade.
func BenchmarkApply(b *testing.B) {
	b.Run("sink=none", func(b *testing.B) { benchApply(b, nopSink{}) })
	b.Run("sink=coalescer", func(b *testing.B) {
		c := NewCoalescer()
		benchApply(b, &drainingSink{c, nil})
	})
}

// drainingSink drains its Coalescer at once, as a fast writer would.
type drainingSink struct {
	c   *Coalescer
	buf []kline.Update
}

func (d *drainingSink) Publish(us []kline.Update) {
	d.c.Publish(us)
	d.buf = d.c.Drain(d.buf[:0])
}

func benchApply(b *testing.B, sink Sink) {
	ivs, _ := kline.ParseIntervals("1m,5m,30m,1h,4h,1d,1w")
	e, _ := New(Config{Intervals: ivs, Sinks: []Sink{sink}})
	syms, bs := benchTrades(100, 2000)
	for _, s := range syms {
		e.handle(event{kind: evAdd, symbol: s})
	}
	for i := range bs { // warm up: every slot opened, tables grown
		e.handle(event{kind: evTrades, symbol: syms[i%len(syms)], trades: bs[i]})
	}
	// Replays repeat aggregate ids; shift them so every trade is applied.
	shift := bs[len(bs)-1][99].ID
	tshift := bs[len(bs)-1][99].Time - bs[0][0].Time + 1
	b.ReportAllocs()
	b.ResetTimer()
	for n, round := 0, int64(1); n < b.N; round++ {
		for i := 0; i < len(bs) && n < b.N; i++ {
			ts := bs[i]
			for j := range ts {
				ts[j].ID += shift
				ts[j].Time += tshift
			}
			e.handle(event{kind: evTrades, symbol: syms[i%len(syms)], trades: ts})
			n += len(ts)
		}
	}
	b.StopTimer()
	if e.stats.Duplicates != 0 {
		b.Fatalf("%d trades were ignored as duplicates", e.stats.Duplicates)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "trades/s")
}

// BenchmarkEngine sends batches through the engine's channel to its own
// goroutine, as ingest does.
func BenchmarkEngine(b *testing.B) {
	ivs, _ := kline.ParseIntervals("1m,5m,30m,1h,4h,1d,1w")
	e, _ := New(Config{Intervals: ivs, Sinks: []Sink{nopSink{}}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { e.Run(ctx); close(done) }()
	syms, bs := benchTrades(100, 2000)
	for _, s := range syms {
		e.AddSymbol(ctx, s)
	}
	shift := bs[len(bs)-1][99].ID
	tshift := bs[len(bs)-1][99].Time - bs[0][0].Time + 1
	b.ResetTimer()
	for n := 0; n < b.N; {
		for i := 0; i < len(bs) && n < b.N; i++ {
			ts := make([]kline.Trade, len(bs[i]))
			for j := range ts {
				ts[j] = bs[i][j]
				bs[i][j].ID += shift
				bs[i][j].Time += tshift
			}
			e.Trades(ctx, syms[i%len(syms)], ts, time.Time{})
			n += len(ts)
		}
	}
	e.Snapshot(ctx, "")
	b.StopTimer()
	cancel()
	<-done
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "trades/s")
}
