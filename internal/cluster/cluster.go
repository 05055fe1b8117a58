// Package cluster owns a node's place in a klagg cluster on NATS
// JetStream: its membership, the leases by which ingest nodes own symbols
// (each lease is also the symbol's checkpoint), the seeding of a symbol
// taken over from its checkpoint, and the feed that shows a serve node the
// klines other nodes build.
//
// Two key-value buckets hold the cluster's state:
//
//	KLAGG_NODES  <node> → {"roles":[…],"at":ms}  refreshed by each live node
//	KLAGG_LIVE   <SYMBOL> → checkpoint             written with compare-and-set
//
// A checkpoint names the owner, the last aggregate id its engine applied
// and the open kline of every interval holding every trade up to it, as
// JSON (see checkpoint). Its owner rewrites it about once a second, and
// only after every closed kline before it is acknowledged on the kline
// stream, so that a node taking the symbol over at the checkpoint's id + 1
// misses nothing and double-counts nothing. A node whose write is refused
// has been replaced, and drops the symbol at once.
package cluster

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/klagg/klagg/internal/bus"
	"github.com/klagg/klagg/internal/engine"
	"github.com/klagg/klagg/internal/kline"
)

// The cluster's buckets.
const (
	NodesBucket = "KLAGG_NODES"
	LiveBucket  = "KLAGG_LIVE"
)

// Connect connects to NATS for node, reconnecting for as long as it runs.
func Connect(url, node string, log *slog.Logger) (*nats.Conn, error) {
	// No echo: the node's feed would otherwise receive every open kline
	// the node itself sends (JetStream deliveries come from the server
	// and are not echoes).
	nc, err := nats.Connect(url, nats.Name("klagg "+node), nats.MaxReconnects(-1), nats.NoEcho(),
		nats.ReconnectWait(250*time.Millisecond), nats.RetryOnFailedConnect(true),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			log.Warn("NATS link lost; reconnecting", "err", err)
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			log.Info("NATS link back", "server", nc.ConnectedUrl())
		}))
	if err != nil {
		return nil, fmt.Errorf("connect to NATS at %s (cluster.nats_url): %w", url, err)
	}
	return nc, nil
}

// Buckets are the cluster's key-value buckets.
type Buckets struct {
	Nodes, Live jetstream.KeyValue
}

// EnsureBuckets creates the buckets, or brings them to what klagg needs,
// with replicas copies each.
func EnsureBuckets(ctx context.Context, js jetstream.JetStream, replicas int) (Buckets, error) {
	nodes, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket: NodesBucket, Description: "klagg cluster members", History: 1,
		Storage: jetstream.MemoryStorage, Replicas: max(1, replicas),
	})
	if err != nil {
		return Buckets{}, fmt.Errorf("cluster: create bucket %s: %w", NodesBucket, err)
	}
	live, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		// Some history shows who owned a symbol when.
		Bucket: LiveBucket, Description: "klagg symbol leases and checkpoints", History: 16,
		Storage: jetstream.FileStorage, Replicas: max(1, replicas),
	})
	if err != nil {
		return Buckets{}, fmt.Errorf("cluster: create bucket %s: %w", LiveBucket, err)
	}
	return Buckets{Nodes: nodes, Live: live}, nil
}

// Key is symbol's key in the live bucket: the name itself where NATS
// allows it in a key, else "=" and its UTF-8 in hex (Binance lists
// symbols such as 币安人生USDT).
func Key(symbol string) string {
	for _, c := range []byte(symbol) {
		if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return "=" + hex.EncodeToString([]byte(symbol))
		}
	}
	return symbol
}

// checkpoint is a lease's value.
type checkpoint struct {
	Owner  string `json:"owner"` // "": released, anyone may take it
	Symbol string `json:"s"`
	LastID int64  `json:"a"`  // last aggregate id applied; -1: none
	At     int64  `json:"at"` // when written, unix ms
	// M0 is the minute (unix ms) from which the symbol's owners have built
	// it live without a break, each taking it over at the last one's
	// checkpoint (0: from its first trade); absent: not known.
	M0 *int64 `json:"m0,omitempty"`
	// Rel, when set, is the trade time after which the owner's klines
	// lack trades until its repair (ingest.Router.Released).
	Rel int64 `json:"rel,omitempty"`
	// Taken is set when a node takes the lease over: the checkpoint is
	// still the last owner's, and the new owner has not resumed the
	// symbol from it until it writes its own.
	Taken bool              `json:"taken,omitempty"`
	Open  []json.RawMessage `json:"open"` // open klines as kline-stream messages

	open int64 // the open time of the open 1m kline, once decoded
}

