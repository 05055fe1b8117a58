package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/klagg/klagg/internal/bus/bustest"
	"github.com/klagg/klagg/internal/engine"
	"github.com/klagg/klagg/internal/kline"
	"github.com/klagg/klagg/internal/store/storetest"
)

func TestPick(t *testing.T) {
	nodes := []string{"a", "b", "c"}
	count := map[string]int{}
	picks := map[string]string{}
	for i := range 3000 {
		sym := fmt.Sprintf("S%04dUSDT", i)
		picks[sym] = Pick(sym, nodes)
		count[picks[sym]]++
	}
	for _, n := range nodes {
		if count[n] < 800 || count[n] > 1200 {
			t.Errorf("node %s has %d of 3000 symbols: %v", n, count[n], count)
		}
	}
	// Without c, only c's symbols move.
	for sym, n := range picks {
		if got := Pick(sym, []string{"b", "a"}); n != "c" && got != n {
			t.Fatalf("%s moved from %s to %s when c left", sym, n, got)
		}
	}
}

func TestKeyAndCheckpoint(t *testing.T) {
	if Key("BTCUSDT") != "BTCUSDT" || Key("1000PEPE_USDT") != "1000PEPE_USDT" {
		t.Error("plain symbols are their own keys")
	}
	if k := Key("币安人生USDT"); !strings.HasPrefix(k, "=") || k == Key("币安人生USDC") {
		t.Errorf("key of a non-ASCII symbol: %q", k)
	}
	ivs := []kline.Interval{kline.OneMinute(), kline.MustInterval("1h"), kline.MustInterval("1d")}
	st := engine.State{Symbol: "币安人生USDT", LastID: 42, Open: []kline.Kline{storetest.Kline(60_000, 1), storetest.Kline(3_600_000, 1), {}}}
	for i := range st.Open[:2] {
		st.Open[i].Closed = false
		st.Open[i].CloseTime = ivs[i].CloseTime(st.Open[i].OpenTime)
	}
	b := encodeCheckpoint("node-1", st, ivs, time.UnixMilli(5), 0, 7)
	c, got, err := decodeCheckpoint(b, ivs)
	if err != nil || c.Owner != "node-1" || got.Symbol != st.Symbol || got.LastID != 42 || len(got.Open) != 3 || c.liveSince(got) != 0 || c.Rel != 7 {
		t.Fatalf("decoded %+v %+v, %v", c, got, err)
	}
	// Without the minute it is built live since, its open minute is the
	// earliest the checkpoint vouches for.
	if c, got, err := decodeCheckpoint(encodeCheckpoint("node-1", st, ivs, time.UnixMilli(5), -1, 0), ivs); err != nil || c.liveSince(got) != 60_000 || c.Rel != 0 {
		t.Fatalf("without m0: %+v %v, live since %d", c, err, c.liveSince(got))
	}
	for _, v := range [][]byte{b, []byte(`{"s":"币安人生USDT","a":1,"owner":"node-1"}`)} {
		if h := checkpointHead(v); h.Owner != "node-1" || h.Symbol != st.Symbol {
			t.Fatalf("checkpointHead(%.80s) = %q %q", v, h.Owner, h.Symbol)
		}
	}
	for i := range ivs {
		if got.Open[i] != st.Open[i] {
			t.Errorf("%s: got %+v, want %+v", ivs[i], got.Open[i], st.Open[i])
		}
	}
	if !ownedBy(b, "node-1") || ownedBy(b, "node-10") || ownedBy(b, "node") {
		t.Errorf("ownedBy reads the owner of %s wrongly", b)
	}
	b2, err := withOwner(b, "")
	if !ownedBy(b2, "") || ownedBy(b2, "node-1") {
		t.Errorf("ownedBy reads the owner of %s wrongly", b2)
	}
	if c2, got2, err2 := decodeCheckpoint(b2, ivs); err != nil || err2 != nil || c2.Owner != "" || got2.Open[1] != st.Open[1] || c2.liveSince(got2) != 0 {
		t.Fatalf("released checkpoint %s: %v %v", b2, err, err2)
	}
}

// fakeEngine says each symbol stands at an aggregate id that grows, or
// while quiet stays.
type fakeEngine struct {
	mu    sync.Mutex
	last  map[string]int64
	quiet bool
}

func (e *fakeEngine) States(_ context.Context, syms []string) ([]engine.State, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []engine.State
	for _, s := range syms {
		if !e.quiet || e.last[s] == 0 {
			e.last[s]++
		}
		out = append(out, engine.State{Symbol: s, LastID: e.last[s], Open: []kline.Kline{{OpenTime: 60_000, CloseTime: 119_999}}})
	}
	return out, nil
}

type acked struct{}

func (acked) Mark() uint64                                      { return 0 }
func (acked) WaitAcked(context.Context, uint64) error           { return nil }
func (r *registry) Settled(context.Context) error               { return nil }
func (r *registry) Standby(context.Context, string, bool) error { return nil }
func (r *registry) Own(_ context.Context, s string, owned bool) error {
	r.ch <- ownership{r.node, s, owned}
	return nil
}

