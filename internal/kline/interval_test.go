package kline

import (
	"strings"
	"testing"
	"time"
)

func ms(s string) int64 {
	t, err := time.Parse("2006-01-02 15:04:05.000", s)
	if err != nil {
		panic(err)
	}
	return t.UnixMilli()
}

func TestIntervalAlignment(t *testing.T) {
	cases := []struct {
		iv, at, open, next string
	}{
		// the epoch
		{"1m", "1970-01-01 00:00:00.000", "1970-01-01 00:00:00.000", "1970-01-01 00:01:00.000"},
		{"3d", "1970-01-01 00:00:00.000", "1970-01-01 00:00:00.000", "1970-01-04 00:00:00.000"},
		{"1w", "1970-01-01 00:00:00.000", "1969-12-29 00:00:00.000", "1970-01-05 00:00:00.000"},
		{"1M", "1970-01-01 00:00:00.000", "1970-01-01 00:00:00.000", "1970-02-01 00:00:00.000"},
		// month ends
		{"1M", "2024-01-31 23:59:59.999", "2024-01-01 00:00:00.000", "2024-02-01 00:00:00.000"},
		{"1M", "2023-04-30 12:00:00.000", "2023-04-01 00:00:00.000", "2023-05-01 00:00:00.000"},
		{"1d", "2024-01-31 23:59:59.999", "2024-01-31 00:00:00.000", "2024-02-01 00:00:00.000"},
		{"12h", "2024-06-30 12:00:00.000", "2024-06-30 12:00:00.000", "2024-07-01 00:00:00.000"},
		// leap days
		{"1M", "2024-02-29 23:59:59.999", "2024-02-01 00:00:00.000", "2024-03-01 00:00:00.000"},
		{"1M", "2023-02-28 10:00:00.000", "2023-02-01 00:00:00.000", "2023-03-01 00:00:00.000"},
		{"1d", "2024-02-29 00:00:00.000", "2024-02-29 00:00:00.000", "2024-03-01 00:00:00.000"},
		{"1w", "2024-02-29 08:00:00.000", "2024-02-26 00:00:00.000", "2024-03-04 00:00:00.000"},
		// year ends
		{"1M", "2023-12-31 23:59:59.999", "2023-12-01 00:00:00.000", "2024-01-01 00:00:00.000"},
		{"1w", "2025-12-31 23:59:59.999", "2025-12-29 00:00:00.000", "2026-01-05 00:00:00.000"},
		{"4h", "2023-12-31 23:59:59.999", "2023-12-31 20:00:00.000", "2024-01-01 00:00:00.000"},
		{"8h", "2024-01-01 00:00:00.000", "2024-01-01 00:00:00.000", "2024-01-01 08:00:00.000"},
		// Sunday → Monday
		{"1w", "2024-03-10 23:59:59.999", "2024-03-04 00:00:00.000", "2024-03-11 00:00:00.000"},
		{"1w", "2024-03-11 00:00:00.000", "2024-03-11 00:00:00.000", "2024-03-18 00:00:00.000"},
		// the rest of Binance's set
		{"3m", "2024-03-11 00:04:59.999", "2024-03-11 00:03:00.000", "2024-03-11 00:06:00.000"},
		{"5m", "2024-03-11 00:04:59.999", "2024-03-11 00:00:00.000", "2024-03-11 00:05:00.000"},
		{"15m", "2024-03-11 10:44:00.000", "2024-03-11 10:30:00.000", "2024-03-11 10:45:00.000"},
		{"30m", "2024-03-11 10:44:00.000", "2024-03-11 10:30:00.000", "2024-03-11 11:00:00.000"},
		{"1h", "2024-03-11 10:44:00.000", "2024-03-11 10:00:00.000", "2024-03-11 11:00:00.000"},
		{"2h", "2024-03-11 11:44:00.000", "2024-03-11 10:00:00.000", "2024-03-11 12:00:00.000"},
		{"6h", "2024-03-11 11:44:00.000", "2024-03-11 06:00:00.000", "2024-03-11 12:00:00.000"},
		{"3d", "2024-03-11 11:44:00.000", "2024-03-09 00:00:00.000", "2024-03-12 00:00:00.000"},
		// custom, epoch-aligned
		{"2m", "2024-03-11 10:45:30.000", "2024-03-11 10:44:00.000", "2024-03-11 10:46:00.000"},
		{"10m", "2024-03-11 10:45:30.000", "2024-03-11 10:40:00.000", "2024-03-11 10:50:00.000"},
		{"90m", "2024-03-11 10:45:30.000", "2024-03-11 10:30:00.000", "2024-03-11 12:00:00.000"},
		{"2d", "2024-03-11 10:45:30.000", "2024-03-10 00:00:00.000", "2024-03-12 00:00:00.000"},
	}
	for _, c := range cases {
		iv := MustInterval(c.iv)
		open := iv.Open(ms(c.at))
		if open != ms(c.open) {
			t.Errorf("%s.Open(%s) = %s, want %s", c.iv, c.at, time.UnixMilli(open).UTC(), c.open)
		}
		if next := iv.Next(open); next != ms(c.next) {
			t.Errorf("%s.Next(%s) = %s, want %s", c.iv, c.open, time.UnixMilli(next).UTC(), c.next)
		}
		if ct := iv.CloseTime(open); ct != ms(c.next)-1 {
			t.Errorf("%s.CloseTime = %d, want %d", c.iv, ct, ms(c.next)-1)
		}
		if iv.Prev(iv.Next(open)) != open {
			t.Errorf("%s.Prev(Next(%s)) != itself", c.iv, c.open)
		}
		if iv.Open(ms(c.next)-1) != open || iv.Open(ms(c.next)) != ms(c.next) {
			t.Errorf("%s: boundaries of %s misplaced", c.iv, c.open)
		}
	}
}

