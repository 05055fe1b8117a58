package e2e

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/klagg/klagg/internal/fakex"
)

// TestPipeliningClients: with the open-file limit at 120, 110 clients
// that pipeline large klines requests and never read the answers must not
// make klagg unresponsive: a client that reads is served at once, and
// klagg keeps file descriptors for its own work.
func TestPipeliningClients(t *testing.T) {
	r := newRun(t, fakex.Config{Symbols: 4}, "")
	r.bin = filepath.Join(r.dir, "klagg-ulimit")
	if err := os.WriteFile(r.bin, []byte("#!/bin/sh\nulimit -n 120 || exit 1\nexec "+klaggBin+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	r.startKlagg()
	r.until(2 * time.Minute)
	host := strings.TrimPrefix(r.base, "http://")
	flood := []byte(strings.Repeat("GET /fapi/v1/klines?symbol=S001USDT&interval=1m&limit=1500 HTTP/1.1\r\nHost: klagg\r\n\r\n", 50))
	var attackers []net.Conn
	defer func() {
		for _, c := range attackers {
			c.Close()
		}
	}()
	for range 110 {
		c, err := net.Dial("tcp", host)
		if err != nil {
			continue // closed at the cap: what the cap is for
		}
		attackers = append(attackers, c)
		c.SetWriteDeadline(time.Now().Add(2 * time.Second))
		c.Write(flood) // and never read
	}
	client := &http.Client{Timeout: 5 * time.Second}
	get := func() error {
		resp, err := client.Get(r.base + "/fapi/v1/klines?symbol=S001USDT&interval=1m&limit=10")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if _, err := io.ReadAll(resp.Body); err != nil {
			return err
		}
		if resp.StatusCode != 200 {
			return fmt.Errorf("answered %s", resp.Status)
		}
		return nil
	}
	// The attackers' writes count as stalled after a second; until then a
	// newcomer may find no place.
	deadline := time.Now().Add(15 * time.Second)
	for err := get(); err != nil; err = get() {
		if time.Now().After(deadline) {
			t.Fatalf("a client that reads is not served while others pipeline and never read: %v", err)
		}
	}
	for i := range 5 {
		if err := get(); err != nil {
			t.Fatalf("request %d after the first: %v", i, err)
		}
	}
	m, err := r.k.Metrics()
	if err != nil {
		t.Fatal(err)
	}
	if open := m.Value("klagg_http_connections"); open > 120-64 {
		t.Errorf("%v connections open, over the open-file limit less the reserve", open)
	}
	t.Logf("connections: %v open, %v refused, %v evicted", m.Value("klagg_http_connections"),
		m.Value("klagg_http_connections_refused_total"), m.Value("klagg_http_connections_evicted_total"))
	if m.Value("klagg_http_connections_evicted_total") == 0 {
		t.Error("no stalled connection gave its place")
	}
	if !r.logged("the open-file limit is low") {
		t.Error("klagg did not say that the open-file limit cut its connections")
	}
	r.stop()
}
