// Package config owns klagg's configuration: the TOML file, its embedded
// defaults, and validation with messages that name the key at fault.
package config

import (
	"bytes"
	_ "embed"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/pelletier/go-toml/v2"

	"github.com/klagg/klagg/internal/kline"
)

//go:embed default.toml
var defaultTOML []byte

// Default returns the embedded default configuration file.
func Default() []byte { return bytes.Clone(defaultTOML) }

// Duration is a time.Duration written as "3s" in TOML.
type Duration struct{ time.Duration }

// UnmarshalText implements encoding.TextUnmarshaler.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return &durationError{string(b)}
	}
	d.Duration = v
	return nil
}

// durationError is a value that is not a duration. The TOML decoder
// reports it without its key when the value is a number (push_interval =
// 100), so decode finds the key itself.
type durationError struct{ text string }

func (e *durationError) Error() string {
	return fmt.Sprintf("%q is not a duration such as \"250ms\", \"3s\" or \"5m\" (in quotes)", e.text)
}

// locate finds the key whose value is written as text, and its line.
func locate(data []byte, text string) (key string, line int, ok bool) {
	table := ""
	for i, l := range strings.Split(string(data), "\n") {
		l = strings.TrimSpace(l)
		if strings.HasPrefix(l, "[") {
			table = strings.Trim(l, "[] ")
			continue
		}
		k, v, found := strings.Cut(l, "=")
		if v, _, _ = strings.Cut(v, "#"); found && strings.TrimSpace(v) == text {
			key = strings.TrimSpace(k)
			if table != "" {
				key = table + "." + key
			}
			return key, i + 1, true
		}
	}
	return "", 0, false
}

// MarshalText implements encoding.TextMarshaler.
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// Config is klagg's configuration.
type Config struct {
	Exchange struct {
		RESTURL              string   `toml:"rest_url"`
		WSURL                string   `toml:"ws_url"`
		Proxy                string   `toml:"proxy"`
		WeightPerMinute      int      `toml:"weight_per_minute"`
		StreamsPerConnection int      `toml:"streams_per_connection"`
		ReadTimeout          Duration `toml:"read_timeout"`
		RotateAfter          Duration `toml:"rotate_after"`
		SymbolsPoll          Duration `toml:"symbols_poll"`
		TimeSync             Duration `toml:"time_sync"`
		HoldMax              Duration `toml:"hold_max"`
	} `toml:"exchange"`
	Symbols struct {
		ContractTypes []string `toml:"contract_types"`
		Include       []string `toml:"include"`
		Exclude       []string `toml:"exclude"`
	} `toml:"symbols"`
	Klines struct {
		Intervals     []string `toml:"intervals"`
		Grace         Duration `toml:"grace"`
		BackfillLimit int      `toml:"backfill_limit"`
	} `toml:"klines"`
	Reconcile struct {
		Enabled bool     `toml:"enabled"`
		Delay   Duration `toml:"delay"`
	} `toml:"reconcile"`
	Database struct {
		Path       string   `toml:"path"`
		URL        string   `toml:"url"`
		WriteEvery Duration `toml:"write_every"`
	} `toml:"database"`
	Server struct {
		Listen            string   `toml:"listen"`
		Token             string   `toml:"token"`
		CORSOrigins       []string `toml:"cors_origins"`
		PushInterval      Duration `toml:"push_interval"`
		ClientBuffer      int      `toml:"client_buffer"`
		MaxConnections    int      `toml:"max_connections"`
		MaxStreamsPerConn int      `toml:"max_streams_per_connection"`
		PingInterval      Duration `toml:"ping_interval"`
		WeightPerMinute   int      `toml:"weight_per_minute"`
		MaxHTTPConns      int      `toml:"max_http_connections"`
	} `toml:"server"`
	History struct {
		Enabled  bool     `toml:"enabled"`
		From     string   `toml:"from"`
		Since    string   `toml:"since"`
		Parallel int      `toml:"parallel"`
		Every    Duration `toml:"every"`
	} `toml:"history"`
	Log struct {
		StatusInterval Duration `toml:"status_interval"`
	} `toml:"log"`
	Cluster struct {
		NATSURL   string   `toml:"nats_url"`
		Node      string   `toml:"node"`
		Roles     []string `toml:"roles"`
		Replicas  int      `toml:"replicas"`
		Staleness Duration `toml:"staleness"`
		Standby   bool     `toml:"standby"`
	} `toml:"cluster"`

	// Intervals is Klines.Intervals parsed, shortest first.
	Intervals []kline.Interval `toml:"-"`
}

