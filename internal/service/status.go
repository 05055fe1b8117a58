package service

import (
	"context"
	"fmt"
	"math"
	"time"

	"github.com/klagg/klagg/internal/coverage"
	"github.com/klagg/klagg/internal/ingest"
	"github.com/klagg/klagg/internal/symbols"
)

// Status are the figures of the status line.
type Status struct {
	Ready          bool               `json:"ready"`
	NotReady       string             `json:"not_ready,omitempty"` // why not, as /readyz says
	Uptime         string             `json:"uptime"`
	Symbols        int                `json:"symbols"`
	Intervals      int                `json:"intervals"`
	Connections    int                `json:"connections"`
	Connected      int                `json:"connected"`
	Reconnects     int64              `json:"reconnects"`
	Frames         int64              `json:"frames"`
	Malformed      int64              `json:"malformed_frames"`
	Trades         int64              `json:"trades"`
	TradesPerSec   float64            `json:"trades_per_second"`
	GapFills       int64              `json:"gap_fills"`
	KlinesWritten  int64              `json:"klines_written"`
	WriterBacklog  int                `json:"writer_backlog"`
	WriteFailures  int64              `json:"write_failures"`
	LagMs          int64              `json:"lag_ms"`
	RESTWeight1M   int                `json:"rest_weight_1m"`
	RESTWeight     int64              `json:"rest_weight_total"`
	Cluster        *ClusterStatus     `json:"cluster,omitempty"`
	Reconciled     int64              `json:"reconciled"`
	ReconcileDiffs map[string]int64   `json:"reconcile_diffs"`
	SymbolStates   map[string]int     `json:"symbol_states"`
	BackfillDone   int64              `json:"backfill_requests_done"`
	BackfillTotal  int64              `json:"backfill_requests_total"`
	HoldsReleased  int64              `json:"holds_released"`
	Buffered       int64              `json:"buffered_trades"`
	Resyncs        int64              `json:"resyncs"`
	Seeds          map[string]int64   `json:"seeds"` // by how the current minute was had
	Unamended      int64              `json:"reconcile_unamended"`
	Late           int64              `json:"late_trades"`
	Exactness      Exactness          `json:"exactness"`
	ConnStates     []ingest.ConnState `json:"connection_states"`
	// History is what is held and missing of the klines history should
	// reach (klines.backfill_limit of each series); nil in a cluster.
	History *coverage.Figures `json:"history,omitempty"`
	// Import is how far the last import of Binance's archive is, while
	// [history] imports in the background; absent when none ran.
	Import *ImportStatus `json:"import,omitempty"`
}

// Exactness are the counters that show what klagg could not take as it
// came, and how it made up for it. Only Unfillable is a loss, and it is
// the exchange's: the trade ids it could not supply.
type Exactness struct {
	Duplicates int64 `json:"duplicate_trades"`     // dropped: already forwarded (overlapping connections, replays)
	Filled     int64 `json:"trades_filled"`        // came from REST aggTrades into a gap
	Unfillable int64 `json:"unfillable_gaps"`      // trade ids the exchange could not supply, skipped
	Overflowed int64 `json:"trades_overflowed"`    // dropped from a full gap buffer, fetched again from REST
	TooLate    int64 `json:"trades_too_late"`      // older than the engine's last closed kline; the repair from klines covers them
	Rotations  int64 `json:"connection_rotations"` // connections replaced before Binance's 24 h cut
}

// ClusterStatus are a cluster node's figures.
type ClusterStatus struct {
	Node           string   `json:"node"`
	Roles          []string `json:"roles"`
	Owned          int      `json:"symbols_owned"`
	Takeovers      int64    `json:"takeovers"`   // symbols taken from a dead or departed node
	Rebalanced     int64    `json:"rebalanced"`  // symbols taken from a live node: rendezvous hashing gives them to this one, which joined later
	Lost           int64    `json:"leases_lost"` // symbols another node took from this one
	Published      int64    `json:"klines_published"`
	OpenSent       int64    `json:"open_klines_sent"` // to the serve nodes, on core NATS
	PublishPending int      `json:"publish_pending"`
	Stored         int64    `json:"klines_stored"` // by this node's sink
	Fed            int64    `json:"klines_fed"`    // from other nodes, to this node's clients
}

