package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/klagg/klagg/internal/klaggproc"
	"github.com/klagg/klagg/internal/kline"
	"github.com/klagg/klagg/internal/oracle"
	"github.com/klagg/klagg/internal/store"
	"github.com/klagg/klagg/internal/store/sqlite"
	"github.com/klagg/klagg/internal/synth"
)

// klaggBin is the real binary, built once by TestMain.
var klaggBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "klagg-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	klaggBin, err = klaggproc.Build(dir, raceEnabled)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

type result struct {
	code           int
	stdout, stderr string
}

func klagg(t *testing.T, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, klaggBin, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return result{code, out.String(), errb.String()}
}

// genArchives writes a day of trades for n synthetic symbols.
func genArchives(t *testing.T, dir string, n int, gapMs float64) []string {
	t.Helper()
	day := time.Date(2024, 3, 10, 0, 0, 0, 0, time.UTC) // a Sunday: the week is partial
	var files []string
	for i := range n {
		m := synth.DefaultMarket(i, 11, day.UnixMilli())
		m.MeanGapMs = gapMs
		path := filepath.Join(dir, m.Symbol+"-aggTrades-2024-03-10.csv")
		f, err := os.Create(path)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := synth.WriteCSV(f, synth.NewStream(m), day.AddDate(0, 0, 1).UnixMilli(), 0, i%2 == 0); err != nil {
			t.Fatal(err)
		}
		f.Close()
		files = append(files, path)
	}
	return files
}

func TestHelpAndVersion(t *testing.T) {
	if r := klagg(t, "-h"); r.code != 0 || !strings.Contains(r.stdout, "klagg build") {
		t.Errorf("-h: %+v", r)
	}
	if r := klagg(t, "--version"); r.code != 0 || !strings.HasPrefix(r.stdout, "klagg ") {
		t.Errorf("--version: %+v", r)
	}
	if r := klagg(t, "frobnicate"); r.code != 2 || !strings.Contains(r.stderr, `unknown command "frobnicate"`) {
		t.Errorf("unknown command: %+v", r)
	}
	if r := klagg(t, "build", "-intervals", "1m,7x", "-out", t.TempDir(), "X-aggTrades-2024-01-01.csv"); r.code != 1 || !strings.Contains(r.stderr, "invalid interval \"7x\"") {
		t.Errorf("bad interval: %+v", r)
	}
	if r := klagg(t, "build", "-out", t.TempDir()); r.code != 2 || !strings.Contains(r.stderr, "no input files") {
		t.Errorf("no files: %+v", r)
	}
}

// TestBuildVerify builds CSV files and a store from the same archives,
// verifies one against the other, and shows verify catching a change.
func TestBuildVerify(t *testing.T) {
	dir := t.TempDir()
	files := genArchives(t, dir, 2, 500)
	out, db := filepath.Join(dir, "out"), filepath.Join(dir, "k.db")
	if r := klagg(t, append([]string{"build", "-intervals", "1m,15m,1d,1w", "-out", out}, files...)...); r.code != 0 {
		t.Fatalf("build -out: %+v", r)
	}
	r := klagg(t, append([]string{"build", "-intervals", "1m,15m,1d,1w", "-db", db}, files...)...)
	if r.code != 0 || !strings.Contains(r.stdout, "1w   0 klines (+2 only partly covered") {
		t.Fatalf("build -db: %+v", r)
	}
	ref := filepath.Join(out, synth.Name(1)+"-15m.csv")
	r = klagg(t, "verify", "-db", db, ref, filepath.Join(out, synth.Name(0)+"-1m.csv"))
	if r.code != 0 || !strings.Contains(r.stdout, "klines compared:      1536") || !strings.Contains(r.stdout, "OK") {
		t.Fatalf("verify: %+v", r)
	}
	// Change one trade count and one price in a copy of the reference.
	data, _ := os.ReadFile(ref)
	lines := strings.Split(string(data), "\n")
	f := strings.Split(lines[3], ",")
	f[8] = "999999"
	f[2] = "123456"
	lines[3] = strings.Join(f, ",")
	bad := filepath.Join(dir, synth.Name(1)+"-15m-changed.csv")
	os.WriteFile(bad, []byte(strings.Join(lines[:len(lines)-5], "\n")), 0o644)
	r = klagg(t, "verify", "-db", db, bad)
	if r.code != 1 || !strings.Contains(r.stdout, "trades:") || !strings.Contains(r.stdout, "high:") || !strings.Contains(r.stdout, "FAIL") {
		t.Fatalf("verify did not report the change: %+v", r)
	}
}

