package history

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/klagg/klagg/internal/kline"
)

// Reconciler fetches each closed 1m kline from REST once its close time
// plus a delay has passed on the exchange's clock; where the exchange's
// value differs (insurance-fund and ADL trades are not in the aggTrade
// stream) it wins, and each differing field is counted.
//
// It is an engine sink: Publish only records closed 1m klines, so the engine
// never waits on REST.
type Reconciler struct {
	ex    Exchange
	delay time.Duration
	now   func() time.Time // exchange time
	log   *slog.Logger

	mu      sync.Mutex
	pending map[kline.Key]kline.Update

	Checked atomic.Int64
	Differ  atomic.Int64
	fieldMu sync.Mutex
	fields  map[string]int64
}

// NewReconciler returns a reconciler; now tells exchange time.
func NewReconciler(ex Exchange, delay time.Duration, now func() time.Time, log *slog.Logger) *Reconciler {
	return &Reconciler{ex: ex, delay: delay, now: now, log: log,
		pending: map[kline.Key]kline.Update{}, fields: map[string]int64{}}
}

// Publish implements the engine's Sink.
func (r *Reconciler) Publish(us []kline.Update) {
	for i := range us {
		u := &us[i]
		if !u.Closed || u.Interval.String() != "1m" || u.Trades < 0 {
			continue
		}
		r.mu.Lock()
		r.pending[u.Key()] = *u
		r.mu.Unlock()
	}
}

// FieldDiffs returns the number of differences found per field.
func (r *Reconciler) FieldDiffs() map[string]int64 {
	r.fieldMu.Lock()
	defer r.fieldMu.Unlock()
	out := make(map[string]int64, len(r.fields))
	for k, v := range r.fields {
		out[k] = v
	}
	return out
}

// Run checks due klines every second until ctx ends, sending corrections
// to engine (the same engine it is a sink of).
func (r *Reconciler) Run(ctx context.Context, engine Engine) error {
	t := time.NewTicker(min(time.Second, max(r.delay/2, 10*time.Millisecond)))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		now := r.now().UnixMilli()
		var due []kline.Update
		r.mu.Lock()
		for k, u := range r.pending {
			if u.CloseTime+r.delay.Milliseconds() <= now {
				due = append(due, u)
				delete(r.pending, k)
			}
		}
		r.mu.Unlock()
		for _, u := range due {
			if err := r.check(ctx, engine, u); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				r.log.Warn("reconcile failed", "symbol", u.Symbol, "open_time", u.OpenTime, "err", err)
			}
		}
	}
}

func (r *Reconciler) check(ctx context.Context, engine Engine, u kline.Update) error {
	ks, err := r.ex.Klines(ctx, u.Symbol, u.Interval, u.OpenTime, u.OpenTime, 1)
	if err != nil {
		return err
	}
	if len(ks) == 0 || ks[0].OpenTime != u.OpenTime {
		return nil // the exchange has no such kline (delisted meanwhile)
	}
	r.Checked.Add(1)
	ex := ks[0]
	diffs := diffFields(&u.Kline, &ex)
	if len(diffs) == 0 {
		return nil
	}
	r.mu.Lock()
	newer, again := r.pending[u.Key()]
	r.mu.Unlock()
	if again && newer.Kline != u.Kline {
		// Changed while we asked (a late trade, or a resync that already
		// took the exchange's values): what we would write is stale, and
		// the newer version is checked on its own.
		return nil
	}
	r.Differ.Add(1)
	r.fieldMu.Lock()
	for _, f := range diffs {
		r.fields[f]++
	}
	r.fieldMu.Unlock()
	r.log.Info("kline differs from the exchange's; taking the exchange's", "symbol", u.Symbol, "open_time", u.OpenTime, "fields", diffs)
	// The exchange's REST klines carry no trade ids. Ours are right where
	// we had every trade; where the count differs they are not, and
	// unknown is the honest answer.
	ex.FirstTradeID, ex.LastTradeID = u.FirstTradeID, u.LastTradeID
	if ex.Trades != u.Trades {
		ex.FirstTradeID, ex.LastTradeID = -1, -1
	}
	return engine.Correct(ctx, u.Symbol, u.Interval, ex)
}

func diffFields(a, b *kline.Kline) []string {
	var out []string
	add := func(name string, differ bool) {
		if differ {
			out = append(out, name)
		}
	}
	add("open", a.Open != b.Open)
	add("high", a.High != b.High)
	add("low", a.Low != b.Low)
	add("close", a.Close != b.Close)
	add("volume", a.Volume != b.Volume)
	add("quote_volume", a.QuoteVolume != b.QuoteVolume)
	add("trades", a.Trades != b.Trades)
	add("taker_buy_volume", a.TakerVolume != b.TakerVolume)
	add("taker_buy_quote_volume", a.TakerQuoteVolume != b.TakerQuoteVolume)
	return out
}
