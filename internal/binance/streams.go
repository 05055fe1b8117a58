package binance

import (
	"encoding/json"
	"net/url"
	"strings"
)

// Binance's limits on market-stream connections (DESIGN §6).
const (
	// MaxStreamsPerConn is the most streams one connection may carry.
	MaxStreamsPerConn = 1024
	// MaxURLLength is the longest combined-stream URL Binance takes; longer
	// ones are refused (reported at about 8,000 characters).
	MaxURLLength = 8000
	// MaxRequestBytes is the largest SUBSCRIBE frame Binance acts on; a
	// larger one is ignored without a reply (reported).
	MaxRequestBytes = 4096
	// MaxMessagesPerSecond is how many messages a client may send a
	// connection per second before Binance disconnects it.
	MaxMessagesPerSecond = 10
)

// AggTradeStream is the name of symbol's aggregate-trade stream.
func AggTradeStream(symbol string) string { return strings.ToLower(symbol) + "@aggTrade" }

// KlineStream is the name of symbol's kline stream of interval iv ("1m").
func KlineStream(symbol, iv string) string { return strings.ToLower(symbol) + "@kline_" + iv }

// StreamSymbol splits a stream name into its symbol, upper-cased as
// exchangeInfo lists it, and its kind ("aggTrade", "kline_1m").
func StreamSymbol(stream string) (symbol, kind string, ok bool) {
	sym, kind, ok := strings.Cut(stream, "@")
	return strings.ToUpper(sym), kind, ok && sym != "" && kind != ""
}

// CombinedURL is the URL of a combined-stream connection at root
// (wss://fstream.binance.com) carrying streams. Stream names are
// percent-encoded: some symbols are not ASCII (币安人生USDT).
func CombinedURL(root string, streams []string) string {
	var b strings.Builder
	b.WriteString(strings.TrimRight(root, "/"))
	b.WriteString("/market/stream?streams=")
	for i, s := range streams {
		if i > 0 {
			b.WriteByte('/')
		}
		b.WriteString(EscapeStream(s))
	}
	return b.String()
}

// EscapeStream percent-encodes what a stream name holds beyond URL-safe
// ASCII, leaving '@' readable.
func EscapeStream(s string) string {
	return strings.ReplaceAll(url.QueryEscape(s), "%40", "@")
}

// StreamRequest is a SUBSCRIBE or UNSUBSCRIBE frame.
func StreamRequest(method string, streams []string, id int) []byte {
	b, _ := json.Marshal(struct {
		Method string   `json:"method"`
		Params []string `json:"params"`
		ID     int      `json:"id"`
	}{method, streams, id})
	return b
}

// RequestSize is the size of a StreamRequest frame of streams, give or take
// the id's digits (counted as 10).
func RequestSize(method string, streams []string) int {
	n := len(`{"method":"","params":[],"id":1234567890}`) + len(method)
	for i, s := range streams {
		if i > 0 {
			n++
		}
		b, _ := json.Marshal(s)
		n += len(b)
	}
	return n
}
