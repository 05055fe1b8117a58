package fakex

import (
	"testing"

	"github.com/klagg/klagg/internal/binance"
	"github.com/klagg/klagg/internal/decimal"
	"github.com/klagg/klagg/internal/kline"
)

func TestBlastFrame(t *testing.T) {
	s := &blastSymbol{name: "B0001USDT", stream: "b0001usdt@aggTrade", id: 42, price: 10_012}
	sym, got, err := binance.ParseAggTrade(appendAggTrade(nil, s, 1_700_000_000_123, 7, true))
	want := kline.Trade{ID: 42, Price: 10_012 * (decimal.Unit / 100), Qty: 7 * (decimal.Unit / 1000),
		FirstID: 126, LastID: 128, Time: 1_700_000_000_123, BuyerMaker: true, NormalQty: decimal.Unit / 1000, HasNormalQty: true}
	if err != nil || string(sym) != s.name || got != want {
		t.Fatalf("parsed %s %+v, %v; want %+v", sym, got, err, want)
	}
}
