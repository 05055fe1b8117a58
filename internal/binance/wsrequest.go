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
	Params []string
	ID     json.RawMessage // echoed in the reply; "null" when absent
}

// WSError is the error of a stream reply, with Binance's codes: 0 unknown
// property, 1 invalid value type, 2 invalid request, 3 invalid JSON.
type WSError struct {
	Code int    `json:"code"`
	Msg  string `json:"msg"`
}

func (e *WSError) Error() string { return fmt.Sprintf("code %d: %s", e.Code, e.Msg) }

// ParseWSRequest reads a stream request. The reply to a request that fails
// to parse still carries its id where one could be read.
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
	case "SUBSCRIBE", "UNSUBSCRIBE", "LIST_SUBSCRIPTIONS":
	default:
		return req, &WSError{2, "Invalid request: unknown variant " + strconv.Quote(req.Method) + ", expected one of SUBSCRIBE, UNSUBSCRIBE, LIST_SUBSCRIPTIONS"}
	}
	if p, ok := raw["params"]; ok && string(p) != "null" {
		if err := json.Unmarshal(p, &req.Params); err != nil {
			return req, &WSError{1, "Invalid value type: params must be a list of stream names"}
		}
	}
	return req, nil
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
