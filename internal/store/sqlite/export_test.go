package sqlite

import "zombiezen.com/go/sqlite/sqlitex"

func execScript(s *Store, sql string) error { return sqlitex.ExecuteTransient(s.w, sql, nil) }
