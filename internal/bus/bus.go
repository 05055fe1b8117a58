// Package bus owns klagg's kline stream on NATS JetStream, a public
// interface: the stream KLAGG_KLINES holds every closed kline (and every
// later correction of one) on the subject
//
//	klagg.kline.<market>.<SYMBOL>.<interval>     e.g. klagg.kline.usdm.BTCUSDT.1m
//
// as a JSON object of the kline's fields at full precision:
//
//	{"s":"BTCUSDT","i":"1m","t":1700000000000,"T":1700000059999,"o":"37000.1","h":…,"l":…,"c":…,
//	 "v":"12.345","q":"456789.0123","n":42,"V":…,"Q":…,"f":100,"L":141,"x":true}
//
// Each message's Nats-Msg-Id is the series, open time and a hash of the
// fields, so a kline published twice is kept once, and a corrected one is
// a new message. Any consumer can replay the stream from a sequence or a
// time within Retention (72 h). The package has the Publisher, an engine sink that publishes
// closed klines, the Sink, which copies the stream into a store and
// acknowledges only what the store has committed, and Opens, which sends
// open klines on core NATS (OpenSubject), kept nowhere.
package bus

import (
	"context"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/klagg/klagg/internal/decimal"
	"github.com/klagg/klagg/internal/kline"
	"github.com/klagg/klagg/internal/store"
)

// Stream is the JetStream stream of closed klines.
const Stream = "KLAGG_KLINES"

// SinkDurable is the durable consumer the sinks share: every message
// below its acknowledgement floor is in PostgreSQL.
const SinkDurable = "klagg-sink"

// Retention is how long the stream keeps a kline: a sink (or any
// consumer) that was down this long catches up from it; older klines are
// in PostgreSQL.
const Retention = 72 * time.Hour

// Market is the market segment of klagg's subjects: Binance USDⓈ-M.
const Market = "usdm"

// Subject is the subject of symbol's klines of interval iv.
func Subject(symbol string, iv string) string {
	return "klagg.kline." + Market + "." + symbol + "." + iv
}

// EnsureStream creates the stream, or brings its subjects and replicas to
// what klagg needs.
func EnsureStream(ctx context.Context, js jetstream.JetStream, replicas int) (jetstream.Stream, error) {
	s, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:       Stream,
		Subjects:   []string{"klagg.kline.>"},
		Storage:    jetstream.FileStorage,
		Replicas:   max(1, replicas),
		Duplicates: 10 * time.Minute,
		Discard:    jetstream.DiscardOld,
		MaxAge:     Retention,
	})
	if err != nil {
		return nil, fmt.Errorf("bus: create stream %s: %w", Stream, err)
	}
	return s, nil
}

// message is a kline on the wire.
type message struct {
	Symbol           string `json:"s"`
	Interval         string `json:"i"`
	OpenTime         int64  `json:"t"`
	CloseTime        int64  `json:"T"`
	Open             string `json:"o"`
	High             string `json:"h"`
	Low              string `json:"l"`
	Close            string `json:"c"`
	Volume           string `json:"v"`
	QuoteVolume      string `json:"q"`
	Trades           int64  `json:"n"`
	TakerVolume      string `json:"V"`
	TakerQuoteVolume string `json:"Q"`
	FirstTradeID     int64  `json:"f"`
	LastTradeID      int64  `json:"L"`
	Closed           bool   `json:"x"`
	// Partial marks a closed kline that may lack trades (kline.Update's
	// Partial): a serve node sends no closing event for it.
	Partial bool `json:"p,omitempty"`
}

// Encode writes u as a message body.
func Encode(u *kline.Update) []byte { return AppendEncode(nil, u) }

