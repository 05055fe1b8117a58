package kline

import "github.com/klagg/klagg/internal/decimal"

// Precision is how Binance formats a symbol's numbers: prices with Price
// decimals (exchangeInfo pricePrecision), base quantities with Qty decimals
// (quantityPrecision), quote volumes with Price+Qty decimals. Trailing zeros
// are kept. A value that needs more decimals than that is written in full
// rather than rounded.
type Precision struct {
	Price, Qty int
}

// AppendPrice appends price mantissa m.
func (p Precision) AppendPrice(dst []byte, m int64) []byte { return decimal.Append(dst, m, p.Price) }

// AppendQty appends a base-asset volume.
func (p Precision) AppendQty(dst []byte, u decimal.U128) []byte {
	return u.AppendScaled(dst, decimal.Scale, p.Qty)
}

// AppendQuote appends a quote-asset volume.
func (p Precision) AppendQuote(dst []byte, u decimal.U128) []byte {
	return u.AppendScaled(dst, decimal.QuoteScale, p.Price+p.Qty)
}
