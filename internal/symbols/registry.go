package symbols

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/klagg/klagg/internal/binance"
	"github.com/klagg/klagg/internal/store"
)

// Exchange lists the exchange's symbols: the REST client.
type Exchange interface {
	ExchangeInfo(ctx context.Context) (*binance.ExchangeInfo, error)
}

// Subscriber carries symbols' streams: ingest.
type Subscriber interface {
	Subscribe(symbols ...string)
	Unsubscribe(symbols ...string)
}

// Router forgets a symbol's trade sequence, or keeps a standby's last
// trades.
type Router interface {
	Remove(ctx context.Context, symbol string) error
	Standby(ctx context.Context, symbol string) error
}

// Engine keeps symbols' live klines.
type Engine interface {
	AddSymbol(ctx context.Context, symbol string) error
	RemoveSymbol(ctx context.Context, symbol string) error
	Drop(ctx context.Context, symbol string) error
}

// Owner decides, in a cluster, which symbols this node keeps: it is told
// every symbol there is to keep after each listing, and answers through
// Registry.Own and Registry.Settled.
type Owner interface {
	Want(symbols []string)
}

// Store records symbols and their status, and the exchange-wide lists.
type Store interface {
	PutSymbols(syms []store.Symbol) error
	PutExchange(lists map[string][]byte) error
}

// History seeds a symbol's open klines and backfills its closed ones.
type History interface {
	Seed(ctx context.Context, symbol string) (m0 int64, err error)
	Backfill(ctx context.Context, symbol string, m0 int64, progress func()) error
	BackfillRequests() int
}

// Config sets up a Registry.
type Config struct {
	ContractTypes []string // kept contract types [PERPETUAL, TRADIFI_PERPETUAL]
	QuoteAsset    string   // [USDT]
	Include       []string // only these symbols (empty: all)
	Exclude       []string
	Poll          time.Duration // exchangeInfo poll period [60s]
	Seeders       int           // seeds at once [64]
	RetryBase     time.Duration // a failed seed's first backoff, doubling [2s]
	Backfillers   int           // backfills at once [4]
	Log           *slog.Logger
	// Progress, if set, is told about backfill progress (a terminal bar).
	Progress func(done, total int)
}

// Registry is the single owner of the symbol set.
type Registry struct {
	cfg   Config
	ex    Exchange
	subs  Subscriber
	rt    Router
	eng   Engine
	st    Store
	hist  History
	owner Owner
	log   *slog.Logger

	seeded chan seedResult
	owns   chan ownership
	// settled is set once the owner has made its first assignment: until
	// then a symbol Elsewhere may yet be this node's, and startup waits.
	settled bool
	wg      sync.WaitGroup // seeds and backfills in flight
	seeds   chan struct{}  // semaphore
	view    atomic.Pointer[View]
	lists   atomic.Pointer[map[string][]byte] // the exchange-wide lists of the latest listing
	ready   atomic.Bool
	// readyCh is closed once ready: backfills wait for it.
	readyCh chan struct{}

	held Held

	// Backfill progress, in requests.
	bfTotal, bfDone atomic.Int64
	bfQueue         chan backfillJob

	// Owned by Run.
	entries map[string]*entry
	startup map[string]bool // tradable at startup and not yet live
}

type entry struct {
	owned   bool // this node keeps it: always, but in a cluster
	info    binance.SymbolInfo
	state   State
	class   Class
	fails   int
	retryAt time.Time
	since   time.Time // in this state since
}

type ownership struct {
	symbol  string
	owned   bool
	settled bool
	standby *bool // set: a standby change, not an ownership one
}

type seedResult struct {
	name string
	m0   int64
	err  error
}

type backfillJob struct {
	name string
	m0   int64
}

// Deps are the parts the registry drives.
type Deps struct {
	Exchange   Exchange
	Subscriber Subscriber
	Router     Router
	Engine     Engine
	Store      Store
	History    History
	// Owner, in a cluster, decides which symbols this node keeps; nil:
	// every one.
	Owner Owner
	// Held is told which symbols are built live here, from when; nil:
	// nobody is.
	Held Held
}

// Held keeps which klines klagg holds: coverage.
type Held interface {
	Live(symbol string, m0 int64) // built live from the minute opening at m0
	Stop(symbol string)           // no longer built here
	End(symbol string)            // stopped trading: no kline comes after
}

type noHeld struct{}

func (noHeld) Live(string, int64) {}
func (noHeld) Stop(string)        {}
func (noHeld) End(string)         {}

