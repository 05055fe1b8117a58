package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/klagg/klagg/internal/bus"
	"github.com/klagg/klagg/internal/cluster"
	"github.com/klagg/klagg/internal/fakex"
	"github.com/klagg/klagg/internal/klaggproc"
)

// runBlast measures klagg's ingest ceiling and latency: a minimal exchange
// whose WebSocket sends aggTrade frames as fast as klagg takes them (or at
// -rate), with klagg's real binary reading them.
func runBlast(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("blast", flag.ContinueOnError)
	fs.SetOutput(stderr)
	bin := fs.String("klagg", "", "path to the klagg binary (go build -o /tmp/klagg ./cmd/klagg)")
	symbols := fs.Int("symbols", 1000, "symbols")
	rate := fs.Float64("rate", 0, "trades per second over all symbols (0: as fast as klagg reads)")
	dur := fs.Duration("duration", 20*time.Second, "how long to measure after a warm-up")
	warm := fs.Duration("warmup", 5*time.Second, "time after klagg is live before measuring")
	intervals := fs.String("intervals", "1m,3m,5m,15m,30m,1h,2h,4h,6h,8h,12h,1d,3d,1w,1M", "klagg's intervals")
	writeEvery := fs.Duration("write-every", time.Second, "klagg's database.write_every")
	clients := fs.Int("clients", 0, "WebSocket clients reading klagg's kline streams")
	perClient := fs.Int("streams", 10, "streams per client")
	kind := fs.String("stream", "kline_1m", "the clients' stream: kline_<interval> or aggTrade")
	clientWeight := fs.Int("client-weight", 2400, "klagg's server.weight_per_minute, the per-client REST budget (0: none)")
	natsURL := fs.String("cluster", "", "run klagg as a one-node cluster on this NATS server (its klagg stream and buckets are deleted first), with -postgres")
	pgURL := fs.String("postgres", "", "with -cluster: klagg's database.url")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *bin == "" {
		return fmt.Errorf("blast: -klagg is required")
	}
	b, err := fakex.NewBlaster(*symbols, *rate)
	if err != nil {
		return err
	}
	defer b.Close()

	dir, err := os.MkdirTemp("", "klagg-blast")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	clusterConf := ""
	if *natsURL != "" {
		if *pgURL == "" {
			return fmt.Errorf("blast: -cluster needs -postgres")
		}
		if err := wipeCluster(*natsURL); err != nil {
			return err
		}
		if err := ensureSchema(*pgURL); err != nil {
			return err
		}
		clusterConf = fmt.Sprintf("url = %q\n[cluster]\nnats_url = %q\nnode = \"blast\"\n", *pgURL, *natsURL)
	}
	k, err := startKlagg(*bin, dir, fmt.Sprintf(`[exchange]
rest_url = "%[1]s"
ws_url = "%[5]s"
weight_per_minute = 1000000
[klines]
intervals = [%[2]s]
backfill_limit = 0
[reconcile]
enabled = false
[server]
listen = "127.0.0.1:0"
weight_per_minute = %[6]d
[log]
status_interval = "5s"
[database]
path = %[4]q
write_every = %[3]q
%[7]s`, b.URL(), quoteList(*intervals), writeEvery.String(), filepath.Join(dir, "k.db"), b.WSURL(), *clientWeight, clusterConf))
	if err != nil {
		return err
	}
	defer k.Stop(time.Minute)
	fmt.Fprintf(stdout, "klagg live with %d symbols after %s\n", *symbols, k.LiveAfter().Round(time.Millisecond))
	readers, err := dialReaders(k.Base(), *clients, *perClient, *kind, b.Symbols())
	if err != nil {
		return err
	}
	defer readers.close()
	if *clients > 0 {
		fmt.Fprintf(stdout, "%d clients reading %d %s streams each\n", *clients, *perClient, *kind)
	}

	time.Sleep(*warm)
	st0, err := k.Status()
	if err != nil {
		return err
	}
	m0, err := k.Metrics()
	if err != nil {
		return err
	}
	t0, sent0, read0 := time.Now(), b.Sent(), readers.bytes.Load()
	var rssMax int
	for end := t0.Add(*dur); time.Now().Before(end); time.Sleep(time.Second) {
		rssMax = max(rssMax, rssMB(k.Pid()))
	}
	st1, err := k.Status()
	if err != nil {
		return err
	}
	secs := time.Since(t0).Seconds()
	m1, err := k.Metrics()
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "offered %.0f trades/s; klagg applied %.0f trades/s (%d frames, %d malformed); writer backlog %d; RSS max %d MB\n",
		float64(b.Sent()-sent0)/secs, float64(st1.Trades-st0.Trades)/secs, st1.Frames-st0.Frames, st1.Malformed, st1.WriterBacklog, rssMax)
	fmt.Fprintf(stdout, "trade arrival → kline update handed to consumers (last minute): %s\n", m1.Quantiles("klagg_trade_to_consumer_seconds"))
	if *clients > 0 {
		fmt.Fprintf(stdout, "stream events %.0f/s, %.1f MB/s read by the clients, %g clients dropped; push → socket (last minute): %s\n",
			(m1.Value("klagg_stream_events_total")-m0.Value("klagg_stream_events_total"))/secs,
			float64(readers.bytes.Load()-read0)/secs/1e6, m1.Value("klagg_stream_clients_dropped_total"),
			m1.Quantiles("klagg_stream_event_delay_seconds"))
	}
	return nil
}

