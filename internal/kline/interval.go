package kline

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

const (
	minuteMs = int64(60_000)
	hourMs   = 60 * minuteMs
	dayMs    = 24 * hourMs
	weekMs   = 7 * dayMs
	// The Unix epoch was a Thursday; Binance's weeks open on Monday, 4 days later.
	weekOffsetMs = 4 * dayMs
)

// Interval is a kline length with its UTC alignment. The zero value is not
// valid; obtain intervals from ParseInterval.
type Interval struct {
	name   string
	ms     int64 // fixed length; 0 for calendar months
	offset int64 // alignment offset from the epoch, for weeks
	months int   // calendar months, for "1M"
}

// Binance lists the 15 intervals Binance itself serves, in ascending order.
var binanceNames = []string{"1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "8h", "12h", "1d", "3d", "1w", "1M"}

// BinanceIntervals returns Binance's 15 intervals, shortest first.
func BinanceIntervals() []Interval {
	out := make([]Interval, len(binanceNames))
	for i, n := range binanceNames {
		out[i] = MustInterval(n)
	}
	return out
}

// OneMinute is the base interval every other interval is an aggregate of.
func OneMinute() Interval { return Interval{name: "1m", ms: minuteMs} }

// ParseInterval accepts Binance's names (1m … 1M; "1m" is a minute, "1M" a
// month) and custom epoch-aligned multiples of minutes, hours and days such
// as 2m, 10m, 90m or 2d.
func ParseInterval(s string) (Interval, error) {
	bad := func() (Interval, error) {
		return Interval{}, fmt.Errorf("invalid interval %q: use <n>m, <n>h or <n>d (epoch-aligned, e.g. 1m, 90m, 4h, 3d), 1w (Monday-aligned) or 1M (calendar month)", s)
	}
	if len(s) < 2 {
		return bad()
	}
	n, err := strconv.Atoi(s[:len(s)-1])
	if err != nil || n <= 0 || s[0] == '+' || s[0] == '0' {
		return bad()
	}
	var unit int64
	switch s[len(s)-1] {
	case 'm':
		unit = minuteMs
	case 'h':
		unit = hourMs
	case 'd':
		unit = dayMs
	case 'w':
		if n != 1 {
			return bad()
		}
		return Interval{name: s, ms: weekMs, offset: weekOffsetMs}, nil
	case 'M':
		if n != 1 {
			return bad()
		}
		return Interval{name: s, months: 1}, nil
	default:
		return bad()
	}
	if int64(n) > 366*dayMs/unit {
		return bad()
	}
	return Interval{name: s, ms: int64(n) * unit}, nil
}

// MustInterval is ParseInterval for names known to be valid.
func MustInterval(s string) Interval {
	iv, err := ParseInterval(s)
	if err != nil {
		panic(err)
	}
	return iv
}

// ParseIntervals parses a comma-separated list, rejecting duplicates, and
// returns the intervals sorted from shortest to longest.
func ParseIntervals(list string) ([]Interval, error) {
	var out []Interval
	seen := map[string]bool{}
	for _, f := range strings.Split(list, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		iv, err := ParseInterval(f)
		if err != nil {
			return nil, err
		}
		if seen[iv.name] {
			return nil, fmt.Errorf("interval %q is listed twice", f)
		}
		seen[iv.name] = true
		out = append(out, iv)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no intervals given: list at least one, e.g. 1m,5m,1h")
	}
	SortIntervals(out)
	return out, nil
}

// SortIntervals orders intervals from shortest to longest.
func SortIntervals(ivs []Interval) {
	for i := 1; i < len(ivs); i++ {
		for j := i; j > 0 && ivs[j].approxMs() < ivs[j-1].approxMs(); j-- {
			ivs[j], ivs[j-1] = ivs[j-1], ivs[j]
		}
	}
}

func (iv Interval) approxMs() int64 {
	if iv.months > 0 {
		return int64(iv.months) * 31 * dayMs
	}
	return iv.ms
}

// String returns the interval's name, as Binance writes it.
func (iv Interval) String() string { return iv.name }

// IsZero reports whether iv is the zero Interval.
func (iv Interval) IsZero() bool { return iv.name == "" }

// Open returns the open time (ms since the epoch, UTC) of the kline holding t.
func (iv Interval) Open(t int64) int64 {
	if iv.months > 0 {
		tt := time.UnixMilli(t).UTC()
		return time.Date(tt.Year(), tt.Month(), 1, 0, 0, 0, 0, time.UTC).UnixMilli()
	}
	r := (t - iv.offset) % iv.ms
	if r < 0 {
		r += iv.ms
	}
	return t - r
}

// Next returns the open time of the kline after the one opening at open.
func (iv Interval) Next(open int64) int64 {
	if iv.months > 0 {
		tt := time.UnixMilli(open).UTC()
		return time.Date(tt.Year(), tt.Month()+time.Month(iv.months), 1, 0, 0, 0, 0, time.UTC).UnixMilli()
	}
	return open + iv.ms
}

// Prev returns the open time of the kline before the one opening at open.
func (iv Interval) Prev(open int64) int64 {
	if iv.months > 0 {
		tt := time.UnixMilli(open).UTC()
		return time.Date(tt.Year(), tt.Month()-time.Month(iv.months), 1, 0, 0, 0, 0, time.UTC).UnixMilli()
	}
	return open - iv.ms
}

// Slots counts the klines of iv opening in [lo, hi], both open times of
// iv; 0 when lo > hi.
func (iv Interval) Slots(lo, hi int64) int64 {
	if lo > hi {
		return 0
	}
	if iv.months > 0 {
		a, b := time.UnixMilli(lo).UTC(), time.UnixMilli(hi).UTC()
		months := (b.Year()-a.Year())*12 + int(b.Month()) - int(a.Month())
		return int64(months/iv.months) + 1
	}
	return (hi-lo)/iv.ms + 1
}

// CloseTime returns Binance's close time of the kline opening at open: the
// next open time minus one millisecond.
func (iv Interval) CloseTime(open int64) int64 { return iv.Next(open) - 1 }

// Duration is the fixed length of the interval, or 31 days for a month.
func (iv Interval) Duration() time.Duration { return time.Duration(iv.approxMs()) * time.Millisecond }
