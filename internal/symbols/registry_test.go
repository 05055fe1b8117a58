package symbols

import (
	"context"
	"errors"
	"log/slog"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/klagg/klagg/internal/binance"
	"github.com/klagg/klagg/internal/store"
)

// parts records what the registry asks of the rest of klagg.
type parts struct {
	mu         sync.Mutex
	subscribed map[string]bool
	engine     map[string]bool
	seeds      map[string]int
	failFirst  map[string]int // seeds of these fail this many times
	seeded     chan string
	dropped    []string
	wants      chan []string
}

func newParts() *parts {
	return &parts{subscribed: map[string]bool{}, engine: map[string]bool{}, seeds: map[string]int{},
		failFirst: map[string]int{}, seeded: make(chan string, 100), wants: make(chan []string, 100)}
}

func (p *parts) ExchangeInfo(context.Context) (*binance.ExchangeInfo, error) {
	return nil, errors.New("not polled in this test")
}
func (p *parts) Subscribe(syms ...string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, s := range syms {
		p.subscribed[s] = true
	}
}
func (p *parts) Unsubscribe(syms ...string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, s := range syms {
		delete(p.subscribed, s)
	}
}
func (p *parts) Remove(context.Context, string) error  { return nil }
func (p *parts) Standby(context.Context, string) error { return nil }
func (p *parts) AddSymbol(_ context.Context, s string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.engine[s] = true
	return nil
}
func (p *parts) RemoveSymbol(_ context.Context, s string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.engine, s)
	return nil
}
func (p *parts) Drop(_ context.Context, s string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.engine, s)
	p.dropped = append(p.dropped, s)
	return nil
}
func (p *parts) Want(syms []string)                        { p.wants <- syms }
func (p *parts) PutSymbols([]store.Symbol) error           { return nil }
func (p *parts) PutExchange(lists map[string][]byte) error { return nil }
func (p *parts) Seed(_ context.Context, s string) (int64, error) {
	p.mu.Lock()
	p.seeds[s]++
	fail := p.seeds[s] <= p.failFirst[s]
	p.mu.Unlock()
	if fail {
		return 0, errors.New("the exchange answered 500")
	}
	p.seeded <- s
	return 0, nil
}
func (p *parts) Backfill(context.Context, string, int64, func()) error { return nil }
func (p *parts) BackfillRequests() int                                 { return 1 }

func info(name, status, contract string) binance.SymbolInfo {
	return binance.SymbolInfo{Symbol: name, Status: status, ContractType: contract, QuoteAsset: "USDT"}
}

// TestRegistryKeepsGoingWhenASeedFails: one symbol's seed fails twice; the
// others go live at once, it is retried alone until it is live, and only
// then is the registry ready. Contract types and statuses decide what is
// kept and how.
func TestRegistryKeepsGoingWhenASeedFails(t *testing.T) {
	p := newParts()
	p.failFirst["BADUSDT"] = 2
	r := New(Config{RetryBase: 10 * time.Millisecond, Poll: time.Hour, Log: slog.New(slog.DiscardHandler)},
		Deps{Exchange: p, Subscriber: p, Router: p, Engine: p, Store: p, History: p})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- r.Run(ctx, &binance.ExchangeInfo{RateLimits: []byte(`[{"rateLimitType":"REQUEST_WEIGHT"}]`), Symbols: []binance.SymbolInfo{
			info("AUSDT", "TRADING", "PERPETUAL"), info("BADUSDT", "TRADING", "PERPETUAL"),
			info("XAUUSDT", "BREAK", "TRADIFI_PERPETUAL"), info("NEWUSDT", "PENDING_TRADING", "PERPETUAL"),
			info("OLDUSDT", "SETTLING", "PERPETUAL"), info("BTCUSDT_261225", "TRADING", "CURRENT_QUARTER"),
		}})
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	got := map[string]bool{}
	for len(got) < 3 {
		select {
		case s := <-p.seeded:
			got[s] = true
			if s == "BADUSDT" && (!got["AUSDT"] || !got["XAUUSDT"]) {
				t.Error("the failing symbol held the others back")
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("seeded %v, want AUSDT, XAUUSDT and BADUSDT", got)
		}
	}
	select {
	case <-r.WhenReady():
	case <-time.After(10 * time.Second):
		t.Fatal("not ready once every tradable symbol is live")
	}
	v := r.View()
	want := map[string]State{"AUSDT": Live, "BADUSDT": Live, "XAUUSDT": Paused, "NEWUSDT": Pending, "OLDUSDT": Delisted}
	for name, st := range want {
		if v.Symbols[name].State != st {
			t.Errorf("%s is %v, want %v", name, v.Symbols[name].State, st)
		}
	}
	if _, ok := v.Symbols["BTCUSDT_261225"]; ok {
		t.Error("a quarterly contract is kept")
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.seeds["BADUSDT"] != 3 || p.subscribed["NEWUSDT"] || p.subscribed["OLDUSDT"] {
		t.Errorf("seeds %v, subscribed %v", p.seeds, p.subscribed)
	}
}

// TestRegistryInACluster: with an owner, tradable symbols wait Elsewhere
// until owned; an owned one is seeded and goes live, readiness waits for
// the owner's first assignment, and a symbol another node takes is
// dropped (unsubscribed, out of the engine, nothing closed) at once.
func TestRegistryInACluster(t *testing.T) {
	p := newParts()
	r := New(Config{RetryBase: 10 * time.Millisecond, Poll: time.Hour, Log: slog.New(slog.DiscardHandler)},
		Deps{Exchange: p, Subscriber: p, Router: p, Engine: p, Store: p, History: p, Owner: p})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- r.Run(ctx, &binance.ExchangeInfo{Symbols: []binance.SymbolInfo{
			info("AUSDT", "TRADING", "PERPETUAL"), info("BUSDT", "TRADING", "PERPETUAL"),
			info("NEWUSDT", "PENDING_TRADING", "PERPETUAL"), info("OLDUSDT", "SETTLING", "PERPETUAL"),
		}})
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	if w := <-p.wants; len(w) != 2 || w[0] != "AUSDT" || w[1] != "BUSDT" {
		t.Fatalf("the owner was told %v, want the two tradable symbols", w)
	}
	if n := r.View().Counts[Elsewhere]; n != 2 {
		t.Fatalf("%d symbols elsewhere before any is owned, want 2", n)
	}
	if err := r.Own(ctx, "AUSDT", true); err != nil {
		t.Fatal(err)
	}
	if s := <-p.seeded; s != "AUSDT" {
		t.Fatalf("seeded %s", s)
	}
	if r.Ready() {
		t.Fatal("ready before the owner settled")
	}
	if err := r.Settled(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case <-r.WhenReady():
	case <-time.After(10 * time.Second):
		t.Fatal("not ready once the owned symbol is live and the owner settled")
	}
	if err := r.Own(ctx, "AUSDT", false); err != nil {
		t.Fatal(err)
	}
	if err := r.Settled(ctx); err != nil { // handled after the Own before it
		t.Fatal(err)
	}
	for r.View().Symbols["AUSDT"].State != Elsewhere {
		runtime.Gosched()
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.subscribed["AUSDT"] || p.engine["AUSDT"] || len(p.dropped) != 1 || p.dropped[0] != "AUSDT" {
		t.Fatalf("disowned symbol still kept: subscribed %v, engine %v, dropped %v", p.subscribed, p.engine, p.dropped)
	}
	if p.seeds["BUSDT"] != 0 {
		t.Fatal("a symbol never owned was seeded")
	}
}
