// Package postgres owns klagg's PostgreSQL store: the klines, symbols and
// exchange lists of the SQLite store, in one database that several klagg
// nodes share. It passes the same conformance suite (storetest).
package postgres

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/klagg/klagg/internal/kline"
	"github.com/klagg/klagg/internal/store"
)

// migrations are applied in order, each once; klagg_schema counts them.
// Append, never edit. The tables are those of the SQLite store.
var migrations = []string{
	`CREATE TABLE klines (
		symbol                 TEXT    NOT NULL,
		interval               TEXT    NOT NULL,
		open_time              BIGINT  NOT NULL,
		close_time             BIGINT  NOT NULL,
		open                   TEXT    NOT NULL,
		high                   TEXT    NOT NULL,
		low                    TEXT    NOT NULL,
		close                  TEXT    NOT NULL,
		volume                 TEXT    NOT NULL,
		quote_volume           TEXT    NOT NULL,
		trades                 BIGINT  NOT NULL,
		taker_buy_volume       TEXT    NOT NULL,
		taker_buy_quote_volume TEXT    NOT NULL,
		first_trade_id         BIGINT  NOT NULL,
		last_trade_id          BIGINT  NOT NULL,
		closed                 BOOLEAN NOT NULL,
		PRIMARY KEY (symbol, interval, open_time)
	);
	CREATE TABLE symbols (
		symbol             TEXT PRIMARY KEY,
		status             TEXT    NOT NULL,
		base_asset         TEXT    NOT NULL,
		quote_asset        TEXT    NOT NULL,
		contract_type      TEXT    NOT NULL,
		price_precision    INTEGER NOT NULL,
		quantity_precision INTEGER NOT NULL,
		onboard_date       BIGINT  NOT NULL,
		pair               TEXT    NOT NULL DEFAULT '',
		info               TEXT    NOT NULL DEFAULT ''
	);
	CREATE TABLE exchange (
		name  TEXT PRIMARY KEY,
		value TEXT NOT NULL
	);`,
	// The stamp of the kline's version (kline.Update.Stamp): the highest
	// stamp written so far.
	`ALTER TABLE klines ADD COLUMN stamp BIGINT NOT NULL DEFAULT 0;`,
	// The spans of slots held exactly (store.Span), added to as klines
	// are stored and merged when a node starts.
	`CREATE TABLE spans (
		symbol    TEXT   NOT NULL,
		interval  TEXT   NOT NULL,
		from_time BIGINT NOT NULL,
		to_time   BIGINT NOT NULL,
		PRIMARY KEY (symbol, interval, from_time)
	);`,
	// The archive files imported (store.Imported).
	`CREATE TABLE imported (
		name     TEXT PRIMARY KEY,
		checksum TEXT   NOT NULL,
		size     BIGINT NOT NULL
	);`,
}

// Store is a PostgreSQL kline database.
type Store struct {
	pool *pgxpool.Pool

	versions store.Versions // of the closed rows this process wrote per symbol and interval
	once     sync.Once
}

// Open connects to the database at url ("postgres://user@host/db") and
// brings its schema up to date. Nodes starting together migrate one at a
// time.
func Open(ctx context.Context, url string) (*Store, error) {
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		return nil, fmt.Errorf("postgres: %w (database.url in the config)", err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("postgres: cannot reach the database: %w (is PostgreSQL running? database.url in the config)", err)
	}
	if err := migrate(ctx, pool); err != nil {
		pool.Close()
		if pgErr := (*pgconn.PgError)(nil); errors.As(err, &pgErr) && pgErr.Code == "3F000" {
			return nil, fmt.Errorf("postgres: the schema named in database.url's search_path does not exist: create it (CREATE SCHEMA …) or leave search_path out: %w", err)
		}
		return nil, fmt.Errorf("postgres: migrate: %w", err)
	}
	return &Store{pool: pool}, nil
}

// migrationLock is the advisory lock that serializes migrations.
const migrationLock = 0x6b6c616767 // "klagg"