// readers are WebSocket clients of klagg that only drain their sockets:
// they share the machine with klagg, so they must cost as little as they can.
type readers struct {
	conns []net.Conn
	bytes atomic.Int64
}

// dialReaders connects n clients to klagg at base, each subscribed to
// perClient streams of kind (kline_1m, aggTrade…), spread over the symbols.
func dialReaders(base string, n, perClient int, kind string, symbols []string) (*readers, error) {
	r := &readers{}
	addr := strings.TrimPrefix(base, "http://")
	for c := range n {
		names := make([]string, perClient)
		for j := range names {
			names[j] = strings.ToLower(symbols[(c*perClient+j)%len(symbols)]) + "@" + kind
		}
		conn, err := dialRaw(addr, "/market/ws/"+strings.Join(names, "/"))
		if err != nil {
			r.close()
			return nil, fmt.Errorf("client %d: %w", c, err)
		}
		r.conns = append(r.conns, conn)
		go func() {
			buf := make([]byte, 64<<10)
			for {
				n, err := conn.Read(buf)
				r.bytes.Add(int64(n))
				if err != nil {
					return
				}
			}
		}()
	}
	return r, nil
}

func (r *readers) close() {
	for _, c := range r.conns {
		c.Close()
	}
}

// dialRaw opens a WebSocket by hand; a frame's bytes are all a reader needs.
func dialRaw(addr, path string) (net.Conn, error) {
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n", path, addr)
	// Byte by byte, so that no frame after the response is read into a
	// buffer and lost.
	resp, err := http.ReadResponse(bufio.NewReaderSize(conn, 16), nil)
	if err == nil && resp.StatusCode != http.StatusSwitchingProtocols {
		err = fmt.Errorf("status %s", resp.Status)
	}
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("WebSocket handshake for %s: %w", path, err)
	}
	return conn, nil
}

func quoteList(csv string) string {
	return `"` + strings.Join(strings.Split(csv, ","), `","`) + `"`
}

// startKlagg runs bin with config (written to dir) and waits until it logs
// that it is live.
func startKlagg(bin, dir, config string) (*klaggproc.Proc, error) {
	conf := filepath.Join(dir, "klagg.toml")
	if err := os.WriteFile(conf, []byte(config), 0o644); err != nil {
		return nil, err
	}
	k, err := klaggproc.Start(bin, conf)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	if err := k.WaitLive(ctx); err != nil {
		k.Kill()
		return nil, err
	}
	return k, nil
}

// wipeCluster deletes klagg's stream and buckets on the NATS server at url:
// the blaster's trade ids start afresh each run, and checkpoints of an
// earlier run would name ids it has not sent.
func wipeCluster(url string) error {
	nc, err := nats.Connect(url)
	if err != nil {
		return fmt.Errorf("blast: %w", err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, del := range []func() error{
		func() error { return js.DeleteStream(ctx, bus.Stream) },
		func() error { return js.DeleteKeyValue(ctx, cluster.LiveBucket) },
		func() error { return js.DeleteKeyValue(ctx, cluster.NodesBucket) },
	} {
		if err := del(); err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) && !errors.Is(err, jetstream.ErrBucketNotFound) {
			return fmt.Errorf("blast: wiping klagg's state on %s: %w", url, err)
		}
	}
	return nil
}

// ensureSchema creates the schema database url's search_path names, if it
// names one: klagg refuses a search_path without its schema.
func ensureSchema(url string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		return fmt.Errorf("blast: -postgres: %w", err)
	}
	schema := cfg.RuntimeParams["search_path"]
	if schema == "" {
		return nil
	}
	delete(cfg.RuntimeParams, "search_path")
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return fmt.Errorf("blast: -postgres: %w", err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE SCHEMA IF NOT EXISTS "+pgx.Identifier{schema}.Sanitize()); err != nil {
		return fmt.Errorf("blast: creating schema %s: %w", schema, err)
	}
	return nil
}
