package main

import (
	"archive/zip"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/klagg/klagg/internal/archive"
	"github.com/klagg/klagg/internal/binance"
	"github.com/klagg/klagg/internal/kline"
	"github.com/klagg/klagg/internal/store"
	"github.com/klagg/klagg/internal/store/sqlite"
	"github.com/klagg/klagg/internal/store/storetest"
)

// TestImportCommand: klagg import reads two days of 1m klines from a
// folder laid out like the archive into the configured store, with no
// exchange to ask.
func TestImportCommand(t *testing.T) {
	dir := t.TempDir()
	folder := filepath.Join(dir, "archive")
	day, _ := time.Parse(time.DateOnly, "2026-02-01")
	for d := range 2 {
		start := day.AddDate(0, 0, d)
		var csv bytes.Buffer
		for m := range 1440 {
			k := storetest.Kline(start.UnixMilli()+int64(m)*60_000, int64(m%50))
			row := binance.AppendKlineArray(nil, &k, kline.Precision{Price: 2, Qty: 3})
			csv.WriteString(strings.NewReplacer("[", "", "]", "", `"`, "").Replace(string(row)) + "\n")
		}
		name := fmt.Sprintf("BTCUSDT-1m-%s.zip", start.Format(time.DateOnly))
		var buf bytes.Buffer
		zw := zip.NewWriter(&buf)
		w, _ := zw.Create(strings.TrimSuffix(name, ".zip") + ".csv")
		w.Write(csv.Bytes())
		zw.Close()
		p := filepath.Join(folder, filepath.FromSlash(archive.KlinesPrefix("BTCUSDT", "1m", false)), name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		sum := sha256.Sum256(buf.Bytes())
		if err := os.WriteFile(p, buf.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p+".CHECKSUM", []byte(hex.EncodeToString(sum[:])+"  "+name), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	db := filepath.Join(dir, "k.db")
	conf := filepath.Join(dir, "klagg.toml")
	if err := os.WriteFile(conf, []byte(fmt.Sprintf("[database]\npath = %q\n", db)), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, klaggBin, "import", "-from", folder, "-symbols", "btcusdt", "-since", "2026-02-01", "-until", "2026-02-03")
	cmd.Env = append(os.Environ(), "CONFIG_PATH="+conf)
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), `msg="import done" files=2`) {
		t.Fatalf("klagg import: %v\n%s", err, out)
	}
	st, err := sqlite.Open(db)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ks, err := st.Klines(ctx, store.Query{Symbol: "BTCUSDT", Interval: kline.OneMinute(), Start: day.UnixMilli(), Limit: 1500})
	if err != nil || len(ks) != 1500 || !ks[0].Closed || ks[1499].OpenTime != day.UnixMilli()+1499*60_000 {
		t.Fatalf("stored: %d klines, %v", len(ks), err)
	}
	// The configured intervals are derived from them: both days whole.
	if ks, err := st.Klines(ctx, store.Query{Symbol: "BTCUSDT", Interval: kline.MustInterval("1d"), Start: day.UnixMilli()}); err != nil || len(ks) != 2 || ks[1].Volume.IsZero() {
		t.Fatalf("derived 1d klines: %+v, %v", ks, err)
	}
	cmd = exec.CommandContext(ctx, klaggBin, "import", "-from", folder, "-symbols", "BTCUSDT", "-since", "2026-02-01", "-intervals", "1h,2x")
	cmd.Env = append(os.Environ(), "CONFIG_PATH="+conf)
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "-intervals") {
		t.Errorf("klagg import -intervals 1h,2x: %v\n%s", err, out)
	}
	// Without -since it says what it needs.
	cmd = exec.CommandContext(ctx, klaggBin, "import", "-symbols", "BTCUSDT")
	cmd.Env = append(os.Environ(), "CONFIG_PATH="+conf)
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "give -symbols or -all, and -since") {
		t.Errorf("klagg import without -since: %v\n%s", err, out)
	}
}
