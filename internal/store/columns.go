package store

import (
	"sync"

	"github.com/klagg/klagg/internal/decimal"
	"github.com/klagg/klagg/internal/kline"
)

// Text is a kline's decimal columns as every store keeps them: exact
// decimal text, prices at decimal.Scale, quote volumes at QuoteScale.
type Text struct {
	Open, High, Low, Close                             string
	Volume, QuoteVolume, TakerVolume, TakerQuoteVolume string
}

// TextOf formats k's decimal columns.
func TextOf(k *kline.Kline) Text {
	p := func(m int64) string { return string(decimal.Append(nil, m, 0)) }
	return Text{Open: p(k.Open), High: p(k.High), Low: p(k.Low), Close: p(k.Close),
		Volume: k.Volume.String(decimal.Scale), QuoteVolume: k.QuoteVolume.String(decimal.QuoteScale),
		TakerVolume: k.TakerVolume.String(decimal.Scale), TakerQuoteVolume: k.TakerQuoteVolume.String(decimal.QuoteScale)}
}

// Parse sets k's decimal columns from t.
func (t *Text) Parse(k *kline.Kline) (err error) {
	for _, p := range []struct {
		dst *int64
		s   string
	}{{&k.Open, t.Open}, {&k.High, t.High}, {&k.Low, t.Low}, {&k.Close, t.Close}} {
		if *p.dst, err = decimal.Parse(p.s); err != nil {
			return err
		}
	}
	for _, p := range []struct {
		dst   *decimal.U128
		s     string
		scale int
	}{{&k.Volume, t.Volume, decimal.Scale}, {&k.QuoteVolume, t.QuoteVolume, decimal.QuoteScale},
		{&k.TakerVolume, t.TakerVolume, decimal.Scale}, {&k.TakerQuoteVolume, t.TakerQuoteVolume, decimal.QuoteScale}} {
		if *p.dst, err = decimal.ParseU128(p.s, p.scale); err != nil {
			return err
		}
	}
	return nil
}

// Versions counts the closed klines a store has written per series: a
// copy of a series' closed klines read at one version is current as long
// as the version stays.
type Versions struct {
	mu sync.Mutex
	m  map[[2]string]uint64
}

// Closed is the version of symbol and iv.
func (v *Versions) Closed(symbol string, iv kline.Interval) uint64 {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.m[[2]string{symbol, iv.String()}]
}

// Count moves the version of every series with a closed kline in updates,
// once they are committed.
func (v *Versions) Count(updates []kline.Update) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.m == nil {
		v.m = map[[2]string]uint64{}
	}
	for i := range updates {
		if u := &updates[i]; u.Closed {
			v.m[[2]string{u.Symbol, u.Interval.String()}]++
		}
	}
}
