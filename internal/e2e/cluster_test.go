package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	neturl "net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/klagg/klagg/internal/binance"
	"github.com/klagg/klagg/internal/bus"
	"github.com/klagg/klagg/internal/cluster"
	"github.com/klagg/klagg/internal/fakex"
	"github.com/klagg/klagg/internal/klaggproc"
	"github.com/klagg/klagg/internal/kline"
	"github.com/klagg/klagg/internal/store/postgres"
)

var natsBin struct {
	once sync.Once
	path string
	err  error
}

// natsServer starts a nats-server binary, built once from the pinned
// module, with JetStream in a folder of the test's; it is killed at the
// end of the test.
func natsServer(t testing.TB) string {
	t.Helper()
	natsBin.once.Do(func() {
		dir, err := os.MkdirTemp("", "klagg-nats")
		if err != nil {
			natsBin.err = err
			return
		}
		natsBin.path = filepath.Join(dir, "nats-server")
		out, err := exec.Command("go", "build", "-o", natsBin.path, "github.com/nats-io/nats-server/v2").CombinedOutput()
		if err != nil {
			natsBin.err = fmt.Errorf("build nats-server: %v\n%s", err, out)
		}
	})
	if natsBin.err != nil {
		t.Fatal(natsBin.err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	cmd := exec.Command(natsBin.path, "-a", "127.0.0.1", "-p", fmt.Sprint(port), "-js", "-sd", t.TempDir())
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	url := fmt.Sprintf("nats://127.0.0.1:%d", port)
	for deadline := time.Now().Add(30 * time.Second); ; {
		nc, err := nats.Connect(url)
		if err == nil {
			nc.Close()
			return url
		}
		if time.Now().After(deadline) {
			t.Fatalf("nats-server at %s did not come up: %v", url, err)
		}
		time.Sleep(50 * time.Millisecond) // polling a starting process, not synchronizing the test
	}
}

// node is one klagg of a cluster run.
type node struct {
	name, conf string
	k          *klaggproc.Proc
	earlier    []string
}

// startNode runs a node and waits until it is live.
func (r *run) startNode(n *node) {
	r.t.Helper()
	if n.k != nil {
		n.earlier = append(n.earlier, n.k.Lines()...)
	}
	k, err := klaggproc.Start(klaggBin, n.conf, "LOG_LEVEL=debug")
	if err != nil {
		r.t.Fatal(err)
	}
	n.k = k
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := k.WaitReady(ctx); err != nil {
		r.t.Fatalf("%s: %v", n.name, err)
	}
}

// owners watches the lease bucket from the start and records each
// symbol's owners in order.
type owners struct {
	mu  sync.Mutex
	seq map[string][]string // symbol → owners, one entry per change
	cur map[string]string
}

func watchOwners(t testing.TB, url string, replicas int) *owners {
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, _ := jetstream.New(nc)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	b, err := cluster.EnsureBuckets(ctx, js, replicas)
	if err != nil {
		t.Fatal(err)
	}
	w, err := b.Live.WatchAll(ctx)
	if err != nil {
		t.Fatal(err)
	}
	o := &owners{seq: map[string][]string{}, cur: map[string]string{}}
	go func() {
		for e := range w.Updates() {
			if e == nil || e.Operation() != jetstream.KeyValuePut {
				continue
			}
			var c struct {
				Owner  string `json:"owner"`
				Symbol string `json:"s"`
			}
			json.Unmarshal(e.Value(), &c)
			o.mu.Lock()
			if o.cur[c.Symbol] != c.Owner {
				o.cur[c.Symbol] = c.Owner
				o.seq[c.Symbol] = append(o.seq[c.Symbol], c.Owner)
			}
			o.mu.Unlock()
		}
	}()
	return o
}

// snapshot returns each symbol's owners so far, in order.
func (o *owners) snapshot() map[string][]string {
	o.mu.Lock()
	defer o.mu.Unlock()
	out := map[string][]string{}
	for sym, seq := range o.seq {
		out[sym] = slices.Clone(seq)
	}
	return out
}

// waitOwns waits until node owns every one of syms.
func (o *owners) waitOwns(t testing.TB, node string, syms []string) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		missing := 0
		cur := o.owned()
		for _, sym := range syms {
			if !slices.Contains(cur[node], sym) {
				missing++
			}
		}
		if missing == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s owns %v a minute after its restart, want %v too", node, cur[node], syms)
		}
		time.Sleep(50 * time.Millisecond) // polling the lease watch's record
	}
}

