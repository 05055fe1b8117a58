package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"

	"github.com/klagg/klagg/internal/config"
	"github.com/klagg/klagg/internal/service"
)

func configPath() string {
	if p := os.Getenv("CONFIG_PATH"); p != "" {
		return p
	}
	return config.DefaultPath
}

func loadConfig(e *env) (*config.Config, error) {
	path := configPath()
	cfg, created, err := config.Load(path)
	if err != nil {
		return nil, err
	}
	if created {
		e.log.Info("no config found; wrote the defaults", "path", path)
	}
	return cfg, nil
}

func runService(ctx context.Context, e *env, args []string) error {
	if len(args) > 0 {
		fmt.Fprintf(e.stderr, "klagg: unexpected argument %q\n\n", args[0])
		usage(e.stderr)
		return errUsage
	}
	cfg, err := loadConfig(e)
	if err != nil {
		return err
	}
	return serve(ctx, e, cfg)
}

// serve runs the service until ctx ends; a second SIGINT or SIGTERM while
// it flushes forces the exit.
func serve(ctx context.Context, e *env, cfg *config.Config) error {
	svc, err := service.New(cfg, e.log)
	if err != nil {
		return err
	}
	svc.Progress = progress(e, "backfill")
	forceOnSecondSignal(ctx, e)
	e.log.Info("klagg starting", "version", version, "exchange", cfg.Exchange.RESTURL, "database", cfg.Database.Path, "listen", cfg.Server.Listen)
	return svc.Run(ctx)
}

func forceOnSecondSignal(ctx context.Context, e *env) {
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	go func() {
		<-ctx.Done()
		e.log.Info("stopping: flushing klines to the store (signal again to force)")
		<-sigs // the signal that cancelled ctx
		<-sigs // a second one
		e.log.Error("second signal: exiting without flushing")
		os.Exit(1)
	}()
}

func runBackfill(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "backfill", "")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	cfg, err := loadConfig(e)
	if err != nil {
		return err
	}
	svc, err := service.New(cfg, e.log)
	if err != nil {
		return err
	}
	svc.Progress = progress(e, "backfill")
	return svc.Backfill(ctx)
}

// progress returns a progress callback drawing a bar on a terminal, or nil.
func progress(e *env, what string) func(done, total int) {
	f, ok := e.stderr.(*os.File)
	if !ok || !term.IsTerminal(int(f.Fd())) {
		return nil
	}
	var bar *progressbar.ProgressBar
	return func(done, total int) {
		if bar == nil {
			bar = progressbar.NewOptions(total, progressbar.OptionSetDescription(what),
				progressbar.OptionSetWriter(f), progressbar.OptionShowCount(), progressbar.OptionClearOnFinish())
		}
		bar.ChangeMax(max(total, done))
		bar.Set(done)
	}
}
