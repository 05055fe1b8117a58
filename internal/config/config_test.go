package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestMissingFileGetsDefaults(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config", "aggregate_config.toml")
	cfg, created, err := Load(path)
	if err != nil || !created {
		t.Fatalf("Load: created=%v err=%v", created, err)
	}
	if cfg.Exchange.RESTURL != "https://fapi.binance.com" || cfg.Exchange.WSURL != "wss://fstream.binance.com" ||
		len(cfg.Intervals) != 15 || cfg.Server.Listen != "127.0.0.1:8080" || cfg.Klines.BackfillLimit != 1000 {
		t.Errorf("defaults not applied: %+v", cfg)
	}
	data, err := os.ReadFile(path)
	if err != nil || !strings.Contains(string(data), "# klagg configuration") {
		t.Fatalf("default file not written with its comments: %v", err)
	}
	if _, created, err := Load(path); err != nil || created {
		t.Fatalf("second Load: created=%v err=%v", created, err)
	}
}

// TestByteOrderMark: a config saved by an editor that writes a UTF-8
// byte-order mark reads as without it.
func TestByteOrderMark(t *testing.T) {
	cfg, err := Parse([]byte("\xef\xbb\xbf[server]\nlisten = \"0.0.0.0:9000\"\n"))
	if err != nil || cfg.Server.Listen != "0.0.0.0:9000" {
		t.Fatalf("config with a byte-order mark: %v", err)
	}
}

func TestOverlayAndValidation(t *testing.T) {
	cfg, err := Parse([]byte("[klines]\nintervals = [\"1m\", \"90m\"]\n[database]\npath = \"x.db\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Intervals) != 2 || cfg.Intervals[1].String() != "90m" || cfg.Database.Path != "x.db" || cfg.Exchange.WeightPerMinute != 2400 {
		t.Errorf("overlay: %+v", cfg)
	}
	cases := map[string]string{
		"[exchange]\nrest_ulr = \"http://x\"\n":              `unknown key "exchange.rest_ulr" (line 2)`,
		"[klines]\nintervals = [\"1m\", \"7x\"]\n":           `klines.intervals: invalid interval "7x"`,
		"[exchange]\nread_timeout = \"soon\"\n":              `"soon" is not a duration`,
		"[exchange]\nws_url = \"https://x\"\n":               `exchange.ws_url: scheme "https" is not one of wss, ws`,
		"[exchange]\nstreams_per_connection = 2000\n":        "exchange.streams_per_connection: 2000 is outside 2..1024",
		"[exchange]\nrotate_after = \"25h\"\n":               "not before Binance's 24h connection cut",
		"[exchange]\nproxy = \"ftp://p\"\n":                  "exchange.proxy",
		"[database]\npath = \"\"\n[server]\nlisten = \"\"\n": "database.path: must not be empty",
		// A number where a duration goes: the key and line, not just the value.
		"[server]\n\npush_interval = 100\n": `line 3: server.push_interval: "100" is not a duration`,
		// A push loop every 100µs would spin a core.
		// A value of the wrong type: the key and what it takes, not Go's type.
		"[server]\nlisten = 5\n":                   `line 2: server.listen is a TOML integer; it takes text in quotes`,
		"klines = 5\n":                             `line 1: klines is a TOML integer; it takes a table of keys`,
		"[klines]\nbackfill_limit = \"x\"\n":       `klines.backfill_limit is a TOML string; it takes a whole number`,
		"[klines]\nintervals = \"1m\"\n":           `klines.intervals is a TOML string; it takes a list of texts in quotes`,
		"[server]\npush_interval = \"100us\"\n":    "server.push_interval: 100µs is outside 10ms..1m",
		"[server]\nweight_per_minute = -1\n":       "server.weight_per_minute: -1 is negative",
		"[database]\nurl = \"mysql://db/klagg\"\n": `database.url: scheme "mysql" is not one of postgres, postgresql`,
	}
	for in, want := range cases {
		_, err := Parse([]byte(in))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Parse(%q) = %v, want an error containing %q", in, err, want)
		}
	}
}
