package archive_test

import (
	"archive/zip"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/klagg/klagg/internal/archive"
	"github.com/klagg/klagg/internal/binance"
	"github.com/klagg/klagg/internal/kline"
	"github.com/klagg/klagg/internal/store/storetest"
)

// klinesZip is an archive kline file of ks, with the header row later
// files have when header is set.
func klinesZip(t *testing.T, name string, ks []kline.Kline, header bool) []byte {
	t.Helper()
	var csv bytes.Buffer
	if header {
		csv.WriteString("open_time,open,high,low,close,volume,close_time,quote_volume,count,taker_buy_volume,taker_buy_quote_volume,ignore\n")
	}
	for i := range ks {
		row := binance.AppendKlineArray(nil, &ks[i], kline.Precision{Price: 2, Qty: 3})
		// [t,"o",…,"0"] → t,o,…,0
		csv.WriteString(strings.NewReplacer("[", "", "]", "", `"`, "").Replace(string(row)) + "\n")
	}
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	w, err := zw.Create(strings.TrimSuffix(name, ".zip") + ".csv")
	if err != nil {
		t.Fatal(err)
	}
	w.Write(csv.Bytes())
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func checksum(data []byte, name string, newline bool) []byte {
	h := sha256.Sum256(data)
	s := hex.EncodeToString(h[:]) + "  " + name
	if newline {
		s += "\n"
	}
	return []byte(s)
}

// fakeBucket serves files as S3 and data.binance.vision do: a listing of
// at most page entries a page, marker-paged, with NextMarker on some pages
// and not on others, and each file; the first request for a file in flaky
// answers 503.
type fakeBucket struct {
	files map[string][]byte
	page  int
	mu    sync.Mutex
	flaky map[string]bool
}

func (f *fakeBucket) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	key := strings.TrimPrefix(r.URL.Path, "/")
	if key != "" {
		f.mu.Lock()
		flaky := f.flaky[key]
		delete(f.flaky, key)
		f.mu.Unlock()
		if flaky {
			http.Error(w, "slow down", http.StatusServiceUnavailable)
			return
		}
		data, ok := f.files[key]
		if !ok {
			http.Error(w, "<Error><Code>NoSuchKey</Code></Error>", http.StatusNotFound)
			return
		}
		w.Write(data)
		return
	}
	prefix, marker := r.URL.Query().Get("prefix"), r.URL.Query().Get("marker")
	var entries []string // folders end in "/"
	seen := map[string]bool{}
	for k := range f.files {
		if !strings.HasPrefix(k, prefix) {
			continue
		}
		rest := strings.TrimPrefix(k, prefix)
		if i := strings.Index(rest, "/"); i >= 0 {
			k = prefix + rest[:i+1]
		}
		if !seen[k] && k > marker {
			seen[k] = true
			entries = append(entries, k)
		}
	}
	sort.Strings(entries)
	truncated := len(entries) > f.page
	if truncated {
		entries = entries[:f.page]
	}
	var b strings.Builder
	fmt.Fprintf(&b, `<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>data.binance.vision</Name><Prefix>%s</Prefix><Marker>%s</Marker><MaxKeys>%d</MaxKeys><Delimiter>/</Delimiter><IsTruncated>%v</IsTruncated>`, prefix, marker, f.page, truncated)
	if truncated && len(marker)%2 == 0 { // now and then, as S3 does
		fmt.Fprintf(&b, "<NextMarker>%s</NextMarker>", entries[len(entries)-1])
	}
	for _, e := range entries {
		if strings.HasSuffix(e, "/") {
			fmt.Fprintf(&b, "<CommonPrefixes><Prefix>%s</Prefix></CommonPrefixes>", e)
		} else {
			fmt.Fprintf(&b, `<Contents><Key>%s</Key><LastModified>2026-02-01T08:01:02.000Z</LastModified><ETag>"x"</ETag><Size>%d</Size><StorageClass>STANDARD</StorageClass></Contents>`, e, len(f.files[e]))
		}
	}
	b.WriteString("</ListBucketResult>")
	w.Header().Set("Content-Type", "application/xml")
	w.Write([]byte(b.String()))
}

