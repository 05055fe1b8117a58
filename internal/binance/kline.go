package binance

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"

	"github.com/klagg/klagg/internal/decimal"
	"github.com/klagg/klagg/internal/kline"
)

// KlineEvent is a <symbol>@kline_<interval> stream event.
type KlineEvent struct {
	EventType string `json:"e"`
	EventTime int64  `json:"E"`
	Symbol    string `json:"s"`
	// Pair and ContractType are a continuous_kline event's, which has
	// no Symbol.
	Pair         string      `json:"ps,omitempty"`
	ContractType string      `json:"ct,omitempty"`
	K            KlineFields `json:"k"`
}

// KlineFields is the "k" object of a kline event.
type KlineFields struct {
	OpenTime         int64  `json:"t"`
	CloseTime        int64  `json:"T"`
	Symbol           string `json:"s"`
	Interval         string `json:"i"`
	FirstTradeID     int64  `json:"f"`
	LastTradeID      int64  `json:"L"`
	Open             string `json:"o"`
	Close            string `json:"c"`
	High             string `json:"h"`
	Low              string `json:"l"`
	Volume           string `json:"v"`
	Trades           int64  `json:"n"`
	Closed           bool   `json:"x"`
	QuoteVolume      string `json:"q"`
	TakerVolume      string `json:"V"`
	TakerQuoteVolume string `json:"Q"`
	Ignore           string `json:"B"`
}

// ParseKlineEvent reads a kline or continuous_kline event, bare or in a
// combined-stream envelope.
func ParseKlineEvent(frame []byte) (KlineEvent, error) {
	var env struct {
		Stream string          `json:"stream"`
		Data   json.RawMessage `json:"data"`
	}
	body := frame
	if bytes.Contains(frame, []byte(`"stream"`)) {
		if err := json.Unmarshal(frame, &env); err == nil && len(env.Data) > 0 {
			body = env.Data
		}
	}
	var ev KlineEvent
	if err := json.Unmarshal(body, &ev); err != nil {
		return ev, fmt.Errorf("malformed kline event: %w", err)
	}
	if ev.EventType != "kline" && ev.EventType != "continuous_kline" {
		return ev, fmt.Errorf("not a kline event (e=%q)", ev.EventType)
	}
	return ev, nil
}

// Kline converts the event's fields to a Kline.
func (f *KlineFields) Kline() (kline.Kline, error) {
	k := kline.Kline{
		OpenTime: f.OpenTime, CloseTime: f.CloseTime, Trades: f.Trades,
		FirstTradeID: f.FirstTradeID, LastTradeID: f.LastTradeID, Closed: f.Closed,
	}
	err := parseFields(&k, f.Open, f.High, f.Low, f.Close, f.Volume, f.QuoteVolume, f.TakerVolume, f.TakerQuoteVolume)
	return k, err
}

func parseFields(k *kline.Kline, o, h, l, c, v, q, tv, tq string) error {
	var err error
	for _, p := range []struct {
		dst *int64
		s   string
	}{{&k.Open, o}, {&k.High, h}, {&k.Low, l}, {&k.Close, c}} {
		if *p.dst, err = decimal.Parse(p.s); err != nil {
			return fmt.Errorf("kline price: %w", err)
		}
	}
	for _, p := range []struct {
		dst   *decimal.U128
		s     string
		scale int
	}{{&k.Volume, v, decimal.Scale}, {&k.QuoteVolume, q, decimal.QuoteScale}, {&k.TakerVolume, tv, decimal.Scale}, {&k.TakerQuoteVolume, tq, decimal.QuoteScale}} {
		if *p.dst, err = decimal.ParseU128(p.s, p.scale); err != nil {
			return fmt.Errorf("kline volume: %w", err)
		}
	}
	return nil
}

