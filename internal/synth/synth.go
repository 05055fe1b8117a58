// Package synth owns klagg's synthetic market: seeded, reproducible streams
// of aggregated trades (random-walk prices, multi-fill aggTrades, bursts and
// quiet stretches) for tests, benchmarks, the load tool and the fake
// exchange, and their rendering as Binance archive rows.
package synth

import (
	"bufio"
	"io"
	"math/rand/v2"
	"strconv"

	"github.com/klagg/klagg/internal/decimal"
	"github.com/klagg/klagg/internal/kline"
)

// Market describes one symbol's synthetic market.
type Market struct {
	Symbol string
	Seed   uint64
	// Start is the time of the first trade, ms.
	Start int64
	// Price is the starting price (a mantissa at decimal.Scale); Precision
	// fixes the tick and lot sizes: prices step by 10^-Price, quantities by
	// 10^-Qty.
	Price     int64
	Precision kline.Precision
	// MeanGapMs is the mean time between aggTrades; QuietEvery, if > 0, makes
	// roughly one gap in QuietEvery a quiet stretch of several minutes.
	MeanGapMs  float64
	QuietEvery int
	// FirstID is the first aggregate id; trade ids start at 10×FirstID.
	FirstID int64
}

// DefaultMarket returns a plausible market for symbol i of a generated
// exchange: prices between ~1 and ~50,000, 2–5 price decimals.
func DefaultMarket(i int, seed uint64, start int64) Market {
	r := rand.New(rand.NewPCG(seed, uint64(i)))
	pp := 1 + r.IntN(4)
	qp := 3 - min(pp-1, 3)
	price := int64(1+r.IntN(50_000)) * decimal.Unit
	if pp >= 4 {
		price = int64(1+r.IntN(20)) * decimal.Unit / int64(1+r.IntN(9))
	}
	return Market{
		Symbol: Name(i), Seed: seed + uint64(i)*7919, Start: start,
		Price: round(price, pp), Precision: kline.Precision{Price: pp, Qty: qp},
		MeanGapMs: 200, QuietEvery: 5000, FirstID: int64(1_000_000 + i*10_000),
	}
}

// Name is the generated symbol name for index i: "S000USDT", "S001USDT", …
func Name(i int) string {
	s := strconv.Itoa(i)
	for len(s) < 3 {
		s = "0" + s
	}
	return "S" + s + "USDT"
}

func round(m int64, decimals int) int64 {
	step := int64(1)
	for i := decimals; i < decimal.Scale; i++ {
		step *= 10
	}
	return max(step, m/step*step)
}

// Stream generates a market's trades in aggregate-id and time order.
type Stream struct {
	m      Market
	r      *rand.Rand
	tick   int64
	lot    int64
	price  int64
	id     int64
	tradID int64
	time   int64
	back   *kline.Trade // a trade handed back by WriteCSV
}

// NewStream starts m's trade stream.
func NewStream(m Market) *Stream {
	s := &Stream{
		m: m, r: rand.New(rand.NewPCG(m.Seed, 0x6b6c616767)),
		tick: pow10(decimal.Scale - m.Precision.Price), lot: pow10(decimal.Scale - m.Precision.Qty),
		price: m.Price, id: m.FirstID, tradID: m.FirstID * 10, time: m.Start,
	}
	if s.price <= 0 {
		s.price = 100 * s.tick
	}
	return s
}

func pow10(n int) int64 {
	v := int64(1)
	for range n {
		v *= 10
	}
	return v
}

// Next returns the next trade.
func (s *Stream) Next() kline.Trade {
	if t := s.back; t != nil {
		s.back = nil
		return *t
	}
	gap := int64(s.r.ExpFloat64() * s.m.MeanGapMs)
	if s.m.QuietEvery > 0 && s.r.IntN(s.m.QuietEvery) == 0 {
		gap += int64(60_000 + s.r.IntN(5*60_000))
	}
	s.time += gap
	// Random walk in ticks, kept positive.
	s.price += int64(s.r.IntN(7)-3) * s.tick
	if s.price < s.tick {
		s.price = s.tick
	}
	fills := int64(1)
	if s.r.IntN(4) == 0 {
		fills += int64(s.r.IntN(20))
	}
	qty := int64(1+s.r.IntN(2000)) * s.lot
	t := kline.Trade{
		ID: s.id, Price: s.price, Qty: qty, FirstID: s.tradID, LastID: s.tradID + fills - 1,
		Time: s.time, BuyerMaker: s.r.IntN(2) == 0,
	}
	s.id++
	// Insurance-fund and ADL trades consume trade ids without appearing in
	// the aggTrade stream; leave the odd hole.
	s.tradID += fills + int64(s.r.IntN(50)/49)
	return t
}

// SetMeanGap sets the mean time between trades from the next one on.
func (s *Stream) SetMeanGap(ms float64) { s.m.MeanGapMs = ms }

// Unread hands t back: the next call to Next returns it again.
func (s *Stream) Unread(t kline.Trade) { s.back = &t }

// Time is the time of the last trade generated (or the start).
func (s *Stream) Time() int64 { return s.time }

// Market returns the stream's market.
func (s *Stream) Market() Market { return s.m }

// AppendCSV appends t as a futures aggTrades archive row.
func AppendCSV(dst []byte, t *kline.Trade, p kline.Precision) []byte {
	dst = strconv.AppendInt(dst, t.ID, 10)
	dst = append(dst, ',')
	dst = decimal.Append(dst, t.Price, p.Price)
	dst = append(dst, ',')
	dst = decimal.Append(dst, t.Qty, p.Qty)
	dst = append(dst, ',')
	dst = strconv.AppendInt(dst, t.FirstID, 10)
	dst = append(dst, ',')
	dst = strconv.AppendInt(dst, t.LastID, 10)
	dst = append(dst, ',')
	dst = strconv.AppendInt(dst, t.Time, 10)
	dst = append(dst, ',')
	dst = strconv.AppendBool(dst, t.BuyerMaker)
	return append(dst, '\n')
}

// CSVHeader is the header row of futures aggTrades archives.
const CSVHeader = "agg_trade_id,price,quantity,first_trade_id,last_trade_id,transact_time,is_buyer_maker\n"

// WriteCSV writes the stream's trades as futures aggTrades archive rows
// (with a header row when header is set) until a trade would reach time
// until or rows have been written, whichever is first (rows ≤ 0: no limit).
// It returns how many rows it wrote; the trade that stopped it is the
// stream's next.
func WriteCSV(w io.Writer, s *Stream, until int64, rows int, header bool) (int, error) {
	bw := bufio.NewWriterSize(w, 1<<16)
	if header {
		bw.WriteString(CSVHeader)
	}
	var line []byte
	n := 0
	for rows <= 0 || n < rows {
		t := s.Next()
		if t.Time >= until {
			s.Unread(t) // it belongs to the next file
			break
		}
		line = AppendCSV(line[:0], &t, s.m.Precision)
		if _, err := bw.Write(line); err != nil {
			return n, err
		}
		n++
	}
	return n, bw.Flush()
}
