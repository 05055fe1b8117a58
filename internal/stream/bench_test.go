package stream

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/klagg/klagg/internal/kline"
)

// BenchmarkFanout: 1,000 WebSocket clients over loopback with 10 streams
// each (1,000 symbols, 10 subscribers per stream). Each iteration changes
// every stream once, as 1,000 symbols trading do; the push loop coalesces.
// The clients only drain their sockets, as cheaply as they can, because
// they share the machine with the server. Reported: events written to
// clients per second, and the server's p99 from an event's push to its
// write to the socket.
func BenchmarkFanout(b *testing.B) {
	const symbols, clients, perClient = 1000, 1000, 10
	name := func(i int) string { return fmt.Sprintf("S%04dUSDT", i) }
	s := New(Config{PushInterval: 100 * time.Millisecond, Intervals: []kline.Interval{oneMin}, ClientBuffer: 4096,
		Symbol: func(string) (Market, bool) { return Market{Precision: kline.Precision{Price: 2, Qty: 3}}, true }})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go s.Run(ctx)
	hs := httptest.NewServer(s)
	defer hs.Close()

	var wg sync.WaitGroup
	var received atomic.Int64
	for c := range clients {
		var names []string
		for j := range perClient {
			names = append(names, strings.ToLower(name((c*perClient+j)%symbols))+"@kline_1m")
		}
		conn, err := rawDial(hs.Listener.Addr().String(), "/market/ws/"+strings.Join(names, "/"))
		if err != nil {
			b.Fatal(err)
		}
		defer conn.Close()
		wg.Go(func() {
			buf := make([]byte, 64<<10)
			for {
				n, err := conn.Read(buf)
				received.Add(int64(n))
				if err != nil {
					return
				}
			}
		})
	}
	for s.Stats().Clients.Load() < clients {
		runtimeGosched()
	}
	us := make([]kline.Update, symbols)
	events := s.Stats().Events.Load()
	start := time.Now()
	for i := 0; b.Loop(); i++ {
		for j := range us {
			us[j] = update(name(j), oneMin, 60_000, int64(i+1), false)
		}
		s.Publish(us)
		time.Sleep(time.Millisecond) // a market's pace, not a sync: 1,000 changes a millisecond
	}
	elapsed := time.Since(start)
	b.StopTimer()
	events = s.Stats().Events.Load() - events
	var m strings.Builder
	s.WritePrometheus(&m)
	cancel()
	hs.CloseClientConnections()
	wg.Wait()
	if received.Load() == 0 {
		b.Fatal("no event received")
	}
	b.ReportMetric(float64(events)/elapsed.Seconds(), "events/s")
	b.ReportMetric(quantile(b, m.String(), "0.99")*1000, "p99-ms")
	b.ReportMetric(float64(s.Stats().Dropped.Load()), "dropped")
}

// rawDial opens a WebSocket to path by hand, so that reading it costs the
// benchmark no more than reading a socket.
func rawDial(addr, path string) (net.Conn, error) {
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n", path, addr)
	resp, err := http.ReadResponse(bufio.NewReaderSize(conn, 256), nil)
	if err == nil && resp.StatusCode != http.StatusSwitchingProtocols {
		err = fmt.Errorf("status %s", resp.Status)
	}
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("handshake for %s: %w", path, err)
	}
	return conn, nil
}

// quantile reads one quantile of the event delay from the server's metrics.
func quantile(b *testing.B, metrics, q string) float64 {
	prefix := `klagg_stream_event_delay_seconds{quantile="` + q + `"} `
	for line := range strings.Lines(metrics) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), prefix); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				b.Fatal(err)
			}
			return f
		}
	}
	b.Fatalf("no %s in\n%s", prefix, metrics)
	return 0
}