// liveSince returns the minute the checkpoint's symbol is built live
// since: as it says, or else from its open minute, which the owner holds
// exactly; -1 for a checkpoint without open klines.
func (c *checkpoint) liveSince(st engine.State) int64 {
	switch {
	case c.M0 != nil:
		return *c.M0
	case len(st.Open) > 0 && st.Open[0].OpenTime != 0:
		return st.Open[0].OpenTime
	}
	return -1
}

// encodeCheckpoint writes the checkpoint's JSON by hand: a node writes a
// thousand of them a second, and json.Marshal re-validated every open
// kline's bytes. m0 < 0 leaves M0 out, rel 0 leaves Rel out.
func encodeCheckpoint(owner string, st engine.State, ivs []kline.Interval, at time.Time, m0, rel int64) []byte {
	b := make([]byte, 0, 128+300*len(st.Open))
	b = append(b, `{"owner":`...)
	b = appendString(b, owner)
	b = append(b, `,"s":`...)
	b = appendString(b, st.Symbol)
	b = append(b, `,"a":`...)
	b = strconv.AppendInt(b, st.LastID, 10)
	b = append(b, `,"at":`...)
	b = strconv.AppendInt(b, at.UnixMilli(), 10)
	if m0 >= 0 {
		b = append(b, `,"m0":`...)
		b = strconv.AppendInt(b, m0, 10)
	}
	if rel > 0 {
		b = append(b, `,"rel":`...)
		b = strconv.AppendInt(b, rel, 10)
	}
	b = append(b, `,"open":`...)
	n := 0
	for i, k := range st.Open {
		if k.OpenTime != 0 && i < len(ivs) {
			b = append(b, "[,"[min(n, 1)])
			b = bus.AppendEncode(b, &kline.Update{Symbol: st.Symbol, Interval: ivs[i], Kline: k})
			n++
		}
	}
	if n == 0 {
		return append(b, "null}"...)
	}
	return append(b, "]}"...)
}

// appendString appends s as a JSON string.
func appendString(b []byte, s string) []byte {
	q, _ := json.Marshal(s)
	return append(b, q...)
}

// decodeCheckpoint reads a lease's value; the state has the open klines of
// ivs, by interval (OpenTime 0 where the checkpoint has none).
func decodeCheckpoint(b []byte, ivs []kline.Interval) (checkpoint, engine.State, error) {
	var c checkpoint
	if err := json.Unmarshal(b, &c); err != nil {
		return c, engine.State{}, fmt.Errorf("cluster: malformed checkpoint: %w", err)
	}
	st := engine.State{Symbol: c.Symbol, LastID: c.LastID, Open: make([]kline.Kline, len(ivs))}
	for _, raw := range c.Open {
		u, err := bus.Decode(raw)
		if err != nil {
			return c, engine.State{}, fmt.Errorf("cluster: checkpoint of %s: %w", c.Symbol, err)
		}
		for i, iv := range ivs {
			if iv.String() == u.Interval.String() {
				st.Open[i] = u.Kline
			}
		}
	}
	return c, st, nil
}

// checkpointHead reads a checkpoint's owner and symbol, the fields every
// node reads from the thousand checkpoints written a second: from the
// tokens that open it where it is laid out as encodeCheckpoint writes it,
// without decoding its open klines.
func checkpointHead(b []byte) checkpoint {
	var c checkpoint
	d := json.NewDecoder(bytes.NewReader(b))
	var tok [5]json.Token
	for i := range tok {
		t, err := d.Token()
		if err != nil {
			break
		}
		tok[i] = t
	}
	owner, ok1 := tok[2].(string)
	symbol, ok2 := tok[4].(string)
	if tok[0] == json.Delim('{') && tok[1] == "owner" && ok1 && tok[3] == "s" && ok2 {
		c.Owner, c.Symbol = owner, symbol
		return c
	}
	if err := json.Unmarshal(b, &c); err != nil {
		// Not a checkpoint: no owner, which no node takes for its own.
		return checkpoint{}
	}
	return c
}

// withOwner returns the checkpoint b with its owner replaced, and marked
// taken: not yet resumed by that owner.
func withOwner(b []byte, owner string) ([]byte, error) {
	var c checkpoint
	if err := json.Unmarshal(b, &c); err != nil {
		return nil, fmt.Errorf("cluster: malformed checkpoint: %w", err)
	}
	c.Owner, c.Taken = owner, owner != ""
	return json.Marshal(c)
}

// ownedBy reports, without decoding it, whether checkpoint b names owner:
// checkpoints are written with the owner first.
func ownedBy(b []byte, owner string) bool {
	return bytes.HasPrefix(b, []byte(`{"owner":`)) && bytes.HasPrefix(b[len(`{"owner":`):], strconv.AppendQuote(nil, owner))
}