func migrate(ctx context.Context, pool *pgxpool.Pool) error {
	return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, migrationLock); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS klagg_schema (version INTEGER NOT NULL)`); err != nil {
			return err
		}
		version := 0
		err := tx.QueryRow(ctx, `SELECT version FROM klagg_schema`).Scan(&version)
		switch {
		case errors.Is(err, pgx.ErrNoRows):
			if _, err := tx.Exec(ctx, `INSERT INTO klagg_schema (version) VALUES (0)`); err != nil {
				return err
			}
		case err != nil:
			return err
		}
		if version > len(migrations) {
			return fmt.Errorf("the database has schema version %d, newer than this klagg knows (%d): run a newer klagg", version, len(migrations))
		}
		for v := version; v < len(migrations); v++ {
			if _, err := tx.Exec(ctx, migrations[v]); err != nil {
				return fmt.Errorf("migration %d: %w", v+1, err)
			}
		}
		_, err = tx.Exec(ctx, `UPDATE klagg_schema SET version = $1`, len(migrations))
		return err
	})
}

// Close closes the connections; closing again does nothing.
func (s *Store) Close() error {
	s.once.Do(s.pool.Close)
	return nil
}

// Upsert writes updates in one transaction: all or none. Writing the same
// kline twice leaves one row with the later value, within one call too.
func (s *Store) Upsert(updates []kline.Update) error {
	if len(updates) == 0 {
		return nil
	}
	// One INSERT may not touch a row twice: keep each key's update that
	// one by one would have been written last. (An unstamped winner is
	// written unstamped: the stamps before it in the batch are not kept,
	// where one by one the highest would be. Batches do not mix the two:
	// the engine's writes have none, a sink's all have one.)
	type pick struct {
		i   int
		max int64
	}
	last := make(map[kline.Key]pick, len(updates))
	for i := range updates {
		u := &updates[i]
		p, ok := last[u.Key()]
		if !ok || u.Stamp == 0 || u.Stamp >= p.max {
			p.i = i
		}
		p.max = max(p.max, u.Stamp)
		last[u.Key()] = p
	}
	ctx := context.Background()
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		// COPY into a scratch table, then one INSERT … ON CONFLICT from it:
		// COPY's binary rows cost PostgreSQL far less than parameters.
		if _, err := tx.Exec(ctx, `CREATE TEMP TABLE IF NOT EXISTS klines_in (LIKE klines) ON COMMIT DELETE ROWS`); err != nil {
			return err
		}
		// A row takes about 200 bytes: room for 256 saves growing.
		rows := append(make([]byte, 0, len(copyHeader)+len(last)*256), copyHeader...)
		for i := range updates {
			if u := &updates[i]; last[u.Key()].i == i {
				rows = appendCopyRow(rows, u)
			}
		}
		rows = append(rows, copyTrailer...)
		if _, err := tx.Conn().PgConn().CopyFrom(ctx, bytes.NewReader(rows), copySQL); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, upsertSQL)
		return err
	})
	if err != nil {
		return fmt.Errorf("postgres: upsert %d klines: %w", len(updates), err)
	}
	s.versions.Count(updates)
	return nil
}

// copySQL copies rows appendCopyRow encodes into the scratch table.
var copySQL = "COPY klines_in (" + strings.Join(klineColumns, ", ") + ") FROM STDIN (FORMAT binary)"

var klineColumns = []string{"symbol", "interval", "open_time", "close_time", "open", "high", "low", "close",
	"volume", "quote_volume", "trades", "taker_buy_volume", "taker_buy_quote_volume", "first_trade_id", "last_trade_id", "closed", "stamp"}

// upsertSQL moves the copied rows into klines. A row equal to the stored
// one is left as it is: a replay writes nothing. A row with a lower stamp
// than the stored one is older than it: it is left out.
const upsertSQL = `INSERT INTO klines (symbol, interval, open_time, close_time, open, high, low, close,
	volume, quote_volume, trades, taker_buy_volume, taker_buy_quote_volume, first_trade_id, last_trade_id, closed, stamp)