// waitSplit waits until each of syms is owned by the node rendezvous
// hashing gives it among nodes: the cluster has settled (a node that joined
// late has taken its share from the others).
func (o *owners) waitSplit(t testing.TB, nodes []*node, syms []string) {
	t.Helper()
	var names []string
	for _, n := range nodes {
		names = append(names, n.name)
	}
	deadline := time.Now().Add(time.Minute)
	for {
		o.mu.Lock()
		off := map[string]string{}
		for _, sym := range syms {
			if owner, want := o.cur[sym], cluster.Pick(sym, names); owner != want {
				off[sym] = fmt.Sprintf("%q, not %s", owner, want)
			}
		}
		settled := len(off) == 0
		o.mu.Unlock()
		if settled {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the symbols' owners have not settled a minute after the start: %v", off)
		}
		time.Sleep(50 * time.Millisecond) // polling the lease watch's record
	}
}

// owned returns the symbols each node owns now.
func (o *owners) owned() map[string][]string {
	o.mu.Lock()
	defer o.mu.Unlock()
	out := map[string][]string{}
	for sym, n := range o.cur {
		out[n] = append(out[n], sym)
	}
	return out
}

// startCluster writes the configs of three nodes taking every role on the
// NATS servers at urls (comma-separated), with extra keys of [cluster],
// and starts them.
func (r *run) startCluster(urls, extra string) []*node {
	t := r.t
	data, err := os.ReadFile(r.conf)
	if err != nil {
		t.Fatal(err)
	}
	nodes := make([]*node, 3)
	for i := range nodes {
		n := &node{name: fmt.Sprintf("node-%d", i+1), conf: filepath.Join(r.dir, fmt.Sprintf("node-%d.toml", i+1))}
		// Six processes and three NATS servers share two cores, at 60
		// simulated seconds a second: the fake exchange's trades and REST
		// can lag its clock by a few simulated seconds, so klines close
		// 10 s and are reconciled 30 s after their end (simulated; 170 and
		// 500 ms of real time), where a real exchange needs 2 s and 3 s.
		conf := strings.Replace(string(data), `delay = "500ms"`, `delay = "30s"`, 1)
		conf = strings.Replace(conf, "backfill_limit = 100", "backfill_limit = 100\ngrace = \"10s\"", 1)
		cfg := conf + fmt.Sprintf("\n[cluster]\nnats_url = %q\nnode = %q\nstaleness = \"2s\"\n%s\n", urls, n.name, extra)
		if err := os.WriteFile(n.conf, []byte(cfg), 0o644); err != nil {
			t.Fatal(err)
		}
		nodes[i] = n
	}
	t.Cleanup(func() {
		for _, n := range nodes {
			if n.k == nil {
				continue
			}
			n.k.Kill()
			if t.Failed() {
				lines := append(n.earlier, n.k.Lines()...)
				t.Logf("%s log (last 40 lines):\n%s", n.name, strings.Join(lines[max(0, len(lines)-40):], "\n"))
				if dir := os.Getenv("KLAGG_E2E_LOGS"); dir != "" {
					os.WriteFile(filepath.Join(dir, n.name+".log"), []byte(strings.Join(lines, "\n")), 0o644)
				}
			}
		}
	})
	var wg sync.WaitGroup
	for _, n := range nodes {
		wg.Go(func() { r.startNode(n) })
	}
	wg.Wait()
	return nodes
}

// clusterWeight is the exchange's REST weight per minute in the cluster
// tests: at 60 simulated seconds a second, reconciling 30 symbols' 1m
// klines alone costs 1,800 weight a real minute, which the real exchange
// spreads over an hour; the nodes split what there is.
const clusterWeight = 24_000

