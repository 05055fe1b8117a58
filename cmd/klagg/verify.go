package main

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/klagg/klagg/internal/archive"
	"github.com/klagg/klagg/internal/kline"
	"github.com/klagg/klagg/internal/store"
	"github.com/klagg/klagg/internal/store/sqlite"
	"github.com/klagg/klagg/internal/verify"
)

const verifyArgs = "(-db PATH | -ours FILE[,FILE...]) [-symbol S] [-interval I] REFERENCE..."

func runVerify(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "verify", verifyArgs)
	db := fs.String("db", "", "our klines: the SQLite store at PATH")
	ours := fs.String("ours", "", "our klines: comma-separated CSV files from 'klagg build -out'")
	symbol := fs.String("symbol", "", "symbol of the reference files, when their names do not say")
	interval := fs.String("interval", "", "interval of the reference files, when their names do not say")
	show := fs.Int("show", 20, "how many differences to list")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if (*db == "") == (*ours == "") || fs.NArg() == 0 {
		fmt.Fprintln(e.stderr, "klagg verify: give one of -db or -ours, and at least one reference file")
		fs.Usage()
		return errUsage
	}
	lookup, closeFn, err := oursLookup(*db, *ours)
	if err != nil {
		return err
	}
	defer closeFn()
	rep := verify.New(*show)
	for _, path := range fs.Args() {
		refs, err := archive.ReadKlines(path, *symbol, *interval)
		if err != nil {
			return err
		}
		for _, ref := range refs {
			ks, err := lookup(ctx, ref)
			if err != nil {
				return err
			}
			rep.Compare(ref, ks)
		}
	}
	rep.Print(e.stdout)
	if !rep.OK() {
		return errFailed
	}
	return nil
}

type lookupFunc func(ctx context.Context, ref archive.Series) ([]kline.Kline, error)

func oursLookup(db, ours string) (lookupFunc, func(), error) {
	if db != "" {
		s, err := sqlite.Open(db)
		if err != nil {
			return nil, nil, err
		}
		return func(ctx context.Context, ref archive.Series) ([]kline.Kline, error) {
			iv, err := kline.ParseInterval(ref.Interval)
			if err != nil {
				return nil, err
			}
			q := store.Query{Symbol: ref.Symbol, Interval: iv}
			if n := len(ref.Klines); n > 0 {
				q.Start, q.End = ref.Klines[0].OpenTime, ref.Klines[n-1].OpenTime
			}
			return s.Klines(ctx, q)
		}, func() { s.Close() }, nil
	}
	bySeries := map[string][]kline.Kline{}
	for _, f := range strings.Split(ours, ",") {
		ss, err := archive.ReadKlines(f, "", "")
		if err != nil {
			return nil, nil, err
		}
		for _, s := range ss {
			bySeries[s.Symbol+" "+s.Interval] = append(bySeries[s.Symbol+" "+s.Interval], s.Klines...)
		}
	}
	return func(_ context.Context, ref archive.Series) ([]kline.Kline, error) {
		ks, ok := bySeries[ref.Symbol+" "+ref.Interval]
		if !ok {
			return nil, fmt.Errorf("no klines of ours for %s %s (have %s)", ref.Symbol, ref.Interval, keys(bySeries))
		}
		return ks, nil
	}, func() {}, nil
}

func keys(m map[string][]kline.Kline) string {
	var out []string
	for k := range m {
		out = append(out, filepath.Base(k))
	}
	return strings.Join(out, ", ")
}
