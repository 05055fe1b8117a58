package binance

import (
	"net/url"
	"slices"
	"testing"
)

// FuzzKlinesQuery: any query string gets either a valid query or a Binance
// error, never a panic, and a valid query satisfies Binance's rules.
func FuzzKlinesQuery(f *testing.F) {
	for _, s := range []string{"symbol=BTCUSDT&interval=1m", "symbol=X&interval=1M&limit=1500&startTime=0&endTime=99",
		"interval=7d&limit=-1", "symbol=%zz", "limit=1e3", "startTime=99999999999999999999"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		vals, err := url.ParseQuery(raw)
		if err != nil {
			return
		}
		q, aerr := ParseKlinesQuery(vals)
		if aerr != nil {
			if aerr.Code >= 0 || aerr.Status != 400 || aerr.Msg == "" {
				t.Fatalf("bad error %+v for %q", aerr, raw)
			}
			return
		}
		if q.Symbol == "" || q.Limit < 1 || q.Limit > MaxKlinesLimit || (q.Start >= 0 && q.End >= 0 && q.Start > q.End) {
			t.Fatalf("accepted %q as %+v", raw, q)
		}
	})
}

func TestParseStreamURL(t *testing.T) {
	cases := []struct {
		url      string
		ok       bool
		root     string
		combined bool
		names    []string
	}{
		{"/market/ws/btcusdt@aggTrade/ethusdt@kline_1m", true, "market", false, []string{"btcusdt@aggTrade", "ethusdt@kline_1m"}},
		{"/market/stream?streams=btcusdt@aggTrade/btcusdt@aggTrade", true, "market", true, []string{"btcusdt@aggTrade"}},
		{"/market/ws/0", true, "market", false, nil},
		{"/market/ws", true, "market", false, nil},
		{"/public/stream", true, "public", true, nil},
		{"/ws/btcusdt@aggTrade", true, "", false, []string{"btcusdt@aggTrade"}},
		{"/stream?streams=%E5%B8%81%E5%AE%89%E4%BA%BA%E7%94%9Fusdt@aggTrade", true, "", true, []string{"币安人生usdt@aggTrade"}},
		{"/marketing/ws", false, "", false, nil},
		{"/fapi/v1/klines", false, "", false, nil},
	}
	for _, c := range cases {
		u, err := url.Parse(c.url)
		if err != nil {
			t.Fatal(err)
		}
		su, ok := ParseStreamURL(u)
		if ok != c.ok || su.Root != c.root || su.Combined != c.combined || !slices.Equal(su.Names, c.names) {
			t.Errorf("%s: %+v %v, want %v %q %v %v", c.url, su, ok, c.ok, c.root, c.combined, c.names)
		}
	}
}
