package query

import (
	"context"
	"encoding/json"
	"errors"
	"net/url"
	"path/filepath"
	"slices"
	"strconv"
	"testing"

	"github.com/klagg/klagg/internal/binance"
	"github.com/klagg/klagg/internal/head"
	"github.com/klagg/klagg/internal/kline"
	"github.com/klagg/klagg/internal/store/sqlite"
)

var one = kline.OneMinute()

// k is minute i's kline of A with n trades, closed or open.
func k(i, n int64, closed bool) kline.Update {
	kl := kline.Empty(one, i*60_000, 100)
	kl.Trades, kl.Closed = n, closed
	return kline.Update{Symbol: "A", Interval: one, Kline: kl}
}

// TestMerge: the answer lays the head over the store by interval slot;
// of two versions a closed one wins over an open one, else the head's;
// an answer the store cannot give and the head does not hold whole is
// refused.
func TestMerge(t *testing.T) {
	for _, c := range []struct {
		name   string
		stored []kline.Update
		head   []kline.Update
		broken bool // the store cannot be read
		query  string
		want   []string // minute:trades, "o" if open; nil: refused
	}{
		{"the head's newest after the store's", []kline.Update{k(1, 1, true), k(2, 1, true), k(3, 1, false)},
			[]kline.Update{k(3, 5, true), k(4, 1, false)}, false, "limit=3", []string{"2:1", "3:5", "4:1o"}},
		{"the head's open kline over the store's", []kline.Update{k(1, 1, true), k(2, 1, false)},
			[]kline.Update{k(2, 4, false)}, false, "limit=5", []string{"1:1", "2:4o"}},
		{"a stale open kline loses to the stored closed one", []kline.Update{k(1, 1, true), k(2, 7, true), k(3, 1, false)},
			[]kline.Update{k(2, 4, false)}, false, "limit=5", []string{"1:1", "2:7", "3:1o"}},
		{"a range", []kline.Update{k(1, 1, true), k(2, 1, true), k(3, 1, false)},
			[]kline.Update{k(3, 2, true), k(4, 1, false)}, false, "startTime=120000&endTime=180000", []string{"2:1", "3:2"}},
		{"the store unreadable, the head whole", nil,
			[]kline.Update{k(3, 2, true), k(4, 1, false)}, true, "limit=2", []string{"3:2", "4:1o"}},
		{"the store unreadable, the head short", nil,
			[]kline.Update{k(3, 2, true), k(4, 1, false)}, true, "limit=3", nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			st, err := sqlite.Open(filepath.Join(t.TempDir(), "k.db"))
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			if err := st.Upsert(c.stored); err != nil {
				t.Fatal(err)
			}
			h := head.New(head.Config{Confirmed: true})
			h.Publish(c.head)
			if c.broken {
				st.Close()
			}
			values, err := url.ParseQuery("symbol=A&interval=1m&" + c.query)
			if err != nil {
				t.Fatal(err)
			}
			q, aerr := binance.ParseKlinesQuery(values)
			if aerr != nil {
				t.Fatal(aerr)
			}
			b, err := New(Config{Store: st, Head: h}).AppendKlines(context.Background(), nil, q, kline.Precision{Price: 2, Qty: 3})
			if c.want == nil {
				if !errors.Is(err, ErrIncomplete) {
					t.Fatalf("answered %s (%v); want ErrIncomplete", b, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var rows [][]json.RawMessage
			if err := json.Unmarshal(b, &rows); err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, r := range rows {
				kl, _, err := binance.ParseKlineArray(r)
				if err != nil {
					t.Fatal(err)
				}
				s := strconv.FormatInt(kl.OpenTime/60_000, 10) + ":" + strconv.FormatInt(kl.Trades, 10)
				if kl.CloseTime >= 0 && !closedAt(c.stored, c.head, kl) {
					s += "o"
				}
				got = append(got, s)
			}
			if !slices.Equal(got, c.want) {
				t.Fatalf("answered %v, want %v", got, c.want)
			}
		})
	}
}

// closedAt tells whether the version of kl given (by open time and trade
// count) was a closed one: Binance's rows do not say.
func closedAt(stored, head []kline.Update, kl kline.Kline) bool {
	for _, u := range slices.Concat(stored, head) {
		if u.OpenTime == kl.OpenTime && u.Trades == kl.Trades {
			return u.Closed
		}
	}
	return false
}