// TestBucket: the listing is read across its pages, a file is checked
// against its .CHECKSUM (with or without a newline), a 503 is tried again,
// and a folder laid out like the archive reads the same.
func TestBucket(t *testing.T) {
	const m = int64(60_000)
	ks := make([]kline.Kline, 30)
	for i := range ks {
		ks[i] = storetest.Kline(int64(i)*m, int64(i))
		ks[i].Closed, ks[i].FirstTradeID, ks[i].LastTradeID = true, -1, -1
	}
	dir := archive.KlinesPrefix("BTCUSDT", "1m", false)
	files := map[string][]byte{}
	var names []string
	for day := range 7 {
		name := fmt.Sprintf("BTCUSDT-1m-2026-02-%02d.zip", day+1)
		data := klinesZip(t, name, ks[day*4:day*4+4], day%2 == 0)
		files[dir+name] = data
		files[dir+name+".CHECKSUM"] = checksum(data, name, day%3 != 0)
		names = append(names, dir+name, dir+name+".CHECKSUM")
	}
	// A day uploaded corrupt: its checksum is of other bytes.
	bad := dir + "BTCUSDT-1m-2026-02-08.zip"
	files[bad] = klinesZip(t, "BTCUSDT-1m-2026-02-08.zip", ks[28:], true)
	files[bad+".CHECKSUM"] = checksum([]byte("other"), "BTCUSDT-1m-2026-02-08.zip", true)
	names = append(names, bad, bad+".CHECKSUM")
	sort.Strings(names)
	for _, sym := range []string{"ETHUSDT", "XRPUSDT", "BTCUSDT"} {
		files[archive.KlinesPrefix(sym, "1h", true)+"x.zip"] = []byte("x")
	}
	fb := &fakeBucket{files: files, page: 3, flaky: map[string]bool{dir + "BTCUSDT-1m-2026-02-03.zip": true}}
	srv := httptest.NewServer(fb)
	defer srv.Close()

	local := t.TempDir()
	for k, data := range files {
		p := filepath.Join(local, filepath.FromSlash(k))
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, from := range []string{srv.URL, local} {
		b, err := archive.OpenBucket(from, srv.Client())
		if err != nil {
			t.Fatal(err)
		}
		b.RetryWait = time.Millisecond
		ctx := context.Background()
		folders, _, err := b.List(ctx, "data/futures/um/monthly/klines/")
		if want := []string{"data/futures/um/monthly/klines/BTCUSDT/", "data/futures/um/monthly/klines/ETHUSDT/", "data/futures/um/monthly/klines/XRPUSDT/"}; err != nil || !reflect.DeepEqual(folders, want) {
			t.Fatalf("%s: folders %v %v, want %v", from, folders, err, want)
		}
		_, objs, err := b.List(ctx, dir)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, o := range objs {
			got = append(got, o.Key)
			if o.Size != int64(len(files[o.Key])) {
				t.Errorf("%s: %s listed with size %d, has %d", from, o.Key, o.Size, len(files[o.Key]))
			}
		}
		if !reflect.DeepEqual(got, names) {
			t.Fatalf("%s: listed\n%v\nwant\n%v", from, got, names)
		}
		var all []kline.Kline
		for day := range 7 {
			data, sum, err := b.Fetch(ctx, fmt.Sprintf("%sBTCUSDT-1m-2026-02-%02d.zip", dir, day+1))
			if err != nil || len(sum) != 64 {
				t.Fatalf("%s: day %d: %v", from, day+1, err)
			}
			day, err := archive.ParseKlinesZip(data)
			if err != nil {
				t.Fatal(err)
			}
			all = append(all, day...)
		}
		if !reflect.DeepEqual(all, ks[:28]) {
			t.Errorf("%s: the files' klines differ from those written:\n%+v\n%+v", from, all[0], ks[0])
		}
		if _, _, err := b.Fetch(ctx, bad); !errors.Is(err, archive.ErrChecksum) {
			t.Errorf("%s: a corrupt file: %v, want ErrChecksum", from, err)
		}
		if _, _, err := b.Fetch(ctx, dir+"BTCUSDT-1m-2026-03-01.zip"); !errors.Is(err, archive.ErrNotFound) {
			t.Errorf("%s: a file not there: %v, want ErrNotFound", from, err)
		}
	}
}

// TestParseKlinesZipDuplicates: a row a file repeats is kept once; two
// different rows for one minute are an error.
func TestParseKlinesZipDuplicates(t *testing.T) {
	k := storetest.Kline(0, 1)
	k.Closed, k.FirstTradeID, k.LastTradeID = true, -1, -1
	k2 := storetest.Kline(60_000, 2)
	k2.Closed, k2.FirstTradeID, k2.LastTradeID = true, -1, -1
	got, err := archive.ParseKlinesZip(klinesZip(t, "a.zip", []kline.Kline{k, k2, k2}, true))
	if err != nil || len(got) != 2 {
		t.Fatalf("got %d klines, %v; want 2", len(got), err)
	}
	other := k2
	other.Trades++
	if _, err := archive.ParseKlinesZip(klinesZip(t, "a.zip", []kline.Kline{k, k2, other}, false)); err == nil {
		t.Error("two different rows for one minute were taken")
	}
	if _, err := archive.ParseKlinesZip([]byte("not a zip")); err == nil {
		t.Error("a corrupt zip was taken")
	}
}
