package binance

import (
	"encoding/json"
	"fmt"
	"strconv"
)

// WSRequest is what a client sends on a market stream connection:
// {"method":"SUBSCRIBE","params":["btcusdt@kline_1m"],"id":1}.
type WSRequest struct {
	Method string
	Params []json.RawMessage
	ID     json.RawMessage // echoed in the reply; "null" when absent
}

// WSError is the error of a stream reply, with Binance's codes: 0 unknown
// property, 1 invalid value type, 2 invalid request, 3 invalid JSON.
type WSError struct {
	Code int    `json:"code"`
	Msg  string `json:"msg"`
}

func (e *WSError) Error() string { return fmt.Sprintf("code %d: %s", e.Code, e.Msg) }

// The methods of a market stream connection.
const (
	MethodSubscribe         = "SUBSCRIBE"
	MethodUnsubscribe       = "UNSUBSCRIBE"
	MethodListSubscriptions = "LIST_SUBSCRIPTIONS"
	MethodSetProperty       = "SET_PROPERTY"
	MethodGetProperty       = "GET_PROPERTY"
)

// PropertyCombined is the one property a connection has: whether events
// come wrapped as {"stream":…,"data":…}.
const PropertyCombined = "combined"

// ParseWSRequest reads a stream request with Binance's error codes and
// messages. The reply to a request that fails to parse still carries its
// id where one could be read.
func ParseWSRequest(msg []byte) (WSRequest, *WSError) {
	req := WSRequest{ID: json.RawMessage("null")}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(msg, &raw); err != nil {
		return req, &WSError{3, "Invalid JSON: " + err.Error()}
	}
	if id, ok := raw["id"]; ok {
		if _, err := strconv.ParseUint(string(id), 10, 64); err != nil && string(id) != "null" {
			var s string
			if json.Unmarshal(id, &s) != nil || len(s) > 36 {
				return req, &WSError{2, "Invalid request: request ID must be an unsigned integer or a string of at most 36 characters"}
			}
		}
		req.ID = id
	}
	for k := range raw {
		if k != "method" && k != "params" && k != "id" {
			return req, &WSError{0, "Unknown property " + strconv.Quote(k)}
		}
	}
	m, ok := raw["method"]
	if !ok {
		return req, &WSError{2, "Invalid request: missing field `method`"}
	}
	if err := json.Unmarshal(m, &req.Method); err != nil {
		return req, &WSError{1, "Invalid value type: method must be a string"}
	}
	switch req.Method {
	case MethodSubscribe, MethodUnsubscribe, MethodListSubscriptions, MethodSetProperty, MethodGetProperty:
	default:
		return req, &WSError{2, "Invalid request: unknown variant " + strconv.Quote(req.Method) +
			", expected one of SUBSCRIBE, UNSUBSCRIBE, LIST_SUBSCRIPTIONS, SET_PROPERTY, GET_PROPERTY"}
	}
	if p, ok := raw["params"]; ok && string(p) != "null" {
		if err := json.Unmarshal(p, &req.Params); err != nil {
			return req, &WSError{1, "Invalid value type: params must be a list"}
		}
	}
	return req, nil
}

// Streams returns the stream names a SUBSCRIBE or UNSUBSCRIBE names. Each
// must be a well-formed stream name (ParseStreamName); whether it is one
// the server has is the server's business.
func (r *WSRequest) Streams() ([]string, *WSError) {
	names := make([]string, len(r.Params))
	for i, p := range r.Params {
		if err := json.Unmarshal(p, &names[i]); err != nil {
			return nil, &WSError{1, "Invalid value type: stream names must be strings"}
		}
		if _, ok := ParseStreamName(names[i]); !ok {
			return nil, &WSError{2, fmt.Sprintf("Invalid request: %q is not a stream name such as btcusdt@kline_1m", names[i])}
		}
	}
	return names, nil
}

// Property returns the property a SET_PROPERTY or GET_PROPERTY names and,
// for SET_PROPERTY, its value.
func (r *WSRequest) Property() (name string, value bool, err *WSError) {
	want := 1
	if r.Method == MethodSetProperty {
		want = 2
	}
	switch {
	case len(r.Params) > want:
		return "", false, &WSError{2, "Invalid request: too many parameters"}
	case len(r.Params) < want:
		return "", false, &WSError{2, "Invalid request: missing parameters"}
	}
	if json.Unmarshal(r.Params[0], &name) != nil {
		return "", false, &WSError{2, "Invalid request: property name must be a string"}
	}
	if name != PropertyCombined {
		return "", false, &WSError{0, "Unknown property"}
	}
	if want == 2 && (json.Unmarshal(r.Params[1], &value) != nil || string(r.Params[1]) == "null") {
		return "", false, &WSError{1, "Invalid value type: expected Boolean"}
	}
	return name, value, nil
}

// AppendWSReply writes the reply to a request: the result when err is nil,
// else the error.
func AppendWSReply(dst []byte, result any, err *WSError, id json.RawMessage) []byte {
	var v any
	if err != nil {
		v = struct {
			Error *WSError        `json:"error"`
			ID    json.RawMessage `json:"id"`
		}{err, id}
	} else {
		v = struct {
			Result any             `json:"result"`
			ID     json.RawMessage `json:"id"`
		}{result, id}
	}
	b, jerr := json.Marshal(v)
	if jerr != nil {
		// Only an id that is not valid JSON could fail, and ParseWSRequest
		// never returns one.
		return append(dst, `{"error":{"code":3,"msg":"Invalid JSON"},"id":null}`...)
	}
	return append(dst, b...)
}
