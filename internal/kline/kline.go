// Package kline owns the kline domain: Binance's intervals and their UTC
// alignment, aggregated trades, klines, and the exact rules that turn the
// former into the latter (DESIGN §1).
//
// Aggregation here is commutative: a kline's open and close are the prices
// of its lowest and highest trade ids, not of the first and last trade
// applied. Trades can therefore be applied in any order and in any batch
// split, a late trade can correct a closed kline, and a higher interval is
// the merge of its 1m klines, all with the same code.
package kline

import (
	"cmp"
	"slices"

	"github.com/klagg/klagg/internal/decimal"
)

// Trade is one Binance aggregated trade. Prices and quantities are mantissas
// at decimal.Scale.
type Trade struct {
	ID      int64 // aggregate trade id, "a"
	Price   int64 // "p"
	Qty     int64 // "q"
	FirstID int64 // first individual trade id, "f"
	LastID  int64 // last individual trade id, "l"
	Time    int64 // trade time in ms, "T"
	// NormalQty is "nq", the quantity without RPI orders, when the trade
	// came with one (HasNormalQty); klines count Qty.
	NormalQty    int64
	BuyerMaker   bool // "m": when false the buyer was the taker
	HasNormalQty bool
}

// Kline is one candlestick. Prices are mantissas at decimal.Scale; Volume and
// TakerVolume are at decimal.Scale, QuoteVolume and TakerQuoteVolume at
// decimal.QuoteScale. A kline without trades has FirstTradeID and
// LastTradeID of -1 and O=H=L=C at the previous close.
type Kline struct {
	OpenTime, CloseTime    int64
	Open, High, Low, Close int64
	Volume                 decimal.U128
	QuoteVolume            decimal.U128
	TakerVolume            decimal.U128
	TakerQuoteVolume       decimal.U128
	Trades                 int64
	FirstTradeID           int64
	LastTradeID            int64
	Closed                 bool
}

// Empty returns the kline of iv opening at open with no trades, its prices at
// the previous close.
func Empty(iv Interval, open, prevClose int64) Kline {
	return Kline{
		OpenTime: open, CloseTime: iv.CloseTime(open),
		Open: prevClose, High: prevClose, Low: prevClose, Close: prevClose,
		FirstTradeID: -1, LastTradeID: -1,
	}
}

// Add applies trade t. It is AddProduct with the product computed here.
func (k *Kline) Add(t *Trade) {
	k.AddProduct(t, decimal.Mul(t.Price, t.Qty))
}

// AddProduct applies trade t whose price·quantity is pq; the engine computes
// pq once per trade and applies it to every interval.
func (k *Kline) AddProduct(t *Trade, pq decimal.U128) {
	if k.Trades == 0 {
		k.Open, k.High, k.Low, k.Close = t.Price, t.Price, t.Price, t.Price
		k.FirstTradeID, k.LastTradeID = t.FirstID, t.LastID
	} else {
		if t.Price > k.High {
			k.High = t.Price
		} else if t.Price < k.Low {
			k.Low = t.Price
		}
		if t.FirstID < k.FirstTradeID {
			k.Open, k.FirstTradeID = t.Price, t.FirstID
		}
		if t.LastID > k.LastTradeID {
			k.Close, k.LastTradeID = t.Price, t.LastID
		}
	}
	k.Trades += t.LastID - t.FirstID + 1
	q := decimal.FromInt64(t.Qty)
	k.Volume = k.Volume.Add(q)
	k.QuoteVolume = k.QuoteVolume.Add(pq)
	if !t.BuyerMaker {
		k.TakerVolume = k.TakerVolume.Add(q)
		k.TakerQuoteVolume = k.TakerQuoteVolume.Add(pq)
	}
}

// Merge folds o, a kline covering part of k's time range, into k. Klines
// without trades carry no information beyond their price, which the caller
// set when it created k. Klines without trade ids (from REST) must be merged
// in time order.
func (k *Kline) Merge(o *Kline) {
	if o.Trades == 0 {
		return
	}
	if k.Trades == 0 {
		k.Open, k.High, k.Low, k.Close = o.Open, o.High, o.Low, o.Close
		k.FirstTradeID, k.LastTradeID = o.FirstTradeID, o.LastTradeID
	} else {
		k.High = max(k.High, o.High)
		k.Low = min(k.Low, o.Low)
		switch {
		case o.FirstTradeID < 0 || k.FirstTradeID < 0:
			// REST klines carry no trade ids; they are merged in time order.
			k.Close, k.LastTradeID = o.Close, max(k.LastTradeID, o.LastTradeID)
		default:
			if o.FirstTradeID < k.FirstTradeID {
				k.Open, k.FirstTradeID = o.Open, o.FirstTradeID
			}
			if o.LastTradeID > k.LastTradeID {
				k.Close, k.LastTradeID = o.Close, o.LastTradeID
			}
		}
	}
	k.Trades += o.Trades
	k.Volume = k.Volume.Add(o.Volume)
	k.QuoteVolume = k.QuoteVolume.Add(o.QuoteVolume)
	k.TakerVolume = k.TakerVolume.Add(o.TakerVolume)
	k.TakerQuoteVolume = k.TakerQuoteVolume.Add(o.TakerQuoteVolume)
}

