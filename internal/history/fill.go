package history

import (
	"context"
	"fmt"
	"time"

	"github.com/klagg/klagg/internal/kline"
	"github.com/klagg/klagg/internal/store"
)

// FillWait bounds a read through to the exchange, REST weight included: a
// client waits for it.
const FillWait = 10 * time.Second

// FillYield is how long backfill stands aside after a read through: the
// weight goes to the clients asking first, as long as they ask.
const FillYield = 2 * time.Second

// yield waits while clients are reading through, so that backfill does not
// take the weight they wait for.
func (h *History) yield(ctx context.Context) error {
	for {
		wait := time.Until(time.Unix(0, h.lastFill.Load()).Add(FillYield))
		if wait <= 0 {
			return nil
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
}

// Fill stores the exchange's closed klines of symbol and iv opening in
// [lo, hi] and records them held, at once and ahead of backfill: a client
// waits for them, and for the last of them to have been closed Settle. With lo 0 it asks for the want newest up to hi, and
// fewer mean the exchange has none before them. The kline open now is
// never stored: the engine builds it, or nobody does; but for a symbol
// that stopped trading for good what the exchange has up to now is all it
// will ever have. Fills of the same run wait for one request.
func (h *History) Fill(ctx context.Context, symbol string, iv kline.Interval, lo, hi int64, want int) error {
	cur := iv.Open(h.now().UnixMilli())
	ended := h.held.Ended(symbol)
	if !ended {
		hi = min(hi, iv.Prev(cur))
	}
	if lo > hi {
		return nil
	}
	if !ended {
		if err := h.settle(ctx, iv.CloseTime(hi)); err != nil {
			return err
		}
	}
	h.lastFill.Store(time.Now().UnixNano())
	defer func() { h.lastFill.Store(time.Now().UnixNano()) }()
	key := fmt.Sprintf("%s %s %d %d %d", symbol, iv, lo, hi, want)
	ch := h.fills.DoChan(key, func() (any, error) {
		// Not the first caller's context: the others wait on the same
		// request, which FillWait bounds.
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), FillWait)
		defer cancel()
		return nil, h.fill(ctx, symbol, iv, lo, hi, want, cur)
	})
	select {
	case <-ctx.Done():
		return ctx.Err()
	case r := <-ch:
		return r.Err
	}
}

// settle waits until the kline closing at close has been closed for
// Settle, exchange time: one still open on the exchange (its clock may be
// behind the one klagg measured), or closed so lately that its last
// trades may not be in, would be stored short for good. The wait polls
// the clock, which runs at the exchange's pace, not the machine's.
func (h *History) settle(ctx context.Context, close int64) error {
	for {
		left := time.Duration(close+1-h.now().UnixMilli())*time.Millisecond + h.Settle
		if left <= 0 {
			return nil
		}
		t := time.NewTimer(min(left, 100*time.Millisecond))
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
}

func (h *History) fill(ctx context.Context, symbol string, iv kline.Interval, lo, hi int64, want int, cur int64) error {
	// A fill that ended just before this one may have fetched it all.
	missing := h.held.Missing(symbol, iv, lo, hi)
	if len(missing) == 0 {
		return nil
	}
	// Up to now, of a symbol that stopped trading: up to forever.
	last := func(to int64) int64 {
		if to >= cur {
			return store.Forever
		}
		return to
	}
	if lo > 0 {
		lo, hi = missing[0].From, missing[len(missing)-1].To
		for lo <= hi {
			end, n := lo, 1
			for ; n < 1000 && iv.Next(end) <= hi; n++ {
				end = iv.Next(end)
			}
			if err := h.fetchNow(ctx, h.ex, symbol, iv, lo, end, n, last(end)); err != nil {
				return err
			}
			lo = iv.Next(end)
		}
		return nil
	}
	n := min(max(want, 1), 1500)
	ups, err := h.closedIn(ctx, h.ex, symbol, iv, 0, hi, n)
	if err != nil {
		return err
	}
	if len(ups) > 0 {
		if err := h.writer.WriteNow(ctx, ups); err != nil {
			return err
		}
	}
	from := int64(0) // fewer than asked: the exchange has none before them
	if len(ups) >= n {
		from = ups[0].Kline.OpenTime
	}
	return h.held.Add(store.Span{Symbol: symbol, Interval: iv, From: from, To: last(hi)})
}

// fetchNow stores the exchange's closed klines of iv opening in [lo, hi],
// at most n slots, at once, and records [lo, to] held.
func (h *History) fetchNow(ctx context.Context, ex Exchange, symbol string, iv kline.Interval, lo, hi int64, n int, to int64) error {
	ups, err := h.closedIn(ctx, ex, symbol, iv, lo, hi, n)
	if err != nil {
		return err
	}
	if len(ups) > 0 {
		if err := h.writer.WriteNow(ctx, ups); err != nil {
			return err
		}
	}
	return h.held.Add(store.Span{Symbol: symbol, Interval: iv, From: lo, To: to})
}