type ownership struct {
	node, symbol string
	owned        bool
}

type registry struct {
	node string
	ch   chan ownership
}

// TestLeases: two nodes share twenty symbols; when one stops (no release,
// as a kill), the other takes its symbols over with their checkpoints;
// a node whose checkpoint write is refused drops the symbol.
func TestLeases(t *testing.T) {
	url := bustest.Server(t)
	ch := make(chan ownership, 1000)
	var syms []string
	for i := range 20 {
		syms = append(syms, fmt.Sprintf("S%02dUSDT", i))
	}
	var nodesMu sync.Mutex
	ingestNodes := map[string]int{}
	start := func(node string, standby bool) (*Leases, context.CancelFunc, chan error) {
		nc, js := bustest.Connect(t, url)
		b, err := EnsureBuckets(context.Background(), js, 1)
		if err != nil {
			t.Fatal(err)
		}
		l := NewLeases(nc, b, Config{Node: node, Ingest: true, Roles: []string{"ingest"}, Staleness: 300 * time.Millisecond,
			CheckpointEvery: 20 * time.Millisecond, Intervals: []kline.Interval{kline.OneMinute()}, Log: slog.New(slog.DiscardHandler),
			IngestNodes: func(n int) { nodesMu.Lock(); ingestNodes[node] = n; nodesMu.Unlock() }, Standby: standby,
			// Built live since minute 42, the checkpoints say; the first
			// symbol's klines lack trades since 7.
			LiveSince: func(string) (int64, bool) { return 42 * 60_000, true },
			Released:  func() map[string]int64 { return map[string]int64{syms[0]: 7} }},
			&fakeEngine{last: map[string]int64{}}, acked{})
		l.Want(syms)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- l.Run(ctx, &registry{node, ch}) }()
		t.Cleanup(func() { cancel(); <-done })
		return l, cancel, done
	}
	owners := map[string]string{}
	wait := func(what string, until func() bool) {
		t.Helper()
		timeout := time.After(20 * time.Second)
		poll := time.NewTicker(10 * time.Millisecond) // for conditions no event announces
		defer poll.Stop()
		for !until() {
			select {
			case <-poll.C:
			case o := <-ch:
				if o.owned {
					owners[o.symbol] = o.node
				} else if owners[o.symbol] == o.node {
					delete(owners, o.symbol)
				}
			case <-timeout:
				t.Fatalf("%s: owners %v", what, owners)
			}
		}
	}
	a, stopA, doneA := start("a", false)
	b, _, _ := start("b", false)
	wait("every symbol owned", func() bool { return len(owners) == 20 && a.Held()+b.Held() == 20 })
	wait("b counts two live ingest nodes (they share the REST weight)", func() bool {
		nodesMu.Lock()
		defer nodesMu.Unlock()
		return ingestNodes["b"] == 2
	})
	var fromA []string
	for sym, n := range owners {
		if n == "a" {
			fromA = append(fromA, sym)
		}
	}
	if len(fromA) == 0 || len(fromA) == 20 {
		t.Fatalf("a owns %d of 20 symbols; rendezvous hashing should split them", len(fromA))
	}
	wait("a has written its checkpoints", func() bool {
		a.mu.Lock()
		defer a.mu.Unlock()
		for _, ls := range a.held {
			if ls.lastID <= 0 {
				return false
			}
		}
		return true
	})
	stopA()
	<-doneA
	doneA <- nil
	wait("b owns every symbol", func() bool { return b.Held() == 20 && len(owners) == 20 && !containsOwner(owners, "a") })
	for _, sym := range syms {
		if owners[sym] != "b" {
			t.Fatalf("%s owned by %s", sym, owners[sym])
		}
	}
	// The membership watch may tell b of a's end after the lease watch
	// handed it a's symbols.
	wait("b counts one live ingest node after a died", func() bool {
		nodesMu.Lock()
		defer nodesMu.Unlock()
		return ingestNodes["b"] == 1
	})
	if n := b.Takeovers.Load(); n != int64(len(fromA)) {
		t.Errorf("%d takeovers counted, want %d", n, len(fromA))
	}
	// Each checkpoint a wrote is b's to resume from, once.
	if r, ok := b.Taken(fromA[0]); !ok || r.State.LastID <= 0 || r.State.Open[0].OpenTime != 60_000 || time.Since(r.AsOf) > time.Minute || r.M0 != 42*60_000 {
		t.Errorf("checkpoint of %s taken from a: %+v %v", fromA[0], r, ok)
	}
	if _, ok := b.Taken(fromA[0]); ok {
		t.Error("a checkpoint taken twice")
	}

	// Another node writes S00USDT's lease: b's next checkpoint is refused
	// and b drops the symbol.
	// b's own checkpoint may write the lease between the read and the
	// write: then c reads it again, as a node would.
	for {
		e, err := b.b.Live.Get(context.Background(), Key("S00USDT"))
		if err != nil {
			t.Fatal(err)
		}
		v, _ := withOwner(e.Value(), "c")
		_, err = b.b.Live.Update(context.Background(), Key("S00USDT"), v, e.Revision())
		if err == nil {
			break
		}
		if !errors.Is(err, jetstream.ErrKeyExists) && !strings.Contains(err.Error(), "wrong last sequence") {
			t.Fatal(err)
		}
	}
	wait("b drops the symbol c took", func() bool { return owners["S00USDT"] == "" })
	if b.Lost.Load() != 1 || b.Owns("S00USDT") {
		t.Fatalf("lost %d, owns %v", b.Lost.Load(), b.Owns("S00USDT"))
	}
	wait("b takes back the symbol of c, which is not alive", func() bool { return owners["S00USDT"] == "b" })

	// A node joins and stands by: it then takes from the live b the
	// symbols rendezvous hashing gives it. b's symbols are quiet, so it
	// writes no checkpoint that could be refused: it learns of each
	// from the lease bucket.
	quiet := b.engine.(*fakeEngine)
	quiet.mu.Lock()
	quiet.quiet = true
	quiet.mu.Unlock()
	d, _, _ := start("d", true)
	toD := 0
	for _, sym := range syms {
		if Pick(sym, []string{"b", "d"}) == "d" {
			toD++
		}
	}
	if toD == 0 || toD == 20 {
		t.Fatalf("rendezvous hashing gives d %d of 20 symbols", toD)
	}
	lostBefore := b.Lost.Load()
	wait("d owns its share", func() bool {
		for _, sym := range syms {
			if owners[sym] != Pick(sym, []string{"b", "d"}) {
				return false
			}
		}
		return d.Held() == toD && b.Held() == 20-toD
	})
	if n := d.Rebalanced.Load(); n != int64(toD) || d.Takeovers.Load() != 0 || b.Lost.Load()-lostBefore != int64(toD) {
		t.Fatalf("d rebalanced %d, took over %d, b lost %d; want %d, 0, %[4]d", n, d.Takeovers.Load(), b.Lost.Load()-lostBefore, toD)
	}
}

