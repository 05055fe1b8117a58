package bus

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/url"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/klagg/klagg/internal/bus/bustest"
	"github.com/klagg/klagg/internal/decimal"
	"github.com/klagg/klagg/internal/kline"
	"github.com/klagg/klagg/internal/store"
	"github.com/klagg/klagg/internal/store/postgres"
	"github.com/klagg/klagg/internal/store/storetest"
)

// natsServer runs a JetStream server in process, on a free port, for one
// test.
func natsServer(t testing.TB) jetstream.JetStream {
	t.Helper()
	_, js := bustest.Connect(t, bustest.Server(t))
	return js
}

// run runs f until the test ends.
func run(t *testing.T, f func(context.Context) error) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := f(ctx); err != nil {
			t.Error(err)
		}
	})
	t.Cleanup(func() { cancel(); wg.Wait() })
}

func until(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); !cond(); runtime.Gosched() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
	}
}

func TestEncodeDecode(t *testing.T) {
	for i := range int64(5) {
		for _, sym := range []string{"币安人生USDT", "BTCUSDT"} {
			u := kline.Update{Symbol: sym, Interval: kline.MustInterval("1M"), Kline: storetest.Kline(i*60_000, i)}
			u.Partial = u.Closed && i%2 == 0 // a closed kline that may lack trades says so
			got, err := Decode(Encode(&u))
			if err != nil || !reflect.DeepEqual(got, u) {
				t.Fatalf("%+v → %s → %+v %v", u, Encode(&u), got, err)
			}
		}
	}
	if _, err := Decode([]byte(`{"s":"X","i":"7x"}`)); err == nil {
		t.Fatal("a message with a bad interval decoded")
	}
	// Encode's layout takes the hand-written path; another producer's
	// (keys sorted, spaces) the general one, with the same result.
	u := kline.Update{Symbol: "ETHUSDT", Interval: kline.MustInterval("4h"), Kline: storetest.Kline(3, 8)}
	body := Encode(&u)
	if got, ok := decodeEncoded(body); !ok || !reflect.DeepEqual(got, u) {
		t.Fatalf("decodeEncoded(%s) = %+v %v", body, got, ok)
	}
	var fields map[string]any
	if err := json.Unmarshal(body, &fields); err != nil {
		t.Fatal(err)
	}
	other, _ := json.MarshalIndent(fields, "", " ")
	if _, ok := decodeEncoded(other); ok {
		t.Fatalf("decodeEncoded took another layout: %s", other)
	}
	if got, err := Decode(other); err != nil || !reflect.DeepEqual(got, u) {
		t.Fatalf("Decode(%s) = %+v %v", other, got, err)
	}
}

// TestAckedOnceAllBeforeAre: a kline acknowledged after one queued before
// it failed is confirmed only with that one.
func TestAckedOnceAllBeforeAre(t *testing.T) {
	var got []int64
	p := NewPublisher(nil, func(us []kline.Update) {
		for _, u := range us {
			got = append(got, u.OpenTime)
		}
	}, nil)
	q := func(seqs ...uint64) []queued {
		out := make([]queued, len(seqs))
		for i, s := range seqs {
			out[i] = queued{kline.Update{Kline: kline.Kline{OpenTime: int64(s)}}, s}
		}
		return out
	}
	p.confirm(q(1, 2, 3), q(2))
	if len(got) != 0 {
		t.Fatalf("confirmed %v while 2 is not acknowledged", got)
	}
	p.confirm(q(2, 4), q(4))
	if len(got) != 0 {
		t.Fatalf("confirmed %v while 4 is not acknowledged", got)
	}
	p.confirm(q(4, 5), nil)
	if want := []int64{1, 3, 2, 4, 5}; !slices.Equal(got, want) {
		t.Fatalf("confirmed %v, want %v", got, want)
	}
}