// TestCluster runs three klagg nodes, each taking every role, on one NATS
// server and the local PostgreSQL, and kills the node that owns the most
// symbols with kill -9 in the middle of a minute, then restarts it. Its
// symbols move to the other two, which resume them from their checkpoints:
// every closed kline of every interval in PostgreSQL equals the exchange's,
// with no gap, and each symbol's lease changed owner only at the kill (and
// never flapped).
func TestCluster(t *testing.T) {
	r := newRun(t, fakex.Config{Symbols: 30, WeightPerMinute: clusterWeight}, "")
	r.appendExchange(fmt.Sprintf("weight_per_minute = %d", clusterWeight))
	r.usePostgres()
	url := natsServer(t)
	own := watchOwners(t, url, 1)
	nodes := r.startCluster(url, "")
	r.liveAt = r.x.Now()
	syms := r.trading()
	watchers := watchAll(t, nodes, syms)
	// Ownership is judged from the settled split: a node that joined a
	// little after the others takes its share from them first.
	own.waitSplit(t, nodes, syms)
	start := own.snapshot()
	r.until(3*time.Minute + 30*time.Second)
	byNode := own.owned()
	victim, moved := busiest(byNode, nodes)
	if len(moved) == 0 || len(byNode[""]) > 0 {
		t.Fatalf("owners before the kill: %v", byNode)
	}
	t.Logf("owners: %v; killing %s", byNode, victim.name)
	victim.k.Kill()
	r.until(6 * time.Minute)
	after := own.owned()
	if len(after[victim.name]) > 0 {
		t.Fatalf("%v still owned by the killed %s", after[victim.name], victim.name)
	}
	r.startNode(victim)
	// Restarted, it takes back from the live nodes the symbols
	// rendezvous hashing gives it, once it has stood by for them: from
	// its own buffer, without REST.
	own.waitOwns(t, victim.name, moved)
	resumed := 0
	for _, l := range victim.k.Lines() {
		if !strings.Contains(l, "symbol resumed from a checkpoint") {
			continue
		}
		resumed++
		if !strings.Contains(l, "from_buffer=true") {
			t.Errorf("%s took a symbol back from REST, not from its buffer: %s", victim.name, l)
		}
	}
	// (Those without a trade since their seed, a halted one, resume
	// quietly.)
	if resumed == 0 || resumed > len(moved) {
		t.Errorf("%s resumed %d symbols from checkpoints, taking back %d", victim.name, resumed, len(moved))
	}
	end := r.x.Now().Sub(r.liveAt).Truncate(time.Minute) + 3*time.Minute
	r.until(end)
	published := streamLast(t, url)
	// The killed node's sink held messages it had fetched: they go to the
	// other sinks after bus.AckWait. REST reads PostgreSQL, so it is
	// compared once they are stored.
	waitStored(t, url, published)
	for _, n := range nodes {
		checkREST(t, r, n.name, n.k.Base(), syms)
		// Each sends its open klines to the others, and hands on theirs.
		m, err := n.k.Metrics()
		if err != nil {
			t.Fatal(err)
		}
		if sent, fed := m.Value("klagg_bus_open_klines_sent_total"), m.Value("klagg_cluster_klines_fed_total"); sent == 0 || fed == 0 {
			t.Errorf("%s sent %v open klines and handed on %v of other nodes'", n.name, sent, fed)
		}
	}
	// Each node hands its symbols to those still running as it stops:
	// ownership is judged up to here.
	seqs := own.snapshot()
	for _, n := range nodes {
		if err := n.k.Stop(time.Minute); err != nil {
			t.Fatalf("%s did not exit 0 on SIGTERM: %v", n.name, err)
		}
	}
	// The klines the last node published as it stopped wait in the stream
	// for a sink: one started now writes them, as the next start would.
	drainStream(t, url, r.pgURL)
	r.check(end)
	for i, n := range nodes {
		if n == victim {
			continue
		}
		watchers[i].check(t, r, n.name, syms)
	}
	for sym, seq := range seqs {
		// Ownership moved only at the kill and back after the restart.
		seq = seq[max(0, len(start[sym])-1):]
		switch {
		case slices.Contains(moved, sym):
			if len(seq) != 3 || seq[0] != victim.name || seq[1] == victim.name || seq[2] != victim.name {
				t.Errorf("%s, owned by the killed node, has owners %v", sym, seq)
			}
		case len(seq) != 1:
			t.Errorf("%s changed owner %d times: %v", sym, len(seq)-1, seq)
		}
	}
}