// AppendEncode appends u's message body to b: the bytes encoding/json
// writes for the message, at a fraction of its cost. Hand-written because
// a node sends the open klines of every series that changes four times a
// second (Opens): json.Marshal there cost the engine's consumers
// milliseconds at p99.
func AppendEncode(b []byte, u *kline.Update) []byte {
	if !plain(u.Symbol) {
		return append(b, encodeJSON(u)...)
	}
	k := &u.Kline
	b = append(b, `{"s":"`...)
	b = append(b, u.Symbol...)
	b = append(b, `","i":"`...)
	b = append(b, u.Interval.String()...)
	b = append(b, `","t":`...)
	b = strconv.AppendInt(b, k.OpenTime, 10)
	b = append(b, `,"T":`...)
	b = strconv.AppendInt(b, k.CloseTime, 10)
	for _, p := range [...]struct {
		key string
		m   int64
	}{{`,"o":"`, k.Open}, {`","h":"`, k.High}, {`","l":"`, k.Low}, {`","c":"`, k.Close}} {
		b = append(b, p.key...)
		b = decimal.Append(b, p.m, 0)
	}
	b = append(b, `","v":"`...)
	b = k.Volume.AppendScaled(b, decimal.Scale, 0)
	b = append(b, `","q":"`...)
	b = k.QuoteVolume.AppendScaled(b, decimal.QuoteScale, 0)
	b = append(b, `","n":`...)
	b = strconv.AppendInt(b, k.Trades, 10)
	b = append(b, `,"V":"`...)
	b = k.TakerVolume.AppendScaled(b, decimal.Scale, 0)
	b = append(b, `","Q":"`...)
	b = k.TakerQuoteVolume.AppendScaled(b, decimal.QuoteScale, 0)
	b = append(b, `","f":`...)
	b = strconv.AppendInt(b, k.FirstTradeID, 10)
	b = append(b, `,"L":`...)
	b = strconv.AppendInt(b, k.LastTradeID, 10)
	b = append(b, `,"x":`...)
	b = strconv.AppendBool(b, k.Closed)
	if u.Partial {
		b = append(b, `,"p":true`...)
	}
	return append(b, '}')
}

