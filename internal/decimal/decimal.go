// Package decimal owns klagg's exact number representation: prices and
// quantities as int64 mantissas at a fixed scale of 1e-8, and their sums and
// products as unsigned 128-bit integers, so that no value Binance sends ever
// passes through a binary float.
//
// Binance never uses more than 8 decimals for a price or a quantity, so one
// fixed scale fits every symbol; a symbol's own precision only matters when
// a number is formatted for output. A price times a quantity has scale 1e-16
// and is kept in 128 bits, where Σp·q cannot overflow for any realistic
// market (2^128 ≈ 3.4e38, i.e. 3.4e22 units of quote asset).
package decimal

import (
	"errors"
	"fmt"
	"math/bits"
	"strconv"
)

// Scale is the number of decimals held by a mantissa (Fixed).
const Scale = 8

// QuoteScale is the number of decimals held by a product of two Fixed values.
const QuoteScale = 2 * Scale

// Unit is the mantissa of 1 at Scale.
const Unit = 100_000_000

var pow10 = [...]uint64{
	1, 10, 100, 1_000, 10_000, 100_000, 1_000_000, 10_000_000, 100_000_000,
	1_000_000_000, 10_000_000_000, 100_000_000_000, 1_000_000_000_000,
	10_000_000_000_000, 100_000_000_000_000, 1_000_000_000_000_000,
	10_000_000_000_000_000, 100_000_000_000_000_000, 1_000_000_000_000_000_000,
	10_000_000_000_000_000_000,
}

// Errors returned by Parse. They are wrapped with the offending text.
var (
	ErrSyntax    = errors.New("not a decimal number")
	ErrPrecision = errors.New("more than 8 decimals")
	ErrRange     = errors.New("out of range")
)

// Parse reads a non-negative decimal such as "37000.10", "0.001", "26951.0",
// "12" or "1.5e-3" into a mantissa at Scale. It refuses, rather than rounds,
// a value with non-zero digits beyond the 8th decimal.
//
// The plain form is scanned by hand because it runs once per trade field on
// the hot path (about 10 ns, no allocation, versus ~150 ns for
// strconv/big-based parsing); the exponent form is rare and takes the slow path.
func Parse[S ~string | ~[]byte](s S) (int64, error) {
	n := len(s)
	if n == 0 {
		return 0, fmt.Errorf("%w: empty", ErrSyntax)
	}
	var m uint64
	i := 0
	digits := 0
	for ; i < n; i++ {
		c := s[i]
		if c < '0' || c > '9' {
			break
		}
		if m > (1<<63-1)/10/Unit {
			return 0, fmt.Errorf("%w: %q", ErrRange, string(s))
		}
		m = m*10 + uint64(c-'0')
		digits++
	}
	m *= Unit
	if i < n && s[i] == '.' {
		i++
		frac := 0
		for ; i < n; i++ {
			c := s[i]
			if c < '0' || c > '9' {
				break
			}
			d := uint64(c - '0')
			if frac < Scale {
				m += d * pow10[Scale-1-frac]
			} else if d != 0 {
				return 0, fmt.Errorf("%w: %q", ErrPrecision, string(s))
			}
			frac++
			digits++
		}
	}
	if digits == 0 {
		return 0, fmt.Errorf("%w: %q", ErrSyntax, string(s))
	}
	if i < n {
		if s[i] == 'e' || s[i] == 'E' {
			return parseExp(string(s))
		}
		return 0, fmt.Errorf("%w: %q", ErrSyntax, string(s))
	}
	if m > 1<<63-1 {
		return 0, fmt.Errorf("%w: %q", ErrRange, string(s))
	}
	return int64(m), nil
}

// parseExp handles the exponent notation some JSON encoders write for small
// floats ("1e-05"), shifting the decimal point textually so nothing is rounded.
func parseExp(s string) (int64, error) {
	plain, err := shiftExp(s, indexExp(s))
	if err != nil {
		return 0, err
	}
	v, err := Parse(plain)
	if err != nil {
		return 0, fmt.Errorf("%w (in %q)", err, s)
	}
	return v, nil
}

