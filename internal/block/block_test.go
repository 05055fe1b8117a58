package block_test

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/klagg/klagg/internal/archive"
	"github.com/klagg/klagg/internal/block"
	"github.com/klagg/klagg/internal/decimal"
	"github.com/klagg/klagg/internal/fakex"
	"github.com/klagg/klagg/internal/kline"
	"github.com/klagg/klagg/internal/oracle"
	"github.com/klagg/klagg/internal/synth"
)

func codec(t testing.TB) *block.Codec {
	t.Helper()
	c, err := block.NewCodec()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// roundTrip encodes ks and requires the decoded klines to equal them,
// every field; it returns the block's size.
func roundTrip(t *testing.T, c *block.Codec, iv kline.Interval, ks []kline.Kline) int {
	t.Helper()
	b, err := c.Encode(nil, iv, ks)
	if err != nil {
		t.Fatal(err)
	}
	got, err := c.Decode(nil, iv, b)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(ks) {
		t.Fatalf("%s: %d klines decoded of %d", iv, len(got), len(ks))
	}
	for i := range ks {
		if got[i] != ks[i] {
			t.Fatalf("%s kline %d: decoded %+v, encoded %+v", iv, i, got[i], ks[i])
		}
	}
	return len(b)
}

// market returns the trades of a generated futures market over d.
func market(seed uint64, d time.Duration) []kline.Trade {
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixMilli()
	m := synth.DefaultMarket(int(seed), seed, start)
	m.QuietEvery = 200
	s := synth.NewStream(m)
	var out []kline.Trade
	for t := s.Next(); t.Time < start+d.Milliseconds(); t = s.Next() {
		out = append(out, t)
	}
	return out
}

func closed(ks []kline.Kline) []kline.Kline {
	for i := range ks {
		ks[i].Closed = true
	}
	return ks
}

// TestRoundTrip: klines built from trades (with trade ids), as the
// archive gives them (without), with empty ones, gaps, every interval,
// and volumes past 64 bits, read back as written.
func TestRoundTrip(t *testing.T) {
	c := codec(t)
	trades := market(3, 2*24*time.Hour)
	for _, iv := range kline.BinanceIntervals() {
		ks := closed(fakex.Reference(trades, iv, 0, trades[len(trades)-1].Time))
		if iv.Duration() > 24*time.Hour {
			continue // a partial one only
		}
		roundTrip(t, c, iv, ks)
		for i := range ks {
			ks[i].FirstTradeID, ks[i].LastTradeID = -1, -1
		}
		roundTrip(t, c, iv, ks)
	}
	one := kline.OneMinute()
	ks := closed(fakex.Reference(trades, one, 0, trades[len(trades)-1].Time))
	// A gap (the exchange's own: a halt), and a minute far apart.
	gappy := append(append([]kline.Kline{}, ks[:100]...), ks[160:200]...)
	gappy = append(gappy, ks[len(ks)-1])
	roundTrip(t, c, one, gappy)
	// Volumes past 64 bits, a quote volume below low·volume (rounded by
	// the exchange), months.
	big := ks[5]
	big.Volume = decimal.U128{Hi: 3, Lo: 12345}
	big.QuoteVolume = decimal.U128{Hi: 1 << 40, Lo: 7}
	big.TakerQuoteVolume = decimal.U128{}
	roundTrip(t, c, one, []kline.Kline{ks[4], big, ks[6]})
	month := kline.MustInterval("1M")
	var months []kline.Kline
	for open := int64(1735689600000); len(months) < 14; open = month.Next(open) {
		k := ks[len(months)]
		k.OpenTime, k.CloseTime = open, month.CloseTime(open)
		months = append(months, k)
	}
	roundTrip(t, c, month, months)
}

// TestRefuses: what is not a block is an error, and so is what a block
// cannot hold.
func TestRefuses(t *testing.T) {
	c := codec(t)
	one := kline.OneMinute()
	trades := market(1, time.Hour)
	ks := closed(fakex.Reference(trades, one, 0, trades[len(trades)-1].Time))
	b, err := c.Encode(nil, one, ks)
	if err != nil {
		t.Fatal(err)
	}
	for _, bad := range [][]byte{nil, []byte("not a block"), b[:len(b)/2]} {
		if _, err := c.Decode(nil, one, bad); err == nil {
			t.Errorf("decoding %d bytes of junk: no error", len(bad))
		}
	}
	open := ks[0]
	open.Closed = false
	for _, in := range [][]kline.Kline{nil, {open}, {ks[1], ks[0]}} {
		if _, err := c.Encode(nil, one, in); err == nil {
			t.Errorf("encoding %d klines not closed or not in order: no error", len(in))
		}
	}
}

// TestSize: Binance's own klines (the archive's 1m files of three days)
// take at most half of Binance's zip in blocks of a day.
func TestSize(t *testing.T) {
	dir := filepath.Join(oracle.Dir(t), "lostleaf-spot-klines-archive")
	c := codec(t)
	zipped, blocks, n := 0, 0, 0
	for _, day := range []string{"01", "02", "03"} {
		path := filepath.Join(dir, "BTCUSDT-1m-2020-01-"+day+".zip")
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		ks, err := archive.ParseKlinesZip(data)
		if err != nil {
			t.Fatal(err)
		}
		zipped += int(fi.Size())
		blocks += roundTrip(t, c, kline.OneMinute(), closed(ks))
		n += len(ks)
	}
	t.Logf("%d real 1m klines: Binance's zips %.1f bytes a kline, blocks %.1f", n, float64(zipped)/float64(n), float64(blocks)/float64(n))
	if blocks*2 > zipped {
		t.Errorf("blocks take %d bytes, Binance's zips %d: want at most half", blocks, zipped)
	}
}

// BenchmarkBlocks encodes three days of a generated futures market (a
// trade every 200 ms on average), 1m klines in blocks of a day and the
// other intervals in one block each, and reports the bytes a 1m kline
// takes: its own, and with every interval's.
func BenchmarkBlocks(b *testing.B) {
	c := codec(b)
	trades := market(2, 3*24*time.Hour)
	end := trades[len(trades)-1].Time
	one := kline.OneMinute()
	minutes := closed(fakex.Reference(trades, one, 0, end))
	minutes = minutes[:len(minutes)-1] // the last may be partial
	others := map[kline.Interval][]kline.Kline{}
	for _, iv := range kline.BinanceIntervals()[1:] {
		ks := closed(fakex.Reference(trades, iv, 0, end))
		others[iv] = ks[:len(ks)-1]
	}
	b.ResetTimer()
	var own, all int
	for range b.N {
		own, all = 0, 0
		for i := 0; i < len(minutes); i += 1440 {
			blk, err := c.Encode(nil, one, minutes[i:min(i+1440, len(minutes))])
			if err != nil {
				b.Fatal(err)
			}
			own += len(blk)
		}
		all = own
		for iv, ks := range others {
			if len(ks) == 0 {
				continue
			}
			blk, err := c.Encode(nil, iv, ks)
			if err != nil {
				b.Fatal(err)
			}
			all += len(blk)
		}
	}
	b.ReportMetric(float64(own)/float64(len(minutes)), "B/1m-kline")
	b.ReportMetric(float64(all)/float64(len(minutes)), "B/1m-kline-all-intervals")
	b.ReportMetric(float64(len(minutes))*float64(b.N)/b.Elapsed().Seconds(), "1m-klines/s")
}

// BenchmarkDecode decodes a day of generated 1m klines.
func BenchmarkDecode(b *testing.B) {
	c := codec(b)
	trades := market(2, 24*time.Hour)
	ks := closed(fakex.Reference(trades, kline.OneMinute(), 0, trades[len(trades)-1].Time))
	blk, err := c.Encode(nil, kline.OneMinute(), ks)
	if err != nil {
		b.Fatal(err)
	}
	dst := make([]kline.Kline, 0, len(ks))
	b.ResetTimer()
	for range b.N {
		if dst, err = c.Decode(dst[:0], kline.OneMinute(), blk); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(len(ks))*float64(b.N)/b.Elapsed().Seconds(), "klines/s")
}
