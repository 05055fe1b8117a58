// Package block keeps a run of one series' closed klines as a compact,
// immutable block, and reads it back exactly: every kline decoded equals
// the one encoded, field for field.
//
// A block is columnar, as Parquet and ClickHouse lay data out: the same
// field of every kline side by side, so that the compressor sees runs of
// alike numbers. Each column holds small integers, written as varints:
//
//   - open times as slots skipped (almost always none), as a time series
//     database stores regular timestamps (Prometheus tsdb's delta of
//     deltas, Gorilla's);
//   - prices as integers of the block's price step (the greatest common
//     divisor of its prices: the tick), the open as a delta from the last
//     close, the close from the open, the high above and the low below
//     both (ClickHouse's Delta codec, made to fit what a kline is);
//   - volumes as integers of the block's lot (the largest power of ten
//     dividing them all);
//   - quote volumes, which no other field gives, as their excess over the
//     low price times the volume: the volume-weighted price lies between
//     the low and the high, so that excess is small;
//   - trade ids, where klines have them, as the gap from the last kline's
//     last id, and the span of ids.
//
// The columns are then compressed with zstd, which takes the runs of
// zeros and the repeated byte patterns the varints leave (ClickHouse's
// codecs end the same way). Klines with no trade ids (the archive's and
// REST's) keep none: the block says so in a flag.
package block

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"

	"github.com/klauspost/compress/zstd"

	"github.com/klagg/klagg/internal/decimal"
	"github.com/klagg/klagg/internal/kline"
)

// version is the layout written; Decode refuses others.
const version = 1

const (
	flagIDs = 1 << iota // trade ids are kept
)

// Codec encodes and decodes blocks. It is safe for concurrent use.
type Codec struct {
	enc *zstd.Encoder
	dec *zstd.Decoder
}

// NewCodec returns a codec; Close it when done.
func NewCodec() (*Codec, error) {
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedBetterCompression), zstd.WithEncoderConcurrency(1))
	if err != nil {
		return nil, err
	}
	dec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1))
	if err != nil {
		enc.Close()
		return nil, err
	}
	return &Codec{enc: enc, dec: dec}, nil
}

// Close releases the codec's resources.
func (c *Codec) Close() {
	c.enc.Close()
	c.dec.Close()
}

// ErrCorrupt is returned for bytes that are not a block.
var ErrCorrupt = errors.New("block: corrupt")

// column indexes, in the order written.
const (
	colGaps = iota
	colOpen
	colClose
	colHigh
	colLow
	colTrades
	colVolume
	colTakerVolume
	colQuote
	colTakerQuote
	colFirstID
	colLastID
	columns
)

// Encode appends to dst the block of ks: closed klines of interval iv,
// in open time order, no two at one open time.
func (c *Codec) Encode(dst []byte, iv kline.Interval, ks []kline.Kline) ([]byte, error) {
	if len(ks) == 0 {
		return nil, errors.New("block: no klines")
	}
	var flags byte
	step := int64(0)
	for i := range ks {
		k := &ks[i]
		if !k.Closed {
			return nil, fmt.Errorf("block: the kline at %d is open", k.OpenTime)
		}
		if i > 0 && k.OpenTime <= ks[i-1].OpenTime {
			return nil, fmt.Errorf("block: klines out of order at %d", k.OpenTime)
		}
		if iv.Open(k.OpenTime) != k.OpenTime || k.CloseTime != iv.CloseTime(k.OpenTime) {
			return nil, fmt.Errorf("block: the kline at %d is not one of %s", k.OpenTime, iv)
		}
		if k.Open <= 0 || k.High <= 0 || k.Low <= 0 || k.Close <= 0 || k.Trades < 0 {
			return nil, fmt.Errorf("block: the kline at %d has a price or count out of range", k.OpenTime)
		}
		if k.FirstTradeID >= 0 || k.LastTradeID >= 0 {
			flags |= flagIDs
		}
		step = gcd(gcd(gcd(gcd(step, k.Open), k.High), k.Low), k.Close)
	}
	// The volumes' lot and the quote excesses' as powers of ten.
	lot := tens(ks, func(k *kline.Kline) []decimal.U128 { return []decimal.U128{k.Volume, k.TakerVolume} })
	var cols [columns][]byte
	prevClose, prevLast := int64(0), int64(-1)
	var quotes []decimal.U128 // zigzagged excesses, scaled once quoteLot is known
	for i := range ks {
		k := &ks[i]
		if i > 0 {
			cols[colGaps] = binary.AppendUvarint(cols[colGaps], uint64(iv.Slots(ks[i-1].OpenTime, k.OpenTime)-2))
		}
		o, h, l, cl := k.Open/step, k.High/step, k.Low/step, k.Close/step
		cols[colOpen] = binary.AppendVarint(cols[colOpen], o-prevClose)
		cols[colClose] = binary.AppendVarint(cols[colClose], cl-o)
		cols[colHigh] = binary.AppendUvarint(cols[colHigh], uint64(h-max(o, cl)))
		cols[colLow] = binary.AppendUvarint(cols[colLow], uint64(min(o, cl)-l))
		prevClose = cl
		cols[colTrades] = binary.AppendUvarint(cols[colTrades], uint64(k.Trades))
		cols[colVolume] = appendU128(cols[colVolume], div10(k.Volume, lot))
		cols[colTakerVolume] = appendU128(cols[colTakerVolume], div10(k.TakerVolume, lot))
		quotes = append(quotes, excess(k.QuoteVolume, k.Low, k.Volume), excess(k.TakerQuoteVolume, k.Low, k.TakerVolume))
		if flags&flagIDs != 0 {
			cols[colFirstID] = binary.AppendVarint(cols[colFirstID], k.FirstTradeID-(prevLast+1))
			cols[colLastID] = binary.AppendVarint(cols[colLastID], k.LastTradeID-k.FirstTradeID)
			if k.LastTradeID >= 0 {
				prevLast = k.LastTradeID
			}
		}
	}
	quoteLot := tensOf(quotes)
	for i := 0; i < len(quotes); i += 2 {
		cols[colQuote] = appendU128(cols[colQuote], div10(quotes[i], quoteLot))
		cols[colTakerQuote] = appendU128(cols[colTakerQuote], div10(quotes[i+1], quoteLot))
	}
	raw := []byte{version, flags}
	raw = binary.AppendUvarint(raw, uint64(len(ks)))
	raw = binary.AppendVarint(raw, ks[0].OpenTime)
	raw = binary.AppendUvarint(raw, uint64(step))
	raw = append(raw, byte(lot), byte(quoteLot))
	for _, col := range cols {
		raw = binary.AppendUvarint(raw, uint64(len(col)))
		raw = append(raw, col...)
	}
	return c.enc.EncodeAll(raw, dst), nil
}