SELECT * FROM klines_in
ON CONFLICT (symbol, interval, open_time) DO UPDATE SET
	close_time=excluded.close_time, open=excluded.open, high=excluded.high, low=excluded.low,
	close=excluded.close, volume=excluded.volume, quote_volume=excluded.quote_volume,
	trades=excluded.trades, taker_buy_volume=excluded.taker_buy_volume,
	taker_buy_quote_volume=excluded.taker_buy_quote_volume, first_trade_id=excluded.first_trade_id,
	last_trade_id=excluded.last_trade_id, closed=excluded.closed, stamp=GREATEST(klines.stamp, excluded.stamp)
WHERE (excluded.stamp = 0 OR excluded.stamp >= klines.stamp) AND (excluded.stamp > klines.stamp OR
	(klines.close_time, klines.open, klines.high, klines.low, klines.close, klines.volume, klines.quote_volume,
	klines.trades, klines.taker_buy_volume, klines.taker_buy_quote_volume, klines.first_trade_id, klines.last_trade_id, klines.closed)
	IS DISTINCT FROM (excluded.close_time, excluded.open, excluded.high, excluded.low, excluded.close, excluded.volume,
	excluded.quote_volume, excluded.trades, excluded.taker_buy_volume, excluded.taker_buy_quote_volume,
	excluded.first_trade_id, excluded.last_trade_id, excluded.closed))`

// Written tells the store that another process wrote closed klines to its
// database (a cluster's sink on another node): copies readers keep of
// those series are stale.
func (s *Store) Written(updates []kline.Update) { s.versions.Count(updates) }

// ClosedVersion changes whenever this process writes a closed kline of
// symbol and iv.
func (s *Store) ClosedVersion(symbol string, iv kline.Interval) uint64 {
	return s.versions.Closed(symbol, iv)
}

// Klines runs q: klines of one series with start ≤ open time ≤ end, oldest
// first, at most q.Limit of them (the newest with q.FromEnd).
func (s *Store) Klines(ctx context.Context, q store.Query) ([]kline.Kline, error) {
	end := q.End
	if end == 0 {
		end = 1<<63 - 1
	}
	var limit any // NULL: no limit
	if q.Limit > 0 {
		limit = q.Limit
	}
	order := "ASC"
	if q.FromEnd {
		order = "DESC"
	}
	rows, err := s.pool.Query(ctx, `SELECT open_time, close_time, open, high, low, close, volume, quote_volume, trades,
		taker_buy_volume, taker_buy_quote_volume, first_trade_id, last_trade_id, closed
		FROM klines WHERE symbol = $1 AND interval = $2 AND open_time >= $3 AND open_time <= $4
		ORDER BY open_time `+order+` LIMIT $5`, q.Symbol, q.Interval.String(), q.Start, end, limit)
	if err != nil {
		return nil, fmt.Errorf("postgres: read klines of %s %s: %w", q.Symbol, q.Interval, err)
	}
	var out []kline.Kline
	var t store.Text
	for rows.Next() {
		var k kline.Kline
		if err := rows.Scan(&k.OpenTime, &k.CloseTime, &t.Open, &t.High, &t.Low, &t.Close, &t.Volume, &t.QuoteVolume, &k.Trades,
			&t.TakerVolume, &t.TakerQuoteVolume, &k.FirstTradeID, &k.LastTradeID, &k.Closed); err != nil {
			return nil, fmt.Errorf("postgres: read klines of %s %s: %w", q.Symbol, q.Interval, err)
		}
		if err := t.Parse(&k); err != nil {
			return nil, fmt.Errorf("postgres: kline %s %s %d: %w", q.Symbol, q.Interval, k.OpenTime, err)
		}
		out = append(out, k)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("postgres: read klines of %s %s: %w", q.Symbol, q.Interval, err)
	}
	if q.FromEnd {
		for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
			out[i], out[j] = out[j], out[i]
		}
	}
	return out, nil
}

// Last returns the newest stored kline of symbol and iv.
func (s *Store) Last(ctx context.Context, symbol string, iv kline.Interval) (kline.Kline, bool, error) {
	ks, err := s.Klines(ctx, store.Query{Symbol: symbol, Interval: iv, Limit: 1, FromEnd: true})
	if err != nil || len(ks) == 0 {
		return kline.Kline{}, false, err
	}
	return ks[0], true, nil
}

// Series lists the (symbol, interval) pairs the store holds, with their
// row counts.
func (s *Store) Series(ctx context.Context) (map[[2]string]int, error) {
	rows, err := s.pool.Query(ctx, `SELECT symbol, interval, count(*) FROM klines GROUP BY symbol, interval`)
	if err != nil {
		return nil, fmt.Errorf("postgres: list series: %w", err)
	}
	out := map[[2]string]int{}
	var sym, iv string
	var n int
	_, err = pgx.ForEachRow(rows, []any{&sym, &iv, &n}, func() error {
		out[[2]string{sym, iv}] = n
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("postgres: list series: %w", err)
	}
	return out, nil
}

// PutSymbols upserts symbol metadata; a record without the exchange's
// object keeps the stored one.
func (s *Store) PutSymbols(syms []store.Symbol) error {
	batch := &pgx.Batch{}
	for _, y := range syms {
		batch.Queue(`INSERT INTO symbols (symbol, status, base_asset, quote_asset, contract_type,
			price_precision, quantity_precision, onboard_date, pair, info) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10)
			ON CONFLICT (symbol) DO UPDATE SET status=excluded.status, base_asset=excluded.base_asset,
			quote_asset=excluded.quote_asset, contract_type=excluded.contract_type,
			price_precision=excluded.price_precision, quantity_precision=excluded.quantity_precision,
			onboard_date=excluded.onboard_date, pair=excluded.pair,
			info=CASE WHEN excluded.info = '' THEN symbols.info ELSE excluded.info END`,
			y.Name, y.Status, y.BaseAsset, y.QuoteAsset, y.ContractType, y.PricePrecision, y.QuantityPrecision,
			y.OnboardDate, y.Pair, string(y.Info))
	}
	if err := s.inTx(batch); err != nil {
		return fmt.Errorf("postgres: save symbols: %w", err)
	}
	return nil
}

// inTx sends batch in one transaction.
func (s *Store) inTx(batch *pgx.Batch) error {
	ctx := context.Background()
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error { return tx.SendBatch(ctx, batch).Close() })
}

// Symbols returns all stored symbol metadata, ordered by onboard date.
func (s *Store) Symbols(ctx context.Context) ([]store.Symbol, error) {
	rows, err := s.pool.Query(ctx, `SELECT symbol, status, base_asset, quote_asset, contract_type, price_precision,
		quantity_precision, onboard_date, pair, info FROM symbols ORDER BY onboard_date, symbol`)
	if err != nil {
		return nil, fmt.Errorf("postgres: read symbols: %w", err)
	}
	var out []store.Symbol
	var y store.Symbol
	var info string
	_, err = pgx.ForEachRow(rows, []any{&y.Name, &y.Status, &y.BaseAsset, &y.QuoteAsset, &y.ContractType, &y.PricePrecision,
		&y.QuantityPrecision, &y.OnboardDate, &y.Pair, &info}, func() error {
		y.Info = nil
		if info != "" {
			y.Info = []byte(info)
		}
		out = append(out, y)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("postgres: read symbols: %w", err)
	}
	return out, nil
}

// PutExchange stores exchange-wide exchangeInfo lists by name.
func (s *Store) PutExchange(lists map[string][]byte) error {
	batch := &pgx.Batch{}
	for name, v := range lists {
		batch.Queue(`INSERT INTO exchange (name, value) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET value=excluded.value`, name, string(v))
	}
	if err := s.inTx(batch); err != nil {
		return fmt.Errorf("postgres: save exchange lists: %w", err)
	}
	return nil
}

// Exchange returns the exchange-wide lists PutExchange stored.
func (s *Store) Exchange(ctx context.Context) (map[string][]byte, error) {
	rows, err := s.pool.Query(ctx, `SELECT name, value FROM exchange`)
	if err != nil {
		return nil, fmt.Errorf("postgres: read exchange lists: %w", err)
	}
	out := map[string][]byte{}
	var name, value string
	_, err = pgx.ForEachRow(rows, []any{&name, &value}, func() error {
		out[name] = []byte(value)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("postgres: read exchange lists: %w", err)
	}
	return out, nil
}

// AddSpans records spans of klines held; the klines must be stored first.
func (s *Store) AddSpans(spans []store.Span) error {
	batch := &pgx.Batch{}
	for _, p := range spans {
		batch.Queue(`INSERT INTO spans (symbol, interval, from_time, to_time) VALUES ($1,$2,$3,$4)
			ON CONFLICT (symbol, interval, from_time) DO UPDATE SET to_time = GREATEST(spans.to_time, excluded.to_time)`,
			p.Symbol, p.Interval.String(), p.From, p.To)
	}
	if err := s.inTx(batch); err != nil {
		return fmt.Errorf("postgres: save the spans held: %w", err)
	}
	return nil
}

// AddImported records archive files imported; the klines must be stored
// first.
func (s *Store) AddImported(files []store.Imported) error {
	batch := &pgx.Batch{}
	for _, f := range files {
		batch.Queue(`INSERT INTO imported (name, checksum, size) VALUES ($1,$2,$3)
			ON CONFLICT (name) DO UPDATE SET checksum = excluded.checksum, size = excluded.size`, f.Name, f.Checksum, f.Size)
	}
	if err := s.inTx(batch); err != nil {
		return fmt.Errorf("postgres: record the archive files imported: %w", err)
	}
	return nil
}

// Imported returns the archive files imported, by name.
func (s *Store) Imported(ctx context.Context) (map[string]store.Imported, error) {
	rows, err := s.pool.Query(ctx, `SELECT name, checksum, size FROM imported`)
	if err != nil {
		return nil, fmt.Errorf("postgres: read the archive files imported: %w", err)
	}
	out := map[string]store.Imported{}
	var f store.Imported
	_, err = pgx.ForEachRow(rows, []any{&f.Name, &f.Checksum, &f.Size}, func() error {
		out[f.Name] = f
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("postgres: read the archive files imported: %w", err)
	}
	return out, nil
}

// Spans returns the spans recorded, as they are: what every node reads
// again now and then to learn what the others hold.
func (s *Store) Spans(ctx context.Context) ([]store.Span, error) {
	rows, err := s.pool.Query(ctx, `SELECT symbol, interval, from_time, to_time FROM spans`)
	if err != nil {
		return nil, fmt.Errorf("postgres: read the spans held: %w", err)
	}
	out, err := scanSpans(rows)
	if err != nil {
		return nil, fmt.Errorf("postgres: read the spans held: %w", err)
	}
	return out, nil
}

// scanSpans reads rows of symbol, interval, from_time, to_time.
func scanSpans(rows pgx.Rows) ([]store.Span, error) {
	var out []store.Span
	var p store.Span
	var name string
	_, err := pgx.ForEachRow(rows, []any{&p.Symbol, &name, &p.From, &p.To}, func() error {
		iv, err := kline.ParseInterval(name)
		if err != nil {
			return fmt.Errorf("a span of %s: %w", p.Symbol, err)
		}
		p.Interval = iv
		out = append(out, p)
		return nil
	})
	return out, err
}

// CompactSpans merges the spans recorded per series, keeps the merged
// ones in place of the recorded, and returns them. The rows it merges are
// the ones it deletes, so a span another node adds meanwhile is kept.
func (s *Store) CompactSpans(ctx context.Context) ([]store.Span, error) {
	var out []store.Span
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `DELETE FROM spans RETURNING symbol, interval, from_time, to_time`)
		if err != nil {
			return err
		}
		recorded, err := scanSpans(rows)
		if err != nil {
			return err
		}
		out = store.MergeSpans(recorded)
		batch := &pgx.Batch{}
		for _, p := range out {
			batch.Queue(`INSERT INTO spans (symbol, interval, from_time, to_time) VALUES ($1,$2,$3,$4)
				ON CONFLICT (symbol, interval, from_time) DO UPDATE SET to_time = GREATEST(spans.to_time, excluded.to_time)`,
				p.Symbol, p.Interval.String(), p.From, p.To)
		}
		return tx.SendBatch(ctx, batch).Close()
	})
	if err != nil {
		return nil, fmt.Errorf("postgres: read the spans held: %w", err)
	}
	return out, nil
}