// drainStream runs a sink into the PostgreSQL at pgURL until the cluster's
// sink consumer has nothing left to deliver.
func drainStream(t *testing.T, url, pgURL string) {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	db, err := postgres.Open(context.Background(), pgURL)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	sink := bus.NewSink(js, db, bus.SinkDurable, slog.New(slog.DiscardHandler))
	done := make(chan error, 1)
	sctx, stop := context.WithCancel(ctx)
	go func() { done <- sink.Run(sctx) }()
	defer func() { stop(); <-done }()
	for {
		st, err := js.Stream(ctx, bus.Stream)
		if err != nil {
			t.Fatal(err)
		}
		c, err := st.Consumer(ctx, bus.SinkDurable)
		if err != nil {
			t.Fatal(err)
		}
		info, err := c.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if info.NumPending == 0 && info.NumAckPending == 0 {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("the stream still has %d klines to store", info.NumPending+uint64(info.NumAckPending))
		case <-time.After(100 * time.Millisecond): // polling the broker's state
		}
	}
}

// trading returns the symbols the exchange is trading.
func (r *run) trading() []string {
	var syms []string
	for sym, status := range r.x.Symbols() {
		if status == "TRADING" {
			syms = append(syms, sym)
		}
	}
	return syms
}

// watchAll connects a client of syms' 1m closings to every node.
func watchAll(t *testing.T, nodes []*node, syms []string) []*closings {
	watchers := make([]*closings, len(nodes))
	for i, n := range nodes {
		watchers[i] = watchClosings(t, n.k.Base(), syms)
	}
	return watchers
}

// busiest returns the node owning the most symbols, and its symbols.
func busiest(byNode map[string][]string, nodes []*node) (*node, []string) {
	victim := nodes[0]
	for _, n := range nodes {
		if len(byNode[n.name]) > len(byNode[victim.name]) {
			victim = n
		}
	}
	return victim, byNode[victim.name]
}

// closings are the 1m closing events one WebSocket client received.
type closings struct {
	mu     sync.Mutex
	events map[string]map[int64]kline.Kline // symbol → open time → kline
}

// watchClosings subscribes to the 1m klines of syms on the node at base
// and records every closing event until the node closes the connection.
func watchClosings(t *testing.T, base string, syms []string) *closings {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(base, "http")+"/market/stream", nil)
	if err != nil {
		t.Fatal(err)
	}
	c.SetReadLimit(1 << 20)
	t.Cleanup(func() { c.CloseNow() })
	var names []string
	for _, s := range syms {
		names = append(names, binance.KlineStream(s, "1m"))
	}
	if err := c.Write(ctx, websocket.MessageText, binance.StreamRequest("SUBSCRIBE", names, 1)); err != nil {
		t.Fatal(err)
	}
	w := &closings{events: map[string]map[int64]kline.Kline{}}
	go func() {
		for {
			_, b, err := c.Read(context.Background())
			if err != nil {
				return
			}
			ev, err := binance.ParseKlineEvent(b)
			if err != nil || !ev.K.Closed {
				continue
			}
			k, err := ev.K.Kline()
			if err != nil {
				continue
			}
			k.Closed = true
			w.mu.Lock()
			if w.events[ev.Symbol] == nil {
				w.events[ev.Symbol] = map[int64]kline.Kline{}
			}
			w.events[ev.Symbol][k.OpenTime] = k
			w.mu.Unlock()
		}
	}()
	return w
}