// DefaultPath is where the config is read when CONFIG_PATH is not set.
const DefaultPath = "config/aggregate_config.toml"

// Load reads the configuration: defaults, overlaid with the file at path.
// When the file does not exist it is created with the defaults and created
// is true.
func Load(path string) (cfg *Config, created bool, err error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return nil, false, fmt.Errorf("config %s is missing and its folder cannot be created: %w", path, err)
		}
		if err := os.WriteFile(path, defaultTOML, 0o644); err != nil {
			return nil, false, fmt.Errorf("config %s is missing and cannot be written: %w", path, err)
		}
		created = true
		data = defaultTOML
	} else if err != nil {
		return nil, false, fmt.Errorf("read config: %w", err)
	}
	cfg, err = Parse(data)
	if err != nil {
		return nil, created, fmt.Errorf("config %s: %w", path, err)
	}
	return cfg, created, nil
}

// Parse reads TOML over the defaults and validates the result. Unknown keys
// are errors that name the key and its line.
func Parse(data []byte) (*Config, error) {
	// Editors on Windows start UTF-8 files with a byte-order mark, which
	// TOML does not allow; it carries nothing.
	data = bytes.TrimPrefix(data, []byte("\xef\xbb\xbf"))
	cfg := &Config{}
	if err := decode(defaultTOML, cfg); err != nil {
		return nil, fmt.Errorf("embedded defaults: %w", err)
	}
	if err := decode(data, cfg); err != nil {
		return nil, err
	}
	return cfg, cfg.validate()
}

func decode(data []byte, cfg *Config) error {
	dec := toml.NewDecoder(bytes.NewReader(data)).DisallowUnknownFields()
	if err := dec.Decode(cfg); err != nil {
		var dur *durationError
		if errors.As(err, &dur) {
			if key, line, ok := locate(data, dur.text); ok {
				return fmt.Errorf("line %d: %s: %w", line, key, dur)
			}
		}
		var sm *toml.StrictMissingError
		if errors.As(err, &sm) {
			var keys []string
			for _, e := range sm.Errors {
				row, _ := e.Position()
				keys = append(keys, fmt.Sprintf("%q (line %d)", strings.Join(e.Key(), "."), row))
			}
			return fmt.Errorf("unknown key %s: check its spelling against the defaults (klagg -h shows where they are written)", strings.Join(keys, ", "))
		}
		var de *toml.DecodeError
		if errors.As(err, &de) {
			row, col := de.Position()
			key := strings.Join(de.Key(), ".")
			if got, want, ok := typeMismatch(de.Error()); ok {
				return fmt.Errorf("line %d: %s is a TOML %s; it takes %s", row, key, got, want)
			}
			return fmt.Errorf("line %d, column %d: %s (key %s)", row, col, de.Error(), key)
		}
		return err
	}
	return nil
}

// typeMismatch reads go-toml's "cannot decode TOML integer into struct
// field … of type string" and says what the key takes in the config's
// words, not Go's.
func typeMismatch(msg string) (got, want string, ok bool) {
	_, rest, found := strings.Cut(msg, "cannot decode TOML ")
	if !found {
		return "", "", false
	}
	got, _, _ = strings.Cut(rest, " ")
	i := strings.LastIndex(rest, " of type ")
	if i < 0 {
		return "", "", false
	}
	switch t := rest[i+len(" of type "):]; {
	case t == "string":
		want = `text in quotes, such as "value"`
	case t == "int" || strings.HasPrefix(t, "int") || strings.HasPrefix(t, "uint"):
		want = "a whole number, such as 100"
	case strings.HasPrefix(t, "float"):
		want = "a number, such as 1.5"
	case t == "bool":
		want = "true or false"
	case t == "[]string":
		want = `a list of texts in quotes, such as ["a", "b"]`
	case strings.HasPrefix(t, "struct"):
		want = "a table of keys, written [name] on a line of its own"
	case strings.HasSuffix(t, "Duration"):
		want = `a duration in quotes, such as "3s"`
	default:
		return "", "", false
	}
	return got, want, true
}