// New returns a registry; nothing happens until Run.
func New(cfg Config, d Deps) *Registry {
	if len(cfg.ContractTypes) == 0 {
		cfg.ContractTypes = []string{"PERPETUAL", "TRADIFI_PERPETUAL"}
	}
	if cfg.QuoteAsset == "" {
		cfg.QuoteAsset = "USDT"
	}
	if cfg.Poll <= 0 {
		cfg.Poll = time.Minute
	}
	if cfg.Seeders <= 0 {
		cfg.Seeders = 64
	}
	if cfg.RetryBase <= 0 {
		cfg.RetryBase = 2 * time.Second
	}
	if cfg.Backfillers <= 0 {
		cfg.Backfillers = 4
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if d.Held == nil {
		d.Held = noHeld{}
	}
	r := &Registry{cfg: cfg, held: d.Held, ex: d.Exchange, subs: d.Subscriber, rt: d.Router, eng: d.Engine, st: d.Store, hist: d.History,
		owner: d.Owner, settled: d.Owner == nil, owns: make(chan ownership, 1024),
		log: cfg.Log, seeded: make(chan seedResult), seeds: make(chan struct{}, cfg.Seeders),
		bfQueue: make(chan backfillJob, 1<<16), readyCh: make(chan struct{}), entries: map[string]*entry{}, startup: map[string]bool{}}
	r.view.Store(&View{})
	return r
}

// Keeps tells whether klagg keeps symbol i: a perpetual of a kept contract
// type in the quote asset that the include and exclude lists allow.
func (r *Registry) Keeps(i binance.SymbolInfo) bool {
	if !slices.Contains(r.cfg.ContractTypes, i.ContractType) || i.QuoteAsset != r.cfg.QuoteAsset {
		return false
	}
	if len(r.cfg.Include) > 0 && !slices.Contains(r.cfg.Include, i.Symbol) {
		return false
	}
	return !slices.Contains(r.cfg.Exclude, i.Symbol)
}

// Own tells the registry that this node now owns symbol, or no longer
// does (a cluster's lease). A symbol no longer owned is dropped at once:
// its open klines are another node's to go on with.
func (r *Registry) Own(ctx context.Context, symbol string, owned bool) error {
	select {
	case r.owns <- ownership{symbol: symbol, owned: owned}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Standby tells the registry that this node is next in line for symbol,
// which another node owns, or no longer is: a standby carries the
// symbol's trades so that a takeover needs no REST.
func (r *Registry) Standby(ctx context.Context, symbol string, on bool) error {
	select {
	case r.owns <- ownership{symbol: symbol, standby: &on}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Settled tells the registry that the owner has made its first
// assignment: symbols not owned by then are not waited for at startup.
func (r *Registry) Settled(ctx context.Context) error {
	select {
	case r.owns <- ownership{settled: true}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Ready reports whether every symbol tradable at startup is live.
func (r *Registry) Ready() bool { return r.ready.Load() }

// WhenReady is closed once Ready.
func (r *Registry) WhenReady() <-chan struct{} { return r.readyCh }

// View returns the current symbol set; it is not to be changed.
func (r *Registry) View() *View { return r.view.Load() }

// Backfill returns the backfill progress in requests: done of total.
func (r *Registry) Backfill() (done, total int64) { return r.bfDone.Load(), r.bfTotal.Load() }

// Run keeps the symbol set in step with exchangeInfo, starting from first
// (the listing read at startup), until ctx ends; then it waits for the
// seeds and backfills it started.
func (r *Registry) Run(ctx context.Context, first *binance.ExchangeInfo) error {
	defer r.wg.Wait()
	started := time.Now()
	r.apply(ctx, first, true)
	r.checkReady(started)
	for range r.cfg.Backfillers {
		r.wg.Go(func() { r.backfill(ctx) })
	}
	poll := time.NewTicker(r.cfg.Poll)
	defer poll.Stop()
	retry := time.NewTicker(min(time.Second, r.cfg.RetryBase))
	defer retry.Stop()
	progress := time.NewTicker(10 * time.Second)
	defer progress.Stop()
	listings := make(chan *binance.ExchangeInfo, 1)
	polling := false
	for {
		select {
		case <-ctx.Done():
			return nil
		case res := <-r.seeded:
			r.onSeeded(ctx, res)
			r.checkReady(started)
		case o := <-r.owns:
			r.onOwnership(ctx, o)
			r.checkReady(started)
		case <-retry.C:
			now := time.Now()
			for name, e := range r.entries {
				if e.state == Failed && now.After(e.retryAt) {
					r.move(ctx, name, e, evRetry)
				}
			}
		case <-progress.C:
			if !r.ready.Load() {
				v := r.View()
				done, total := r.Backfill()
				r.log.Info("starting", "live", v.Counts[Live]+v.Counts[Paused], "of", len(v.Symbols)-v.Counts[Delisted]-v.Counts[Pending],
					"seeding", v.Counts[Seeding], "failed", v.Counts[Failed], "backfill_requests", fmt.Sprintf("%d/%d", done, total))
			}
		case <-poll.C:
			if polling {
				continue
			}
			polling = true
			r.wg.Go(func() {
				info, err := r.ex.ExchangeInfo(ctx)
				if err != nil {
					if ctx.Err() == nil {
						r.log.Warn("polling exchangeInfo failed; the symbol set stays as it is", "err", err)
					}
					info = nil
				}
				select {
				case listings <- info:
				case <-ctx.Done():
				}
			})
		case info := <-listings:
			polling = false
			if info != nil {
				r.apply(ctx, info, false)
			}
		}
	}
}

func (r *Registry) onOwnership(ctx context.Context, o ownership) {
	if o.settled {
		r.settled = true
		for name, e := range r.entries {
			if e.state == Elsewhere || e.state == Standby {
				delete(r.startup, name)
			}
		}
		return
	}
	e := r.entries[o.symbol]
	if e != nil && o.standby != nil {
		if *o.standby {
			r.move(ctx, o.symbol, e, evStandby)
		} else {
			r.move(ctx, o.symbol, e, evUnready)
		}
		return
	}
	if e == nil || e.owned == o.owned {
		return
	}
	e.owned = o.owned
	if o.owned {
		r.log.Info("symbol owned now; taking it over", "symbol", o.symbol)
		r.move(ctx, o.symbol, e, evOwned)
	} else {
		r.log.Info("symbol owned by another node now; dropping it", "symbol", o.symbol)
		r.move(ctx, o.symbol, e, evDisowned)
	}
	if r.settled && (e.state == Elsewhere || e.state == Standby) {
		delete(r.startup, o.symbol)
	}
}

// checkReady makes the registry ready once every symbol tradable at
// startup is live.
func (r *Registry) checkReady(started time.Time) {
	if r.ready.Load() || len(r.startup) > 0 {
		return
	}
	r.ready.Store(true)
	close(r.readyCh)
	v := r.View()
	r.log.Info("caught up; live", "symbols", v.Counts[Live]+v.Counts[Paused], "paused", v.Counts[Paused],
		"took", time.Since(started).Round(time.Millisecond))
}

// apply takes a listing: every kept symbol moves by its class, and every
// symbol tracked but no longer listed is gone.
func (r *Registry) apply(ctx context.Context, info *binance.ExchangeInfo, startup bool) {
	r.keepLists(info)
	listed := map[string]bool{}
	var changed []store.Symbol
	kept := make([]binance.SymbolInfo, 0, len(info.Symbols))
	for _, i := range info.Symbols {
		if r.Keeps(i) {
			kept = append(kept, i)
		}
	}
	// Older listings first: they are the busiest, and seeding them first
	// makes most of the market live soonest.
	sort.SliceStable(kept, func(a, b int) bool { return kept[a].OnboardDate < kept[b].OnboardDate })
	for _, i := range kept {
		listed[i.Symbol] = true
		e, known := r.entries[i.Symbol]
		if !known {
			e = &entry{info: i, since: time.Now(), owned: r.owner == nil}
			r.entries[i.Symbol] = e
			if !startup {
				r.log.Info("new symbol listed; catching it up", "symbol", i.Symbol, "status", i.Status)
			}
		}
		class := ClassOf(i.Status)
		if known && e.info.Status != i.Status {
			r.log.Info("symbol status changed", "symbol", i.Symbol, "from", e.info.Status, "to", i.Status)
		}
		if !known || e.info.Status != i.Status || !bytes.Equal(e.info.Raw, i.Raw) {
			changed = append(changed, Record(i))
		}
		e.info, e.class = i, class
		if startup && (class == ClassTrading || class == ClassPaused) {
			r.startup[i.Symbol] = true
		}
		r.moveKnown(ctx, i.Symbol, e, listing(class), known)
	}
	for name, e := range r.entries {
		if !listed[name] && e.state != Delisted {
			e.info.Status = "DELISTED"
			changed = append(changed, Record(e.info))
			r.move(ctx, name, e, evGone)
		}
	}
	if len(changed) > 0 {
		if err := r.st.PutSymbols(changed); err != nil {
			r.log.Warn("saving symbols to the store failed; they are kept all the same", "err", err)
		}
	}
	// The view first: an owner told what is wanted may read it.
	r.publish()
	if r.owner != nil {
		var want []string
		for name, e := range r.entries {
			if e.state != Delisted && e.state != Pending {
				want = append(want, name)
			}
		}
		sort.Strings(want)
		r.owner.Want(want)
	}
}

func (r *Registry) move(ctx context.Context, name string, e *entry, ev event) {
	r.moveKnown(ctx, name, e, ev, true)
	r.publish()
}

// moveKnown makes one transition and carries out its action.
func (r *Registry) moveKnown(ctx context.Context, name string, e *entry, ev event, known bool) {
	from := e.state
	to, act := transition(e.state, known, e.owned, ev)
	if to == Live && e.class == ClassPaused {
		to = Paused
	}
	if to != from || !known {
		e.state, e.since = to, time.Now()
		r.log.Debug("symbol state", "symbol", name, "from", from, "to", to)
		if to == Delisted {
			r.held.End(name) // the exchange adds no kline of it any more
		}
	}
	switch act {
	case actSubscribe:
		if err := r.eng.AddSymbol(ctx, name); err != nil {
			return // stopping
		}
		r.seed(ctx, name)
	case actReseed:
		r.seed(ctx, name)
	case actFinalize:
		r.log.Info("symbol stopped trading; finalizing it", "symbol", name, "status", e.info.Status)
		delete(r.startup, name)
		r.subs.Unsubscribe(name)
		if err := r.rt.Remove(ctx, name); err != nil {
			return
		}
		if err := r.eng.RemoveSymbol(ctx, name); err != nil {
			return
		}
	case actDrop:
		r.drop(ctx, name)
	case actWatch:
		if err := r.rt.Standby(ctx, name); err != nil {
			return
		}
		r.subs.Subscribe(name)
	case actUnwatch:
		r.held.Stop(name)
		r.subs.Unsubscribe(name)
		if err := r.rt.Remove(ctx, name); err != nil {
			return // the router's answer fails only when ctx ends
		}
	}
	if (to == Elsewhere || to == Standby) && r.settled {
		delete(r.startup, name)
	}
}

// drop stops keeping name without closing anything: another node goes on.
func (r *Registry) drop(ctx context.Context, name string) {
	r.held.Stop(name)
	r.subs.Unsubscribe(name)
	if err := r.rt.Remove(ctx, name); err != nil {
		return
	}
	if err := r.eng.Drop(ctx, name); err != nil {
		r.log.Debug("stopping; a dropped symbol's klines are left in the engine", "symbol", name, "err", err)
	}
}

// seed subscribes name and seeds it, on a goroutine of its own, at most
// Seeders at once. Subscribing only when the seed can start bounds what the
// router buffers for symbols not yet seeded: Seeders symbols' trades for a
// seed's time, not the whole market's until the last seed is done.
func (r *Registry) seed(ctx context.Context, name string) {
	r.wg.Go(func() {
		select {
		case r.seeds <- struct{}{}:
		case <-ctx.Done():
			return
		}
		r.subs.Subscribe(name) // a no-op when it is already
		m0, err := r.hist.Seed(ctx, name)
		<-r.seeds
		select {
		case r.seeded <- seedResult{name, m0, err}:
		case <-ctx.Done():
		}
	})
}

func (r *Registry) onSeeded(ctx context.Context, res seedResult) {
	e := r.entries[res.name]
	if e != nil && e.state == Delisted {
		// Delisted while it was seeding, perhaps before the seed
		// subscribed it: undo what the seed did.
		r.subs.Unsubscribe(res.name)
		if err := r.rt.Remove(ctx, res.name); err != nil {
			r.log.Debug("stopping; a delisted symbol's sequence is left", "symbol", res.name, "err", err)
		}
		return
	}
	if e != nil && (e.state == Elsewhere || e.state == Standby) {
		r.drop(ctx, res.name) // taken by another node while it seeded
		if e.state == Standby {
			if err := r.rt.Standby(ctx, res.name); err != nil {
				return
			}
			r.subs.Subscribe(res.name)
		}
		return
	}
	if e == nil || e.state != Seeding {
		return
	}
	if res.err != nil {
		e.fails++
		wait := min(r.cfg.RetryBase<<min(e.fails-1, 8), 5*time.Minute)
		e.retryAt = time.Now().Add(wait)
		r.log.Warn("seeding a symbol failed; retrying it alone", "symbol", res.name, "err", res.err, "retry_in", wait)
		r.move(ctx, res.name, e, evSeedFailed)
		return
	}
	e.fails = 0
	delete(r.startup, res.name)
	r.held.Live(res.name, res.m0)
	r.move(ctx, res.name, e, evSeeded)
	if res.m0 != 0 {
		r.bfTotal.Add(int64(r.hist.BackfillRequests()))
		select {
		case r.bfQueue <- backfillJob{res.name, res.m0}:
		default:
			r.log.Warn("backfill queue full; the symbol's history is fetched on the next start", "symbol", res.name)
		}
	}
}

// backfill works the backfill queue, once startup seeding is done so
// that seeds get the weight first. A failed backfill is retried later.
func (r *Registry) backfill(ctx context.Context) {
	select {
	case <-ctx.Done():
		return
	case <-r.readyCh:
	}
	for {
		select {
		case <-ctx.Done():
			return
		case j := <-r.bfQueue:
			err := r.hist.Backfill(ctx, j.name, j.m0, func() {
				n := r.bfDone.Add(1)
				if r.cfg.Progress != nil {
					r.cfg.Progress(int(n), int(r.bfTotal.Load()))
				}
			})
			if err != nil && ctx.Err() == nil {
				r.log.Warn("backfill failed; it is retried later", "symbol", j.name, "err", err)
				r.wg.Go(func() {
					select {
					case <-time.After(time.Minute):
						select {
						case r.bfQueue <- j:
						default:
						}
					case <-ctx.Done():
					}
				})
			}
		}
	}
}

// Record is exchangeInfo's entry for a symbol as the store keeps it.
func Record(i binance.SymbolInfo) store.Symbol {
	return store.Symbol{Name: i.Symbol, Status: i.Status, BaseAsset: i.BaseAsset, QuoteAsset: i.QuoteAsset,
		ContractType: i.ContractType, PricePrecision: i.PricePrecision, QuantityPrecision: i.QuantityPrecision,
		OnboardDate: i.OnboardDate, Pair: i.Pair, Info: i.Raw}
}

// keepLists keeps the listing's exchange-wide lists, and stores them when
// they changed.
func (r *Registry) keepLists(info *binance.ExchangeInfo) {
	lists := map[string][]byte{}
	if len(info.RateLimits) > 0 {
		lists[store.RateLimits] = info.RateLimits
	}
	if len(info.ExchangeFilters) > 0 {
		lists[store.ExchangeFilters] = info.ExchangeFilters
	}
	if len(lists) == 0 {
		return
	}
	if old := r.lists.Load(); old != nil && maps.EqualFunc(*old, lists, bytes.Equal) {
		return
	}
	r.lists.Store(&lists)
	if err := r.st.PutExchange(lists); err != nil {
		r.log.Warn("saving exchangeInfo's rate limits to the store failed; they are kept all the same", "err", err)
	}
}

// Lists returns the exchange-wide lists of exchangeInfo by name
// (store.RateLimits, store.ExchangeFilters) as the latest listing gave
// them; nil before the first.
func (r *Registry) Lists() map[string][]byte {
	if l := r.lists.Load(); l != nil {
		return *l
	}
	return nil
}

// View is the symbol set at one moment, for readers on other goroutines.
type View struct {
	Symbols map[string]Symbol
	Counts  [nStates]int
}

// Symbol is one symbol in a View.
type Symbol struct {
	Info  binance.SymbolInfo
	State State
	Since time.Time
}

// CountsByName returns the number of symbols in each state, by state name.
func (v *View) CountsByName() map[string]int {
	out := make(map[string]int, nStates)
	for s := range nStates {
		out[s.String()] = v.Counts[s]
	}
	return out
}

// publish makes the current set readable.
func (r *Registry) publish() {
	v := &View{Symbols: make(map[string]Symbol, len(r.entries))}
	for name, e := range r.entries {
		v.Symbols[name] = Symbol{Info: e.info, State: e.state, Since: e.since}
		v.Counts[e.state]++
	}
	r.view.Store(v)
}
