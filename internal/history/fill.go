package history

import (
	"context"
	"fmt"
	"time"

	"github.com/klagg/klagg/internal/binance"
	"github.com/klagg/klagg/internal/kline"
	"github.com/klagg/klagg/internal/store"
)

// FillWait bounds a read through to the exchange, REST weight included: a
// client waits for it.
const FillWait = 10 * time.Second

// Fill stores the exchange's closed klines of symbol and iv opening in
// [lo, hi] and records them held, at once and ahead of backfill: a client
// waits for them. With lo 0 it asks for the want newest up to hi, and
// fewer mean the exchange has none before them. The kline open now is
// never stored: the engine builds it, or nobody does. Fills of the same
// run wait for one request.
func (h *History) Fill(ctx context.Context, symbol string, iv kline.Interval, lo, hi int64, want int) error {
	hi = min(hi, iv.Prev(iv.Open(h.now().UnixMilli())))
	if lo > hi {
		return nil
	}
	key := fmt.Sprintf("%s %s %d %d %d", symbol, iv, lo, hi, want)
	ch := h.fills.DoChan(key, func() (any, error) {
		// Not the first caller's context: the others wait on the same
		// request, which FillWait bounds.
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), FillWait)
		defer cancel()
		return nil, h.fill(ctx, symbol, iv, lo, hi, want)
	})
	select {
	case <-ctx.Done():
		return ctx.Err()
	case r := <-ch:
		return r.Err
	}
}

func (h *History) fill(ctx context.Context, symbol string, iv kline.Interval, lo, hi int64, want int) error {
	// A fill that ended just before this one may have fetched it all.
	missing := h.held.Missing(symbol, iv, lo, hi)
	if len(missing) == 0 {
		return nil
	}
	if lo > 0 {
		lo, hi = missing[0].From, missing[len(missing)-1].To
		for lo <= hi {
			end, n := lo, 1
			for ; n < 1000 && iv.Next(end) <= hi; n++ {
				end = iv.Next(end)
			}
			if err := h.fetch(ctx, h.ex, symbol, iv, lo, end, n); err != nil {
				return err
			}
			lo = iv.Next(end)
		}
		return nil
	}
	n := min(max(want, 1), 1500)
	ks, err := h.ex.Klines(ctx, symbol, iv, 0, iv.CloseTime(hi), n)
	h.Requests.Add(1)
	h.Weight.Add(int64(binance.KlinesWeight(n)))
	if err != nil {
		return err
	}
	ups := make([]kline.Update, 0, len(ks))
	for _, k := range ks {
		if k.OpenTime <= hi {
			k.Closed = true
			ups = append(ups, kline.Update{Symbol: symbol, Interval: iv, Kline: k})
		}
	}
	if len(ups) > 0 {
		if err := h.writer.Write(ctx, ups); err != nil {
			return err
		}
	}
	from := int64(0) // fewer than asked: the exchange has none before them
	if len(ks) >= n {
		from = ks[0].OpenTime
	}
	return h.held.Add(store.Span{Symbol: symbol, Interval: iv, From: from, To: hi})
}