func (c *Config) validate() error {
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: "+format, append([]any{key}, args...)...))
	}
	checkURL := func(key, v string, schemes ...string) {
		u, err := url.Parse(v)
		if err != nil || u.Host == "" {
			bad(key, "%q is not a URL like %s://host", v, schemes[0])
			return
		}
		for _, s := range schemes {
			if u.Scheme == s {
				return
			}
		}
		bad(key, "scheme %q is not one of %s", u.Scheme, strings.Join(schemes, ", "))
	}
	checkURL("exchange.rest_url", c.Exchange.RESTURL, "https", "http")
	checkURL("exchange.ws_url", c.Exchange.WSURL, "wss", "ws")
	if c.Exchange.Proxy != "" {
		checkURL("exchange.proxy", c.Exchange.Proxy, "http", "https", "socks5", "socks5h")
	}
	if w := c.Exchange.WeightPerMinute; w < 10 {
		bad("exchange.weight_per_minute", "%d is below 10 (Binance allows 2400)", w)
	}
	if n := c.Exchange.StreamsPerConnection; n < 2 || n > 1024 {
		bad("exchange.streams_per_connection", "%d is outside 2..1024 (each symbol takes 2; Binance allows 1024)", n)
	}
	positive := func(key string, d Duration) {
		if d.Duration <= 0 {
			bad(key, "must be positive, e.g. \"5s\"")
		}
	}
	positive("exchange.read_timeout", c.Exchange.ReadTimeout)
	positive("exchange.rotate_after", c.Exchange.RotateAfter)
	positive("exchange.symbols_poll", c.Exchange.SymbolsPoll)
	positive("exchange.time_sync", c.Exchange.TimeSync)
	positive("exchange.hold_max", c.Exchange.HoldMax)
	positive("log.status_interval", c.Log.StatusInterval)
	if c.Exchange.RotateAfter.Duration >= 24*time.Hour {
		bad("exchange.rotate_after", "%s is not before Binance's 24h connection cut", c.Exchange.RotateAfter)
	}
	if c.Klines.Grace.Duration < 0 {
		bad("klines.grace", "must not be negative")
	}
	if c.Reconcile.Delay.Duration < 0 {
		bad("reconcile.delay", "must not be negative")
	}
	if n := c.Klines.BackfillLimit; n < 0 || n > 100_000 {
		bad("klines.backfill_limit", "%d is outside 0..100000", n)
	}
	ivs, err := kline.ParseIntervals(strings.Join(c.Klines.Intervals, ","))
	if err != nil {
		bad("klines.intervals", "%v", err)
	}
	c.Intervals = ivs
	if c.Database.URL != "" {
		checkURL("database.url", c.Database.URL, "postgres", "postgresql")
	} else if c.Database.Path == "" {
		bad("database.path", "must not be empty")
	}
	if d := c.Database.WriteEvery.Duration; d < 0 || d > time.Minute {
		bad("database.write_every", "%s is outside 0s..1m", d)
	}
	if h := c.History; h.Since != "listing" {
		if _, err := time.Parse(time.DateOnly, h.Since); err != nil {
			bad("history.since", "%q is not a day as \"YYYY-MM-DD\", nor \"listing\"", h.Since)
		}
	}
	if n := c.History.Parallel; n < 1 || n > 64 {
		bad("history.parallel", "%d is outside 1..64 (downloaders use 8 to 16)", n)
	}
	if d := c.History.Every.Duration; d < time.Hour {
		bad("history.every", "%s is less than an hour (the archive publishes a day's files once a day)", d)
	}
	if c.Server.Listen == "" {
		bad("server.listen", "must not be empty, e.g. \"127.0.0.1:8080\"")
	}
	// A shorter interval makes the push loop spin a core for nothing:
	// Binance itself pushes a kline at most every 250ms.
	if d := c.Server.PushInterval.Duration; d < 10*time.Millisecond || d > time.Minute {
		bad("server.push_interval", "%s is outside 10ms..1m (Binance pushes klines every 250ms)", d)
	}
	if n := c.Server.WeightPerMinute; n < 0 {
		bad("server.weight_per_minute", "%d is negative (0: no budget; Binance allows 2400)", n)
	}
	if n := c.Server.MaxHTTPConns; n < 1 {
		bad("server.max_http_connections", "must be at least 1")
	}
	positive("server.ping_interval", c.Server.PingInterval)
	if n := c.Server.ClientBuffer; n < 1 || n > 1_000_000 {
		bad("server.client_buffer", "%d is outside 1..1000000", n)
	}
	if n := c.Server.MaxConnections; n < 1 {
		bad("server.max_connections", "must be at least 1")
	}
	if n := c.Server.MaxStreamsPerConn; n < 1 {
		bad("server.max_streams_per_connection", "must be at least 1")
	}
	if len(c.Symbols.ContractTypes) == 0 {
		bad("symbols.contract_types", "must name at least one, e.g. [\"PERPETUAL\", \"TRADIFI_PERPETUAL\"]")
	}
	if c.Cluster.NATSURL != "" {
		c.validateCluster(bad)
	}
	for i, s := range c.Symbols.ContractTypes {
		c.Symbols.ContractTypes[i] = strings.ToUpper(s)
	}
	for i, s := range c.Symbols.Include {
		c.Symbols.Include[i] = strings.ToUpper(s)
	}
	for i, s := range c.Symbols.Exclude {
		c.Symbols.Exclude[i] = strings.ToUpper(s)
	}
	return errors.Join(errs...)
}