// Decode appends the klines of block b, of interval iv, to dst.
func (c *Codec) Decode(dst []kline.Kline, iv kline.Interval, b []byte) ([]kline.Kline, error) {
	raw, err := c.dec.DecodeAll(b, nil)
	if err != nil {
		return dst, fmt.Errorf("%w: %w", ErrCorrupt, err)
	}
	r := reader{b: raw}
	if v := r.byte(); v != version {
		return dst, fmt.Errorf("%w: layout %d, not %d", ErrCorrupt, v, version)
	}
	flags := r.byte()
	n := int(r.uvarint())
	open := r.varint()
	step := int64(r.uvarint())
	lot, quoteLot := int(r.byte()), int(r.byte())
	var cols [columns]reader
	for i := range cols {
		size := int(r.uvarint())
		cols[i] = reader{b: r.take(size)}
	}
	if r.err != nil || n <= 0 || n > len(raw) || step <= 0 || lot > 38 || quoteLot > 38 {
		return dst, ErrCorrupt
	}
	prevClose, prevLast := int64(0), int64(-1)
	for i := range n {
		if i > 0 {
			gap := cols[colGaps].uvarint()
			if gap > maxGap {
				return dst, fmt.Errorf("%w: a gap of %d slots", ErrCorrupt, gap)
			}
			for range gap + 1 {
				open = iv.Next(open)
			}
		}
		o := prevClose + cols[colOpen].varint()
		cl := o + cols[colClose].varint()
		h := max(o, cl) + int64(cols[colHigh].uvarint())
		l := min(o, cl) - int64(cols[colLow].uvarint())
		prevClose = cl
		k := kline.Kline{OpenTime: open, CloseTime: iv.CloseTime(open), Open: o * step, High: h * step, Low: l * step, Close: cl * step,
			Trades: int64(cols[colTrades].uvarint()), FirstTradeID: -1, LastTradeID: -1, Closed: true}
		k.Volume = mul10(cols[colVolume].u128(), lot)
		k.TakerVolume = mul10(cols[colTakerVolume].u128(), lot)
		k.QuoteVolume = unexcess(mul10(cols[colQuote].u128(), quoteLot), k.Low, k.Volume)
		k.TakerQuoteVolume = unexcess(mul10(cols[colTakerQuote].u128(), quoteLot), k.Low, k.TakerVolume)
		if flags&flagIDs != 0 {
			k.FirstTradeID = prevLast + 1 + cols[colFirstID].varint()
			k.LastTradeID = k.FirstTradeID + cols[colLastID].varint()
			if k.LastTradeID >= 0 {
				prevLast = k.LastTradeID
			}
		}
		dst = append(dst, k)
	}
	for i := range cols {
		if cols[i].err != nil || len(cols[i].b) != 0 {
			return dst, fmt.Errorf("%w: column %d", ErrCorrupt, i)
		}
	}
	if len(r.b) != 0 {
		return dst, fmt.Errorf("%w: %d bytes after the columns", ErrCorrupt, len(r.b))
	}
	return dst, nil
}

