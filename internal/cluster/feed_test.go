package cluster

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/klagg/klagg/internal/bus"
	"github.com/klagg/klagg/internal/bus/bustest"
	"github.com/klagg/klagg/internal/engine"
	"github.com/klagg/klagg/internal/head"
	"github.com/klagg/klagg/internal/kline"
	"github.com/klagg/klagg/internal/store"
	"github.com/klagg/klagg/internal/store/storetest"
)

// handed records what a feed hands on.
type handed struct {
	mu sync.Mutex
	us []kline.Update
	ch chan struct{}
}

func (h *handed) Publish(us []kline.Update) {
	h.mu.Lock()
	h.us = append(h.us, us...)
	h.mu.Unlock()
	select {
	case h.ch <- struct{}{}:
	default:
	}
}

// waitFor waits until an update with trades n has been handed on, and
// returns every update handed on so far.
func (h *handed) waitFor(t *testing.T, n int64, poke func()) []kline.Update {
	t.Helper()
	timeout := time.After(20 * time.Second)
	for {
		h.mu.Lock()
		us := append([]kline.Update(nil), h.us...)
		h.mu.Unlock()
		for _, u := range us {
			if u.Trades == n {
				return us
			}
		}
		poke()
		select {
		case <-h.ch:
		case <-time.After(bus.OpenEvery): // each round of Opens
		case <-timeout:
			t.Fatalf("no update with %d trades handed on; got %+v", n, us)
		}
	}
}

// streamAndBuckets runs a JetStream server for the test and returns its
// URL, a connection to it with klagg's stream and buckets, and the stream.
func streamAndBuckets(t *testing.T) (string, *nats.Conn, jetstream.JetStream, jetstream.Stream, Buckets) {
	t.Helper()
	url := bustest.Server(t)
	nc, js := bustest.Connect(t, url)
	st, err := bus.EnsureStream(context.Background(), js, 1)
	if err != nil {
		t.Fatal(err)
	}
	b, err := EnsureBuckets(context.Background(), js, 1)
	if err != nil {
		t.Fatal(err)
	}
	return url, nc, js, st, b
}

type ownsSet map[string]bool

func (o ownsSet) Owns(s string) bool { return o[s] }