// Append writes mantissa m (at Scale) with exactly decimals digits after the
// point, Binance's style ("37000.10", "5", "0.00100"). When decimals is too
// few to hold m exactly, it writes as many as needed: output never loses a
// digit.
func Append(dst []byte, m int64, decimals int) []byte {
	if m < 0 {
		dst = append(dst, '-')
		return appendScaled(dst, uint64(-m), 0, Scale, decimals)
	}
	return appendScaled(dst, uint64(m), 0, Scale, decimals)
}

// String formats m with the fewest decimals that hold it exactly.
func String(m int64) string { return string(Append(nil, m, 0)) }

func appendScaled(dst []byte, lo, hi uint64, scale, decimals int) []byte {
	var buf [48]byte
	digits := U128{hi, lo}.appendDigits(buf[:0])
	intLen := len(digits) - scale
	// frac is the i-th decimal digit; digits may be shorter than scale.
	frac := func(i int) byte {
		if j := intLen + i; j >= 0 {
			return digits[j]
		}
		return '0'
	}
	// Trailing zeros beyond the requested decimals carry nothing.
	keep := scale
	for keep > decimals && frac(keep-1) == '0' {
		keep--
	}
	if intLen <= 0 {
		dst = append(dst, '0')
	} else {
		dst = append(dst, digits[:intLen]...)
	}
	if keep == 0 && decimals == 0 {
		return dst
	}
	dst = append(dst, '.')
	for i := 0; i < keep; i++ {
		dst = append(dst, frac(i))
	}
	for i := keep; i < decimals; i++ {
		dst = append(dst, '0')
	}
	return dst
}

// U128 is an unsigned 128-bit integer, used for sums of quantities and of
// price·quantity products.
type U128 struct {
	Hi, Lo uint64
}

// FromInt64 widens a non-negative mantissa.
func FromInt64(v int64) U128 { return U128{0, uint64(v)} }

// Mul returns a·b for two non-negative mantissas; the result has QuoteScale.
func Mul(a, b int64) U128 {
	hi, lo := bits.Mul64(uint64(a), uint64(b))
	return U128{hi, lo}
}

// Add returns u+v. Overflow would need 3.4e38 units of the smallest step and
// cannot happen for market data; it is checked anyway in Checked paths.
func (u U128) Add(v U128) U128 {
	lo, c := bits.Add64(u.Lo, v.Lo, 0)
	hi, _ := bits.Add64(u.Hi, v.Hi, c)
	return U128{hi, lo}
}

// AddChecked returns u+v and false if the sum overflowed 128 bits.
func (u U128) AddChecked(v U128) (U128, bool) {
	lo, c := bits.Add64(u.Lo, v.Lo, 0)
	hi, c2 := bits.Add64(u.Hi, v.Hi, c)
	return U128{hi, lo}, c2 == 0
}

// Sub returns u−v; callers guarantee u ≥ v.
func (u U128) Sub(v U128) U128 {
	lo, b := bits.Sub64(u.Lo, v.Lo, 0)
	hi, _ := bits.Sub64(u.Hi, v.Hi, b)
	return U128{hi, lo}
}

// IsZero reports whether u is 0.
func (u U128) IsZero() bool { return u.Hi == 0 && u.Lo == 0 }

// Cmp compares u and v, returning -1, 0 or +1.
func (u U128) Cmp(v U128) int {
	switch {
	case u.Hi < v.Hi:
		return -1
	case u.Hi > v.Hi:
		return 1
	case u.Lo < v.Lo:
		return -1
	case u.Lo > v.Lo:
		return 1
	}
	return 0
}

