// Package sqlitebench compares SQLite drivers on klagg's kline upsert, the
// measurement behind the store's choice of driver. It is its own module so
// that the losing drivers never enter klagg's dependencies.
//
//	cd tools/sqlitebench && go test -bench . -benchtime 40x
package sqlitebench

import (
	"database/sql"
	"fmt"
	"path/filepath"
	"testing"

	_ "github.com/mattn/go-sqlite3"
	"zombiezen.com/go/sqlite"
	"zombiezen.com/go/sqlite/sqlitex"
)

const schema = `CREATE TABLE klines (symbol TEXT NOT NULL, interval TEXT NOT NULL, open_time INTEGER NOT NULL,
	close_time INTEGER NOT NULL, open TEXT NOT NULL, high TEXT NOT NULL, low TEXT NOT NULL, close TEXT NOT NULL,
	volume TEXT NOT NULL, quote_volume TEXT NOT NULL, trades INTEGER NOT NULL, taker_buy_volume TEXT NOT NULL,
	taker_buy_quote_volume TEXT NOT NULL, first_trade_id INTEGER NOT NULL, last_trade_id INTEGER NOT NULL,
	closed INTEGER NOT NULL, PRIMARY KEY (symbol, interval, open_time)) WITHOUT ROWID`

const upsert = `INSERT INTO klines VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)
ON CONFLICT (symbol, interval, open_time) DO UPDATE SET close_time=excluded.close_time, open=excluded.open,
high=excluded.high, low=excluded.low, close=excluded.close, volume=excluded.volume,
quote_volume=excluded.quote_volume, trades=excluded.trades, taker_buy_volume=excluded.taker_buy_volume,
taker_buy_quote_volume=excluded.taker_buy_quote_volume, first_trade_id=excluded.first_trade_id,
last_trade_id=excluded.last_trade_id, closed=excluded.closed`

var names = func() []string {
	n := make([]string, 100)
	for i := range n {
		n[i] = fmt.Sprintf("S%03dUSDT", i)
	}
	return n
}()

const batch = 5000

// row i of batch b: half of each batch updates rows of the previous one.
func row(b, j int) (string, int64) { return names[j%100], int64(b*batch/2+j) * 60_000 }

func BenchmarkZombiezen(b *testing.B) {
	c, err := sqlite.OpenConn(filepath.Join(b.TempDir(), "k.db"), sqlite.OpenReadWrite|sqlite.OpenCreate|sqlite.OpenWAL)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	for _, q := range []string{"PRAGMA journal_mode=WAL", "PRAGMA synchronous=NORMAL", schema} {
		if err := sqlitex.ExecuteTransient(c, q, nil); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		end, _ := sqlitex.ImmediateTransaction(c)
		st := c.Prep(upsert)
		for j := 0; j < batch; j++ {
			sym, ot := row(i, j)
			st.BindText(1, sym)
			st.BindText(2, "1m")
			st.BindInt64(3, ot)
			st.BindInt64(4, ot+59_999)
			for k := 5; k <= 10; k++ {
				st.BindText(k, "37000.12345678")
			}
			st.BindInt64(11, int64(j))
			st.BindText(12, "1.5")
			st.BindText(13, "55500.123")
			st.BindInt64(14, 1)
			st.BindInt64(15, 2)
			st.BindInt64(16, 1)
			if _, err := st.Step(); err != nil {
				b.Fatal(err)
			}
			st.Reset()
		}
		var err error
		end(&err)
	}
	b.ReportMetric(float64(b.N*batch)/b.Elapsed().Seconds(), "upserts/s")
}

func benchSQL(b *testing.B, driver string) {
	db, err := sql.Open(driver, filepath.Join(b.TempDir(), "k.db")+"?_journal_mode=WAL&_synchronous=NORMAL")
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	db.SetMaxOpenConns(1)
	if _, err := db.Exec(schema); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		tx, _ := db.Begin()
		st, err := tx.Prepare(upsert)
		if err != nil {
			b.Fatal(err)
		}
		for j := 0; j < batch; j++ {
			sym, ot := row(i, j)
			p := "37000.12345678"
			if _, err := st.Exec(sym, "1m", ot, ot+59_999, p, p, p, p, p, p, int64(j), "1.5", "55500.123", 1, 2, 1); err != nil {
				b.Fatal(err)
			}
		}
		st.Close()
		if err := tx.Commit(); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N*batch)/b.Elapsed().Seconds(), "upserts/s")
}

func BenchmarkMattnCgo(b *testing.B) { benchSQL(b, "sqlite3") }