// TestFeed: a serve node's feed hands on the open klines another node's
// Opens sends, within a round of it, but not those of symbols it owns, and
// never an open kline older than one it handed on, whether it comes from
// the owner's messages or its checkpoint.
func TestFeed(t *testing.T) {
	url, ownerNC, _, _, b := streamAndBuckets(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	opens := bus.NewOpens(ownerNC)
	_, serveJS := bustest.Connect(t, url)
	ivs := []kline.Interval{kline.OneMinute()}
	out := &handed{ch: make(chan struct{}, 1)}
	feed := NewFeed(serveJS, b, "serve", ownsSet{"OWNUSDT": true}, []engine.Sink{out}, nil, head.New(head.Config{}), nil, ivs, slog.New(slog.DiscardHandler))
	var wg sync.WaitGroup
	wg.Go(func() { opens.Run(ctx) })
	wg.Go(func() {
		if err := feed.Run(ctx); err != nil {
			t.Error(err)
		}
	})
	defer wg.Wait()
	defer cancel()

	at := func(trades int64) kline.Update {
		k := storetest.Kline(60_000, 1)
		k.Trades, k.Closed = trades, false
		return kline.Update{Symbol: "BTCUSDT", Interval: ivs[0], Series: 1, Kline: k}
	}
	own := at(50)
	own.Symbol, own.Series = "OWNUSDT", 2
	// Sent again each round until the feed, subscribing meanwhile, has it.
	got := out.waitFor(t, 5, func() { opens.Publish([]kline.Update{at(5), own}) })
	for _, u := range got {
		if u.Symbol != "BTCUSDT" || u.Trades != 5 {
			t.Fatalf("handed on %+v; want only BTCUSDT with 5 trades, once", got)
		}
	}

	// The owner's checkpoints: an older version (3 trades), then a newer
	// one (7). The watch delivers them in order: once 7 is handed on, 3
	// was passed over.
	check := func(trades int64) {
		st := engine.State{Symbol: "BTCUSDT", LastID: trades, Open: []kline.Kline{at(trades).Kline}}
		if _, err := b.Live.Put(ctx, Key("BTCUSDT"), encodeCheckpoint("owner", st, ivs, time.Now(), -1, 0)); err != nil {
			t.Fatal(err)
		}
	}
	check(3)
	check(7)
	got = out.waitFor(t, 7, func() {})
	if len(got) != 2 || got[1].Trades != 7 {
		t.Fatalf("handed on %+v; want 5 then 7 trades", got)
	}
	// And the owner's message with 6 trades, now behind: passed over,
	// while 9 is handed on.
	sent := opens.Sent.Load()
	opens.Publish([]kline.Update{at(6)})
	for opens.Sent.Load() == sent {
		time.Sleep(bus.OpenEvery / 10) // until the round that sends it
	}
	got = out.waitFor(t, 9, func() { opens.Publish([]kline.Update{at(9)}) })
	if len(got) != 3 || got[2].Trades != 9 {
		t.Fatalf("handed on %+v; want 5, 7, then 9 trades", got)
	}
}

// okStore takes every kline.
type okStore struct{}

func (okStore) Upsert([]kline.Update) error { return nil }

// TestFeedUnwritten: the closed klines a serve node reads from the stream
// are laid over the store's answers (the newest version of each) until
// the sinks have acknowledged them, and then no longer.
func TestFeedUnwritten(t *testing.T) {
	_, _, js, _, b := streamAndBuckets(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	log := slog.New(slog.DiscardHandler)
	iv := kline.OneMinute()
	out := &handed{ch: make(chan struct{}, 1)}
	pending := head.New(head.Config{Confirmed: true})
	feed := NewFeed(js, b, "serve", ownsSet{}, []engine.Sink{out}, nil, pending, nil, []kline.Interval{iv}, log)
	pub := bus.NewPublisher(js, nil, log)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	wg.Go(func() { pub.Run(ctx) })
	wg.Go(func() {
		if err := feed.Run(ctx); err != nil {
			t.Error(err)
		}
	})
	closed := func(i, trades int64) kline.Update {
		k := storetest.Kline(i*60_000, 2)
		k.Trades = trades
		return kline.Update{Symbol: "BTCUSDT", Interval: iv, Kline: k}
	}
	unwritten := func() []kline.Kline {
		ks, _ := pending.Klines(ctx, store.Query{Symbol: "BTCUSDT", Interval: iv})
		return ks
	}

	// The feed reads only what is published after it started: one more
	// kline each round until it has one.
	var next int64
	out.waitFor(t, 10, func() { pub.Publish([]kline.Update{closed(next, 10)}); next++ })
	before := unwritten()
	if len(before) == 0 {
		t.Fatal("the feed handed on a closed kline but keeps none")
	}
	// A newer kline, and a correction of the oldest kept.
	first := before[0].OpenTime / 60_000
	pub.Publish([]kline.Update{closed(next, 11), closed(first, 13)})
	out.waitFor(t, 13, func() {})
	ks := unwritten()
	if len(ks) != len(before)+1 || ks[0].OpenTime != first*60_000 || ks[0].Trades != 13 || ks[len(ks)-1].Trades != 11 {
		t.Fatalf("unwritten %+v after %+v; want the oldest with 13 trades and one more with 11", ks, before)
	}
	// Once the sinks have acknowledged them, they are the store's: the
	// head keeps only the newest.
	sink := bus.NewSink(js, okStore{}, bus.SinkDurable, log)
	wg.Go(func() { sink.Run(ctx) })
	deadline := time.Now().Add(20 * time.Second)
	for pending.Pending() > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("still unwritten after the sink stored %d: %+v", sink.Stored.Load(), unwritten())
		}
		time.Sleep(50 * time.Millisecond) // polling what the feed learns each second
	}
}

