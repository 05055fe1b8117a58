package archive_test

import (
	"archive/zip"
	"bytes"
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/klagg/klagg/internal/archive"
	"github.com/klagg/klagg/internal/decimal"
	"github.com/klagg/klagg/internal/kline"
	"github.com/klagg/klagg/internal/synth"
	"github.com/klagg/klagg/internal/verify"
)

func TestParseTradeRow(t *testing.T) {
	good := []struct {
		row  string
		want kline.Trade
	}{
		{"26129,26951.0,0.002,41337,41337,1598918400023,true",
			kline.Trade{ID: 26129, Price: 2695100000000, Qty: 200000, FirstID: 41337, LastID: 41337, Time: 1598918400023, BuyerMaker: true}},
		{"1,0.5,10,5,7,1735689600000123,False,True", // spot, µs
			kline.Trade{ID: 1, Price: 50000000, Qty: 1000000000, FirstID: 5, LastID: 7, Time: 1735689600000, BuyerMaker: false}},
	}
	for _, g := range good {
		got, err := archive.ParseTradeRow([]byte(g.row))
		if err != nil || got != g.want {
			t.Errorf("archive.ParseTradeRow(%q) = %+v, %v; want %+v", g.row, got, err, g.want)
		}
	}
	for _, bad := range []string{"", "1,2,3", "a,1,1,1,1,1,true", "1,1,1,5,4,1,true", "1,1,1,1,1,1,maybe", "1,1.000000001,1,1,1,1,true", "1,1,1,1,1,1,true,true,x"} {
		if _, err := archive.ParseTradeRow([]byte(bad)); err == nil {
			t.Errorf("archive.ParseTradeRow(%q) accepted", bad)
		}
	}
}

// FuzzParseTradeRow checks the hand-written row parser against a plain
// strings.Split + strconv one.
func FuzzParseTradeRow(f *testing.F) {
	f.Add("26129,26951.0,0.002,41337,41337,1598918400023,true")
	f.Add("1,0.5,10,5,7,1735689600000123,False,True")
	f.Add("1,,1,1,1,1,true")
	f.Fuzz(func(t *testing.T, row string) {
		got, err := archive.ParseTradeRow([]byte(row))
		fields := strings.Split(row, ",")
		if err != nil {
			return
		}
		if len(fields) != 7 && len(fields) != 8 {
			t.Fatalf("accepted %d fields: %q", len(fields), row)
		}
		ints := []int64{}
		for _, i := range []int{0, 3, 4, 5} {
			v, perr := strconv.ParseInt(fields[i], 10, 64)
			if perr != nil || v < 0 || strings.HasPrefix(fields[i], "+") {
				t.Fatalf("accepted bad integer %q in %q", fields[i], row)
			}
			ints = append(ints, v)
		}
		if ints[3] > 1e14 {
			ints[3] /= 1000
		}
		p, perr := decimal.Parse(fields[1])
		q, qerr := decimal.Parse(fields[2])
		if perr != nil || qerr != nil {
			t.Fatalf("accepted bad decimals in %q", row)
		}
		bm, berr := strconv.ParseBool(fields[6])
		want := kline.Trade{ID: ints[0], Price: p, Qty: q, FirstID: ints[1], LastID: ints[2], Time: ints[3], BuyerMaker: bm}
		if berr != nil || got != want || want.LastID < want.FirstID {
			t.Fatalf("archive.ParseTradeRow(%q) = %+v, want %+v", row, got, want)
		}
	})
}

