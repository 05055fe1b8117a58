package archive

import (
	"archive/zip"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/xml"
	"errors"
	"net/http"
	"sort"
	"strings"
	"time"

	"github.com/klagg/klagg/internal/kline"
)

// KlinesZip returns an archive kline file named name (….zip) holding ks as
// the archive writes them: one CSV member of the same name, with the
// header row later files have when header is set.
func KlinesZip(name string, ks []kline.Kline, p kline.Precision, header bool) ([]byte, error) {
	csv := make([]byte, 0, 128*(len(ks)+1))
	if header {
		csv = append(csv, KlineHeader+"\n"...)
	}
	for i := range ks {
		csv = AppendKlineCSV(csv, &ks[i], p)
	}
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	w, err := zw.Create(strings.TrimSuffix(name, ".zip") + ".csv")
	if err != nil {
		return nil, err
	}
	if _, err := w.Write(csv); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// ChecksumFile returns the .CHECKSUM file of data named name, as the
// archive writes it: sha256 hex, two spaces, the name.
func ChecksumFile(data []byte, name string) []byte {
	h := sha256.Sum256(data)
	return []byte(hex.EncodeToString(h[:]) + "  " + name + "\n")
}

// Published is what a Server serves: the files published now.
type Published interface {
	// Keys returns every key published now, sorted.
	Keys() []Object
	// File returns the file at key, or ErrNotFound.
	File(key string) ([]byte, error)
}

// ListPage is the most entries a listing page holds, as S3's.
const ListPage = 1000

// Server answers as the archive's bucket does at its S3 address: GET
// with ?prefix=…&delimiter=/&marker=… lists, a page of at most ListPage
// folders and files after marker, truncated pages with a NextMarker; GET
// of a key returns the file, or S3's 404 NoSuchKey.
type Server struct {
	Files Published
}

func (s Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	key := strings.TrimPrefix(r.URL.Path, "/")
	if key != "" {
		data, err := s.Files.File(key)
		switch {
		case errors.Is(err, ErrNotFound):
			w.Header().Set("Content-Type", "application/xml")
			w.WriteHeader(http.StatusNotFound)
			w.Write([]byte(`<?xml version="1.0" encoding="UTF-8"?><Error><Code>NoSuchKey</Code><Message>The specified key does not exist.</Message><Key>` + xmlText(key) + `</Key></Error>`))
		case err != nil:
			http.Error(w, err.Error(), http.StatusInternalServerError)
		default:
			w.Header().Set("Content-Type", "application/zip")
			w.Write(data)
		}
		return
	}
	q := r.URL.Query()
	prefix, marker, delim := q.Get("prefix"), q.Get("marker"), q.Get("delimiter")
	type entry struct {
		key    string
		folder bool
		obj    Object
	}
	var entries []entry
	for _, o := range s.Files.Keys() {
		if !strings.HasPrefix(o.Key, prefix) {
			continue
		}
		rest := o.Key[len(prefix):]
		if i := strings.Index(rest, delim); delim != "" && i >= 0 {
			f := prefix + rest[:i+len(delim)]
			if f > marker && (len(entries) == 0 || entries[len(entries)-1].key != f) {
				entries = append(entries, entry{key: f, folder: true})
			}
			continue
		}
		if o.Key > marker {
			entries = append(entries, entry{key: o.Key, obj: o})
		}
	}
	sort.SliceStable(entries, func(i, j int) bool { return entries[i].key < entries[j].key })
	res := listPage{Xmlns: "http://s3.amazonaws.com/doc/2006-03-01/", Name: "data.binance.vision", Prefix: prefix, Marker: marker,
		MaxKeys: ListPage, Delimiter: delim}
	if len(entries) > ListPage {
		entries, res.IsTruncated = entries[:ListPage], true
		res.NextMarker = entries[len(entries)-1].key
	}
	for _, e := range entries {
		if e.folder {
			res.CommonPrefixes = append(res.CommonPrefixes, listPrefix{e.key})
			continue
		}
		res.Contents = append(res.Contents, listObject{Key: e.key, LastModified: e.obj.Modified.UTC().Format("2006-01-02T15:04:05.000Z"),
			ETag: `"` + e.key + `"`, Size: e.obj.Size, StorageClass: "STANDARD"})
	}
	w.Header().Set("Content-Type", "application/xml")
	w.Write([]byte(xml.Header))
	xml.NewEncoder(w).Encode(res)
}

// listPage is S3's ListObjects (version 1) answer, as written.
type listPage struct {
	XMLName        xml.Name     `xml:"ListBucketResult"`
	Xmlns          string       `xml:"xmlns,attr"`
	Name           string       `xml:"Name"`
	Prefix         string       `xml:"Prefix"`
	Marker         string       `xml:"Marker"`
	NextMarker     string       `xml:"NextMarker,omitempty"`
	MaxKeys        int          `xml:"MaxKeys"`
	Delimiter      string       `xml:"Delimiter,omitempty"`
	IsTruncated    bool         `xml:"IsTruncated"`
	Contents       []listObject `xml:"Contents"`
	CommonPrefixes []listPrefix `xml:"CommonPrefixes"`
}

type listObject struct {
	Key          string `xml:"Key"`
	LastModified string `xml:"LastModified"`
	ETag         string `xml:"ETag"`
	Size         int64  `xml:"Size"`
	StorageClass string `xml:"StorageClass"`
}

type listPrefix struct {
	Prefix string `xml:"Prefix"`
}

func xmlText(s string) string {
	var b strings.Builder
	xml.EscapeText(&b, []byte(s))
	return b.String()
}

// DailyKey and MonthlyKey are the keys of symbol's kline files of iv
// ("1m", …; "1M" is spelled "1mo") for the UTC day or month of t.
func DailyKey(symbol, iv string, t time.Time) string {
	return KlinesPrefix(symbol, iv, false) + symbol + "-" + archiveInterval(iv) + "-" + t.UTC().Format(time.DateOnly) + ".zip"
}

// MonthlyKey: see DailyKey.
func MonthlyKey(symbol, iv string, t time.Time) string {
	return KlinesPrefix(symbol, iv, true) + symbol + "-" + archiveInterval(iv) + "-" + t.UTC().Format("2006-01") + ".zip"
}