// ParseKlineArray reads one kline in REST / archive layout:
// [openTime, open, high, low, close, volume, closeTime, quoteVolume, trades,
// takerBuyVolume, takerBuyQuoteVolume, ignore]. Numbers may be JSON strings
// or JSON numbers. Shorter rows (OHLCV only, as some tools save them) leave
// the missing fields zero and report how many fields they had.
func ParseKlineArray(raw []json.RawMessage) (kline.Kline, int, error) {
	var k kline.Kline
	if len(raw) < 6 {
		return k, len(raw), fmt.Errorf("kline row has %d fields, want at least 6", len(raw))
	}
	text := make([]string, len(raw))
	for i, r := range raw {
		r = bytes.TrimSpace(r)
		if len(r) > 0 && r[0] == '"' {
			var s string
			if err := json.Unmarshal(r, &s); err != nil {
				return k, len(raw), fmt.Errorf("kline field %d: %w", i, err)
			}
			text[i] = s
		} else {
			text[i] = string(r)
		}
	}
	return ParseKlineFields(text)
}

// ParseKlineFields reads a kline from the text of its fields in REST /
// archive column order (see ParseKlineArray).
func ParseKlineFields(f []string) (kline.Kline, int, error) {
	var k kline.Kline
	n := len(f)
	if n < 6 {
		return k, n, fmt.Errorf("kline row has %d fields, want at least 6", n)
	}
	var err error
	if k.OpenTime, err = strconv.ParseInt(f[0], 10, 64); err != nil {
		return k, n, fmt.Errorf("kline open time %q: %w", f[0], err)
	}
	get := func(i int) string {
		if i < n {
			return f[i]
		}
		return "0"
	}
	if err := parseFields(&k, f[1], f[2], f[3], f[4], f[5], get(7), get(9), get(10)); err != nil {
		return k, n, err
	}
	if n > 6 {
		if k.CloseTime, err = strconv.ParseInt(f[6], 10, 64); err != nil {
			return k, n, fmt.Errorf("kline close time %q: %w", f[6], err)
		}
	}
	if n > 8 {
		if k.Trades, err = strconv.ParseInt(f[8], 10, 64); err != nil {
			return k, n, fmt.Errorf("kline trade count %q: %w", f[8], err)
		}
	}
	k.FirstTradeID, k.LastTradeID, k.Closed = -1, -1, true
	return k, n, nil
}

// AppendKlineArray writes k in REST layout with Binance's number formatting.
func AppendKlineArray(dst []byte, k *kline.Kline, p kline.Precision) []byte {
	dst = append(dst, '[')
	dst = strconv.AppendInt(dst, k.OpenTime, 10)
	dst = appendQuoted(dst, func(b []byte) []byte { return p.AppendPrice(b, k.Open) })
	dst = appendQuoted(dst, func(b []byte) []byte { return p.AppendPrice(b, k.High) })
	dst = appendQuoted(dst, func(b []byte) []byte { return p.AppendPrice(b, k.Low) })
	dst = appendQuoted(dst, func(b []byte) []byte { return p.AppendPrice(b, k.Close) })
	dst = appendQuoted(dst, func(b []byte) []byte { return p.AppendQty(b, k.Volume) })
	dst = append(dst, ',')
	dst = strconv.AppendInt(dst, k.CloseTime, 10)
	dst = appendQuoted(dst, func(b []byte) []byte { return p.AppendQuote(b, k.QuoteVolume) })
	dst = append(dst, ',')
	dst = strconv.AppendInt(dst, k.Trades, 10)
	dst = appendQuoted(dst, func(b []byte) []byte { return p.AppendQty(b, k.TakerVolume) })
	dst = appendQuoted(dst, func(b []byte) []byte { return p.AppendQuote(b, k.TakerQuoteVolume) })
	dst = append(dst, `,"0"]`...)
	return dst
}

func appendQuoted(dst []byte, f func([]byte) []byte) []byte {
	dst = append(dst, ',', '"')
	dst = f(dst)
	return append(dst, '"')
}