// TestAppendEncode: the hand-written encoder writes encoding/json's bytes,
// so that a kline's message id does not depend on which one wrote it.
func TestAppendEncode(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 2000 {
		k := storetest.Kline(rng.Int64N(1<<50), rng.Int64N(1000))
		k.Open, k.High, k.Low, k.Close = rng.Int64(), rng.Int64N(1000), -rng.Int64N(1<<40), 0
		k.Volume = decimal.U128{Hi: rng.Uint64N(1 << uint(i%63+1)), Lo: rng.Uint64()}
		k.QuoteVolume = decimal.U128{Hi: rng.Uint64(), Lo: rng.Uint64()}
		k.TakerVolume, k.TakerQuoteVolume = decimal.U128{}, decimal.FromInt64(rng.Int64())
		k.Trades, k.FirstTradeID, k.LastTradeID, k.Closed = rng.Int64(), -1, rng.Int64(), i%2 == 0
		sym := []string{"BTCUSDT", "1000PEPEUSDT", "A_B-C", "币安人生USDT", "X<&>", ""}[i%6]
		u := kline.Update{Symbol: sym, Interval: kline.MustInterval([]string{"1m", "1M", "4h"}[i%3]), Kline: k, Partial: k.Closed && i%4 == 0}
		if got, want := AppendEncode(nil, &u), encodeJSON(&u); string(got) != string(want) {
			t.Fatalf("AppendEncode:\n%s\nencoding/json:\n%s", got, want)
		}
	}
}

