// Package symbols owns the set of symbols klagg keeps. Each symbol is in
// one explicit state, and the registry alone moves it from one to the next,
// driven by exchangeInfo and by how its seeding went; each transition does
// its part to the subscription, the router, the engine and the store, and
// one symbol's failure stays that symbol's.
package symbols

// State is where a symbol is in klagg's keeping.
type State uint8

const (
	// Pending is listed but not trading yet (PENDING_TRADING): nothing
	// is subscribed.
	Pending State = iota
	// Seeding is subscribed, its open klines being seeded.
	Seeding
	// Live is trading, its klines kept from its trades.
	Live
	// Paused is a halt, cancel-only or a TradFi market break: still
	// subscribed and seeded, its klines roll by the clock as for a quiet
	// symbol, and trading resumes on the same series.
	Paused
	// Failed could not be seeded; it is tried again after a backoff.
	Failed
	// Delisted is settling, closed or delivered: its last klines are
	// closed and its streams dropped; its history stays.
	Delisted
	// Elsewhere is trading, and kept by another node of the cluster.
	Elsewhere
	// Standby is kept by another node, and this node, next in line for
	// it, carries its trades to take it over without asking REST.
	Standby
	nStates
)

// States lists every state, in order.
func States() []State {
	out := make([]State, nStates)
	for i := range out {
		out[i] = State(i)
	}
	return out
}

var stateNames = [nStates]string{"pending", "seeding", "live", "paused", "failed", "delisted", "elsewhere", "standby"}

func (s State) String() string {
	if s < nStates {
		return stateNames[s]
	}
	return "unknown"
}

// Class is what an exchangeInfo status means to klagg.
type Class uint8

const (
	ClassPending Class = iota // not trading yet
	ClassTrading
	ClassPaused // trading stopped for a while; the series goes on
	ClassGone   // delisted, settled, delivered, or no longer listed
)

// ClassOf reads Binance's contract status. A status klagg does not know is
// taken as a pause: the safe reading, which closes nothing early.
func ClassOf(status string) Class {
	switch status {
	case "TRADING":
		return ClassTrading
	case "PENDING_TRADING":
		return ClassPending
	case "SETTLING", "CLOSE", "DELIVERING", "DELIVERED":
		return ClassGone
	}
	// TRADING_HALT, TRADING_CANCEL_ONLY, BREAK, PRE_SETTLE, PRE_DELIVERING…
	return ClassPaused
}

// event is what moves a symbol: a listing (its class in exchangeInfo), or
// the outcome of a seed, or the end of a failed seed's backoff.
type event uint8

const (
	evPending event = iota
	evTrading
	evPaused
	evGone
	evSeeded
	evSeedFailed
	evRetry
	evOwned    // this node now owns the symbol (a cluster lease)
	evDisowned // another node owns the symbol now
	evStandby  // this node is next in line for the symbol
	evUnready  // this node is no longer next in line
)

func listing(c Class) event {
	switch c {
	case ClassTrading:
		return evTrading
	case ClassPaused:
		return evPaused
	case ClassGone:
		return evGone
	}
	return evPending
}

// action is what a transition does.
type action uint8

const (
	actNone      action = iota
	actSubscribe        // subscribe, add to the engine, then seed
	actReseed           // seed again (still subscribed)
	actFinalize         // close the open klines, unsubscribe, forget in router and engine
	actDrop             // unsubscribe, forget in router and engine, close nothing: another node goes on
	actWatch            // subscribe and keep the last trades, as a standby
	actUnwatch          // unsubscribe and forget the kept trades
)

// transition is the state machine: from state s (known tells whether the
// symbol was tracked before, owned whether this node owns it: always, but
// in a cluster) on ev, the next state and what to do.
func transition(s State, known, owned bool, ev event) (State, action) {
	tradable := Seeding
	if !owned {
		tradable = Elsewhere
	}
	start := actSubscribe
	if !owned {
		start = actNone
	}
	if !known {
		switch ev {
		case evTrading, evPaused:
			return tradable, start
		case evGone:
			return Delisted, actNone
		}
		return Pending, actNone
	}
	switch ev {
	case evTrading, evPaused:
		switch s {
		case Standby:
			if owned {
				return Seeding, actSubscribe
			}
			return Standby, actNone
		case Pending, Delisted, Elsewhere:
			return tradable, start
		case Live, Paused:
			if ev == evTrading {
				return Live, actNone
			}
			return Paused, actNone
		}
		return s, actNone // seeding or failed: the seed decides
	case evGone:
		switch s {
		case Pending, Delisted, Elsewhere:
			return Delisted, actNone
		case Standby:
			return Delisted, actUnwatch
		}
		return Delisted, actFinalize
	case evSeeded:
		if s == Seeding {
			return Live, actNone // Paused if its class says so: see Registry
		}
	case evSeedFailed:
		if s == Seeding {
			return Failed, actNone
		}
	case evRetry:
		if s == Failed {
			return Seeding, actReseed
		}
	case evOwned:
		if s == Elsewhere || s == Standby {
			return Seeding, actSubscribe
		}
	case evStandby:
		if s == Elsewhere {
			return Standby, actWatch
		}
	case evUnready:
		if s == Standby {
			return Elsewhere, actUnwatch
		}
	case evDisowned:
		switch s {
		case Seeding, Live, Paused, Failed:
			return Elsewhere, actDrop
		}
	}
	return s, actNone
}
