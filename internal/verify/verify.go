// Package verify owns the comparison of klagg's klines with reference
// klines, field by field, and the report `klagg verify` prints.
package verify

import (
	"fmt"
	"io"
	"sort"
	"time"

	"github.com/klagg/klagg/internal/archive"
	"github.com/klagg/klagg/internal/decimal"
	"github.com/klagg/klagg/internal/kline"
)

// Field names, in report order.
var fieldNames = []string{
	"open", "high", "low", "close", "volume", "close_time", "quote_volume", "trades",
	"taker_buy_volume", "taker_buy_quote_volume", "first_trade_id", "last_trade_id",
}

// Report is the outcome of comparing klines.
type Report struct {
	Series           int
	Compared         int
	Equal            int
	DifferentByField map[string]int
	MissingOurs      int // in the reference, not in ours
	MissingReference int // in ours within the reference's range, not in the reference
	First            []Difference
	maxFirst         int
}

// Difference is one differing field, or a kline missing on one side.
type Difference struct {
	Symbol, Interval string
	OpenTime         int64
	Field            string // "missing" for a kline absent on one side
	Ours, Reference  string
}

// New returns an empty report keeping the first maxFirst differences.
func New(maxFirst int) *Report {
	return &Report{DifferentByField: map[string]int{}, maxFirst: maxFirst}
}

// OK reports whether everything compared was equal and nothing was missing.
func (r *Report) OK() bool {
	return r.Compared == r.Equal && r.MissingOurs == 0 && r.MissingReference == 0
}

// Compare adds the comparison of ours with ref (same symbol and interval)
// to r. Only the fields ref carries are compared; ours outside ref's time
// range is ignored.
func (r *Report) Compare(ref archive.Series, ours []kline.Kline) {
	r.Series++
	if len(ref.Klines) == 0 {
		return
	}
	lo, hi := ref.Klines[0].OpenTime, ref.Klines[len(ref.Klines)-1].OpenTime
	byOpen := make(map[int64]*kline.Kline, len(ours))
	for i := range ours {
		if ours[i].OpenTime >= lo && ours[i].OpenTime <= hi {
			byOpen[ours[i].OpenTime] = &ours[i]
		}
	}
	seen := make(map[int64]bool, len(ref.Klines))
	for i := range ref.Klines {
		rk := &ref.Klines[i]
		seen[rk.OpenTime] = true
		ok := byOpen[rk.OpenTime]
		if ok == nil {
			r.MissingOurs++
			r.note(Difference{ref.Symbol, ref.Interval, rk.OpenTime, "missing", "(absent)", "(present)"})
			continue
		}
		r.Compared++
		equal := true
		for f, pair := range fieldPairs(ok, rk, ref.Fields) {
			if pair[0] != pair[1] {
				equal = false
				r.DifferentByField[f]++
				r.note(Difference{ref.Symbol, ref.Interval, rk.OpenTime, f, pair[0], pair[1]})
			}
		}
		if equal {
			r.Equal++
		}
	}
	for open := range byOpen {
		if !seen[open] {
			r.MissingReference++
			r.note(Difference{ref.Symbol, ref.Interval, open, "missing", "(present)", "(absent)"})
		}
	}
}

func (r *Report) note(d Difference) {
	if len(r.First) < r.maxFirst {
		r.First = append(r.First, d)
	}
}

// fieldPairs yields (field, [ours, reference]) for each field both carry,
// as canonical decimal text so that "1482.0" equals "1482".
func fieldPairs(a, b *kline.Kline, f archive.Fields) func(func(string, [2]string) bool) {
	return func(yield func(string, [2]string) bool) {
		p := func(m int64) string { return decimal.String(m) }
		q := func(u decimal.U128) string { return u.String(decimal.Scale) }
		qq := func(u decimal.U128) string { return u.String(decimal.QuoteScale) }
		i := func(v int64) string { return fmt.Sprint(v) }
		pairs := [][3]string{
			{"open", p(a.Open), p(b.Open)}, {"high", p(a.High), p(b.High)},
			{"low", p(a.Low), p(b.Low)}, {"close", p(a.Close), p(b.Close)},
			{"volume", q(a.Volume), q(b.Volume)},
		}
		if f >= archive.FieldsFull {
			pairs = append(pairs,
				[3]string{"close_time", i(a.CloseTime), i(b.CloseTime)},
				[3]string{"quote_volume", qq(a.QuoteVolume), qq(b.QuoteVolume)},
				[3]string{"trades", i(a.Trades), i(b.Trades)},
				[3]string{"taker_buy_volume", q(a.TakerVolume), q(b.TakerVolume)},
				[3]string{"taker_buy_quote_volume", qq(a.TakerQuoteVolume), qq(b.TakerQuoteVolume)})
		}
		if f >= archive.FieldsWithIDs {
			pairs = append(pairs,
				[3]string{"first_trade_id", i(a.FirstTradeID), i(b.FirstTradeID)},
				[3]string{"last_trade_id", i(a.LastTradeID), i(b.LastTradeID)})
		}
		for _, pr := range pairs {
			if !yield(pr[0], [2]string{pr[1], pr[2]}) {
				return
			}
		}
	}
}

// Print writes the report for a person.
func (r *Report) Print(w io.Writer) {
	fmt.Fprintf(w, "series compared:      %d\n", r.Series)
	fmt.Fprintf(w, "klines compared:      %d\n", r.Compared)
	fmt.Fprintf(w, "equal:                %d\n", r.Equal)
	fmt.Fprintf(w, "different:            %d\n", r.Compared-r.Equal)
	names := append([]string(nil), fieldNames...)
	sort.SliceStable(names, func(i, j int) bool { return r.DifferentByField[names[i]] > r.DifferentByField[names[j]] })
	for _, f := range names {
		if n := r.DifferentByField[f]; n > 0 {
			fmt.Fprintf(w, "  %-22s %d\n", f+":", n)
		}
	}
	fmt.Fprintf(w, "missing in ours:      %d\n", r.MissingOurs)
	fmt.Fprintf(w, "missing in reference: %d\n", r.MissingReference)
	if len(r.First) > 0 {
		fmt.Fprintf(w, "first differences:\n")
		for _, d := range r.First {
			t := time.UnixMilli(d.OpenTime).UTC().Format("2006-01-02 15:04")
			fmt.Fprintf(w, "  %s %s %s %-22s ours %-24s reference %s\n", d.Symbol, d.Interval, t, d.Field, d.Ours, d.Reference)
		}
	}
	if r.OK() {
		fmt.Fprintln(w, "OK: every kline equal")
	} else {
		fmt.Fprintln(w, "FAIL: klines differ")
	}
}