// plain reports whether s is written by encoding/json as it is: ASCII
// letters, digits, '_' and '-' (every USDⓈ-M symbol but a few).
func plain(s string) bool {
	for _, c := range []byte(s) {
		if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// encodeJSON writes u with encoding/json, for symbols it escapes.
func encodeJSON(u *kline.Update) []byte {
	k := &u.Kline
	t := store.TextOf(k)
	b, _ := json.Marshal(message{
		Symbol: u.Symbol, Interval: u.Interval.String(), OpenTime: k.OpenTime, CloseTime: k.CloseTime,
		Open: t.Open, High: t.High, Low: t.Low, Close: t.Close, Volume: t.Volume, QuoteVolume: t.QuoteVolume,
		Trades: k.Trades, TakerVolume: t.TakerVolume, TakerQuoteVolume: t.TakerQuoteVolume,
		FirstTradeID: k.FirstTradeID, LastTradeID: k.LastTradeID, Closed: k.Closed, Partial: u.Partial,
	})
	return b
}

// Decode reads a message body.
func Decode(b []byte) (kline.Update, error) {
	if u, ok := decodeEncoded(b); ok {
		return u, nil
	}
	var m message
	if err := json.Unmarshal(b, &m); err != nil {
		return kline.Update{}, fmt.Errorf("bus: malformed kline message: %w", err)
	}
	iv, err := kline.ParseInterval(m.Interval)
	if err != nil || m.Symbol == "" {
		return kline.Update{}, fmt.Errorf("bus: kline message without a symbol or interval: %.200s", b)
	}
	u := kline.Update{Symbol: m.Symbol, Interval: iv, Kline: kline.Kline{OpenTime: m.OpenTime, CloseTime: m.CloseTime,
		Trades: m.Trades, FirstTradeID: m.FirstTradeID, LastTradeID: m.LastTradeID, Closed: m.Closed}, Partial: m.Partial}
	t := store.Text{Open: m.Open, High: m.High, Low: m.Low, Close: m.Close, Volume: m.Volume, QuoteVolume: m.QuoteVolume,
		TakerVolume: m.TakerVolume, TakerQuoteVolume: m.TakerQuoteVolume}
	if err := t.Parse(&u.Kline); err != nil {
		return kline.Update{}, fmt.Errorf("bus: kline message %s %s %d: %w", m.Symbol, m.Interval, m.OpenTime, err)
	}
	return u, nil
}

// decodeEncoded reads a body laid out exactly as Encode writes it, and
// reports false for anything else (another producer's key order, spaces,
// escapes, a bad value), which Decode then reads with encoding/json.
//
// Hand-written because a sink decodes every kline of the market: 0.6 µs a
// message against encoding/json's 4 µs (CPU profile of BenchmarkSink),
// which was a fifth of the sink's process. FuzzDecode checks it against
// encoding/json.
func decodeEncoded(b []byte) (u kline.Update, ok bool) {
	r := encoded{b: b}
	sym := r.str(`{"s":`)
	iv := r.str(`,"i":`)
	k := &u.Kline
	k.OpenTime = r.int(`,"t":`)
	k.CloseTime = r.int(`,"T":`)
	k.Open = r.price(`,"o":`)
	k.High = r.price(`,"h":`)
	k.Low = r.price(`,"l":`)
	k.Close = r.price(`,"c":`)
	k.Volume = r.u128(`,"v":`, decimal.Scale)
	k.QuoteVolume = r.u128(`,"q":`, decimal.QuoteScale)
	k.Trades = r.int(`,"n":`)
	k.TakerVolume = r.u128(`,"V":`, decimal.Scale)
	k.TakerQuoteVolume = r.u128(`,"Q":`, decimal.QuoteScale)
	k.FirstTradeID = r.int(`,"f":`)
	k.LastTradeID = r.int(`,"L":`)
	switch {
	case r.lit(`,"x":true}`):
		k.Closed = true
	case r.lit(`,"x":true,"p":true}`):
		k.Closed, u.Partial = true, true
	case r.lit(`,"x":false}`):
	default:
		return u, false
	}
	if r.bad || r.i != len(b) || len(sym) == 0 || !utf8.Valid(sym) {
		return u, false
	}
	var err error
	if u.Interval, err = kline.ParseInterval(string(iv)); err != nil {
		return u, false
	}
	u.Symbol = string(sym)
	return u, true
}

// encoded reads Encode's layout; a mismatch sets bad, after which every
// read returns zero.
type encoded struct {
	b   []byte
	i   int
	bad bool
}

func (r *encoded) lit(p string) bool {
	if r.bad || len(r.b)-r.i < len(p) || string(r.b[r.i:r.i+len(p)]) != p {
		return false
	}
	r.i += len(p)
	return true
}

// str reads key p and a string value without escapes.
func (r *encoded) str(p string) []byte {
	if !r.lit(p) || r.i >= len(r.b) || r.b[r.i] != '"' {
		r.bad = true
		return nil
	}
	for j := r.i + 1; j < len(r.b); j++ {
		switch c := r.b[j]; {
		case c == '"':
			s := r.b[r.i+1 : j]
			r.i = j + 1
			return s
		case c == '\\' || c < 0x20:
			r.bad = true
			return nil
		}
	}
	r.bad = true
	return nil
}

// int reads key p and an integer of at most 18 digits (no overflow).
func (r *encoded) int(p string) int64 {
	if !r.lit(p) {
		r.bad = true
		return 0
	}
	neg := r.i < len(r.b) && r.b[r.i] == '-'
	if neg {
		r.i++
	}
	start := r.i
	var v int64
	for ; r.i < len(r.b) && r.b[r.i] >= '0' && r.b[r.i] <= '9'; r.i++ {
		v = v*10 + int64(r.b[r.i]-'0')
	}
	if n := r.i - start; n == 0 || n > 18 || (n > 1 && r.b[start] == '0') {
		r.bad = true
		return 0
	}
	if neg {
		v = -v
	}
	return v
}

func (r *encoded) price(p string) int64 {
	s := r.str(p)
	if r.bad {
		return 0
	}
	m, err := decimal.Parse(s)
	r.bad = err != nil
	return m
}

func (r *encoded) u128(p string, scale int) decimal.U128 {
	s := r.str(p)
	if r.bad {
		return decimal.U128{}
	}
	v, err := decimal.ParseU128(s, scale)
	r.bad = err != nil
	return v
}

// MsgID is the message's deduplication id: its series, open time and a
// hash of its body.
func MsgID(u *kline.Update, body []byte) string {
	h := fnv.New64a()
	h.Write(body)
	var b strings.Builder
	b.WriteString(u.Symbol)
	b.WriteByte('.')
	b.WriteString(u.Interval.String())
	b.WriteByte('.')
	b.WriteString(strconv.FormatInt(u.OpenTime, 10))
	b.WriteByte('.')
	b.WriteString(strconv.FormatUint(h.Sum64(), 36))
	return b.String()
}
