package symbols

import "testing"

func TestTransitions(t *testing.T) {
	cases := []struct {
		from  State
		known bool
		ev    event
		to    State
		act   action
	}{
		{Pending, false, evTrading, Seeding, actSubscribe},
		{Pending, false, evPaused, Seeding, actSubscribe}, // a halted symbol still has klines to keep
		{Pending, false, evPending, Pending, actNone},
		{Pending, false, evGone, Delisted, actNone},
		{Pending, true, evTrading, Seeding, actSubscribe},
		{Pending, true, evGone, Delisted, actNone},
		{Seeding, true, evSeeded, Live, actNone},
		{Seeding, true, evSeedFailed, Failed, actNone},
		{Seeding, true, evTrading, Seeding, actNone},
		{Seeding, true, evGone, Delisted, actFinalize},
		{Live, true, evPaused, Paused, actNone}, // a halt is not a delisting
		{Live, true, evTrading, Live, actNone},
		{Live, true, evGone, Delisted, actFinalize},
		{Live, true, evSeeded, Live, actNone},
		{Paused, true, evTrading, Live, actNone}, // resumes on the same series
		{Paused, true, evPaused, Paused, actNone},
		{Paused, true, evGone, Delisted, actFinalize},
		{Failed, true, evRetry, Seeding, actReseed},
		{Failed, true, evTrading, Failed, actNone},
		{Failed, true, evGone, Delisted, actFinalize},
		{Delisted, true, evTrading, Seeding, actSubscribe}, // listed again
		{Delisted, true, evGone, Delisted, actNone},
		{Delisted, true, evRetry, Delisted, actNone},
		{Live, true, evRetry, Live, actNone},
	}
	for _, c := range cases {
		to, act := transition(c.from, c.known, c.ev)
		if to != c.to || act != c.act {
			t.Errorf("%v (known %v) on %d: got %v/%d, want %v/%d", c.from, c.known, c.ev, to, act, c.to, c.act)
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