// FuzzDecode: whatever the hand-written decoder takes, encoding/json
// reads the same.
func FuzzDecode(f *testing.F) {
	for i := range int64(3) {
		u := kline.Update{Symbol: "BTCUSDT", Interval: kline.OneMinute(), Kline: storetest.Kline(i*60_000, i)}
		f.Add(Encode(&u))
	}
	f.Add([]byte(`{"s":"X","i":"1m","t":-0,"T":1,"o":"1","h":"1","l":"1","c":"1","v":"1","q":"1","n":1,"V":"1","Q":"1","f":1,"L":1,"x":true}`))
	f.Add([]byte(`{"s":"X","i":"1m","t":0,"T":1,"o":"1","h":"1","l":"1","c":"1","v":"1","q":"1","n":1,"V":"1","Q":"1","f":1,"L":1,"x":true,"p":true}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		fast, ok := decodeEncoded(b)
		if !ok {
			return
		}
		var m message
		if err := json.Unmarshal(b, &m); err != nil {
			t.Fatalf("decodeEncoded took %q, which encoding/json refuses: %v", b, err)
		}
		iv, err := kline.ParseInterval(m.Interval)
		if err != nil {
			t.Fatal(err)
		}
		want := kline.Update{Symbol: m.Symbol, Interval: iv, Kline: kline.Kline{OpenTime: m.OpenTime, CloseTime: m.CloseTime,
			Trades: m.Trades, FirstTradeID: m.FirstTradeID, LastTradeID: m.LastTradeID, Closed: m.Closed}, Partial: m.Partial}
		text := store.Text{Open: m.Open, High: m.High, Low: m.Low, Close: m.Close, Volume: m.Volume, QuoteVolume: m.QuoteVolume,
			TakerVolume: m.TakerVolume, TakerQuoteVolume: m.TakerQuoteVolume}
		if err := text.Parse(&want.Kline); err != nil {
			t.Fatalf("decodeEncoded took %q, whose numbers do not parse: %v", b, err)
		}
		if !reflect.DeepEqual(fast, want) {
			t.Fatalf("%q: decodeEncoded %+v, encoding/json %+v", b, fast, want)
		}
	})
}

// TestPublishAndSink: closed klines published (each twice, one corrected
// later, open ones among them) reach PostgreSQL through the stream once
// each, the correction last; a restarted sink and a replay from the start
// change nothing.
func TestPublishAndSink(t *testing.T) {
	js := natsServer(t)
	ctx := context.Background()
	if _, err := EnsureStream(ctx, js, 1); err != nil {
		t.Fatal(err)
	}
	db, err := postgres.Open(ctx, storetest.PostgresSchema(t))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	log := slog.New(slog.DiscardHandler)
	pub := NewPublisher(js, nil, log)
	run(t, pub.Run)

	var want []kline.Update
	for _, sym := range []string{"BTCUSDT", "ETHUSDT", "币安人生USDT"} {
		for _, iv := range []kline.Interval{kline.OneMinute(), kline.MustInterval("1h")} {
			for i := range int64(200) {
				k := storetest.Kline(i*iv.Duration().Milliseconds(), 2*i) // even: closed
				want = append(want, kline.Update{Symbol: sym, Interval: iv, Kline: k})
			}
		}
	}
	pub.Publish(want)
	pub.Publish(want) // again: deduplicated by the stream
	open := storetest.Kline(200*60_000, 3)
	pub.Publish([]kline.Update{{Symbol: "BTCUSDT", Interval: kline.OneMinute(), Kline: open}}) // open: not published
	fixed := want[7]
	fixed.Trades++
	pub.Publish([]kline.Update{fixed})
	want[7] = fixed
	if mark := pub.Mark(); mark != uint64(2*len(want)+1) {
		t.Fatalf("mark %d after %d closed klines", mark, 2*len(want)+1)
	}
	wctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if err := pub.WaitAcked(wctx, pub.Mark()); err != nil || pub.Published.Load() != int64(2*len(want)+1) || pub.Pending() != 0 {
		t.Fatalf("WaitAcked: %v with %d published, %d pending", err, pub.Published.Load(), pub.Pending())
	}
	st, _ := js.Stream(ctx, Stream)
	info, err := st.Info(ctx)
	if err != nil || info.State.Msgs != uint64(len(want)+1) {
		t.Fatalf("the stream holds %d messages (%v), want %d: one per kline and the correction", info.State.Msgs, err, len(want)+1)
	}

	rec := &recorder{Store: db, stamps: map[kline.Key]map[int64]int64{}}
	sink := NewSink(js, rec, "sink", log)
	run(t, sink.Run)
	until(t, "the sink stores every message", func() bool { return sink.Stored.Load() == int64(len(want)+1) })
	check := func(when string) {
		t.Helper()
		for _, w := range []kline.Update{want[0], want[7], want[len(want)-1]} {
			ks, err := db.Klines(ctx, store.Query{Symbol: w.Symbol, Interval: w.Interval, Start: w.OpenTime, Limit: 1})
			if err != nil || len(ks) != 1 || ks[0] != w.Kline {
				t.Fatalf("%s: %s %s %d stored as %.300v (%v), want %+v", when, w.Symbol, w.Interval, w.OpenTime, ks, err, w.Kline)
			}
		}
		series, err := db.Series(ctx)
		if err != nil || len(series) != 6 {
			t.Fatalf("%s: series %v %v", when, series, err)
		}
		for k, n := range series {
			if n != 200 {
				t.Fatalf("%s: %v has %d klines, want 200", when, k, n)
			}
		}
	}
	check("after the sink")
	// The versions of want[7] are stamped in the stream's order; the
	// first one, stored again after the correction (as a second sink
	// could), changes nothing.
	old := want[7]
	old.Trades--
	rec.mu.Lock()
	st7 := rec.stamps[want[7].Key()]
	rec.mu.Unlock()
	if len(st7) != 2 || st7[old.Trades] <= 0 || st7[want[7].Trades] <= st7[old.Trades] {
		t.Fatalf("the two versions of a kline were stamped %v (by trades), want the correction's above the first's", st7)
	}
	old.Stamp = st7[old.Trades]
	if err := db.Upsert([]kline.Update{old}); err != nil {
		t.Fatal(err)
	}
	check("after an old version came late")
	// A second sink from the start replays every message: nothing changes.
	replay := NewSink(js, db, "replay", log)
	run(t, replay.Run)
	until(t, "the replay ends", func() bool { return replay.Stored.Load() == int64(len(want)+1) })
	check("after a replay")

	// A consumer deleted under a running sink is created again (from the
	// stream's start, as a new one), and klines published after reach
	// the store.
	if err := st.DeleteConsumer(ctx, "sink"); err != nil {
		t.Fatal(err)
	}
	late := kline.Update{Symbol: "LATEUSDT", Interval: kline.OneMinute(), Kline: storetest.Kline(0, 2)}
	pub.Publish([]kline.Update{late})
	until(t, "the sink stores again after its consumer was deleted", func() bool {
		rec.mu.Lock()
		defer rec.mu.Unlock()
		return len(rec.stamps[late.Key()]) > 0
	})
}

// recorder records the stamps of the klines a sink stores.
// recorder records the stamp of each version (by trade count) of each
// kline stored: the sink's committers may store batches out of order.
type recorder struct {
	Store
	mu     sync.Mutex
	stamps map[kline.Key]map[int64]int64
}

func (r *recorder) Upsert(us []kline.Update) error {
	r.mu.Lock()
	for i := range us {
		k := us[i].Key()
		if r.stamps[k] == nil {
			r.stamps[k] = map[int64]int64{}
		}
		r.stamps[k][us[i].Trades] = us[i].Stamp
	}
	r.mu.Unlock()
	return r.Store.Upsert(us)
}

// BenchmarkPublish publishes closed klines with 1 replica, in process.
func BenchmarkPublish(b *testing.B) {
	js := natsServer(b)
	ctx := context.Background()
	if _, err := EnsureStream(ctx, js, 1); err != nil {
		b.Fatal(err)
	}
	benchPublish(b, js)
}

// freePort returns a loopback port free now.
func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// natsCluster runs three JetStream servers in process, routed to each
// other, and returns a client connected to all of them.
func natsCluster(t testing.TB) jetstream.JetStream {
	t.Helper()
	ports := []int{freePort(t), freePort(t), freePort(t)}
	var routes []*url.URL
	for _, p := range ports {
		routes = append(routes, &url.URL{Scheme: "nats", Host: fmt.Sprintf("127.0.0.1:%d", p)})
	}
	var urls []string
	for i, p := range ports {
		ns, err := server.NewServer(&server.Options{ServerName: fmt.Sprintf("n%d", i), Host: "127.0.0.1", Port: -1,
			JetStream: true, StoreDir: t.TempDir(), NoLog: true, NoSigs: true,
			Cluster: server.ClusterOpts{Name: "klagg", Host: "127.0.0.1", Port: p}, Routes: routes})
		if err != nil {
			t.Fatal(err)
		}
		go ns.Start()
		t.Cleanup(ns.Shutdown)
		if !ns.ReadyForConnections(20 * time.Second) {
			t.Fatal("nats-server did not start")
		}
		urls = append(urls, ns.ClientURL())
	}
	_, js := bustest.Connect(t, strings.Join(urls, ","))
	return js
}

// BenchmarkPublishReplicated publishes closed klines to a stream with 3
// replicas on three in-process servers.
func BenchmarkPublishReplicated(b *testing.B) {
	js := natsCluster(b)
	ctx := context.Background()
	// The cluster elects its meta leader first; until then streams cannot
	// be made.
	var err error
	for deadline := time.Now().Add(30 * time.Second); ; {
		if _, err = EnsureStream(ctx, js, 3); err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond) // waiting on the cluster's election, not synchronizing a test
	}
	if err != nil {
		b.Fatal(err)
	}
	benchPublish(b, js)
}

// benchPublish publishes rounds of 10,000 new closed klines to js, each
// round waiting for every acknowledgement.
func benchPublish(b *testing.B, js jetstream.JetStream) {
	ctx := context.Background()
	pub := NewPublisher(js, nil, slog.New(slog.DiscardHandler))
	const batch = 10_000
	us := make([]queued, batch)
	b.ResetTimer()
	for n := 0; b.Loop(); n++ {
		for i := range us {
			us[i].u = kline.Update{Symbol: "BTCUSDT", Interval: kline.OneMinute(), Kline: storetest.Kline(int64(n*batch+i)*60_000, 2)}
		}
		if failed := pub.publish(ctx, us); len(failed) > 0 {
			b.Fatalf("%d not acknowledged", len(failed))
		}
	}
	b.ReportMetric(float64(b.N*batch)/b.Elapsed().Seconds(), "klines/s")
}

// BenchmarkReplay reads the whole stream back with an ordered consumer,
// decoding every kline, as any consumer replaying it from the start:
//
//	go test -run '^$' -bench Replay -benchtime 5x ./internal/bus/
func BenchmarkReplay(b *testing.B) {
	js := natsServer(b)
	ctx := context.Background()
	if _, err := EnsureStream(ctx, js, 1); err != nil {
		b.Fatal(err)
	}
	pub := NewPublisher(js, nil, slog.New(slog.DiscardHandler))
	const n = 200_000
	us := make([]queued, 10_000)
	for round := range n / len(us) {
		for i := range us {
			us[i].u = kline.Update{Symbol: fmt.Sprintf("S%03dUSDT", i%500), Interval: kline.OneMinute(),
				Kline: storetest.Kline(int64(round*len(us)+i)*60_000, 2)}
		}
		if failed := pub.publish(ctx, us); len(failed) > 0 {
			b.Fatalf("%d not acknowledged", len(failed))
		}
	}
	b.ResetTimer()
	for b.Loop() {
		cons, err := js.OrderedConsumer(ctx, Stream, jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverAllPolicy})
		if err != nil {
			b.Fatal(err)
		}
		it, err := cons.Messages(jetstream.PullMaxMessages(4096))
		if err != nil {
			b.Fatal(err)
		}
		for range n {
			m, err := it.Next()
			if err != nil {
				b.Fatal(err)
			}
			if _, err := Decode(m.Data()); err != nil {
				b.Fatal(err)
			}
		}
		it.Stop()
	}
	b.ReportMetric(float64(b.N*n)/b.Elapsed().Seconds(), "msgs/s")
}

// BenchmarkSink copies 200,000 closed klines (1,000 symbols) from the
// stream into PostgreSQL with one sink, then replays them all into the same
// database with a second consumer, which must change nothing:
//
//	go test -run '^$' -bench Sink -benchtime 3x ./internal/bus/
func BenchmarkSink(b *testing.B) {
	js := natsServer(b)
	ctx := context.Background()
	if _, err := EnsureStream(ctx, js, 1); err != nil {
		b.Fatal(err)
	}
	log := slog.New(slog.DiscardHandler)
	pub := NewPublisher(js, nil, log)
	const n = 200_000
	us := make([]queued, 10_000)
	for round := range n / len(us) {
		for i := range us {
			us[i].u = kline.Update{Symbol: fmt.Sprintf("S%03dUSDT", i%1000), Interval: kline.OneMinute(),
				Kline: storetest.Kline(int64(round*len(us)/1000+i/1000)*60_000, 2)}
		}
		if failed := pub.publish(ctx, us); len(failed) > 0 {
			b.Fatalf("%d not acknowledged", len(failed))
		}
	}
	sinkAll := func(b *testing.B, db Store, durable string) {
		sink := NewSink(js, db, durable, log)
		sctx, cancel := context.WithCancel(ctx)
		var wg sync.WaitGroup
		wg.Go(func() { sink.Run(sctx) })
		defer wg.Wait()
		defer cancel()
		for deadline := time.Now().Add(time.Minute); sink.Stored.Load() < n; {
			time.Sleep(time.Millisecond) // polling the counter the benchmark measures
			if time.Now().After(deadline) {
				ci, err := js.Consumer(ctx, Stream, durable)
				var info *jetstream.ConsumerInfo
				if err == nil {
					info, err = ci.Info(ctx)
				}
				b.Fatalf("sink %s stored %d of %d klines in a minute: consumer %+v %v", durable, sink.Stored.Load(), n, info, err)
			}
		}
	}
	var rounds int
	b.Run("New", func(b *testing.B) {
		for b.Loop() {
			b.StopTimer()
			db, err := postgres.Open(ctx, storetest.PostgresSchema(b))
			if err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
			sinkAll(b, db, fmt.Sprintf("new%d", rounds))
			rounds++
			b.StopTimer()
			db.Close()
			b.StartTimer()
		}
		b.ReportMetric(float64(b.N*n)/b.Elapsed().Seconds(), "klines/s")
	})
	b.Run("Replay", func(b *testing.B) {
		db, err := postgres.Open(ctx, storetest.PostgresSchema(b))
		if err != nil {
			b.Fatal(err)
		}
		defer db.Close()
		sinkAll(b, db, fmt.Sprintf("first%d", rounds))
		rounds++
		b.ResetTimer()
		for b.Loop() {
			sinkAll(b, db, fmt.Sprintf("replay%d", rounds))
			rounds++
		}
		b.ReportMetric(float64(b.N*n)/b.Elapsed().Seconds(), "klines/s")
	})
}

// TestOpens: a round of Opens sends one message a symbol with each of its
// changed open klines (the newest of each series) and none of the closed
// ones, which go to the stream; DecodeOpens reads them back exactly.
func TestOpens(t *testing.T) {
	nc, _ := bustest.Connect(t, bustest.Server(t))
	msgs := make(chan *nats.Msg, 16)
	sub, err := nc.ChanSubscribe(OpenSubjects, msgs)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	o := NewOpens(nc)
	ivs := []kline.Interval{kline.OneMinute(), kline.MustInterval("1h"), kline.MustInterval("1M")}
	update := func(sym string, first uint32, iv int, trades int64, closed bool) kline.Update {
		k := storetest.Kline(0, trades)
		k.Closed = closed
		return kline.Update{Symbol: sym, Interval: ivs[iv], Series: first + uint32(iv), Kline: k}
	}
	// Two symbols' series interleaved, an older version of one, and a
	// closed kline.
	o.Publish([]kline.Update{update("BTCUSDT", 1, 0, 1, false), update("币安人生USDT", 4, 0, 2, false), update("BTCUSDT", 1, 1, 3, false)})
	o.Publish([]kline.Update{update("币安人生USDT", 4, 2, 4, false), update("BTCUSDT", 1, 0, 5, false), update("BTCUSDT", 1, 2, 6, true)})
	run(t, o.Run)
	want := map[string][]kline.Update{
		"klagg.open.usdm.BTCUSDT":  {update("BTCUSDT", 1, 0, 5, false), update("BTCUSDT", 1, 1, 3, false)},
		"klagg.open.usdm.币安人生USDT": {update("币安人生USDT", 4, 0, 2, false), update("币安人生USDT", 4, 2, 4, false)},
	}
	for range want {
		var m *nats.Msg
		select {
		case m = <-msgs:
		case <-time.After(20 * time.Second):
			t.Fatal("no open-kline message in 20 s")
		}
		got, err := DecodeOpens(nil, m.Data)
		if err != nil {
			t.Fatal(err)
		}
		w, ok := want[m.Subject]
		if !ok {
			t.Fatalf("a message on %s: %s", m.Subject, m.Data)
		}
		for i := range w {
			w[i].Series = 0 // not on the wire
		}
		if !reflect.DeepEqual(got, w) {
			t.Errorf("%s: got %+v, want %+v", m.Subject, got, w)
		}
		delete(want, m.Subject)
	}
	// Counted once each publish returns, which may be after it arrived.
	until(t, "Sent counts the 4 open klines", func() bool { return o.Sent.Load() == 4 })
	if _, err := DecodeOpens(nil, []byte("{\"s\":\n")); err == nil {
		t.Error("DecodeOpens took a malformed line")
	}
}
