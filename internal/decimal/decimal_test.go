package decimal

import (
	"math/big"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	cases := []struct {
		in   string
		want int64
	}{
		{"37000.10", 3700010000000},
		{"0.001", 100000},
		{"26951.0", 2695100000000},
		{"12", 1200000000},
		{"0", 0},
		{"0.00000001", 1},
		{"1.50000000000", 150000000},
		{"1e-05", 1000},
		{"1.5E3", 150000000000},
		{".5", 50000000},
		{"5.", 500000000},
		{"92233720368.54775807", 1<<63 - 1},
	}
	for _, c := range cases {
		got, err := Parse(c.in)
		if err != nil || got != c.want {
			t.Errorf("Parse(%q) = %d, %v; want %d", c.in, got, err, c.want)
		}
	}
	for _, bad := range []string{"", ".", "-1", "1.2.3", "abc", "1e", "0.000000001", "1,5", "92233720368.54775808", "99999999999999999999", " 1", "NaN", "1e-9"} {
		if v, err := Parse(bad); err == nil {
			t.Errorf("Parse(%q) = %d, want an error", bad, v)
		}
	}
}

func TestAppend(t *testing.T) {
	cases := []struct {
		m    int64
		d    int
		want string
	}{
		{3700010000000, 2, "37000.10"},
		{3700010000000, 0, "37000.1"},
		{100000, 3, "0.001"},
		{100000, 5, "0.00100"},
		{500000000, 0, "5"},
		{0, 2, "0.00"},
		{1, 2, "0.00000001"}, // never rounds a digit away
		{-150000000, 1, "-1.5"},
	}
	for _, c := range cases {
		if got := string(Append(nil, c.m, c.d)); got != c.want {
			t.Errorf("Append(%d, %d) = %q, want %q", c.m, c.d, got, c.want)
		}
	}
}

func TestU128(t *testing.T) {
	// Σp·q past int64 at 1e-16: 9e10 × 1e8 quote units.
	var sum U128
	p, _ := Parse("90000.12345678")
	q, _ := Parse("1000000.001")
	want := new(big.Int)
	for range 1000 {
		sum = sum.Add(Mul(p, q))
		want.Add(want, new(big.Int).Mul(big.NewInt(p), big.NewInt(q)))
	}
	if sum.Hi == 0 {
		t.Fatal("test does not exceed 64 bits")
	}
	got := sum.String(QuoteScale)
	wantS := new(big.Rat).SetFrac(want, new(big.Int).Exp(big.NewInt(10), big.NewInt(16), nil)).FloatString(16)
	wantS = strings.TrimRight(strings.TrimRight(wantS, "0"), ".")
	if got != wantS {
		t.Fatalf("sum = %s, want %s", got, wantS)
	}
	back, err := ParseU128(got, QuoteScale)
	if err != nil || back != sum {
		t.Fatalf("ParseU128(%s) = %v, %v", got, back, err)
	}
	if _, ok := (U128{^uint64(0), ^uint64(0)}).AddChecked(U128{0, 1}); ok {
		t.Fatal("overflow not detected")
	}
	if got := string((U128{0, 123}).AppendScaled(nil, 8, 3)); got != "0.00000123" {
		t.Fatalf("AppendScaled = %s", got)
	}
	if got := string((U128{0, 1234500000}).AppendScaled(nil, 8, 3)); got != "12.345" {
		t.Fatalf("AppendScaled = %s", got)
	}
	if _, err := ParseU128("1.123456789", 8); err == nil {
		t.Fatal("ParseU128 accepted a 9th decimal")
	}
}

// FuzzParse checks Parse against math/big: whatever Parse accepts is the
// exact value of the text, and a plain decimal with at most 8 decimals that
// fits is accepted.
func FuzzParse(f *testing.F) {
	for _, s := range []string{"37000.10", "0.001", "26951.0", "1e-05", "", ".", "00.1", "92233720368.54775807", "1.000000001"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		v, err := Parse(s)
		r, ok := new(big.Rat).SetString(s)
		plain := ok && !strings.ContainsAny(s, "eE+-/ \t\n") && strings.Count(s, ".") <= 1 && strings.Trim(s, "0123456789.") == ""
		if err != nil {
			if plain && r.Sign() >= 0 {
				scaled := new(big.Rat).Mul(r, big.NewRat(Unit, 1))
				if scaled.IsInt() && scaled.Num().IsInt64() {
					t.Fatalf("Parse(%q) refused a representable value: %v", s, err)
				}
			}
			return
		}
		if !ok {
			t.Fatalf("Parse(%q) = %d but it is not a number", s, v)
		}
		got := new(big.Rat).SetFrac(big.NewInt(v), big.NewInt(Unit))
		if got.Cmp(r) != 0 {
			t.Fatalf("Parse(%q) = %s, want %s", s, got.FloatString(8), r.FloatString(8))
		}
		if back, err := Parse(string(Append(nil, v, 0))); err != nil || back != v {
			t.Fatalf("round trip of %q: %d, %v", s, back, err)
		}
	})
}