// writeTrades writes a day of a synthetic market as an archive, with or
// without a header, zipped or not, optionally shuffled and with repeats.
func writeTrades(t *testing.T, dir string, m synth.Market, day string, header, zipped, messy bool) ([]kline.Trade, string) {
	t.Helper()
	st := synth.NewStream(m)
	var trades []kline.Trade
	end := m.Start + 86_400_000
	for {
		tr := st.Next()
		if tr.Time >= end {
			break
		}
		trades = append(trades, tr)
	}
	rows := append([]kline.Trade(nil), trades...)
	if messy {
		r := rand.New(rand.NewPCG(7, 7))
		r.Shuffle(len(rows), func(i, j int) { rows[i], rows[j] = rows[j], rows[i] })
		rows = append(rows, rows[:50]...)
	}
	var buf bytes.Buffer
	if header {
		buf.WriteString(synth.CSVHeader)
	}
	var line []byte
	for i := range rows {
		line = synth.AppendCSV(line[:0], &rows[i], m.Precision)
		buf.Write(line)
	}
	name := m.Symbol + "-aggTrades-" + day + ".csv"
	path := filepath.Join(dir, name)
	data := buf.Bytes()
	if zipped {
		var zb bytes.Buffer
		zw := zip.NewWriter(&zb)
		w, _ := zw.Create(name)
		w.Write(data)
		zw.Close()
		path += ".zip"
		path = strings.Replace(path, ".csv.zip", ".zip", 1)
		data = zb.Bytes()
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return trades, path
}

// TestBuild builds klines from messy archives (zipped, no header, shuffled,
// repeated rows) and checks them, read back from the CSV files, against
// klines from the clean trade sequence.
func TestBuild(t *testing.T) {
	dir := t.TempDir()
	day1 := int64(1_704_067_200_000) // 2024-01-01
	m := synth.DefaultMarket(3, 42, day1)
	m.QuietEvery = 300
	var all []kline.Trade
	tr1, f1 := writeTrades(t, dir, m, "2024-01-01", true, false, false)
	all = append(all, tr1...)
	m2 := m
	m2.Start, m2.Seed, m2.FirstID = day1+86_400_000, 43, tr1[len(tr1)-1].ID+1
	m2.Price = tr1[len(tr1)-1].Price
	tr2, f2 := writeTrades(t, dir, m2, "2024-01-02", false, true, true)
	all = append(all, tr2...)

	ivs, _ := kline.ParseIntervals("1m,5m,1h,1d,1w")
	out := filepath.Join(dir, "out")
	st, err := archive.Build(context.Background(), archive.BuildConfig{Files: []string{f2, f1}, Intervals: ivs}, archive.CSVDir{Dir: out})
	if err != nil {
		t.Fatal(err)
	}
	if st.Rows != int64(len(all)+50) || st.Duplicates != 50 || st.Symbols != 1 {
		t.Fatalf("stats %+v, want %d rows and 50 duplicates", st, len(all)+50)
	}
	s, _ := kline.NewSeries(kline.OneMinute())
	for i := range all {
		s.Add(&all[i])
	}
	ones := s.Klines()
	for _, iv := range ivs {
		refs, err := archive.ReadKlines(filepath.Join(out, m.Symbol+"-"+iv.String()+".csv"), "", "")
		if err != nil {
			t.Fatal(err)
		}
		got := refs[0]
		want := ones
		if iv.String() != "1m" {
			want = kline.Rollup(iv, ones)
		}
		switch iv.String() {
		case "1d":
			if len(got.Klines) != 2 {
				t.Errorf("1d: %d klines, want the 2 whole days", len(got.Klines))
			}
		case "1w":
			if len(got.Klines) != 0 {
				t.Errorf("1w: wrote %d partial weeks", len(got.Klines))
			}
			continue
		case "1m":
			if len(got.Klines) != 2880 {
				t.Errorf("1m: %d klines, want 2880 (quiet minutes at the day's ends included)", len(got.Klines))
			}
		}
		// Quiet minutes after the last trade of the last day are klines too;
		// the plain series ends at the last trade.
		lastWant := want[len(want)-1]
		for len(got.Klines) > 0 && got.Klines[len(got.Klines)-1].OpenTime > lastWant.OpenTime {
			k := got.Klines[len(got.Klines)-1]
			if k.Trades != 0 || k.Open != lastWant.Close || k.Close != lastWant.Close {
				t.Fatalf("%s: trailing kline not empty at the last close: %+v", iv, k)
			}
			got.Klines = got.Klines[:len(got.Klines)-1]
		}
		rep := verify.New(3)
		rep.Compare(got, want)
		if rep.Compared == 0 || rep.Compared != rep.Equal || rep.MissingOurs != 0 {
			t.Errorf("%s: compared %d equal %d missing %d: %+v", iv, rep.Compared, rep.Equal, rep.MissingOurs, rep.First)
		}
	}
	// Formatting follows the inferred precision: prices with m.Precision.Price decimals.
	data, _ := os.ReadFile(filepath.Join(out, m.Symbol+"-1h.csv"))
	row := strings.Split(strings.Split(string(data), "\n")[1], ",")
	if dot := strings.IndexByte(row[1], '.'); m.Precision.Price > 0 && len(row[1])-dot-1 != m.Precision.Price {
		t.Errorf("open %q not formatted with %d decimals", row[1], m.Precision.Price)
	}
}

func TestTradeFileNames(t *testing.T) {
	tf, err := archive.ParseTradeFileName("/x/BTCUSDT-aggTrades-2024-02-29.zip")
	if err != nil || tf.Symbol != "BTCUSDT" || tf.To-tf.From != 86_400_000 {
		t.Fatalf("%+v %v", tf, err)
	}
	tf, err = archive.ParseTradeFileName("ETHUSDT-aggTrades-2024-02.csv")
	if err != nil || tf.To-tf.From != 29*86_400_000 {
		t.Fatalf("monthly: %+v %v", tf, err)
	}
	for _, bad := range []string{"trades.csv", "BTCUSDT-aggTrades-yesterday.csv", "-aggTrades-2024-01-01.csv"} {
		if _, err := archive.ParseTradeFileName(bad); err == nil {
			t.Errorf("accepted %q", bad)
		}
	}
}