// Status returns the current figures.
func (s *Service) Status() Status {
	v := s.Registry.View()
	nsym := v.Counts[symbols.Live] + v.Counts[symbols.Paused]
	now := time.Now()
	rate := math.Float64frombits(s.rate.Load())
	conns := s.Ingest.Connections()
	connected := 0
	for _, c := range conns {
		if c.Connected {
			connected++
		}
	}
	ist := s.Ingest.Stats()
	est := s.Engine.Stats()
	w1m, wTotal := s.Client.Weight().Used()
	st := Status{
		Uptime:  time.Since(s.started).Round(time.Second).String(),
		Symbols: nsym, Intervals: len(s.cfg.Intervals), Connections: len(conns), Connected: connected,
		Reconnects: ist.Reconnects.Load(), Frames: ist.Frames.Load(), Malformed: ist.Malformed.Load(),
		Trades: est.Trades, TradesPerSec: rate, GapFills: s.Router.Stats().Fills.Load(),
		KlinesWritten: s.writer.Written(), WriterBacklog: s.coalescer.Len(), WriteFailures: s.writer.Failures(),
		RESTWeight1M: w1m, RESTWeight: wTotal, Late: est.Late, Unamended: est.Unamended, ConnStates: conns,
		SymbolStates: v.CountsByName(), HoldsReleased: s.Router.Stats().Released.Load(), Buffered: s.Router.Stats().Buffered.Load(), Resyncs: s.Router.Stats().Resyncs.Load(),
	}
	if err := s.Readiness(); err != nil {
		st.NotReady = err.Error()
	} else {
		st.Ready = true
	}
	rs := s.Router.Stats()
	st.Exactness = Exactness{Duplicates: rs.Duplicates.Load(), Filled: rs.Filled.Load(), Unfillable: rs.Unfillable.Load(),
		Overflowed: rs.Overflowing.Load(), TooLate: est.TooLate, Rotations: ist.Rotations.Load()}
	st.BackfillDone, st.BackfillTotal = s.Registry.Backfill()
	f := s.Coverage.Figures()
	st.History = &f
	st.Import = s.imported.Load()
	if s.Leases != nil {
		c := &ClusterStatus{Node: s.cfg.Cluster.Node, Roles: s.cfg.Cluster.Roles, Owned: s.Leases.Held(),
			Takeovers: s.Leases.Takeovers.Load(), Rebalanced: s.Leases.Rebalanced.Load(), Lost: s.Leases.Lost.Load()}
		if s.Publisher != nil {
			c.Published, c.PublishPending = s.Publisher.Published.Load(), s.Publisher.Pending()
			c.OpenSent = s.Opens.Sent.Load()
		}
		if s.Sink != nil {
			c.Stored = s.Sink.Stored.Load()
		}
		if s.Feed != nil {
			c.Fed = s.Feed.Klines.Load()
		}
		st.Cluster = c
	}
	st.Seeds = map[string]int64{"snapshot": s.History.Seeds.Snapshot.Load(), "quiet": s.History.Seeds.Quiet.Load(),
		"trades": s.History.Seeds.Trades.Load()}
	if last := ist.LastFrameMs.Load(); last > 0 {
		st.LagMs = now.UnixMilli() - last
	}
	if s.Reconciler != nil {
		st.Reconciled = s.Reconciler.Checked.Load()
		st.ReconcileDiffs = s.Reconciler.FieldDiffs()
	}
	return st
}

func (s *Service) status(ctx context.Context) {
	t := time.NewTicker(s.cfg.Log.StatusInterval.Duration)
	defer t.Stop()
	// Readiness is watched more often than the status is written: a
	// store gone bad is said at once, in the log as in /readyz.
	watch := time.NewTicker(5 * time.Second)
	defer watch.Stop()
	whole, notReady := false, ""
	for {
		select {
		case <-ctx.Done():
			return
		case <-watch.C:
			why := ""
			if err := s.Readiness(); err != nil {
				why = err.Error()
			}
			if why != notReady && why != "catching up" {
				if why != "" {
					s.log.Error("not ready", "why", why)
				} else if notReady != "" && notReady != "catching up" {
					s.log.Info("ready again")
				}
			}
			notReady = why
			continue
		case <-t.C:
		}
		st := s.Status()
		s.log.Info("status", "symbols", st.Symbols, "states", st.SymbolStates, "backfill", fmt.Sprintf("%d/%d", st.BackfillDone, st.BackfillTotal), "connections", fmt.Sprintf("%d/%d", st.Connected, st.Connections),
			"history_missing", st.History.MissingOrZero(),
			"trades_per_s", int(st.TradesPerSec), "klines_written", st.KlinesWritten, "reconnects", st.Reconnects,
			"lag_ms", st.LagMs, "gap_fills", st.GapFills, "rest_weight_1m", st.RESTWeight1M)
		if h := st.History; h != nil && h.Whole != whole {
			whole = h.Whole
			if whole {
				s.log.Info("history whole: every series holds klines.backfill_limit klines", "series", h.Series, "klines", h.Held)
			}
		}
	}
}