// TestFeedBacklog: a serve node that starts while the sinks are behind (a
// sink down, or PostgreSQL) reads again what they have not stored, so that
// its REST answers have those klines too; its consumers get only what is
// published after it started, as before.
func TestFeedBacklog(t *testing.T) {
	_, _, js, st, b := streamAndBuckets(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	iv := kline.OneMinute()
	publish := func(i int64) {
		k := storetest.Kline(i*60_000, 2)
		k.Trades = 100 + i
		u := kline.Update{Symbol: "BTCUSDT", Interval: iv, Kline: k}
		if _, err := js.Publish(ctx, bus.Subject(u.Symbol, iv.String()), bus.Encode(&u)); err != nil {
			t.Fatal(err)
		}
	}
	for i := range int64(3) {
		publish(i)
	}
	// The sinks have stored the first of the three.
	sinks, err := st.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{Durable: bus.SinkDurable, AckPolicy: jetstream.AckExplicitPolicy})
	if err != nil {
		t.Fatal(err)
	}
	got, err := sinks.Fetch(1)
	if err != nil {
		t.Fatal(err)
	}
	for m := range got.Messages() {
		if err := m.DoubleAck(ctx); err != nil {
			t.Fatal(err)
		}
	}

	out := &handed{ch: make(chan struct{}, 1)}
	pending := head.New(head.Config{Confirmed: true})
	feed := NewFeed(js, b, "serve", ownsSet{}, []engine.Sink{out}, nil, pending, nil, []kline.Interval{iv}, slog.New(slog.DiscardHandler))
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	wg.Go(func() {
		if err := feed.Run(ctx); err != nil {
			t.Error(err)
		}
	})
	unwritten := func() []kline.Kline {
		ks, _ := pending.Klines(ctx, store.Query{Symbol: "BTCUSDT", Interval: iv})
		return ks
	}
	for deadline := time.Now().Add(20 * time.Second); len(unwritten()) < 2; time.Sleep(10 * time.Millisecond) { // polling what the feed reads on its own
		if time.Now().After(deadline) {
			t.Fatalf("the feed keeps %+v for REST; want the two klines the sinks have not stored", unwritten())
		}
	}
	if ks := unwritten(); len(ks) != 2 || ks[0].Trades != 101 || ks[1].Trades != 102 {
		t.Fatalf("the feed keeps %+v for REST; want the klines with 101 and 102 trades", ks)
	}
	publish(3)
	for _, u := range out.waitFor(t, 103, func() {}) {
		if u.Trades < 103 {
			t.Fatalf("the feed handed on %+v, published before it started", u)
		}
	}
	if ks := unwritten(); len(ks) != 3 {
		t.Fatalf("the feed keeps %d klines for REST; want 3", len(ks))
	}
}