// check requires a closing event for every minute of every symbol from
// the client's first to its last, each equal to the exchange's kline.
func (w *closings) check(t *testing.T, r *run, node string, syms []string) {
	t.Helper()
	w.mu.Lock()
	defer w.mu.Unlock()
	compared := 0
	for _, sym := range syms {
		ev := w.events[sym]
		if len(ev) < 5 {
			t.Errorf("%s: a client got %d closing events of %s", node, len(ev), sym)
			continue
		}
		first, last := int64(math.MaxInt64), int64(0)
		for open := range ev {
			first, last = min(first, open), max(last, open)
		}
		// The first minute may have closed before the subscription.
		for _, ref := range r.x.ReferenceKlines(sym, kline.OneMinute(), first+60_000, last) {
			got, ok := ev[ref.OpenTime]
			ref.Closed = true
			switch {
			case !ok:
				t.Errorf("%s: no closing event of %s %s", node, sym, ms(ref.OpenTime))
			case !sameAsRow(got, ref):
				t.Errorf("%s: closing event of %s %s:\n got %+v\nwant %+v", node, sym, ms(ref.OpenTime), got, ref)
			default:
				compared++
			}
		}
	}
	t.Logf("%s: %d closing events on one WebSocket client equal the exchange's", node, compared)
}

// checkDeep requires node's REST to answer the last limit 1m klines of
// syms while its store cannot be read, and its settled klines to equal the
// exchange's.
func checkDeep(t *testing.T, r *run, node, base string, syms []string, limit int) {
	t.Helper()
	for _, sym := range syms {
		url := fmt.Sprintf("%s/fapi/v1/klines?symbol=%s&interval=1m&limit=%d", base, neturl.QueryEscape(sym), limit)
		// A replay JetStream does not answer within its 5 s is refused
		// with 503 -1001, honestly, as a client would be told to retry:
		// with three NATS servers on two cores, one just restarted, that
		// happens (seen in CI). A client retries; so does the test, twice.
		for try := 0; try < 2 && refused(t, url); try++ {
			t.Logf("%s: %s refused while JetStream is slow; asking again", node, url)
		}
		// Settled as of the answer, not of before the retries or a slow
		// replay: at 60× the exchange moves a minute a second meanwhile.
		got, n := settledREST(t, url, func() int64 { return r.x.Now().UnixMilli() })
		if n != limit {
			t.Fatalf("%s: the last %d 1m klines of %s with PostgreSQL unreachable: %d", node, limit, sym, n)
		}
		ref := r.x.ReferenceKlines(sym, kline.OneMinute(), got[0].OpenTime, got[len(got)-1].OpenTime)
		if len(got) != len(ref) || len(got) < limit-5 {
			t.Fatalf("%s: the last %d 1m klines of %s with PostgreSQL unreachable: %d settled, the exchange has %d", node, limit, sym, len(got), len(ref))
		}
		for i := range ref {
			if !sameAsRow(got[i], ref[i]) {
				t.Errorf("%s: %s 1m %s with PostgreSQL unreachable:\n got %+v\nwant %+v", node, sym, ms(ref[i].OpenTime), got[i], ref[i])
				break
			}
		}
	}
	t.Logf("%s: the last %d 1m klines of %d symbols with PostgreSQL unreachable equal the exchange's", node, limit, len(syms))
}

// refused reports whether the klines request url is answered 503 -1001:
// klagg cannot answer it whole just now.
func refused(t *testing.T, url string) bool {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp.StatusCode == http.StatusServiceUnavailable && strings.Contains(string(body), `"code":-1001`)
}

// settledREST GETs the klines request url and returns the klines of its
// answer closed and settled as of asOf() once it has come (exchange time,
// ms): two simulated minutes after their close, past grace (10 s) and the
// corrections of late trades behind it; and how many klines the answer
// held. An answer that is
// not an array of klines fails the test.
func settledREST(t *testing.T, url string, asOf func() int64) ([]kline.Kline, int) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	now := asOf()
	var rows [][]json.RawMessage
	if err := json.Unmarshal(body, &rows); err != nil {
		t.Fatalf("%s: %d %.300s", url, resp.StatusCode, body)
	}
	var got []kline.Kline
	for _, row := range rows {
		k, _, err := binance.ParseKlineArray(row)
		if err != nil {
			t.Fatal(err)
		}
		if k.CloseTime < now-120_000 {
			got = append(got, k)
		}
	}
	return got, len(rows)
}