// maxGap bounds the slots between two klines of a block: a year of
// minutes, more than any block spans.
const maxGap = 1 << 20

func gcd(a, b int64) int64 {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}

// tens returns the largest power of ten (at most 10^19) dividing every
// value fields gives of ks.
func tens(ks []kline.Kline, fields func(*kline.Kline) []decimal.U128) int {
	var all []decimal.U128
	for i := range ks {
		all = append(all, fields(&ks[i])...)
	}
	return tensOf(all)
}

func tensOf(us []decimal.U128) int {
	p := 19
	for _, u := range us {
		for p > 0 && !divisible(u, p) {
			p--
		}
		if p == 0 {
			break
		}
	}
	return p
}

// pow10 is 10^0 … 10^19, the powers of ten in a uint64; never written.
var pow10 = func() (p [20]uint64) {
	p[0] = 1
	for i := 1; i < len(p); i++ {
		p[i] = p[i-1] * 10
	}
	return p
}()

func divisible(u decimal.U128, p int) bool {
	_, r := divmod(u, pow10[p])
	return r == 0
}

func divmod(u decimal.U128, d uint64) (decimal.U128, uint64) {
	qh, r := u.Hi/d, u.Hi%d
	ql, r := bits.Div64(r, u.Lo, d)
	return decimal.U128{Hi: qh, Lo: ql}, r
}

func div10(u decimal.U128, p int) decimal.U128 {
	q, _ := divmod(u, pow10[p])
	return q
}

func mul10(u decimal.U128, p int) decimal.U128 {
	return mul(u, pow10[p])
}

func mul(u decimal.U128, m uint64) decimal.U128 {
	hi, lo := bits.Mul64(u.Lo, m)
	return decimal.U128{Hi: u.Hi*m + hi, Lo: lo}
}

// excess returns quote − low·volume, zigzagged: twice its size, plus one
// when it is negative (a quote volume the exchange rounded).
func excess(quote decimal.U128, low int64, volume decimal.U128) decimal.U128 {
	base := mul(volume, uint64(low))
	if quote.Cmp(base) >= 0 {
		return shl1(quote.Sub(base), 0)
	}
	return shl1(base.Sub(quote), 1)
}

func unexcess(z decimal.U128, low int64, volume decimal.U128) decimal.U128 {
	base := mul(volume, uint64(low))
	neg := z.Lo & 1
	m := decimal.U128{Hi: z.Hi >> 1, Lo: z.Lo>>1 | z.Hi<<63}
	if neg == 1 {
		return base.Sub(m)
	}
	return base.Add(m)
}

func shl1(u decimal.U128, bit uint64) decimal.U128 {
	return decimal.U128{Hi: u.Hi<<1 | u.Lo>>63, Lo: u.Lo<<1 | bit}
}

func appendU128(dst []byte, u decimal.U128) []byte {
	for u.Hi != 0 || u.Lo >= 0x80 {
		dst = append(dst, byte(u.Lo)|0x80)
		u = decimal.U128{Hi: u.Hi >> 7, Lo: u.Lo>>7 | u.Hi<<57}
	}
	return append(dst, byte(u.Lo))
}

// reader reads a block's parts; the first failure sticks.
type reader struct {
	b   []byte
	err error
}

func (r *reader) byte() byte {
	if len(r.b) == 0 {
		r.err = ErrCorrupt
		return 0
	}
	v := r.b[0]
	r.b = r.b[1:]
	return v
}

func (r *reader) take(n int) []byte {
	if n < 0 || n > len(r.b) {
		r.err = ErrCorrupt
		return nil
	}
	v := r.b[:n]
	r.b = r.b[n:]
	return v
}

func (r *reader) uvarint() uint64 {
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.err = ErrCorrupt
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *reader) varint() int64 {
	v, n := binary.Varint(r.b)
	if n <= 0 {
		r.err = ErrCorrupt
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *reader) u128() decimal.U128 {
	var u decimal.U128
	for shift := uint(0); ; shift += 7 {
		if len(r.b) == 0 || shift >= 128 {
			r.err = ErrCorrupt
			return u
		}
		c := r.b[0]
		r.b = r.b[1:]
		v := uint64(c & 0x7f)
		if shift < 64 {
			u.Lo |= v << shift
			if shift > 57 {
				u.Hi |= v >> (64 - shift)
			}
		} else {
			u.Hi |= v << (shift - 64)
		}
		if c < 0x80 {
			return u
		}
	}
}
