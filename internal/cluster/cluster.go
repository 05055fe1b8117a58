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
	Owner  string            `json:"owner"` // "": released, anyone may take it
	Symbol string            `json:"s"`
	LastID int64             `json:"a"`    // last aggregate id applied; -1: none
	At     int64             `json:"at"`   // when written, unix ms
	Open   []json.RawMessage `json:"open"` // open klines as kline-stream messages
}

func encodeCheckpoint(owner string, st engine.State, ivs []kline.Interval, at time.Time) []byte {
	c := checkpoint{Owner: owner, Symbol: st.Symbol, LastID: st.LastID, At: at.UnixMilli()}
	for i, k := range st.Open {
		if k.OpenTime != 0 && i < len(ivs) {
			c.Open = append(c.Open, bus.Encode(&kline.Update{Symbol: st.Symbol, Interval: ivs[i], Kline: k}))
		}
	}
	b, _ := json.Marshal(c)
	return b
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

// withOwner returns the checkpoint b with its owner replaced.
func withOwner(b []byte, owner string) ([]byte, error) {
	var c checkpoint
	if err := json.Unmarshal(b, &c); err != nil {
		return nil, fmt.Errorf("cluster: malformed checkpoint: %w", err)
	}
	c.Owner = owner
	return json.Marshal(c)
}

// ownedBy reports, without decoding it, whether checkpoint b names owner:
// checkpoints are written with the owner first.
func ownedBy(b []byte, owner string) bool {
	return bytes.HasPrefix(b, []byte(`{"owner":`)) && bytes.HasPrefix(b[len(`{"owner":`):], strconv.AppendQuote(nil, owner))
}
