// Command klagg keeps Binance USDⓈ-M klines: run with no arguments for the
// service, or with a subcommand for one job. This package only wires the
// internal packages together.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/pprof"
	"strings"
	"syscall"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

type command struct {
	name, args, summary string
	run                 func(ctx context.Context, env *env, args []string) error
}

// env is what every command gets from main: its streams and logger.
type env struct {
	stdout, stderr io.Writer
	log            *slog.Logger
}

func commands() []command {
	return []command{
		{"build", "[-intervals 1m,5m,...] (-out DIR | -db PATH) FILE...", "turn aggTrades archives into klines", runBuild},
		{"verify", "(-db PATH | -ours FILE...) REFERENCE...", "compare klines with Binance's, field by field", runVerify},
		{"backfill", "", "store closed klines from REST for every symbol and interval, then exit", runBackfill},
		{"import", "-symbols A,B,... -since DATE [-until DATE] [-from URL|DIR]", "store 1m klines from Binance's public archive, then exit", runImport},
		{"demo", "[-symbols N]", "run the service against a built-in fake exchange (no network needed)", runDemo},
		{"fake-exchange", "[-symbols N] [-speed X] [-listen ADDR]", "run the fake Binance exchange alone", runFakeExchange},
	}
}

func main() {
	os.Exit(cli(os.Args[1:], os.Stdout, os.Stderr))
}

func cli(args []string, stdout, stderr io.Writer) int {
	e := &env{stdout: stdout, stderr: stderr, log: newLogger(stderr)}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if path := os.Getenv("KLAGG_CPUPROFILE"); path != "" {
		// For finding where a load test's time goes: go tool pprof klagg path.
		f, err := os.Create(path)
		if err != nil {
			fmt.Fprintf(stderr, "klagg: KLAGG_CPUPROFILE: %v\n", err)
			return 2
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Fprintf(stderr, "klagg: KLAGG_CPUPROFILE: %v\n", err)
			return 2
		}
		defer pprof.StopCPUProfile()
	}
	if path := os.Getenv("KLAGG_HEAPPROFILE"); path != "" {
		// Where a load test's memory is, at exit: go tool pprof klagg path.
		defer func() {
			f, err := os.Create(path)
			if err != nil {
				fmt.Fprintf(stderr, "klagg: KLAGG_HEAPPROFILE: %v\n", err)
				return
			}
			defer f.Close()
			if err := pprof.Lookup("heap").WriteTo(f, 0); err != nil {
				fmt.Fprintf(stderr, "klagg: KLAGG_HEAPPROFILE: %v\n", err)
			}
		}()
	}
	if len(args) > 0 {
		switch args[0] {
		case "-h", "--help", "help":
			usage(stdout)
			return 0
		case "-v", "--version", "version":
			fmt.Fprintln(stdout, "klagg", version)
			return 0
		}
		for _, c := range commands() {
			if c.name == args[0] {
				err := c.run(ctx, e, args[1:])
				return exitCode(stderr, c.name, err)
			}
		}
		if !strings.HasPrefix(args[0], "-") {
			fmt.Fprintf(stderr, "klagg: unknown command %q\n\n", args[0])
			usage(stderr)
			return 2
		}
	}
	return exitCode(stderr, "", runService(ctx, e, args))
}

func exitCode(stderr io.Writer, cmd string, err error) int {
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errUsage):
		return 2
	case errors.Is(err, errFailed):
		return 1
	}
	prefix := "klagg"
	if cmd != "" {
		prefix += " " + cmd
	}
	fmt.Fprintf(stderr, "%s: %v\n", prefix, err)
	return 1
}

// errUsage marks an error already explained to the user with usage text;
// errFailed one already reported in full.
var (
	errUsage  = errors.New("usage")
	errFailed = errors.New("failed")
)

func usage(w io.Writer) {
	fmt.Fprintf(w, `klagg keeps real-time klines for every Binance USDⓈ-M perpetual and serves them.

Usage:
  klagg                 run the service (config: $CONFIG_PATH or config/aggregate_config.toml)
`)
	for _, c := range commands() {
		fmt.Fprintf(w, "  klagg %-15s %s\n", c.name, c.summary)
	}
	fmt.Fprintf(w, `  klagg -v              print the version

Run "klagg <command> -h" for a command's options.
Environment: LOG_LEVEL (debug, info, warn, error), CONFIG_PATH.
`)
}

func newLogger(w io.Writer) *slog.Logger {
	level := slog.LevelInfo
	if v := os.Getenv("LOG_LEVEL"); v != "" {
		if err := level.UnmarshalText([]byte(v)); err != nil {
			fmt.Fprintf(w, "klagg: LOG_LEVEL=%q is not one of debug, info, warn, error; using info\n", v)
		}
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level}))
}

// newFlags returns a flag set whose usage names the command and its arguments.
func newFlags(e *env, name, args string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	fs.Usage = func() {
		fmt.Fprintf(e.stderr, "Usage: klagg %s %s\n\nOptions:\n", name, args)
		fs.PrintDefaults()
	}
	return fs
}

func parseFlags(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return errUsage
	}
	return nil
}
