package bus

import (
	"context"
	"runtime"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/klagg/klagg/internal/engine"
	"github.com/klagg/klagg/internal/kline"
)

// OpenEvery is how often Opens sends the open klines that changed:
// Binance's own cadence for kline stream updates.
const OpenEvery = 250 * time.Millisecond

// OpenSubject is the core NATS subject of symbol's open klines of interval
// iv, in the layout of the stream's messages with "x":false:
//
//	klagg.open.<market>.<SYMBOL>.<interval>     e.g. klagg.open.usdm.BTCUSDT.1m
//
// Nothing keeps these messages: a subscriber gets the open klines of every
// series that changes from then on, at most one per OpenEvery.
func OpenSubject(symbol, iv string) string {
	return "klagg.open." + Market + "." + symbol + "." + iv
}

// OpenSubjects matches every OpenSubject.
const OpenSubjects = "klagg.open.>"

// Opens sends the open klines the engine makes to the other nodes on core
// NATS, the newest of each series once per OpenEvery, so that a serve
// node's clients follow symbols it does not own as closely as Binance's
// push. It is an engine sink. A message lost is replaced by the series'
// next one, and the checkpoints in the lease bucket carry every open kline
// about once a second as well.
type Opens struct {
	nc *nats.Conn
	co *engine.Coalescer

	Sent atomic.Int64 // open klines sent
}

// NewOpens returns an Opens on nc; start it with Run.
func NewOpens(nc *nats.Conn) *Opens { return &Opens{nc: nc, co: engine.NewCoalescer()} }

// Publish implements the engine's Sink: it keeps the newest of each series.
func (o *Opens) Publish(us []kline.Update) { o.co.Publish(us) }

// Run sends until ctx ends.
func (o *Opens) Run(ctx context.Context) error {
	t := time.NewTicker(OpenEvery)
	defer t.Stop()
	var batch []kline.Update
	var body []byte
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		batch = o.co.Drain(batch[:0])
		for i := range batch {
			// Closed klines go to the stream.
			u := &batch[i]
			if u.Closed {
				continue
			}
			// Publish copies body. An error is a lost link: these are
			// gone, and the next round sends newer ones.
			body = AppendEncode(body[:0], u)
			if o.nc.Publish(OpenSubject(u.Symbol, u.Interval.String()), body) == nil {
				o.Sent.Add(1)
			}
			if i%256 == 255 {
				// A round is milliseconds of CPU at full market load:
				// let the engine in between, as the store writer does.
				runtime.Gosched()
			}
		}
	}
}