// Roles a cluster node can take.
const (
	RoleIngest = "ingest" // owns symbols and builds their klines
	RoleServe  = "serve"  // answers REST and WebSocket for every symbol
	RoleSink   = "sink"   // copies closed klines into PostgreSQL
)

// Clustered reports whether klagg runs as a node of a cluster.
func (c *Config) Clustered() bool { return c.Cluster.NATSURL != "" }

// Has reports whether the node takes role; a single process takes every one.
func (c *Config) Has(role string) bool {
	return !c.Clustered() || slices.Contains(c.Cluster.Roles, role)
}

func (c *Config) validateCluster(bad func(key, format string, args ...any)) {
	for _, u := range strings.Split(c.Cluster.NATSURL, ",") {
		if p, err := url.Parse(strings.TrimSpace(u)); err != nil || p.Host == "" || (p.Scheme != "nats" && p.Scheme != "tls") {
			bad("cluster.nats_url", "%q is not a NATS URL like nats://127.0.0.1:4222 (several: comma-separated)", u)
		}
	}
	if c.Cluster.Node == "" {
		bad("cluster.node", "must name this node, uniquely in the cluster, e.g. \"node-1\"")
	} else if strings.ContainsAny(c.Cluster.Node, ". *>") {
		bad("cluster.node", "%q contains a dot, space, * or >, which NATS keys do not allow", c.Cluster.Node)
	}
	if len(c.Cluster.Roles) == 0 {
		bad("cluster.roles", "must name at least one of \"ingest\", \"serve\", \"sink\"")
	}
	for i, r := range c.Cluster.Roles {
		r = strings.ToLower(r)
		c.Cluster.Roles[i] = r
		if r != RoleIngest && r != RoleServe && r != RoleSink {
			bad("cluster.roles", "%q is not one of \"ingest\", \"serve\", \"sink\"", r)
		}
	}
	if c.Database.URL == "" {
		bad("database.url", "a cluster keeps its history in PostgreSQL: set database.url = \"postgres://…\"")
	}
	if n := c.Cluster.Replicas; n < 1 || n > 5 {
		bad("cluster.replicas", "%d is outside 1..5 (JetStream keeps at most 5 copies)", n)
	}
	if d := c.Cluster.Staleness.Duration; d < 500*time.Millisecond || d > time.Minute {
		bad("cluster.staleness", "%s is outside 500ms..1m", d)
	}
}
