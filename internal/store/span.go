package store

import (
	"cmp"
	"slices"
)

// MergeSpans returns spans sorted by series and start, with the spans of
// a series that overlap or meet (the next starts at the slot after the
// last ends) joined into one.
func MergeSpans(spans []Span) []Span {
	spans = slices.Clone(spans)
	slices.SortFunc(spans, func(a, b Span) int {
		return cmp.Or(cmp.Compare(a.Symbol, b.Symbol), cmp.Compare(a.Interval.Duration(), b.Interval.Duration()), cmp.Compare(a.From, b.From))
	})
	out := spans[:0]
	for _, p := range spans {
		if n := len(out); n > 0 && out[n-1].Symbol == p.Symbol && out[n-1].Interval == p.Interval && p.From <= After(out[n-1]) {
			out[n-1].To = max(out[n-1].To, p.To)
			continue
		}
		out = append(out, p)
	}
	return out
}

// After returns the open time of the slot after p's last: Forever for a
// span that reaches it.
func After(p Span) int64 {
	if p.To == Forever {
		return Forever
	}
	return p.Interval.Next(p.To)
}
