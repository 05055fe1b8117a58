package history

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/klagg/klagg/internal/kline"
)

// Reconciler fetches each closed 1m kline from REST once its close time
// plus a delay has passed on the exchange's clock; where the exchange's
// value differs (insurance-fund and ADL trades are not in the aggTrade
// stream) it wins, and each differing field is counted. The klines of the
// longer intervals that contain a corrected minute are then checked the
// same way once they close: the engine amends those it still holds, and
// this makes the others, closed long before a late correction, right too.
//
// It is an engine sink: Publish only records closed 1m klines, so the engine
// never waits on REST.
type Reconciler struct {
	ex    Exchange
	ivs   []kline.Interval // every interval kept, 1m first
	delay time.Duration
	now   func() time.Time // exchange time
	log   *slog.Logger

	mu      sync.Mutex
	pending map[kline.Key]kline.Update
	// rechecks counts, by symbol, the minutes Recheck asked for that are
	// not checked yet.
	rechecks map[string]int
	kick     chan struct{} // a recheck is due now

	Checked atomic.Int64
	Differ  atomic.Int64
	fieldMu sync.Mutex
	fields  map[string]int64
}

// NewReconciler returns a reconciler; now tells exchange time.
func NewReconciler(ex Exchange, ivs []kline.Interval, delay time.Duration, now func() time.Time, log *slog.Logger) *Reconciler {
	return &Reconciler{ex: ex, ivs: ivs, delay: delay, now: now, log: log,
		pending: map[kline.Key]kline.Update{}, rechecks: map[string]int{}, kick: make(chan struct{}, 1), fields: map[string]int64{}}
}

// Publish implements the engine's Sink.
func (r *Reconciler) Publish(us []kline.Update) {
	for i := range us {
		u := &us[i]
		if !u.Closed || u.Trades < 0 {
			continue
		}
		r.mu.Lock()
		if w, watched := r.pending[u.Key()]; watched || u.Interval.String() == "1m" {
			if watched {
				r.rechecked(w) // the engine's own now: checked as any
			}
			r.pending[u.Key()] = *u
		}
		r.mu.Unlock()
	}
}

// Recheck has symbol's 1m klines opening in [from, to] checked once due
// and taken from the exchange: this node took the symbol over from a
// checkpoint and did not close them, and their last owner may have
// stopped before it checked them, or closed one before its last trade
// came. The longer klines holding a minute that changed follow as after
// any correction.
func (r *Reconciler) Recheck(symbol string, from, to int64) {
	one := kline.OneMinute()
	r.mu.Lock()
	defer r.mu.Unlock()
	for open := from; open <= to; open = one.Next(open) {
		u := kline.Update{Symbol: symbol, Interval: one,
			Kline: kline.Kline{OpenTime: open, CloseTime: one.CloseTime(open), Trades: -1, FirstTradeID: -1, LastTradeID: -1}}
		if _, ok := r.pending[u.Key()]; !ok {
			r.pending[u.Key()] = u
			r.rechecks[symbol]++
		}
	}
	// Checked at once, not at the next tick: the symbol's other nodes
	// refuse those minutes until then.
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// Rechecking returns the symbols with minutes Recheck asked for not yet
// checked: until then their klines before the takeover may lack trades.
func (r *Reconciler) Rechecking() map[string]bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[string]bool, len(r.rechecks))
	for s := range r.rechecks {
		out[s] = true
	}
	return out
}

// rechecked notes that a minute Recheck asked for is no longer to check.
func (r *Reconciler) rechecked(u kline.Update) {
	if u.Trades >= 0 || u.Interval.String() != "1m" {
		return
	}
	if r.rechecks[u.Symbol]--; r.rechecks[u.Symbol] <= 0 {
		delete(r.rechecks, u.Symbol)
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
		case <-r.kick:
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
			err := r.check(ctx, engine, u)
			if ctx.Err() != nil {
				return nil
			}
			r.mu.Lock()
			switch _, again := r.pending[u.Key()]; {
			case (errors.Is(err, errOpen) || err != nil && u.Trades < 0) && !again:
				// Checked again at the next tick: a kline the exchange
				// still has open, and a recheck, which the symbol's first
				// checkpoint waits for, until it is done.
				r.pending[u.Key()] = u
			case u.Trades < 0:
				r.rechecked(u)
			}
			r.mu.Unlock()
			if err != nil && !errors.Is(err, errOpen) {
				r.log.Warn("reconcile failed", "symbol", u.Symbol, "open_time", u.OpenTime, "err", err)
			}
		}
	}
}

