package binance

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"testing"
	"time"
)

// scripted answers each request with the next status of a script (200
// once it runs out), recording when each came.
type scripted struct {
	mu     sync.Mutex
	script []int
	banTil time.Time
	calls  int
}

func (s *scripted) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	status := http.StatusOK
	if s.calls < len(s.script) {
		status = s.script[s.calls]
	}
	s.calls++
	s.mu.Unlock()
	w.Header().Set("X-MBX-USED-WEIGHT-1M", "7")
	switch status {
	case http.StatusOK:
		io.WriteString(w, `{"serverTime":1700000000000}`)
	case http.StatusTeapot:
		w.WriteHeader(status)
		json.NewEncoder(w).Encode(ErrorBody{CodeTooManyRequests, BannedMsg("127.0.0.1", s.banTil)})
	case http.StatusForbidden:
		w.WriteHeader(status)
		io.WriteString(w, "<html>403 ERROR</html>")
	case http.StatusServiceUnavailable:
		w.WriteHeader(status)
		json.NewEncoder(w).Encode(ErrorBody{CodeOverloaded, "Server is currently overloaded with other requests."})
	default:
		w.WriteHeader(status)
		json.NewEncoder(w).Encode(ErrorBody{CodeDisconnected, "Timeout waiting for response from backend server."})
	}
}

func TestClientRetriesTransientAnswers(t *testing.T) {
	srv := &scripted{script: []int{http.StatusRequestTimeout, http.StatusServiceUnavailable, http.StatusBadGateway, http.StatusForbidden}}
	ts := httptest.NewServer(srv)
	defer ts.Close()
	c := NewClient(ts.URL, ts.Client(), 2400, slog.New(slog.DiscardHandler))
	c.backoff = time.Millisecond
	got, err := c.ServerTime(context.Background())
	if err != nil {
		t.Fatalf("408, 503, 502 and 403 should be retried: %v", err)
	}
	if got.UnixMilli() != 1700000000000 || srv.calls != 5 {
		t.Errorf("got %v after %d calls, want the time after 5", got, srv.calls)
	}
}

func TestClientGivesUpOnPersistentServerErrors(t *testing.T) {
	srv := &scripted{script: []int{500, 500, 500, 500, 500, 500, 500, 500, 500}}
	ts := httptest.NewServer(srv)
	defer ts.Close()
	c := NewClient(ts.URL, ts.Client(), 2400, slog.New(slog.DiscardHandler))
	c.backoff = time.Millisecond
	if _, err := c.ServerTime(context.Background()); err == nil {
		t.Fatal("8 server errors in a row should fail the request")
	}
	if srv.calls != maxAttempts {
		t.Errorf("%d calls, want %d", srv.calls, maxAttempts)
	}
}

func TestRefusedWaits(t *testing.T) {
	now := time.Date(2026, 11, 30, 12, 0, 15, 0, time.UTC)
	ban := now.Add(7 * time.Minute)
	cases := []struct {
		name   string
		status int
		header string
		msg    string
		want   time.Duration
	}{
		{"429 without Retry-After waits for the next window", 429, "", TooManyRequestsMsg("127.0.0.1", 2400), 45 * time.Second},
		{"429 with Retry-After", 429, "12", TooManyRequestsMsg("127.0.0.1", 2400), 12 * time.Second},
		{"418 says until when", 418, "", BannedMsg("127.0.0.1", ban), 7 * time.Minute},
		{"418 without a time bans the shortest ban", 418, "", "Way too many requests; IP banned.", 2 * time.Minute},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			wt := NewWeight(2400)
			wt.now = func() time.Time { return now }
			resp := &http.Response{StatusCode: tc.status, Header: http.Header{}}
			if tc.header != "" {
				resp.Header.Set("Retry-After", tc.header)
			}
			if got := wt.refused(resp, &APIError{Status: tc.status, Code: CodeTooManyRequests, Msg: tc.msg}); got != tc.want {
				t.Errorf("waits %v, want %v", got, tc.want)
			}
			if !wt.blocked.Equal(now.Add(tc.want)) {
				t.Errorf("blocked until %v, want %v", wt.blocked, now.Add(tc.want))
			}
		})
	}
}

func TestBannedUntil(t *testing.T) {
	until := time.UnixMilli(1727251000000)
	if got, ok := BannedUntil(BannedMsg("10.0.0.1", until)); !ok || !got.Equal(until) {
		t.Errorf("BannedUntil(%q) = %v, %v", BannedMsg("10.0.0.1", until), got, ok)
	}
	if _, ok := BannedUntil("Way too many requests; IP banned until " + strconv.Itoa(12) + "."); ok {
		t.Error("a short number is not a time")
	}
}
