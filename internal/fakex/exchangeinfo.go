package fakex

import (
	"encoding/json"
	"strings"

	"github.com/klagg/klagg/internal/binance"
)

// listedSymbol is a symbol of exchangeInfo with everything Binance lists
// (its layout as in a real answer, ../shared/data/binance/
// cryptofeed-ws-captures/BINANCE_FUTURES.0): clients read the filters for
// tick and lot sizes, and klagg must pass them on unchanged.
type listedSymbol struct {
	binance.SymbolInfo
	MaintMarginPercent    string   `json:"maintMarginPercent"`
	RequiredMarginPercent string   `json:"requiredMarginPercent"`
	BaseAssetPrecision    int      `json:"baseAssetPrecision"`
	QuotePrecision        int      `json:"quotePrecision"`
	UnderlyingType        string   `json:"underlyingType"`
	UnderlyingSubType     []string `json:"underlyingSubType"`
	SettlePlan            int      `json:"settlePlan"`
	TriggerProtect        string   `json:"triggerProtect"`
	LiquidationFee        string   `json:"liquidationFee"`
	MarketTakeBound       string   `json:"marketTakeBound"`
	Filters               []any    `json:"filters"`
	OrderTypes            []string `json:"orderTypes"`
	TimeInForce           []string `json:"timeInForce"`
}

// listed fills in what Binance lists beside i's own fields.
func listed(i binance.SymbolInfo) listedSymbol {
	tick, step := unit(i.PricePrecision), unit(i.QuantityPrecision)
	underlying, sub := "COIN", []string{}
	if i.ContractType == "TRADIFI_PERPETUAL" {
		underlying, sub = "COMMODITY", []string{"TradFi"}
	}
	return listedSymbol{
		SymbolInfo: i, MaintMarginPercent: "2.5000", RequiredMarginPercent: "5.0000", BaseAssetPrecision: 8, QuotePrecision: 8,
		UnderlyingType: underlying, UnderlyingSubType: sub, TriggerProtect: "0.0500", LiquidationFee: "0.012500", MarketTakeBound: "0.05",
		Filters: []any{
			map[string]string{"filterType": "PRICE_FILTER", "minPrice": tick, "maxPrice": "1000000", "tickSize": tick},
			map[string]string{"filterType": "LOT_SIZE", "minQty": step, "maxQty": "1000", "stepSize": step},
			map[string]string{"filterType": "MARKET_LOT_SIZE", "minQty": step, "maxQty": "120", "stepSize": step},
			map[string]any{"filterType": "MAX_NUM_ORDERS", "limit": 200},
			map[string]any{"filterType": "MAX_NUM_ALGO_ORDERS", "limit": 10},
			map[string]string{"filterType": "MIN_NOTIONAL", "notional": "5"},
			map[string]string{"filterType": "PERCENT_PRICE", "multiplierUp": "1.0500", "multiplierDown": "0.9500", "multiplierDecimal": "4"},
		},
		OrderTypes:  []string{"LIMIT", "MARKET", "STOP", "STOP_MARKET", "TAKE_PROFIT", "TAKE_PROFIT_MARKET", "TRAILING_STOP_MARKET"},
		TimeInForce: []string{"GTC", "IOC", "FOK", "GTX", "GTD"},
	}
}

// unit is 10^-places written as Binance writes sizes: "0.01", "1".
func unit(places int) string {
	if places <= 0 {
		return "1"
	}
	return "0." + strings.Repeat("0", places-1) + "1"
}

// rateLimits are Binance's, with the request weight at limit.
func rateLimits(limit int) []map[string]any {
	return []map[string]any{
		{"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": limit},
		{"rateLimitType": "ORDERS", "interval": "MINUTE", "intervalNum": 1, "limit": 1200},
		{"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 300},
	}
}

// exchangeInfo is the whole answer.
func exchangeInfo(now int64, weightLimit int, syms []binance.SymbolInfo) (binance.ExchangeInfoAnswer, error) {
	limits, err := json.Marshal(rateLimits(weightLimit))
	if err != nil {
		return binance.ExchangeInfoAnswer{}, err
	}
	out := binance.NewExchangeInfoAnswer(now, limits, nil)
	for _, s := range syms {
		b, err := json.Marshal(listed(s))
		if err != nil {
			return binance.ExchangeInfoAnswer{}, err
		}
		out.Symbols = append(out.Symbols, b)
	}
	return out, nil
}
