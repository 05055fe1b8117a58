// Package store owns the vocabulary of klagg's persistent state and what
// every store shares: the kline query, symbol metadata, the exchange's
// lists, the decimal text columns and version counts, the single writer
// that turns engine updates into batched idempotent upserts, and (in
// storetest) the conformance suite. The engines are beside it:
// internal/store/sqlite, the embedded default, and internal/store/postgres,
// a cluster's shared history.
package store

import "github.com/klagg/klagg/internal/kline"

// Symbol is a symbol's exchangeInfo metadata.
type Symbol struct {
	Name              string
	Status            string // TRADING, SETTLING, …
	BaseAsset         string
	QuoteAsset        string
	ContractType      string // PERPETUAL, …
	PricePrecision    int
	QuantityPrecision int
	OnboardDate       int64 // ms
	Pair              string
	// Info is the symbol's exchangeInfo object as the exchange gave it
	// (filters and all); empty when klagg has none.
	Info []byte
}

// Query selects klines of one symbol and interval with start ≤ open_time ≤
// end, oldest first. With limit > 0 it returns at most limit klines: the
// oldest ones when fromEnd is false, the newest ones when true (Binance's
// rule when only a limit is given).
type Query struct {
	Symbol   string
	Interval kline.Interval
	Start    int64 // inclusive; 0 for no bound
	End      int64 // inclusive; 0 for no bound
	Limit    int
	FromEnd  bool
}

// The exchange-wide lists of exchangeInfo the store keeps.
const (
	RateLimits      = "rateLimits"
	ExchangeFilters = "exchangeFilters"
)

// Span is a run of one series' interval slots whose klines klagg holds
// exactly: every kline the exchange has opening in [From, To] is stored,
// and no other. A slot without a kline in a span is the exchange's own gap
// (before the listing, a halt), not a hole. To is Forever for a series the
// exchange will not add to (a delisted symbol).
type Span struct {
	Symbol   string
	Interval kline.Interval
	From, To int64 // open times, inclusive
}

// Forever is the To of a span that reaches past any time.
const Forever int64 = 1<<63 - 1
