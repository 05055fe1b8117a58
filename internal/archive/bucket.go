package archive

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// The archive's own addresses: the bucket lists from its S3 address, and
// its files come from the CDN in front of it.
const (
	ListURL = "https://s3-ap-northeast-1.amazonaws.com/data.binance.vision"
	FileURL = "https://data.binance.vision"
)

// Object is a file the archive lists.
type Object struct {
	Key      string // data/futures/um/…
	Size     int64
	Modified time.Time
}

// Bucket reads Binance's public archive (data.binance.vision): its S3
// bucket listing and its files, each checked against its .CHECKSUM. It
// reads from a base URL that answers both (as the bucket's own S3 address
// does), from a listing URL and a file URL apart (the archive itself), or
// from a local folder laid out like the archive, as other downloaders leave
// it.
type Bucket struct {
	list, files string // base URLs; "" with dir
	dir         string
	hc          *http.Client
	// Retries is how many times a request that failed for want of an
	// answer (a timeout, a 5xx, a 429) is tried again, waiting RetryWait,
	// twice that, … (at most 30 s) in between.
	Retries   int
	RetryWait time.Duration
}

// OpenBucket returns the bucket at from: a URL answering both the listing
// and the files, or a local folder; "" is Binance's archive itself.
func OpenBucket(from string, hc *http.Client) (*Bucket, error) {
	if hc == nil {
		hc = &http.Client{Timeout: time.Minute}
	}
	b := &Bucket{hc: hc, Retries: 5, RetryWait: time.Second}
	switch {
	case from == "":
		b.list, b.files = ListURL, FileURL
	case strings.HasPrefix(from, "http://") || strings.HasPrefix(from, "https://"):
		if _, err := url.Parse(from); err != nil {
			return nil, fmt.Errorf("archive: %q is not a URL: %w", from, err)
		}
		b.list, b.files = strings.TrimRight(from, "/"), strings.TrimRight(from, "/")
	default:
		st, err := os.Stat(from)
		if err != nil {
			return nil, fmt.Errorf("archive: %w (-from takes the archive's URL or a folder laid out like it)", err)
		}
		if !st.IsDir() {
			return nil, fmt.Errorf("archive: %s is not a folder (-from takes the archive's URL or a folder laid out like it)", from)
		}
		b.dir = from
	}
	return b, nil
}

// listResult is a page of S3's ListObjects (version 1) answer.
type listResult struct {
	IsTruncated    bool   `xml:"IsTruncated"`
	NextMarker     string `xml:"NextMarker"`
	CommonPrefixes []struct {
		Prefix string `xml:"Prefix"`
	} `xml:"CommonPrefixes"`
	Contents []struct {
		Key          string `xml:"Key"`
		LastModified string `xml:"LastModified"`
		Size         int64  `xml:"Size"`
	} `xml:"Contents"`
}

// List returns what the archive holds under prefix (ending in "/"): the
// folders one level down and the files, each sorted by name. It follows
// the listing's pages: a page is truncated after 1,000 entries and goes
// on from its NextMarker, or without one from its last entry.
func (b *Bucket) List(ctx context.Context, prefix string) (folders []string, files []Object, err error) {
	if b.dir != "" {
		return b.listDir(prefix)
	}
	marker := ""
	for page := 0; ; page++ {
		q := url.Values{"delimiter": {"/"}, "prefix": {prefix}}
		if marker != "" {
			q.Set("marker", marker)
		}
		body, err := b.get(ctx, b.list+"?"+q.Encode())
		if err != nil {
			return nil, nil, fmt.Errorf("archive: list %s: %w", prefix, err)
		}
		var r listResult
		if err := xml.Unmarshal(body, &r); err != nil {
			return nil, nil, fmt.Errorf("archive: list %s: the answer is not a bucket listing: %w", prefix, err)
		}
		last := ""
		for _, p := range r.CommonPrefixes {
			folders = append(folders, p.Prefix)
			last = max(last, p.Prefix)
		}
		for _, c := range r.Contents {
			t, _ := time.Parse(time.RFC3339, c.LastModified)
			files = append(files, Object{Key: c.Key, Size: c.Size, Modified: t})
			last = max(last, c.Key)
		}
		if !r.IsTruncated {
			break
		}
		next := r.NextMarker
		if next == "" {
			next = last
		}
		if next == "" || next <= marker {
			return nil, nil, fmt.Errorf("archive: list %s: page %d is truncated but says nowhere to go on from", prefix, page+1)
		}
		marker = next
	}
	sort.Strings(folders)
	sort.Slice(files, func(i, j int) bool { return files[i].Key < files[j].Key })
	return folders, files, nil
}

