package run

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// log records events from several goroutines.
type log struct {
	mu sync.Mutex
	ev []string
}

func (l *log) add(s string) {
	l.mu.Lock()
	l.ev = append(l.ev, s)
	l.mu.Unlock()
}

// part runs until its context ends and records its stop.
func (l *log) part(name string, started *sync.WaitGroup) func(context.Context) error {
	started.Add(1)
	return func(ctx context.Context) error {
		started.Done()
		<-ctx.Done()
		l.add("stop " + name)
		return nil
	}
}

func TestStopsTiersInReverse(t *testing.T) {
	var l log
	var started sync.WaitGroup
	var g Group
	g.Tier("sinks").Add("writer", l.part("writer", &started)).BeforeStop(func() { l.add("before sinks") })
	g.Tier("core").Add("engine", l.part("engine", &started)).BeforeStop(func() { l.add("before core") })
	g.Tier("inputs").Add("ingest", l.part("ingest", &started)).Add("router", l.part("router", &started))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- g.Run(ctx) }()
	started.Wait()
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	inputs := l.ev[:2]
	slices.Sort(inputs)
	want := []string{"stop ingest", "stop router", "before core", "stop engine", "before sinks", "stop writer"}
	if !slices.Equal(l.ev, want) {
		t.Fatalf("stopped %v, want %v", l.ev, want)
	}
}

func TestAFailingActorStopsTheGroup(t *testing.T) {
	var l log
	var started sync.WaitGroup
	var g Group
	g.Tier("sinks").Add("writer", l.part("writer", &started))
	g.Tier("inputs").Add("symbols", func(context.Context) error { return errors.New("no symbols") }).
		Add("done early", func(context.Context) error { return nil }).
		Add("ingest", l.part("ingest", &started))
	err := g.Run(context.Background())
	if err == nil || !strings.Contains(err.Error(), "symbols: no symbols") {
		t.Fatalf("err %v, want the actor's, named", err)
	}
	if want := []string{"stop ingest", "stop writer"}; !slices.Equal(l.ev, want) {
		t.Fatalf("stopped %v, want %v", l.ev, want)
	}
}

func TestJoinsErrors(t *testing.T) {
	var g Group
	fail := func(msg string) func(context.Context) error {
		return func(ctx context.Context) error {
			<-ctx.Done()
			return errors.New(msg)
		}
	}
	g.Tier("a").Add("flush", fail("final write failed"))
	g.Tier("b").Add("stream", fail("close failed"))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := g.Run(ctx)
	for _, want := range []string{"flush: final write failed", "stream: close failed"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("err %v lacks %q", err, want)
		}
	}
}
