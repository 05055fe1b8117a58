package symbols

import "testing"

func TestTransitions(t *testing.T) {
	cases := []struct {
		from  State
		known bool
		ev    event
		owned bool
		to    State
		act   action
	}{
		{Pending, false, evTrading, true, Seeding, actSubscribe},
		{Pending, false, evPaused, true, Seeding, actSubscribe}, // a halted symbol still has klines to keep
		{Pending, false, evPending, true, Pending, actNone},
		{Pending, false, evGone, true, Delisted, actNone},
		{Pending, true, evTrading, true, Seeding, actSubscribe},
		{Pending, true, evGone, true, Delisted, actNone},
		{Seeding, true, evSeeded, true, Live, actNone},
		{Seeding, true, evSeedFailed, true, Failed, actNone},
		{Seeding, true, evTrading, true, Seeding, actNone},
		{Seeding, true, evGone, true, Delisted, actFinalize},
		{Live, true, evPaused, true, Paused, actNone}, // a halt is not a delisting
		{Live, true, evTrading, true, Live, actNone},
		{Live, true, evGone, true, Delisted, actFinalize},
		{Live, true, evSeeded, true, Live, actNone},
		{Paused, true, evTrading, true, Live, actNone}, // resumes on the same series
		{Paused, true, evPaused, true, Paused, actNone},
		{Paused, true, evGone, true, Delisted, actFinalize},
		{Failed, true, evRetry, true, Seeding, actReseed},
		{Failed, true, evTrading, true, Failed, actNone},
		{Failed, true, evGone, true, Delisted, actFinalize},
		{Delisted, true, evTrading, true, Seeding, actSubscribe}, // listed again
		{Delisted, true, evGone, true, Delisted, actNone},
		{Delisted, true, evRetry, true, Delisted, actNone},
		{Live, true, evRetry, true, Live, actNone},
		// In a cluster, a symbol another node owns is Elsewhere.
		{Pending, false, evTrading, false, Elsewhere, actNone},
		{Pending, false, evPaused, false, Elsewhere, actNone},
		{Pending, false, evGone, false, Delisted, actNone},
		{Pending, true, evTrading, false, Elsewhere, actNone},
		{Elsewhere, true, evTrading, false, Elsewhere, actNone},
		{Elsewhere, true, evOwned, true, Seeding, actSubscribe},
		{Elsewhere, true, evGone, false, Delisted, actNone},
		{Delisted, true, evTrading, false, Elsewhere, actNone},
		{Seeding, true, evDisowned, false, Elsewhere, actDrop},
		{Live, true, evDisowned, false, Elsewhere, actDrop},
		{Paused, true, evDisowned, false, Elsewhere, actDrop},
		{Failed, true, evDisowned, false, Elsewhere, actDrop},
		{Pending, true, evOwned, true, Pending, actNone}, // owned, not trading yet
		{Pending, true, evDisowned, false, Pending, actNone},
		{Delisted, true, evDisowned, false, Delisted, actNone},
		{Live, true, evOwned, true, Live, actNone},
		{Elsewhere, true, evSeeded, false, Elsewhere, actNone}, // a seed that lost the race
		{Elsewhere, true, evRetry, false, Elsewhere, actNone},
		// Next in line for another node's symbol: a standby.
		{Elsewhere, true, evStandby, false, Standby, actWatch},
		{Standby, true, evUnready, false, Elsewhere, actUnwatch},
		{Standby, true, evOwned, true, Seeding, actSubscribe},
		{Standby, true, evTrading, false, Standby, actNone},
		{Standby, true, evGone, false, Delisted, actUnwatch},
		{Standby, true, evDisowned, false, Standby, actNone},
		{Live, true, evStandby, true, Live, actNone},
		{Pending, true, evStandby, false, Pending, actNone},
		{Elsewhere, true, evUnready, false, Elsewhere, actNone},
	}
	for _, c := range cases {
		to, act := transition(c.from, c.known, c.owned, c.ev)
		if to != c.to || act != c.act {
			t.Errorf("%v (known %v, owned %v) on %d: got %v/%d, want %v/%d", c.from, c.known, c.owned, c.ev, to, act, c.to, c.act)
		}
	}
}

func TestClassOf(t *testing.T) {
	for status, want := range map[string]Class{
		"TRADING": ClassTrading, "PENDING_TRADING": ClassPending,
		"TRADING_HALT": ClassPaused, "TRADING_CANCEL_ONLY": ClassPaused, "BREAK": ClassPaused, "PRE_SETTLE": ClassPaused,
		"SETTLING": ClassGone, "CLOSE": ClassGone, "DELIVERED": ClassGone, "SOMETHING_NEW": ClassPaused,
	} {
		if got := ClassOf(status); got != want {
			t.Errorf("ClassOf(%s) = %d, want %d", status, got, want)
		}
	}
}
