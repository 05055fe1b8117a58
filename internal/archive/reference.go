package archive

import (
	"archive/zip"
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/klagg/klagg/internal/binance"
	"github.com/klagg/klagg/internal/kline"
)

// Fields says which kline fields a source carries, so that a comparison
// only checks what both sides know.
type Fields int

const (
	// FieldsOHLCV: open time, open, high, low, close, volume.
	FieldsOHLCV Fields = iota
	// FieldsFull: the 12 REST / archive columns.
	FieldsFull
	// FieldsWithIDs: the full set plus first and last trade ids (stream events).
	FieldsWithIDs
)

// Series is the klines of one symbol and interval from one source, sorted by
// open time.
type Series struct {
	Symbol   string
	Interval string
	Fields   Fields
	Klines   []kline.Kline
	// Precision is the decimals a CSV's first row writes its open price
	// and its volume with, as Binance writes every row.
	Precision kline.Precision
}

// ReadKlines loads klines from a file in any layout klagg knows:
//   - archive or `klagg build` CSV (header optional), plain or zipped, named
//     <SYMBOL>-<interval>[-<date>].csv|zip;
//   - a JSON list of kline arrays (REST layout, or OHLCV only), named
//     <SYMBOL>-<interval>.json;
//   - a capture of stream frames, one per line as "<time>: <frame>" (the
//     first line may be the URL); only closed (x:true) kline events are kept,
//     the newest for each kline.
//
// symbol and interval, when not empty, override what the name says.
func ReadKlines(path, symbol, interval string) ([]Series, error) {
	base := filepath.Base(path)
	ext := filepath.Ext(base)
	switch ext {
	case ".csv", ".zip", ".json":
		sym, iv := nameParts(strings.TrimSuffix(base, ext))
		if symbol != "" {
			sym = symbol
		}
		if interval != "" {
			iv = interval
		}
		if sym == "" || iv == "" {
			return nil, fmt.Errorf("%s: cannot tell symbol and interval from the name <SYMBOL>-<interval>[-<date>]%s; give them with -symbol and -interval", path, ext)
		}
		if _, err := kline.ParseInterval(iv); err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		var s Series
		var err error
		if ext == ".json" {
			s, err = readJSONKlines(path)
		} else {
			s, err = readCSVKlines(path)
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		s.Symbol, s.Interval = strings.ToUpper(sym), iv
		return []Series{s}, nil
	}
	ss, err := readCapture(path)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return ss, nil
}

// nameParts splits "BTCUSDT-1m-2020-01-01" into "BTCUSDT" and "1m".
func nameParts(name string) (symbol, interval string) {
	parts := strings.SplitN(name, "-", 3)
	if len(parts) < 2 {
		return "", ""
	}
	return parts[0], parts[1]
}

func readCSVKlines(path string) (Series, error) {
	rc, _, err := OpenCSV(path)
	if err != nil {
		return Series{}, err
	}
	defer rc.Close()
	return parseCSVKlines(rc)
}

// ParseKlinesZip reads an archive kline file (a zip holding one CSV, with
// a header row or without): its klines by open time, a row the file
// repeats kept once. Futures timestamps are milliseconds; spot ones in
// microseconds since 2025 are read as milliseconds too.
func ParseKlinesZip(data []byte) ([]kline.Kline, error) {
	ks, _, err := ParseKlinesFile(data)
	return ks, err
}

// ParseKlinesFile is ParseKlinesZip, and also returns the decimals the
// file writes prices and quantities with: the symbol's precisions.
func ParseKlinesFile(data []byte) ([]kline.Kline, kline.Precision, error) {
	ks, s, err := parseKlinesZip(data)
	return ks, s.Precision, err
}

func parseKlinesZip(data []byte) ([]kline.Kline, Series, error) {
	zr, err := zip.NewReader(bytes.NewReader(data), int64(len(data)))
	if err != nil {
		return nil, Series{}, fmt.Errorf("archive: not a zip: %w", err)
	}
	for _, f := range zr.File {
		if !strings.HasSuffix(f.Name, ".csv") {
			continue
		}
		r, err := f.Open()
		if err != nil {
			return nil, Series{}, fmt.Errorf("archive: %s: %w", f.Name, err)
		}
		s, err := parseCSVKlines(r)
		r.Close()
		if err != nil {
			return nil, Series{}, fmt.Errorf("archive: %s: %w", f.Name, err)
		}
		if s.Fields != FieldsFull {
			return nil, Series{}, fmt.Errorf("archive: %s: rows of fewer than 12 columns: not Binance's kline layout", f.Name)
		}
		ks := s.Klines[:0]
		for _, k := range s.Klines {
			if n := len(ks); n > 0 && ks[n-1].OpenTime == k.OpenTime {
				if ks[n-1] != k {
					return nil, Series{}, fmt.Errorf("archive: %s: two different rows open at %d", f.Name, k.OpenTime)
				}
				continue
			}
			ks = append(ks, k)
		}
		return ks, s, nil
	}
	return nil, Series{}, errors.New("archive: the zip holds no .csv file")
}

func parseCSVKlines(r io.Reader) (Series, error) {
	s := Series{Fields: FieldsFull}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	line := 0
	for sc.Scan() {
		line++
		row := strings.TrimSpace(sc.Text())
		if row == "" || (line == 1 && (row[0] < '0' || row[0] > '9')) {
			continue
		}
		fields := strings.Split(row, ",")
		k, n, err := binance.ParseKlineFields(fields)
		if err != nil {
			return s, fmt.Errorf("line %d: %w", line, err)
		}
		if len(s.Klines) == 0 && len(fields) > 5 {
			s.Precision = kline.Precision{Price: written(fields[1]), Qty: written(fields[5])}
		}
		if n < 12 {
			s.Fields = FieldsOHLCV
		}
		if k.OpenTime > 1e14 { // µs: spot archives since 2025
			k.OpenTime /= 1000
			k.CloseTime /= 1000
		}
		s.Klines = append(s.Klines, k)
	}
	if err := sc.Err(); err != nil {
		return s, err
	}
	sortKlines(s.Klines)
	return s, nil
}

func readJSONKlines(path string) (Series, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Series{}, err
	}
	var rows [][]json.RawMessage
	if err := json.Unmarshal(data, &rows); err != nil {
		return Series{}, fmt.Errorf("not a JSON list of kline arrays: %w", err)
	}
	s := Series{Fields: FieldsFull}
	for i, r := range rows {
		k, n, err := binance.ParseKlineArray(r)
		if err != nil {
			return s, fmt.Errorf("kline %d: %w", i, err)
		}
		if n < 12 {
			s.Fields = FieldsOHLCV
		}
		s.Klines = append(s.Klines, k)
	}
	sortKlines(s.Klines)
	return s, nil
}