// errOpen is check's answer for a kline the exchange has not closed yet.
var errOpen = errors.New("the exchange has not closed the kline yet")

// openFor is how long after a kline's close the exchange not having the
// next one is taken as having none (a symbol that stopped trading), not
// as its clock being behind.
const openFor = time.Minute

func (r *Reconciler) check(ctx context.Context, engine Engine, u kline.Update) error {
	// With the next kline: the exchange answers it only once its clock
	// has passed u's close, so that the kline is final there. By klagg's
	// clock alone, one running ahead of the exchange's took a kline still
	// open there for the exchange's own, short of its last trades.
	next := u.Interval.Next(u.OpenTime)
	ks, err := r.ex.Klines(ctx, u.Symbol, u.Interval, u.OpenTime, u.Interval.CloseTime(next), 2)
	if err != nil {
		return err
	}
	if len(ks) == 0 || ks[0].OpenTime != u.OpenTime {
		return nil // the exchange has no such kline (delisted meanwhile)
	}
	if len(ks) == 1 && r.now().UnixMilli() < u.CloseTime+openFor.Milliseconds() {
		return errOpen
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
	switch {
	case u.Interval.String() == "1m" && u.Trades < 0:
		// Rechecked after a takeover: what klagg holds of it is not
		// known here, so it is taken as the exchange has it, and not
		// counted as a difference.
		r.log.Debug("minute closed by the symbol's last owner taken from the exchange", "symbol", u.Symbol, "open_time", u.OpenTime)
		r.watchLonger(u)
	case u.Interval.String() == "1m":
		// The counts are of klagg's own minutes against the exchange's;
		// a longer kline checked after a correction is taken as it is.
		r.Differ.Add(1)
		r.fieldMu.Lock()
		for _, f := range diffs {
			r.fields[f]++
		}
		r.fieldMu.Unlock()
		r.log.Info("kline differs from the exchange's; taking the exchange's", "symbol", u.Symbol, "open_time", u.OpenTime, "fields", diffs)
		r.watchLonger(u)
	default:
		r.log.Debug("longer kline holding a corrected minute taken from the exchange", "symbol", u.Symbol, "interval", u.Interval.String(), "open_time", u.OpenTime)
	}
	// The exchange's REST klines carry no trade ids. Ours are right where
	// we had every trade; where the count differs they are not, and
	// unknown is the honest answer.
	ex.FirstTradeID, ex.LastTradeID = u.FirstTradeID, u.LastTradeID
	if ex.Trades != u.Trades {
		ex.FirstTradeID, ex.LastTradeID = -1, -1
	}
	return engine.Correct(ctx, u.Symbol, u.Interval, ex)
}

// watchLonger puts the klines of the longer intervals that contain the
// corrected minute u among those to check once they close. Until the
// engine publishes one, what klagg has of it is unknown (Trades -1), so
// it is taken from the exchange whatever it holds.
func (r *Reconciler) watchLonger(u kline.Update) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, iv := range r.ivs {
		if iv.Duration() == time.Minute {
			continue
		}
		open := iv.Open(u.OpenTime)
		w := kline.Update{Symbol: u.Symbol, Interval: iv, Series: u.Series,
			Kline: kline.Kline{OpenTime: open, CloseTime: iv.CloseTime(open), Trades: -1, FirstTradeID: -1, LastTradeID: -1}}
		if _, ok := r.pending[w.Key()]; !ok {
			r.pending[w.Key()] = w
		}
	}
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
