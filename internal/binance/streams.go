package binance

import (
	"encoding/json"
	"net/url"
	"strings"
	"unicode"
	"unicode/utf8"
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

// StreamURL is a market-stream connection's URL taken apart.
type StreamURL struct {
	// Root is "market", "public" or "private", or "" for the legacy
	// roots /ws and /stream.
	Root string
	// Combined: events come wrapped with their stream's name (/stream).
	Combined bool
	// Names are the streams the URL names, in order and each once. Path
	// parts that are not stream names (/market/ws/0, as some clients open
	// before they SUBSCRIBE) are not among them.
	Names []string
}

// ParseStreamURL reads a stream URL as Binance does: /<root>/ws,
// /<root>/ws/<stream>/<stream>…, /<root>/stream and
// /<root>/stream?streams=<stream>/…, under the roots /market, /public and
// /private or none. ok is false for a path that is not a stream URL.
func ParseStreamURL(u *url.URL) (su StreamURL, ok bool) {
	path := u.Path
	for _, root := range []string{"market", "public", "private"} {
		if rest, found := strings.CutPrefix(path, "/"+root); found && (rest == "" || rest[0] == '/') {
			path, su.Root = rest, root
			break
		}
	}
	var parts []string
	switch {
	case path == "/stream" || path == "/stream/":
		su.Combined = true
		if q := u.Query().Get("streams"); q != "" {
			parts = strings.Split(q, "/")
		}
	case path == "/ws" || strings.HasPrefix(path, "/ws/"):
		parts = strings.Split(strings.TrimPrefix(path, "/ws"), "/")
	default:
		return StreamURL{}, false
	}
	seen := map[string]bool{}
	for _, p := range parts {
		if _, isStream := ParseStreamName(p); isStream && !seen[p] {
			seen[p] = true
			su.Names = append(su.Names, p)
		}
	}
	return su, true
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

// Stream kinds klagg knows by name; any other well-formed stream has its
// type after the '@' as its Kind.
const (
	KindAggTrade        = "aggTrade"
	KindKline           = "kline"
	KindContinuousKline = "continuousKline"
)

// maxStreamName bounds a stream name; Binance's longest are under 60 bytes.
const maxStreamName = 200

// StreamName is a market stream name taken apart.
type StreamName struct {
	Kind string // KindAggTrade, KindKline, KindContinuousKline, or another type ("depth", "bookTicker")
	// Symbol is upper case, as exchangeInfo lists it; for a continuous
	// kline it is the pair.
	Symbol       string
	Interval     string // of a kline or continuous kline
	ContractType string // of a continuous kline: "PERPETUAL", "CURRENT_QUARTER", …
}

// ParseStreamName takes a stream name apart. ok is false when name is not
// a well-formed stream name at all: empty, without "<name>@<type>", with
// spaces, control characters, '/' or quotes, or not UTF-8. A well-formed
// name need not be one Binance has: compare String() with name to know
// whether it is written as Binance writes its streams.
func ParseStreamName(name string) (n StreamName, ok bool) {
	if len(name) == 0 || len(name) > maxStreamName || !utf8.ValidString(name) {
		return n, false
	}
	for _, r := range name {
		if r <= ' ' || r == '/' || r == '"' || r == '\\' || r == 0x7f || unicode.IsSpace(r) || unicode.IsControl(r) {
			return n, false
		}
	}
	lhs, rhs, ok := strings.Cut(name, "@")
	if !ok || lhs == "" || rhs == "" || strings.HasSuffix(rhs, "@") {
		return n, false
	}
	switch kind, iv, _ := strings.Cut(rhs, "_"); kind {
	case KindAggTrade:
		n = StreamName{Kind: KindAggTrade, Symbol: strings.ToUpper(lhs)}
		if iv != "" || rhs != KindAggTrade {
			n.Kind = rhs
		}
	case KindKline:
		n = StreamName{Kind: KindKline, Symbol: strings.ToUpper(lhs), Interval: iv}
	case KindContinuousKline:
		pair, ct, _ := strings.Cut(lhs, "_")
		n = StreamName{Kind: KindContinuousKline, Symbol: strings.ToUpper(pair), Interval: iv, ContractType: strings.ToUpper(ct)}
	default:
		n = StreamName{Kind: rhs, Symbol: strings.ToUpper(lhs)}
	}
	return n, true
}

// String is the stream's name as Binance writes it, or "" for a kind
// klagg does not know.
func (n StreamName) String() string {
	switch n.Kind {
	case KindAggTrade:
		return AggTradeStream(n.Symbol)
	case KindKline:
		return KlineStream(n.Symbol, n.Interval)
	case KindContinuousKline:
		return ContinuousKlineStream(n.Symbol, n.ContractType, n.Interval)
	}
	return ""
}

// ContinuousKlineStream is the name of pair's continuous kline stream of
// contract type ct ("PERPETUAL") and interval iv.
func ContinuousKlineStream(pair, ct, iv string) string {
	return strings.ToLower(pair) + "_" + strings.ToLower(ct) + "@continuousKline_" + iv
}