// checkREST requires the node's REST klines of every symbol and interval
// to equal the exchange's, every kline closed two simulated minutes ago or
// more, with no gap.
func checkREST(t *testing.T, r *run, node, base string, syms []string) {
	t.Helper()
	ivs, err := kline.ParseIntervals(strings.Trim(strings.ReplaceAll(testIntervals, `"`, ""), "[]"))
	if err != nil {
		t.Fatal(err)
	}
	now := r.x.Now().UnixMilli()
	compared := 0
	for _, sym := range syms {
		for _, iv := range ivs {
			// What every node holds of each series (backfill_limit before
			// going live, and since), so that the check reads nothing
			// through to the exchange.
			limit := 100 + iv.Slots(iv.Open(r.liveAt.UnixMilli()), iv.Open(now)) - 1
			got, _ := settledREST(t, fmt.Sprintf("%s/fapi/v1/klines?symbol=%s&interval=%s&limit=%d", base, neturl.QueryEscape(sym), iv, min(limit, 1500)), func() int64 { return now })
			if len(got) == 0 {
				continue
			}
			ref := r.x.ReferenceKlines(sym, iv, got[0].OpenTime, got[len(got)-1].OpenTime)
			if len(ref) != len(got) {
				missing := ""
				for i, k := range got {
					if i > 0 && k.OpenTime != iv.Next(got[i-1].OpenTime) {
						missing += " after " + ms(got[i-1].OpenTime)
					}
				}
				t.Errorf("%s: %s %s: %d klines from %s to %s, the exchange has %d; gaps%s", node, sym, iv, len(got), ms(got[0].OpenTime), ms(got[len(got)-1].OpenTime), len(ref), missing)
				continue
			}
			for i := range ref {
				if !sameAsRow(got[i], ref[i]) {
					t.Errorf("%s: %s %s %s:\n got %+v\nwant %+v", node, sym, iv, ms(ref[i].OpenTime), got[i], ref[i])
					break
				}
				compared++
			}
		}
	}
	t.Logf("%s: %d closed klines from REST equal the exchange's", node, compared)
}

// waitPublished waits until no node has klines waiting for the broker: a
// publisher backs off for up to 5 s after an election.
func waitPublished(t *testing.T, nodes []*node) {
	t.Helper()
	for deadline := time.Now().Add(time.Minute); ; {
		pending := 0
		for _, n := range nodes {
			resp, err := http.Get(n.k.Base() + "/api/v1/status")
			if err != nil {
				t.Fatal(err)
			}
			var st struct {
				Cluster struct {
					Pending int `json:"publish_pending"`
				} `json:"cluster"`
			}
			err = json.NewDecoder(resp.Body).Decode(&st)
			resp.Body.Close()
			if err != nil {
				t.Fatal(err)
			}
			pending += st.Cluster.Pending
		}
		if pending == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d klines still waiting to be published", pending)
		}
		time.Sleep(100 * time.Millisecond) // polling the nodes' state
	}
}

// streamLast is the kline stream's last sequence.
func streamLast(t *testing.T, url string) uint64 {
	t.Helper()
	_, info := sinkInfo(t, url)
	return info.Delivered.Stream
}

// sinkInfo returns the stream's and the sink consumer's state, asking
// again while the broker does not answer (an election).
func sinkInfo(t *testing.T, url string) (*jetstream.StreamInfo, *jetstream.ConsumerInfo) {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	start := time.Now()
	for {
		si, ci, err := func() (*jetstream.StreamInfo, *jetstream.ConsumerInfo, error) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			st, err := js.Stream(ctx, bus.Stream)
			if err != nil {
				return nil, nil, err
			}
			si, err := st.Info(ctx)
			if err != nil {
				return nil, nil, err
			}
			c, err := st.Consumer(ctx, bus.SinkDurable)
			if err != nil {
				return nil, nil, err
			}
			ci, err := c.Info(ctx)
			return si, ci, err
		}()
		if err == nil {
			if d := time.Since(start); d > 5*time.Second {
				t.Logf("the stream's state took %s to read", d.Round(time.Millisecond))
			}
			return si, ci
		}
		if time.Since(start) > time.Minute {
			t.Fatalf("reading the kline stream's state: %v", err)
		}
	}
}

