// Package klaggproc owns running the real klagg binary as a separate
// process, for the end-to-end tests, the command tests and the load tool:
// building it once, starting it with a config, following its log, reading
// its status and metrics, and stopping or killing it.
package klaggproc

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Build compiles klagg into dir, with the race detector if race, and
// returns the binary's path. It runs inside the module, from any of its
// folders.
func Build(dir string, race bool) (string, error) {
	bin := filepath.Join(dir, "klagg")
	args := []string{"build", "-o", bin}
	if race {
		args = append(args, "-race")
	}
	out, err := exec.Command("go", append(args, "github.com/klagg/klagg/cmd/klagg")...).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("building klagg: %w\n%s", err, out)
	}
	return bin, nil
}

// Proc is a running klagg.
type Proc struct {
	cmd     *exec.Cmd
	started time.Time
	live    chan struct{} // closed when klagg logs that it is live
	exited  chan struct{} // closed when it has exited; err is then set
	err     error

	mu        sync.Mutex
	lines     []string
	grew      chan struct{} // closed, and replaced, when a line is read
	base      string        // http://host:port, from the log
	liveAfter time.Duration
}

// Start runs bin with the config at path (and env added to this process's),
// following its log.
func Start(bin, config string, env ...string) (*Proc, error) {
	cmd := exec.Command(bin)
	cmd.Env = append(append(os.Environ(), "CONFIG_PATH="+config), env...)
	pipe, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	cmd.Stdout = io.Discard
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &Proc{cmd: cmd, started: time.Now(), live: make(chan struct{}), exited: make(chan struct{}), grew: make(chan struct{})}
	go p.follow(pipe)
	return p, nil
}

// follow reads klagg's log until it exits, then waits for the process.
func (p *Proc) follow(log io.Reader) {
	sc := bufio.NewScanner(log)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	var once sync.Once
	for sc.Scan() {
		line := sc.Text()
		p.mu.Lock()
		p.lines = append(p.lines, line)
		close(p.grew)
		p.grew = make(chan struct{})
		if _, addr, ok := strings.Cut(line, " listen="); ok && p.base == "" && strings.Contains(line, `msg="klagg starting"`) {
			addr, _, _ = strings.Cut(addr, " ")
			p.base = "http://" + strings.TrimPrefix(addr, "http://")
		}
		p.mu.Unlock()
		if strings.Contains(line, `msg="caught up; live"`) {
			once.Do(func() {
				p.mu.Lock()
				p.liveAfter = time.Since(p.started)
				p.mu.Unlock()
				close(p.live)
			})
		}
	}
	io.Copy(io.Discard, log)
	p.err = p.cmd.Wait()
	close(p.exited)
}

// WaitLive waits until klagg logs that it is live; it fails if klagg
// exits first or ctx ends.
func (p *Proc) WaitLive(ctx context.Context) error {
	select {
	case <-p.live:
		return nil
	case <-p.exited:
		return fmt.Errorf("klagg exited before going live: %v", p.err)
	case <-ctx.Done():
		return fmt.Errorf("klagg did not go live: %w", ctx.Err())
	}
}

// WaitReady waits until klagg is live and its /readyz answers 200, as a
// load balancer polling it every 20 ms would see; it fails if klagg exits
// first or ctx ends.
func (p *Proc) WaitReady(ctx context.Context) error {
	if err := p.WaitLive(ctx); err != nil {
		return err
	}
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.Base()+"/readyz", nil)
		if err != nil {
			return err
		}
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-t.C:
		case <-p.exited:
			return fmt.Errorf("klagg exited before it was ready: %v", p.err)
		case <-ctx.Done():
			return fmt.Errorf("klagg did not become ready: %w", ctx.Err())
		}
	}
}

