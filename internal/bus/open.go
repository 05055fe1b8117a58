package bus

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"runtime"
	"slices"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/klagg/klagg/internal/engine"
	"github.com/klagg/klagg/internal/kline"
)

// OpenEvery is how often Opens sends the open klines that changed:
// Binance's own cadence for kline stream updates.
const OpenEvery = 250 * time.Millisecond

// OpenSubject is the core NATS subject of symbol's open klines:
//
//	klagg.open.<market>.<SYMBOL>     e.g. klagg.open.usdm.BTCUSDT
//
// A message holds the symbol's open klines that changed since its last
// one, one per line, each in the layout of the stream's messages with
// "x":false. Nothing keeps these messages: a subscriber gets the open
// klines of every series that changes from then on, at most one per
// series and OpenEvery.
func OpenSubject(symbol string) string {
	return "klagg.open." + Market + "." + symbol
}

// OpenSubjects matches every OpenSubject.
const OpenSubjects = "klagg.open.>"

// DecodeOpens appends the open klines of an OpenSubject message to dst.
// A malformed line is reported and the others are kept.
func DecodeOpens(dst []kline.Update, body []byte) ([]kline.Update, error) {
	var errs []error
	for line := range bytes.SplitSeq(body, []byte{'\n'}) {
		if len(line) == 0 {
			continue
		}
		u, err := Decode(line)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		dst = append(dst, u)
	}
	return dst, errors.Join(errs...)
}

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
		// Closed klines go to the stream.
		batch = slices.DeleteFunc(batch, func(u kline.Update) bool { return u.Closed })
		// One message a symbol: at full market load every series of a
		// symbol changes each round, and a message per series was 15
		// times the messages for every node to route and read. A
		// symbol's series are numbered together.
		slices.SortStableFunc(batch, func(a, b kline.Update) int { return cmp.Compare(a.Series, b.Series) })
		sent := 0
		for i := 0; i < len(batch); {
			sym := batch[i].Symbol
			body = body[:0]
			n := 0
			for ; i < len(batch) && batch[i].Symbol == sym; i++ {
				body = AppendEncode(body, &batch[i])
				body = append(body, '\n')
				n++
			}
			// Publish copies body. An error is a lost link: these are
			// gone, and the next round sends newer ones.
			if o.nc.Publish(OpenSubject(sym), body) == nil {
				o.Sent.Add(int64(n))
			}
			if sent += n; sent >= 256 {
				// A round is milliseconds of CPU at full market load:
				// let the engine in between, as the store writer does.
				sent = 0
				runtime.Gosched()
			}
		}
	}
}