// Amend replaces, inside k (a kline of a longer interval), what one of its
// minutes contributed: old as klagg built it, ex as the exchange reports it.
// The exchange's minute holds every trade of old and possibly more that no
// stream showed (insurance-fund and ADL trades), so sums move by ex − old
// and the extremes can only widen. first and last tell whether that minute
// now holds k's first and last trade, which only the caller can know; open
// and close follow ex there.
func (k *Kline) Amend(old, ex *Kline, first, last bool) {
	had := k.Trades - old.Trades
	k.Trades += ex.Trades - old.Trades
	k.Volume = k.Volume.Sub(old.Volume).Add(ex.Volume)
	k.QuoteVolume = k.QuoteVolume.Sub(old.QuoteVolume).Add(ex.QuoteVolume)
	k.TakerVolume = k.TakerVolume.Sub(old.TakerVolume).Add(ex.TakerVolume)
	k.TakerQuoteVolume = k.TakerQuoteVolume.Sub(old.TakerQuoteVolume).Add(ex.TakerQuoteVolume)
	if ex.Trades == 0 {
		return
	}
	if had == 0 {
		k.Open, k.High, k.Low, k.Close = ex.Open, ex.High, ex.Low, ex.Close
		return
	}
	k.High = max(k.High, ex.High)
	k.Low = min(k.Low, ex.Low)
	if first {
		k.Open = ex.Open
	}
	if last {
		k.Close = ex.Close
	}
}

// Rollup aggregates consecutive klines of a shorter interval (typically 1m,
// gap-free and ordered by open time) into klines of iv. A bucket that is
// only partly covered by the input is still returned; callers that care use
// Covers to tell.
func Rollup(iv Interval, base []Kline) []Kline {
	var out []Kline
	for i := 0; i < len(base); {
		open := iv.Open(base[i].OpenTime)
		k := Empty(iv, open, base[i].Open)
		k.Closed = true
		for ; i < len(base) && base[i].OpenTime <= k.CloseTime; i++ {
			k.Merge(&base[i])
			k.Closed = k.Closed && base[i].Closed
		}
		out = append(out, k)
	}
	return out
}

// Update is a kline with its identity, as handed from the engine to its
// consumers (store writer, push hub).
type Update struct {
	Symbol   string
	Interval Interval
	// Series is the publisher's id for Symbol and Interval: not zero, and
	// never given to another pair, so consumers can key by it instead of
	// hashing names for each of millions of updates a second.
	Series uint32
	// Stamp orders the versions of one kline that reach a store out of
	// order (sinks sharing a stream): a store never replaces a kline with
	// one of a lower stamp. Zero, the engine's own writes, orders nothing:
	// it always applies.
	Stamp int64
	// Partial says the kline may lack trades: it closed (or changed) while
	// its symbol was missing trades past the hold's bound, and a repair
	// from the exchange's klines corrects it. Streams send no closing
	// event for it; the correction's is the one.
	Partial bool
	Kline
}

// Key identifies a kline across versions.
type Key struct {
	Symbol   string
	Interval string
	OpenTime int64
}

// Key returns u's identity.
func (u *Update) Key() Key { return Key{u.Symbol, u.Interval.name, u.OpenTime} }

// ByOpenTime sorts ks by open time and keeps, of klines with equal open
// times, the one that came last in ks: the newest version of each.
func ByOpenTime(ks []Kline) []Kline {
	slices.SortStableFunc(ks, func(a, b Kline) int { return cmp.Compare(a.OpenTime, b.OpenTime) })
	out := ks[:0]
	for i, k := range ks {
		if i+1 < len(ks) && ks[i+1].OpenTime == k.OpenTime {
			continue
		}
		out = append(out, k)
	}
	return out
}