// appendDigits appends the base-10 digits of u.
func (u U128) appendDigits(dst []byte) []byte {
	if u.Hi == 0 {
		return strconv.AppendUint(dst, u.Lo, 10)
	}
	// Split into a high part and 19 low digits: hi:lo = q·1e19 + r.
	const e19 = 10_000_000_000_000_000_000
	qhi := u.Hi / e19
	q, r := bits.Div64(u.Hi%e19, u.Lo, e19)
	dst = U128{qhi, q}.appendDigits(dst)
	var tmp [19]byte
	s := strconv.AppendUint(tmp[:0], r, 10)
	for i := len(s); i < 19; i++ {
		dst = append(dst, '0')
	}
	return append(dst, s...)
}

// AppendScaled writes u (at the given scale) with exactly decimals digits after
// the point, or more where needed to keep every digit.
func (u U128) AppendScaled(dst []byte, scale, decimals int) []byte {
	return appendScaled(dst, u.Lo, u.Hi, scale, decimals)
}

// ParseU128 reads a non-negative decimal into a U128 at the given scale
// (Scale for quantities, QuoteScale for quote volumes), refusing digits
// beyond the scale. It is used off the hot path: for stored values and
// reference klines, and for the sink's klines from the stream (from
// bytes, without allocating).
func ParseU128[S ~string | ~[]byte](s S, scale int) (U128, error) {
	if i := indexExp(s); i >= 0 {
		// Reuse the exponent shifter: it produces a plain decimal string.
		plain, err := shiftExp(string(s), i)
		if err != nil {
			return U128{}, err
		}
		return ParseU128(plain, scale)
	}
	var u U128
	digits, frac, seenPoint := 0, 0, false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '.' && !seenPoint:
			seenPoint = true
			continue
		case c < '0' || c > '9':
			return U128{}, fmt.Errorf("%w: %q", ErrSyntax, string(s))
		}
		digits++
		if seenPoint {
			if frac >= scale {
				if c != '0' {
					return U128{}, fmt.Errorf("%w: %q has more than %d decimals", ErrPrecision, string(s), scale)
				}
				continue
			}
			frac++
		}
		var ok bool
		if u, ok = u.mulAdd(10, uint64(c-'0')); !ok {
			return U128{}, fmt.Errorf("%w: %q", ErrRange, string(s))
		}
	}
	if digits == 0 {
		return U128{}, fmt.Errorf("%w: %q", ErrSyntax, string(s))
	}
	for ; frac < scale; frac++ {
		var ok bool
		if u, ok = u.mulAdd(10, 0); !ok {
			return U128{}, fmt.Errorf("%w: %q", ErrRange, string(s))
		}
	}
	return u, nil
}

func (u U128) mulAdd(m, a uint64) (U128, bool) {
	h1, lo := bits.Mul64(u.Lo, m)
	h2, hi := bits.Mul64(u.Hi, m)
	hi, c := bits.Add64(hi, h1, 0)
	if h2 != 0 || c != 0 {
		return U128{}, false
	}
	lo, c = bits.Add64(lo, a, 0)
	hi, c = bits.Add64(hi, 0, c)
	return U128{hi, lo}, c == 0
}

func indexExp[S ~string | ~[]byte](s S) int {
	for i := 0; i < len(s); i++ {
		if s[i] == 'e' || s[i] == 'E' {
			return i
		}
	}
	return -1
}

func shiftExp(s string, e int) (string, error) {
	exp, err := strconv.Atoi(s[e+1:])
	if err != nil || exp > 40 || exp < -40 {
		return "", fmt.Errorf("%w: %q", ErrSyntax, s)
	}
	mant := s[:e]
	intPart, fracPart := mant, ""
	for i := 0; i < len(mant); i++ {
		if mant[i] == '.' {
			intPart, fracPart = mant[:i], mant[i+1:]
			break
		}
	}
	all := intPart + fracPart
	point := len(intPart) + exp
	for point < 0 {
		all = "0" + all
		point++
	}
	for point > len(all) {
		all += "0"
	}
	return all[:point] + "." + all[point:], nil
}

// String formats u at the given scale with the fewest decimals that hold it.
func (u U128) String(scale int) string { return string(u.AppendScaled(nil, scale, 0)) }