func readCapture(path string) ([]Series, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	type key struct{ sym, iv string }
	found := map[key]map[int64]kline.Kline{}
	frames := 0
	err = EachCapturedFrame(f, func(frame []byte) error {
		if !bytes.Contains(frame, []byte(`"e":"kline"`)) {
			return nil
		}
		frames++
		ev, err := binance.ParseKlineEvent(frame)
		if err != nil {
			return err
		}
		if !ev.K.Closed {
			return nil
		}
		k, err := ev.K.Kline()
		if err != nil {
			return err
		}
		kk := key{ev.K.Symbol, ev.K.Interval}
		if found[kk] == nil {
			found[kk] = map[int64]kline.Kline{}
		}
		found[kk][k.OpenTime] = k
		return nil
	})
	if err != nil {
		return nil, err
	}
	if frames == 0 {
		return nil, fmt.Errorf("no kline events found: not a kline file (.csv, .zip, .json) or a capture of kline stream frames")
	}
	var out []Series
	for kk, m := range found {
		s := Series{Symbol: kk.sym, Interval: kk.iv, Fields: FieldsWithIDs}
		for _, k := range m {
			s.Klines = append(s.Klines, k)
		}
		sortKlines(s.Klines)
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool {
		return out[i].Symbol+" "+out[i].Interval < out[j].Symbol+" "+out[j].Interval
	})
	return out, nil
}

// EachCapturedFrame calls fn with every JSON frame of a capture: lines of
// "<receive time>: <frame>", or bare frames; other lines are skipped.
func EachCapturedFrame(r io.Reader, fn func(frame []byte) error) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	line := 0
	for sc.Scan() {
		line++
		b := sc.Bytes()
		i := bytes.IndexByte(b, '{')
		if i < 0 {
			continue
		}
		if err := fn(b[i:]); err != nil {
			return fmt.Errorf("line %d: %w", line, err)
		}
	}
	return sc.Err()
}

func sortKlines(ks []kline.Kline) {
	sort.Slice(ks, func(i, j int) bool { return ks[i].OpenTime < ks[j].OpenTime })
}

// written is the number of decimals the number s is written with.
func written(s string) int {
	if dot := strings.IndexByte(s, '.'); dot >= 0 {
		return len(s) - dot - 1
	}
	return 0
}
