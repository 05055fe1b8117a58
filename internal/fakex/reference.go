package fakex

import (
	"math/big"
	"sort"

	"github.com/klagg/klagg/internal/decimal"
	"github.com/klagg/klagg/internal/kline"
)

// Reference is the fake exchange's own kline computation: the klines of iv
// opening in [from, to] from trades (in id order), by a plain pass with
// math/big sums that shares nothing with klagg's aggregation but the
// interval alignment (tested on its own).
func Reference(trades []kline.Trade, iv kline.Interval, from, to int64) []kline.Kline {
	if len(trades) == 0 {
		return nil
	}
	start := max(iv.Open(from), iv.Open(trades[0].Time))
	i := sort.Search(len(trades), func(i int) bool { return trades[i].Time >= start })
	var prevClose int64
	if i > 0 {
		prevClose = trades[i-1].Price
	}
	var out []kline.Kline
	for open := start; open <= to; open = iv.Next(open) {
		k := kline.Kline{OpenTime: open, CloseTime: iv.Next(open) - 1, FirstTradeID: -1, LastTradeID: -1}
		vol, quote, tvol, tquote := new(big.Int), new(big.Int), new(big.Int), new(big.Int)
		n := 0
		for ; i < len(trades) && trades[i].Time <= k.CloseTime; i++ {
			t := trades[i]
			if n == 0 {
				k.Open, k.High, k.Low, k.FirstTradeID = t.Price, t.Price, t.Price, t.FirstID
			}
			if t.Price > k.High {
				k.High = t.Price
			}
			if t.Price < k.Low {
				k.Low = t.Price
			}
			k.Close, k.LastTradeID = t.Price, t.LastID
			k.Trades += t.LastID - t.FirstID + 1
			q := big.NewInt(t.Qty)
			pq := new(big.Int).Mul(big.NewInt(t.Price), q)
			vol.Add(vol, q)
			quote.Add(quote, pq)
			if !t.BuyerMaker {
				tvol.Add(tvol, q)
				tquote.Add(tquote, pq)
			}
			n++
		}
		if n == 0 {
			k.Open, k.High, k.Low, k.Close = prevClose, prevClose, prevClose, prevClose
		}
		prevClose = k.Close
		k.Volume, k.QuoteVolume, k.TakerVolume, k.TakerQuoteVolume = u128(vol), u128(quote), u128(tvol), u128(tquote)
		out = append(out, k)
	}
	return out
}

func u128(b *big.Int) decimal.U128 {
	u, err := decimal.ParseU128(b.String(), 0)
	if err != nil {
		panic(err) // sums of generated trades are far below 2^128
	}
	return u
}