func containsOwner(owners map[string]string, node string) bool {
	for _, n := range owners {
		if n == node {
			return true
		}
	}
	return false
}

// untraded is an engine whose symbols had no trade since their seed.
type untraded struct{}

func (untraded) States(_ context.Context, syms []string) ([]engine.State, error) {
	var out []engine.State
	for _, s := range syms {
		out = append(out, engine.State{Symbol: s, LastID: -1, Open: []kline.Kline{{OpenTime: 60_000, CloseTime: 119_999}}})
	}
	return out, nil
}

// TestQuietTakeover: a node that takes a symbol over writes its own
// checkpoint once it has checked the minutes before the last owner's,
// even if the symbol has no trade since, keeping the aggregate id it
// resumed after: until it does, the other nodes take the symbol as not
// resumed and refuse what it lacks.
func TestQuietTakeover(t *testing.T) {
	url := bustest.Server(t)
	nc, js := bustest.Connect(t, url)
	b, err := EnsureBuckets(context.Background(), js, 1)
	if err != nil {
		t.Fatal(err)
	}
	ivs := []kline.Interval{kline.OneMinute()}
	st := engine.State{Symbol: "S00USDT", LastID: 77, Open: []kline.Kline{{OpenTime: 60_000, CloseTime: 119_999}}}
	if _, err := b.Live.Create(context.Background(), Key(st.Symbol), encodeCheckpoint("gone", st, ivs, time.UnixMilli(5), 0, 0)); err != nil {
		t.Fatal(err)
	}
	ch := make(chan ownership, 10)
	// Its minutes before the checkpoint are checked in the first two
	// rounds: no checkpoint of a's own before.
	var rounds atomic.Int64
	rechecking := func() map[string]bool {
		if rounds.Add(1) <= 2 {
			return map[string]bool{"S00USDT": true}
		}
		return nil
	}
	l := NewLeases(nc, b, Config{Node: "a", Ingest: true, Roles: []string{"ingest"}, Staleness: 300 * time.Millisecond,
		CheckpointEvery: 20 * time.Millisecond, Intervals: ivs, Log: slog.New(slog.DiscardHandler), Rechecking: rechecking}, untraded{}, acked{})
	l.Want([]string{st.Symbol})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- l.Run(ctx, &registry{"a", ch}) }()
	defer func() { cancel(); <-done }()
	w, err := b.Live.Watch(ctx, Key(st.Symbol))
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	timeout := time.After(20 * time.Second)
	for {
		select {
		case e := <-w.Updates():
			if e == nil {
				continue
			}
			c, got, err := decodeCheckpoint(e.Value(), ivs)
			if err != nil {
				t.Fatal(err)
			}
			if c.Owner != "a" || c.At == 5 {
				continue // the take, which keeps the last owner's checkpoint
			}
			if got.LastID != 77 || got.Open[0].OpenTime != 60_000 {
				t.Fatalf("a's first checkpoint of the quiet symbol: %+v, want it at aggregate id 77", got)
			}
			if n := rounds.Load(); n < 3 {
				t.Fatalf("a's first checkpoint written in round %d, while the minutes before it were rechecked", n)
			}
			return
		case <-timeout:
			t.Fatal("a never wrote its own checkpoint of the quiet symbol it took")
		}
	}
}