// waitStored waits until the sinks have stored every message up to
// stream sequence seq.
func waitStored(t *testing.T, url string, seq uint64) {
	t.Helper()
	for deadline := time.Now().Add(time.Minute); ; {
		_, ci := sinkInfo(t, url)
		if ci.AckFloor.Stream >= seq {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the sinks stored the stream up to %d, not yet %d", ci.AckFloor.Stream, seq)
		}
		time.Sleep(100 * time.Millisecond) // polling the broker's state
	}
}

// natsProc is one nats-server of a test's cluster.
type natsProc struct {
	name, url string
	args      []string
	cmd       *exec.Cmd
}

func (p *natsProc) start(t *testing.T) {
	t.Helper()
	p.cmd = exec.Command(natsBin.path, p.args...)
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
}

func (p *natsProc) kill() {
	p.cmd.Process.Kill()
	p.cmd.Wait()
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// natsCluster starts three routed nats-servers with JetStream and waits
// until they can keep a stream with three replicas.
func natsCluster(t *testing.T) []*natsProc {
	t.Helper()
	natsServer(t) // builds the binary
	var procs []*natsProc
	var routes []string
	for range 3 {
		routes = append(routes, fmt.Sprintf("nats://127.0.0.1:%d", freePort(t)))
	}
	for i := range 3 {
		p := &natsProc{name: fmt.Sprintf("nats-%d", i+1)}
		port := freePort(t)
		p.url = fmt.Sprintf("nats://127.0.0.1:%d", port)
		p.args = []string{"-a", "127.0.0.1", "-p", fmt.Sprint(port), "-js", "-sd", t.TempDir(), "-n", p.name,
			"--cluster_name", "klagg", "--cluster", routes[i], "--routes", strings.Join(routes, ",")}
		p.start(t)
		procs = append(procs, p)
	}
	t.Cleanup(func() {
		for _, p := range procs {
			p.kill()
		}
	})
	nc, err := nats.Connect(clusterURLs(procs))
	for deadline := time.Now().Add(30 * time.Second); err != nil && time.Now().Before(deadline); {
		time.Sleep(100 * time.Millisecond) // polling starting processes
		nc, err = nats.Connect(clusterURLs(procs))
	}
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	for deadline := time.Now().Add(time.Minute); ; {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := bus.EnsureStream(ctx, js, 3)
		cancel()
		if err == nil {
			return procs
		}
		if time.Now().After(deadline) {
			t.Fatalf("the NATS cluster keeps no stream: %v", err)
		}
		time.Sleep(200 * time.Millisecond) // waiting on the cluster's election
	}
}

func clusterURLs(procs []*natsProc) string {
	var urls []string
	for _, p := range procs {
		urls = append(urls, p.url)
	}
	return strings.Join(urls, ",")
}

// pgProxy forwards TCP to PostgreSQL; cut drops every connection and
// refuses new ones until restore, as a stopped server does.
type pgProxy struct {
	addr, target string
	mu           sync.Mutex
	down         bool
	conns        map[net.Conn]bool
}

func startPGProxy(t *testing.T, target string) *pgProxy {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	p := &pgProxy{addr: l.Addr().String(), target: target, conns: map[net.Conn]bool{}}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			p.mu.Lock()
			down := p.down
			p.mu.Unlock()
			if down {
				c.Close()
				continue
			}
			up, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.conns[c], p.conns[up] = true, true
			p.mu.Unlock()
			go func() { io.Copy(up, c); up.Close() }()
			go func() { io.Copy(c, up); c.Close() }()
		}
	}()
	return p
}

func (p *pgProxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down = true
	for c := range p.conns {
		c.Close()
	}
	clear(p.conns)
}

func (p *pgProxy) restore() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down = false
}

