package e2e

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/klagg/klagg/internal/fakex"
)

// BenchmarkFailover measures how long a dead node's symbols are not live:
// three nodes on one NATS server and the local PostgreSQL, at the
// exchange's real speed; each round kills (kill -9) the node owning the
// most symbols and times, from the kill, until every one of its symbols is
// live on another node, then restarts it. It reports the median, p99 and
// worst of those times, and the REST weight the takeovers spent, per
// round; then how long the restarted node took to own its symbols again
// (rebalancing), and the REST weight the others spent meanwhile:
//
//	go test -run '^$' -bench Failover -benchtime 20x ./internal/e2e/
func BenchmarkFailover(b *testing.B) {
	r := newRun(b, fakex.Config{Symbols: 30, Speed: 1, MeanGap: 300 * time.Millisecond, History: time.Hour}, "")
	r.usePostgres()
	url := natsServer(b)
	own := watchOwners(b, url, 1)
	nodes := r.startCluster(url, "")
	var took, back []time.Duration
	weight, backWeight := 0, 0
	settle := func() {
		// Each round starts from a settled cluster: backfills done, and the
		// restarted node a standby for some seconds, as a node that has run
		// for a while is (its buffer reaches back past the checkpoints).
		for _, n := range nodes {
			for {
				st, err := n.k.Status()
				if err != nil {
					b.Fatal(err)
				}
				if st.BackfillDone >= st.BackfillTotal {
					break
				}
				time.Sleep(100 * time.Millisecond) // polling the node's state
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := r.x.WaitUntil(ctx, r.x.Now().Add(5*time.Second)); err != nil {
			b.Fatal(err)
		}
	}
	settle()
	for b.Loop() {
		byNode := own.owned()
		victim, moved := busiest(byNode, nodes)
		if len(moved) == 0 {
			b.Fatalf("no node owns a symbol: %v", byNode)
		}
		w0 := restWeight(nodes, victim)
		killed := time.Now()
		victim.k.Kill()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		last, err := liveAgain(ctx, nodes, victim, moved, killed)
		cancel()
		if err != nil {
			b.Fatal(err)
		}
		took = append(took, last.Sub(killed))
		w := restWeight(nodes, victim) - w0
		weight += w
		if testing.Verbose() {
			b.Logf("kill %d: %s's %d symbols live again after %s, %d REST weight", len(took), victim.name, len(moved), last.Sub(killed).Round(time.Millisecond), w)
			for _, n := range nodes {
				for _, l := range n.k.Lines() {
					if strings.Contains(l, "symbol resumed from a checkpoint") && l > "time="+killed.UTC().Format(time.RFC3339Nano) {
						b.Log(n.name, l)
					}
				}
			}
		}
		// Restarted, it takes its symbols back from the live nodes once it
		// has stood by for them.
		restarted := time.Now()
		others := restWeight(nodes, victim)
		r.startNode(victim)
		own.waitOwns(b, victim.name, moved)
		back = append(back, time.Since(restarted))
		backWeight += restWeight(nodes, victim) - others
		settle()
	}
	slices.Sort(took)
	q := func(p float64) time.Duration { return took[min(len(took)-1, int(p*float64(len(took))))] }
	b.ReportMetric(q(0.5).Seconds(), "s-p50")
	b.ReportMetric(q(0.99).Seconds(), "s-p99")
	b.ReportMetric(took[len(took)-1].Seconds(), "s-max")
	b.ReportMetric(float64(weight)/float64(len(took)), "weight/kill")
	slices.Sort(back)
	b.ReportMetric(back[len(back)/2].Seconds(), "s-back-p50")
	b.ReportMetric(float64(backWeight)/float64(len(back)), "weight/back")
}

// liveAgain waits until each of syms has gone live on a node other than
// victim after killed, and returns when the last did, by the nodes' logs.
func liveAgain(ctx context.Context, nodes []*node, victim *node, syms []string, killed time.Time) (time.Time, error) {
	for {
		var last time.Time
		missing := 0
		for _, sym := range syms {
			at, ok := liveAt(nodes, victim, sym, killed)
			if !ok {
				missing++
				continue
			}
			if at.After(last) {
				last = at
			}
		}
		if missing == 0 {
			return last, nil
		}
		select {
		case <-ctx.Done():
			return time.Time{}, fmt.Errorf("%d of %v not live again", missing, syms)
		case <-time.After(50 * time.Millisecond): // polling the nodes' logs
		}
	}
}

func liveAt(nodes []*node, victim *node, sym string, after time.Time) (time.Time, bool) {
	for _, n := range nodes {
		if n == victim {
			continue
		}
		for _, l := range n.k.Lines() {
			if !strings.Contains(l, "symbol="+sym+" from=seeding to=live") {
				continue
			}
			ts, _, _ := strings.Cut(strings.TrimPrefix(l, "time="), " ")
			at, err := time.Parse(time.RFC3339Nano, ts)
			if err == nil && at.After(after) {
				return at, true
			}
		}
	}
	return time.Time{}, false
}

// restWeight sums the REST weight the live nodes have spent.
func restWeight(nodes []*node, victim *node) int {
	total := 0
	for _, n := range nodes {
		if n == victim {
			continue
		}
		m, err := n.k.Metrics()
		if err != nil {
			continue
		}
		total += int(m.Value("klagg_rest_weight_total"))
	}
	return total
}
