package stream

import (
	"bytes"
	"context"
	"fmt"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/klagg/klagg/internal/kline"
)

// BenchmarkFanout: 1,000 WebSocket clients over loopback with 10 streams
// each (1,000 symbols, 10 subscribers per stream). Each iteration changes
// every stream once, as 1,000 symbols trading do; the push loop coalesces.
// Reported: events written to clients per second, and p99 from an event's
// time (when the push loop encoded it) to its arrival at the client.
func BenchmarkFanout(b *testing.B) {
	const symbols, clients, perClient = 1000, 1000, 10
	name := func(i int) string { return fmt.Sprintf("S%04dUSDT", i) }
	s := New(Config{PushInterval: 100 * time.Millisecond, Intervals: []kline.Interval{oneMin}, ClientBuffer: 4096,
		Symbol: func(string) (kline.Precision, bool) { return kline.Precision{Price: 2, Qty: 3}, true }})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go s.Run(ctx)
	hs := httptest.NewServer(s)
	defer hs.Close()
	url := "ws" + strings.TrimPrefix(hs.URL, "http") + "/market/ws/"

	var mu sync.Mutex
	var lat []time.Duration
	var wg sync.WaitGroup
	received := 0
	for c := range clients {
		var names []string
		for j := range perClient {
			names = append(names, strings.ToLower(name((c*perClient+j)%symbols))+"@kline_1m")
		}
		conn, _, err := websocket.Dial(ctx, url+strings.Join(names, "/"), nil)
		if err != nil {
			b.Fatal(err)
		}
		defer conn.CloseNow()
		wg.Go(func() {
			var mine []time.Duration
			for {
				_, msg, err := conn.Read(ctx)
				if err != nil {
					break
				}
				if i := bytes.Index(msg, []byte(`"E":`)); i >= 0 {
					end := i + 4 + bytes.IndexByte(msg[i+4:], ',')
					if e, err := strconv.ParseInt(string(msg[i+4:end]), 10, 64); err == nil {
						mine = append(mine, time.Since(time.UnixMilli(e)))
					}
				}
			}
			mu.Lock()
			lat = append(lat, mine...)
			received += len(mine)
			mu.Unlock()
		})
	}
	for s.Stats().Clients.Load() < clients {
		runtimeGosched()
	}
	us := make([]kline.Update, symbols)
	start := time.Now()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		for j := range us {
			us[j] = update(name(j), oneMin, 60_000, int64(i+1), false)
		}
		s.Publish(us)
		time.Sleep(time.Millisecond) // a market's pace, not a sync: 1,000 changes a millisecond
	}
	elapsed := time.Since(start)
	b.StopTimer()
	cancel()
	hs.CloseClientConnections()
	wg.Wait()
	slices.Sort(lat)
	if len(lat) == 0 {
		b.Fatal("no event received")
	}
	b.ReportMetric(float64(received)/elapsed.Seconds(), "events/s")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
	b.ReportMetric(float64(s.Stats().Dropped.Load()), "dropped")
}