// TestVerifyRealArchive reads a real data.binance.vision kline archive.
func TestVerifyRealArchive(t *testing.T) {
	dir := oracle.Dir(t)
	z := filepath.Join(dir, "lostleaf-spot-klines-archive", "BTCUSDT-1m-2020-01-01.zip")
	r := klagg(t, "verify", "-ours", z, z)
	if r.code != 0 || !strings.Contains(r.stdout, "klines compared:      1440") {
		t.Fatalf("%+v", r)
	}
}

// TestBuildCrashSafety kills a `klagg build -db` with SIGKILL part way and
// runs it again: the store must equal one from an uninterrupted run.
func TestBuildCrashSafety(t *testing.T) {
	dir := t.TempDir()
	files := genArchives(t, dir, 8, 40)
	clean, crashed := filepath.Join(dir, "clean.db"), filepath.Join(dir, "crashed.db")
	args := func(db string) []string {
		return append([]string{"build", "-intervals", "1m,5m,1h,1d", "-db", db}, files...)
	}
	if r := klagg(t, args(clean)...); r.code != 0 {
		t.Fatalf("clean build: %+v", r)
	}

	cmd := exec.Command(klaggBin, args(crashed)...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Kill right after the first symbol is committed: the store then holds
	// some series and lacks others.
	sc := bufio.NewScanner(stderr)
	for sc.Scan() {
		if strings.Contains(sc.Text(), "built klines") {
			break
		}
	}
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() {
		t.Fatalf("build finished before it could be killed (%v): make the input larger", cmd.ProcessState)
	}
	if a, b := countSeries(t, crashed), countSeries(t, clean); a >= b {
		t.Fatalf("killed build already had %d of %d series", a, b)
	}
	if r := klagg(t, args(crashed)...); r.code != 0 {
		t.Fatalf("rerun: %+v", r)
	}
	if a, b := dump(t, crashed), dump(t, clean); a != b {
		t.Fatalf("store after crash and rerun differs from a clean build (%d vs %d bytes)", len(a), len(b))
	}
}

func countSeries(t *testing.T, path string) int {
	s, err := sqlite.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	series, err := s.Series(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return len(series)
}

func dump(t *testing.T, path string) string {
	s, err := sqlite.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	series, err := s.Series(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for i := range 8 {
		for _, iv := range []string{"1m", "5m", "1h", "1d"} {
			if series[[2]string{synth.Name(i), iv}] == 0 {
				t.Fatalf("%s %s missing", synth.Name(i), iv)
			}
			ks, err := s.Klines(ctx, store.Query{Symbol: synth.Name(i), Interval: kline.MustInterval(iv)})
			if err != nil {
				t.Fatal(err)
			}
			fmt.Fprintf(&b, "%s %s %+v\n", synth.Name(i), iv, ks)
		}
	}
	return b.String()
}

// TestConfigPathMissing: a CONFIG_PATH naming no file gets the defaults
// written there, and a warning that says so and that klagg runs on them.
func TestConfigPathMissing(t *testing.T) {
	dir := t.TempDir()
	conf := filepath.Join(dir, "typo.toml")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// backfill reads the config first; it is stopped once it has said what
	// it made of it (there is no exchange here to go on with).
	cmd := exec.CommandContext(ctx, klaggBin, "backfill")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CONFIG_PATH="+conf)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var warned string
	for sc := bufio.NewScanner(stderr); sc.Scan() && warned == ""; {
		if strings.Contains(sc.Text(), "CONFIG_PATH") {
			warned = sc.Text()
		}
	}
	cancel()
	_ = cmd.Wait() // killed
	if _, err := os.Stat(conf); err != nil {
		t.Fatalf("the defaults were not written to CONFIG_PATH: %v", err)
	}
	if !strings.Contains(warned, "level=WARN") || !strings.Contains(warned, "klagg runs on its defaults") || !strings.Contains(warned, conf) {
		t.Errorf("no warning naming the file written: %q", warned)
	}
}