func TestParseInterval(t *testing.T) {
	if MustInterval("1m").Duration() != time.Minute || MustInterval("1M").String() != "1M" {
		t.Fatal("1m and 1M confused")
	}
	if MustInterval("1M").Open(ms("2024-02-10 00:00:00.000")) != ms("2024-02-01 00:00:00.000") {
		t.Fatal("1M is not a calendar month")
	}
	for _, bad := range []string{"", "m", "0m", "-1m", "+1m", "01m", "1s", "2w", "2M", "1y", "1.5h", "1 m", "1000d"} {
		_, err := ParseInterval(bad)
		if err == nil {
			t.Errorf("ParseInterval(%q) accepted", bad)
		} else if !strings.Contains(err.Error(), "1w (Monday-aligned) or 1M (calendar month)") {
			t.Errorf("ParseInterval(%q) error does not name the valid forms: %v", bad, err)
		}
	}
	ivs, err := ParseIntervals("1w, 1m,1M,5m")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, iv := range ivs {
		names = append(names, iv.String())
	}
	if strings.Join(names, ",") != "1m,5m,1w,1M" {
		t.Errorf("ParseIntervals sorted to %v", names)
	}
	if _, err := ParseIntervals("1m,1m"); err == nil {
		t.Error("duplicate interval accepted")
	}
	if len(BinanceIntervals()) != 15 {
		t.Error("Binance has 15 intervals")
	}
}

// TestSlots: the klines between two open times, months included.
func TestSlots(t *testing.T) {
	day := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixMilli()
	month := MustInterval("1M")
	for _, c := range []struct {
		iv     Interval
		lo, hi int64
		want   int64
	}{
		{OneMinute(), day, day, 1},
		{OneMinute(), day, day + 59*60_000, 60},
		{OneMinute(), day + 60_000, day, 0},
		{MustInterval("1w"), MustInterval("1w").Open(day), MustInterval("1w").Open(day) + 3*7*86_400_000, 4},
		{month, day, time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC).UnixMilli(), 12},
		{month, time.Date(2025, 11, 1, 0, 0, 0, 0, time.UTC).UnixMilli(), time.Date(2026, 2, 1, 0, 0, 0, 0, time.UTC).UnixMilli(), 4},
	} {
		if got := c.iv.Slots(c.lo, c.hi); got != c.want {
			t.Errorf("%s.Slots(%d, %d) = %d, want %d", c.iv, c.lo, c.hi, got, c.want)
		}
	}
}