// AppendKlineEvent writes a <symbol>@kline_<interval> stream event for k in
// Binance's layout and field order, E being the event time in ms.
func AppendKlineEvent(dst []byte, symbol, interval string, eventTime int64, k *kline.Kline, p kline.Precision) []byte {
	dst = append(dst, `{"e":"kline","E":`...)
	dst = strconv.AppendInt(dst, eventTime, 10)
	dst = append(dst, `,"s":"`...)
	dst = append(dst, symbol...)
	dst = append(dst, `","k":{"t":`...)
	dst = strconv.AppendInt(dst, k.OpenTime, 10)
	dst = append(dst, `,"T":`...)
	dst = strconv.AppendInt(dst, k.CloseTime, 10)
	dst = append(dst, `,"s":"`...)
	dst = append(dst, symbol...)
	dst = append(dst, `","i":"`...)
	return appendKlineBody(dst, interval, k, p)
}

// AppendContinuousKlineEvent writes a <pair>_perpetual@continuousKline_<interval>
// stream event: the perpetual's kline under its pair and contract type,
// without a symbol inside "k". Binance's f and L there are update ids,
// which only the exchange has; klagg gives the trade ids.
func AppendContinuousKlineEvent(dst []byte, pair, contractType, interval string, eventTime int64, k *kline.Kline, p kline.Precision) []byte {
	dst = append(dst, `{"e":"continuous_kline","E":`...)
	dst = strconv.AppendInt(dst, eventTime, 10)
	dst = append(dst, `,"ps":"`...)
	dst = append(dst, pair...)
	dst = append(dst, `","ct":"`...)
	dst = append(dst, contractType...)
	dst = append(dst, `","k":{"t":`...)
	dst = strconv.AppendInt(dst, k.OpenTime, 10)
	dst = append(dst, `,"T":`...)
	dst = strconv.AppendInt(dst, k.CloseTime, 10)
	dst = append(dst, `,"i":"`...)
	return appendKlineBody(dst, interval, k, p)
}

// appendKlineBody writes a kline event's "k" from its interval on.
func appendKlineBody(dst []byte, interval string, k *kline.Kline, p kline.Precision) []byte {
	dst = append(dst, interval...)
	dst = append(dst, `","f":`...)
	dst = strconv.AppendInt(dst, k.FirstTradeID, 10)
	dst = append(dst, `,"L":`...)
	dst = strconv.AppendInt(dst, k.LastTradeID, 10)
	dst = appendField(dst, "o", func(b []byte) []byte { return p.AppendPrice(b, k.Open) })
	dst = appendField(dst, "c", func(b []byte) []byte { return p.AppendPrice(b, k.Close) })
	dst = appendField(dst, "h", func(b []byte) []byte { return p.AppendPrice(b, k.High) })
	dst = appendField(dst, "l", func(b []byte) []byte { return p.AppendPrice(b, k.Low) })
	dst = appendField(dst, "v", func(b []byte) []byte { return p.AppendQty(b, k.Volume) })
	dst = append(dst, `,"n":`...)
	dst = strconv.AppendInt(dst, k.Trades, 10)
	dst = append(dst, `,"x":`...)
	dst = strconv.AppendBool(dst, k.Closed)
	dst = appendField(dst, "q", func(b []byte) []byte { return p.AppendQuote(b, k.QuoteVolume) })
	dst = appendField(dst, "V", func(b []byte) []byte { return p.AppendQty(b, k.TakerVolume) })
	dst = appendField(dst, "Q", func(b []byte) []byte { return p.AppendQuote(b, k.TakerQuoteVolume) })
	return append(dst, `,"B":"0"}}`...)
}

func appendField(dst []byte, name string, f func([]byte) []byte) []byte {
	dst = append(dst, ',', '"')
	dst = append(dst, name...)
	dst = append(dst, `":"`...)
	dst = f(dst)
	return append(dst, '"')
}