func (b *Bucket) listDir(prefix string) ([]string, []Object, error) {
	entries, err := os.ReadDir(filepath.Join(b.dir, filepath.FromSlash(prefix)))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil, nil // nothing there, as the bucket answers
	}
	if err != nil {
		return nil, nil, fmt.Errorf("archive: list %s: %w", prefix, err)
	}
	var folders []string
	var files []Object
	for _, e := range entries {
		if e.IsDir() {
			folders = append(folders, prefix+e.Name()+"/")
			continue
		}
		info, err := e.Info()
		if err != nil {
			return nil, nil, fmt.Errorf("archive: list %s: %w", prefix, err)
		}
		files = append(files, Object{Key: prefix + e.Name(), Size: info.Size(), Modified: info.ModTime()})
	}
	return folders, files, nil
}

// ErrChecksum is returned for a file whose bytes do not match its
// .CHECKSUM: a corrupt or half-uploaded file, to be read again later.
var ErrChecksum = errors.New("archive: the file does not match its checksum")

// Checksum returns the sha256 the archive's key.CHECKSUM gives for key.
func (b *Bucket) Checksum(ctx context.Context, key string) (string, error) {
	want, err := b.read(ctx, key+".CHECKSUM")
	if err != nil {
		return "", fmt.Errorf("archive: checksum of %s: %w", key, err)
	}
	// "<hex>  <name>", sometimes without a newline: the first token.
	fields := strings.Fields(string(want))
	if len(fields) == 0 || len(fields[0]) != 64 {
		return "", fmt.Errorf("archive: checksum of %s: %q is not a sha256", key, want)
	}
	return strings.ToLower(fields[0]), nil
}

// Fetch returns the file at key and its sha256 checksum, checked against
// the archive's key.CHECKSUM (a file without one is refused: nothing then
// says the bytes are whole).
func (b *Bucket) Fetch(ctx context.Context, key string) (data []byte, sum string, err error) {
	want, err := b.Checksum(ctx, key)
	if err != nil {
		return nil, "", err
	}
	data, err = b.read(ctx, key)
	if err != nil {
		return nil, "", fmt.Errorf("archive: %s: %w", key, err)
	}
	h := sha256.Sum256(data)
	sum = hex.EncodeToString(h[:])
	if sum != want {
		return nil, sum, fmt.Errorf("%w: %s has sha256 %s, its .CHECKSUM says %s", ErrChecksum, key, sum, want)
	}
	return data, sum, nil
}

// ErrNotFound is returned for a file the archive does not have.
var ErrNotFound = errors.New("archive: no such file")

func (b *Bucket) read(ctx context.Context, key string) ([]byte, error) {
	if b.dir != "" {
		data, err := os.ReadFile(filepath.Join(b.dir, filepath.FromSlash(key)))
		if errors.Is(err, os.ErrNotExist) {
			return nil, ErrNotFound
		}
		return data, err
	}
	return b.get(ctx, b.files+"/"+key)
}

// get reads url, trying again what failed for want of an answer.
func (b *Bucket) get(ctx context.Context, u string) ([]byte, error) {
	wait := b.RetryWait
	for attempt := 0; ; attempt++ {
		body, retry, err := b.getOnce(ctx, u)
		if err == nil || !retry || attempt >= b.Retries {
			return body, err
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(wait):
		}
		wait = min(2*wait, 30*time.Second)
	}
}

func (b *Bucket) getOnce(ctx context.Context, u string) (body []byte, retry bool, err error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, false, err
	}
	resp, err := b.hc.Do(req)
	if err != nil {
		return nil, ctx.Err() == nil, err
	}
	defer resp.Body.Close()
	body, err = io.ReadAll(resp.Body)
	switch {
	case err != nil:
		return nil, ctx.Err() == nil, err
	case resp.StatusCode == http.StatusNotFound || resp.StatusCode == http.StatusForbidden:
		// S3 answers 403 for a key that does not exist without list rights.
		return nil, false, ErrNotFound
	case resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode >= 500:
		return nil, true, fmt.Errorf("%s: %s", u, resp.Status)
	case resp.StatusCode != http.StatusOK:
		return nil, false, fmt.Errorf("%s: %s", u, resp.Status)
	}
	return body, false, nil
}

// KlinesPrefix is the folder of symbol's klines of interval iv ("1m") in
// the USDⓈ-M archive, monthly or daily.
func KlinesPrefix(symbol, iv string, monthly bool) string {
	period := "daily"
	if monthly {
		period = "monthly"
	}
	return "data/futures/um/" + period + "/klines/" + symbol + "/" + archiveInterval(iv) + "/"
}

// archiveInterval is iv as the archive spells it: "1M" is "1mo".
func archiveInterval(iv string) string {
	if iv == "1M" {
		return "1mo"
	}
	return iv
}