// WaitLogged waits until a line of klagg's log holds s; it fails if klagg
// exits first or ctx ends.
func (p *Proc) WaitLogged(ctx context.Context, s string) error {
	for seen := 0; ; {
		p.mu.Lock()
		lines, grew := p.lines[seen:], p.grew
		seen = len(p.lines)
		p.mu.Unlock()
		for _, l := range lines {
			if strings.Contains(l, s) {
				return nil
			}
		}
		select {
		case <-grew:
		case <-p.exited:
			return fmt.Errorf("klagg exited without logging %q: %v", s, p.err)
		case <-ctx.Done():
			return fmt.Errorf("klagg did not log %q: %w", s, ctx.Err())
		}
	}
}

// LiveAfter is how long klagg took to go live.
func (p *Proc) LiveAfter() time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.liveAfter
}

// Base is klagg's HTTP root, "http://host:port", once it has logged it.
func (p *Proc) Base() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.base
}

// Pid is the process id.
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// Lines returns the log so far.
func (p *Proc) Lines() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.lines...)
}

// Logged reports whether a log line so far contains s.
func (p *Proc) Logged(s string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, l := range p.lines {
		if strings.Contains(l, s) {
			return true
		}
	}
	return false
}

// Exited is closed once klagg has exited.
func (p *Proc) Exited() <-chan struct{} { return p.exited }

// Stop sends SIGTERM and waits up to timeout for klagg to exit; it returns
// klagg's exit error (nil for exit 0).
func (p *Proc) Stop(timeout time.Duration) error {
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
		return p.err
	case <-time.After(timeout):
		p.Kill()
		return fmt.Errorf("klagg did not exit within %s of SIGTERM", timeout)
	}
}

// Kill sends SIGKILL and waits for the exit; it reports whether klagg was
// still running to be killed.
func (p *Proc) Kill() bool {
	select {
	case <-p.exited:
		return false
	default:
	}
	p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.exited
	var ee *exec.ExitError
	return errors.As(p.err, &ee)
}

// Status is the part of klagg's /api/v1/status the tools read.
type Status struct {
	Ready         bool    `json:"ready"`
	BackfillDone  int64   `json:"backfill_requests_done"`
	BackfillTotal int64   `json:"backfill_requests_total"`
	Trades        int64   `json:"trades"`
	TradesPerSec  float64 `json:"trades_per_second"`
	Frames        int64   `json:"frames"`
	Malformed     int64   `json:"malformed_frames"`
	WriterBacklog int     `json:"writer_backlog"`
}

// Status reads klagg's status.
func (p *Proc) Status() (Status, error) {
	var st Status
	resp, err := http.Get(p.Base() + "/api/v1/status")
	if err != nil {
		return st, fmt.Errorf("read klagg's status: %w", err)
	}
	defer resp.Body.Close()
	return st, json.NewDecoder(resp.Body).Decode(&st)
}

// Metrics is klagg's /metrics at one moment, in Prometheus's text format.
type Metrics string

// Metrics reads klagg's metrics.
func (p *Proc) Metrics() (Metrics, error) {
	resp, err := http.Get(p.Base() + "/metrics")
	if err != nil {
		return "", fmt.Errorf("read klagg's metrics: %w", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return Metrics(b), err
}

// Value returns the sample called name, or 0.
func (m Metrics) Value(name string) float64 {
	for line := range strings.Lines(string(m)) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), name+" "); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return f
		}
	}
	return 0
}

// Quantiles renders the summary called name in milliseconds.
func (m Metrics) Quantiles(name string) string {
	var out []string
	for line := range strings.Lines(string(m)) {
		q, ok := strings.CutPrefix(strings.TrimSpace(line), name+`{quantile="`)
		if !ok {
			continue
		}
		label, v, _ := strings.Cut(q, `"} `)
		p, _ := strconv.ParseFloat(label, 64)
		f, _ := strconv.ParseFloat(v, 64)
		label = fmt.Sprintf("p%g", p*100)
		if p == 1 {
			label = "max"
		}
		out = append(out, fmt.Sprintf("%s %.3f ms", label, f*1000))
	}
	if len(out) == 0 {
		return "none in klagg's /metrics"
	}
	return strings.Join(out, ", ")
}