// TestClusterOutages runs three klagg nodes on three NATS servers (every
// stream and bucket with three replicas) and the local PostgreSQL behind a
// proxy: kill -9 of the kline stream's leader among the NATS servers, then
// its restart; then PostgreSQL unreachable for 30 s. After each, every
// node's REST and PostgreSQL equal the exchange's, no kline missing, and a
// WebSocket client on each node saw every closing event.
func TestClusterOutages(t *testing.T) {
	r := newRun(t, fakex.Config{Symbols: 12, WeightPerMinute: clusterWeight}, "")
	r.appendExchange(fmt.Sprintf("weight_per_minute = %d", clusterWeight))
	r.usePostgres()
	pg, err := neturl.Parse(r.pgURL)
	if err != nil {
		t.Fatal(err)
	}
	proxy := startPGProxy(t, pg.Host)
	data, err := os.ReadFile(r.conf)
	if err != nil {
		t.Fatal(err)
	}
	viaProxy := *pg
	viaProxy.Host = proxy.addr
	if err := os.WriteFile(r.conf, []byte(strings.Replace(string(data), r.pgURL, viaProxy.String(), 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	procs := natsCluster(t)
	urls := clusterURLs(procs)
	own := watchOwners(t, urls, 3)
	nodes := r.startCluster(urls, "replicas = 3")
	r.liveAt = r.x.Now()
	syms := r.trading()
	watchers := watchAll(t, nodes, syms)
	// A node may join some seconds after the others (waiting for the
	// NATS servers to elect the stream's leader) and then take its share
	// from them: ownership is judged from the settled split.
	own.waitSplit(t, nodes, syms)
	before := own.owned()

	r.until(2*time.Minute + 30*time.Second)
	si, _ := sinkInfo(t, urls)
	var leader *natsProc
	for _, p := range procs {
		if si.Cluster != nil && p.name == si.Cluster.Leader {
			leader = p
		}
	}
	if leader == nil {
		t.Fatalf("no leader of the kline stream among %v: %+v", procs, si.Cluster)
	}
	t.Logf("killing %s, the kline stream's leader", leader.name)
	leader.kill()
	r.until(5 * time.Minute)
	leader.start(t)
	r.until(7 * time.Minute)
	waitPublished(t, nodes)
	published := streamLast(t, urls)
	waitStored(t, urls, published)
	for _, n := range nodes {
		checkREST(t, r, n.name, n.k.Base(), syms)
	}
	if after := own.owned(); !sameOwners(before, after) {
		t.Errorf("symbols changed owner through the broker's election: %v, then %v", before, after)
	}

	t.Log("PostgreSQL unreachable for 30 s")
	proxy.cut()
	cutAt := r.x.Now()
	time.Sleep(20 * time.Second) // the outage itself, in real time
	// Deeper than memory (the klines closed since the cut): the rest is
	// read back from the kline stream.
	limit := int(r.x.Now().Sub(cutAt)/time.Minute) + 5
	for _, n := range nodes {
		checkDeep(t, r, n.name, n.k.Base(), syms[:4], limit)
	}
	time.Sleep(10 * time.Second)
	proxy.restore()
	r.until(r.x.Now().Sub(r.liveAt) + 3*time.Minute)
	waitPublished(t, nodes)
	published = streamLast(t, urls)
	waitStored(t, urls, published)
	for _, n := range nodes {
		checkREST(t, r, n.name, n.k.Base(), syms)
	}
	end := r.x.Now().Sub(r.liveAt)
	for _, n := range nodes {
		if err := n.k.Stop(time.Minute); err != nil {
			t.Fatalf("%s did not exit 0 on SIGTERM: %v", n.name, err)
		}
	}
	drainStream(t, urls, r.pgURL)
	r.check(end)
	for i, n := range nodes {
		watchers[i].check(t, r, n.name, syms)
	}
}

func sameOwners(a, b map[string][]string) bool {
	if len(a) != len(b) {
		return false
	}
	for n, syms := range a {
		if len(b[n]) != len(syms) {
			return false
		}
	}
	return true
}
