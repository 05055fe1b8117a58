package binance

import (
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"time"
)

// Binance's REST error codes that klagg sends or acts on.
const (
	CodeDisconnected     = -1001 // internal error
	CodeTooManyRequests  = -1003 // 429, and 418 with the ban's end in the message
	CodeOverloaded       = -1008 // 503: the server is overloaded, retry
	CodeIllegalChars     = -1100
	CodeMandatoryParam   = -1102
	CodeUnknownParam     = -1104
	CodeInvalidInterval  = -1120
	CodeInvalidSymbol    = -1121
	CodeStartAfterEnd    = -1023
	CodeInvalidParameter = -1130
)

// ErrorBody is Binance's error answer: {"code":-1121,"msg":"Invalid symbol."}.
type ErrorBody struct {
	Code int    `json:"code"`
	Msg  string `json:"msg"`
}

// TooManyRequestsMsg is the message of a 429 to the client at ip.
func TooManyRequestsMsg(ip string, limit int) string {
	return fmt.Sprintf("Too many requests; current limit of IP(%s) is %d requests per minute. Please use the websocket for live updates to avoid polling the API.", ip, limit)
}

// BannedMsg is the message of a 418, which is where Binance says until when.
func BannedMsg(ip string, until time.Time) string {
	return fmt.Sprintf("Way too many requests; IP(%s) banned until %d. Please use the websocket for live updates to avoid bans.", ip, until.UnixMilli())
}

var bannedUntil = regexp.MustCompile(`banned until (\d{12,14})`)

// BannedUntil reads the ban's end from a 418's message.
func BannedUntil(msg string) (time.Time, bool) {
	m := bannedUntil.FindStringSubmatch(msg)
	if m == nil {
		return time.Time{}, false
	}
	ms, err := strconv.ParseInt(m[1], 10, 64)
	if err != nil {
		return time.Time{}, false
	}
	return time.UnixMilli(ms), true
}

// IsInvalidSymbol reports whether err is Binance's "Invalid symbol" answer.
func IsInvalidSymbol(err error) bool { return hasCode(err, CodeInvalidSymbol) }

// IsInvalidParameter reports whether err is Binance's -1130 answer, which
// aggTrades gives for a fromId or startTime older than it keeps.
func IsInvalidParameter(err error) bool { return hasCode(err, CodeInvalidParameter) }

func hasCode(err error, code int) bool {
	var ae *APIError
	return errors.As(err, &ae) && ae.Code == code
}