// TestReplay: a series' closed klines are read back from the stream from a
// time on, the newest version of each, by open time, and no other series'.
func TestReplay(t *testing.T) {
	_, _, js, _, b := streamAndBuckets(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	log := slog.New(slog.DiscardHandler)
	iv := kline.OneMinute()
	feed := NewFeed(js, b, "serve", ownsSet{}, nil, nil, head.New(head.Config{}), nil, []kline.Interval{iv}, log)
	pub := bus.NewPublisher(js, nil, log)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	wg.Go(func() { pub.Run(ctx) })
	closed := func(sym string, i, trades int64) kline.Update {
		k := storetest.Kline(i*60_000, 2)
		k.Trades = trades
		return kline.Update{Symbol: sym, Interval: iv, Kline: k}
	}
	publish := func(us ...kline.Update) {
		t.Helper()
		pub.Publish(us)
		if err := pub.WaitAcked(ctx, pub.Mark()); err != nil {
			t.Fatal(err)
		}
	}
	replay := func(from time.Time) []int64 {
		t.Helper()
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		ks, err := feed.Replay(rctx, nil, "币安人生USDT", iv, from)
		if err != nil {
			t.Fatal(err)
		}
		var got []int64
		for _, k := range ks {
			got = append(got, k.OpenTime/60_000*100+k.Trades)
		}
		return got
	}
	start := time.Now()
	if got := replay(start); len(got) != 0 {
		t.Fatalf("replayed %v from an empty stream", got)
	}
	publish(closed("币安人生USDT", 1, 10), closed("币安人生USDT", 2, 20), closed("BTCUSDT", 3, 30))
	mid := time.Now()
	// A later kline, then a correction of the first, published out of
	// open-time order as reconciliation does.
	publish(closed("币安人生USDT", 3, 31), closed("币安人生USDT", 1, 11))
	if got, want := replay(start), []int64{111, 220, 331}; !slices.Equal(got, want) {
		t.Errorf("replayed from the start: %v, want %v (minute×100 + trades)", got, want)
	}
	if got, want := replay(mid), []int64{111, 331}; !slices.Equal(got, want) {
		t.Errorf("replayed from the middle: %v, want %v", got, want)
	}
	if got := replay(time.Now().Add(time.Second)); len(got) != 0 {
		t.Errorf("replayed %v from after the last message", got)
	}
}

// remotes records what a feed says other nodes build.
type remotes struct {
	mu    sync.Mutex
	calls []string
	ch    chan struct{}
}

func (r *remotes) Awaiting(string, kline.Interval, int64, int64) {}

func (r *remotes) Remote(symbol, owner string, m0, open, at, rel int64) {
	r.mu.Lock()
	r.calls = append(r.calls, fmt.Sprintf("%s %s m0=%d open=%d", symbol, owner, m0, open))
	r.mu.Unlock()
	select {
	case r.ch <- struct{}{}:
	default:
	}
}

// TestFeedTellsWhatOthersBuild: once the feed has read the stream's
// backlog and every checkpoint there was, it tells coverage each other
// node's checkpoint (the minute its owners have built it live since, or
// else its open minute), not this node's own, a checkpoint taken over
// as owned by nobody until its new owner writes its own, and Released says whose
// klines lack trades until a repair.
func TestFeedTellsWhatOthersBuild(t *testing.T) {
	_, _, js, _, b := streamAndBuckets(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ivs := []kline.Interval{kline.OneMinute()}
	open := func(sym string, at int64) engine.State {
		k := storetest.Kline(at, 1)
		k.Closed = false
		return engine.State{Symbol: sym, LastID: 9, Open: []kline.Kline{k}}
	}
	// Taken by d from a, which wrote it: not resumed by d yet, whether or
	// not the feed saw a's own write first.
	taken, err := withOwner(encodeCheckpoint("a", open("DUSDT", 600_000), ivs, time.Now(), 120_000, 0), "d")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		key   string
		value []byte
	}{
		{Key("AUSDT"), encodeCheckpoint("a", open("AUSDT", 600_000), ivs, time.Now(), 120_000, 0)},
		{Key("BUSDT"), encodeCheckpoint("b", open("BUSDT", 600_000), ivs, time.Now(), -1, 590_000)}, // no m0: from its open minute
		{Key("OWNUSDT"), encodeCheckpoint("serve", open("OWNUSDT", 600_000), ivs, time.Now(), 0, 0)},
		{Key("CUSDT"), encodeCheckpoint("c", engine.State{Symbol: "CUSDT", LastID: -1}, ivs, time.Now(), -1, 0)}, // nothing to vouch for
		{Key("DUSDT"), taken},
	} {
		if _, err := b.Live.Put(ctx, c.key, c.value); err != nil {
			t.Fatal(err)
		}
	}
	rs := &remotes{ch: make(chan struct{}, 1)}
	feed := NewFeed(js, b, "serve", ownsSet{}, nil, nil, head.New(head.Config{}), rs, ivs, slog.New(slog.DiscardHandler))
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := feed.Run(ctx); err != nil {
			t.Error(err)
		}
	})
	defer wg.Wait()
	defer cancel()
	want := []string{"AUSDT a m0=120000 open=600000", "BUSDT b m0=600000 open=600000", "DUSDT  m0=120000 open=600000"}
	for timeout := time.After(20 * time.Second); ; {
		rs.mu.Lock()
		got := slices.Clone(rs.calls)
		rs.mu.Unlock()
		slices.Sort(got)
		if slices.Equal(got, want) && feed.CaughtUp() {
			break
		}
		select {
		case <-rs.ch:
		case <-timeout:
			t.Fatalf("told %v (caught up: %v), want %v", got, feed.CaughtUp(), want)
		}
	}
	if rel := feed.Released(); len(rel) != 1 || rel["BUSDT"] != 590_000 {
		t.Errorf("Released = %v, want BUSDT since 590000", rel)
	}
}
