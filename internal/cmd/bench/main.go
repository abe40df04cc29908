// Command bench runs ordermesh's benchmark (see internal/bench) — what
// `make bench` runs — prints the report, writes it into docs/benchmarks.md
// between the generated-section markers, and ends with one line:
//
//	bench: e2e_orders_per_s=N create_vs_raw_pg=R bus_vs_raw_amqp=R rest_vs_grpc=R
//
// The broker and database come from ORDERMESH_TEST_AMQP_URL and
// ORDERMESH_TEST_DATABASE_URL (defaults: the local servers), like the
// tests; everything the run creates there is removed again.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/ordermesh/ordermesh/internal/bench"
	"github.com/ordermesh/ordermesh/internal/shutdown"
)

func main() {
	ctx, stop := shutdown.OnSignal()
	err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	doc := fs.String("doc", "docs/benchmarks.md", "document to write the report into (empty: none)")
	profiles := fs.String("profiles", "", "keep the binaries and CPU profiles in this directory (default: a temporary one, removed)")
	quick := fs.Bool("quick", false, "short trials, for checking the harness (figures are not meaningful)")
	skip := fs.String("skip", "", "comma-separated phases to skip: create, bus, relay, e2e (for working on the harness)")
	relayRate := fs.Float64("relay-rate", 0, "events/s of the relay phase (default: the goal's 1000; the goal counts only at that rate)")
	command := fs.String("command", "make bench", "command recorded in the report")
	if err := fs.Parse(args); err != nil {
		return err
	}
	docSet := false
	fs.Visit(func(f *flag.Flag) { docSet = docSet || f.Name == "doc" })
	if (*quick || *skip != "") && *doc != "" {
		// The report's verdicts would rest on short or missing trials.
		if docSet {
			return errors.New("-quick and -skip runs are not written to a document: their figures are not the benchmark's (pass -doc \"\")")
		}
		fmt.Fprintln(stderr, "bench: -quick or -skip: the report goes to stdout only, not to", *doc)
		*doc = ""
	}
	root, err := os.Getwd()
	if err != nil {
		return fmt.Errorf("find module root: %w", err)
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		return errors.New("run from the module root (make bench does)")
	}
	work := *profiles
	if work == "" {
		if work, err = os.MkdirTemp("", "ordermesh-bench-"); err != nil {
			return fmt.Errorf("make work dir: %w", err)
		}
		defer os.RemoveAll(work)
	} else if work, err = filepath.Abs(work); err != nil {
		return err
	}
	opts := bench.Options{
		Root:             root,
		AdminDatabaseURL: envOr(getenv, "ORDERMESH_TEST_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"),
		AMQPURL:          envOr(getenv, "ORDERMESH_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/"),
		WorkDir:          work,
		Log:              stderr,
		ProgressTTY:      isTerminal(stderr),
	}
	if *quick {
		opts.Trial, opts.Rounds, opts.BusMessages, opts.E2EOrders, opts.HalfRateDuration, opts.ProfileDuration, opts.RelayDuration =
			2*time.Second, 1, 2000, 500, 5*time.Second, 2*time.Second, 3*time.Second
	}
	opts.RelayRate = *relayRate
	if *skip != "" {
		opts.Skip = map[string]bool{}
		for _, s := range strings.Split(*skip, ",") {
			opts.Skip[strings.TrimSpace(s)] = true
		}
	}
	var ignore []string
	if *doc != "" {
		ignore = append(ignore, *doc)
	}
	machine := bench.DescribeMachine(ctx, root, opts.AdminDatabaseURL, opts.AMQPURL, ignore...)
	res, err := bench.Run(ctx, opts)
	if err != nil {
		return err
	}
	report := bench.Markdown(res, machine, recorded(fs, *command))
	if *doc != "" {
		if err := bench.WriteDoc(filepath.Join(root, *doc), report); err != nil {
			return err
		}
	}
	_, err = fmt.Fprintf(stdout, "%s\n%s\n", strings.TrimRight(report, "\n"), bench.FinalLine(res))
	return err
}

func envOr(getenv func(string) string, name, def string) string {
	if v := getenv(name); v != "" {
		return v
	}
	return def
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// recorded is the command the report names: command, followed by the
// flags given other than -command and -doc (which change nothing measured),
// so that a run with, say, -relay-rate 500 does not pass for the plain one.
func recorded(fs *flag.FlagSet, command string) string {
	var b strings.Builder
	b.WriteString(command)
	fs.Visit(func(f *flag.Flag) {
		if f.Name != "command" && f.Name != "doc" {
			fmt.Fprintf(&b, " -%s=%s", f.Name, f.Value)
		}
	})
	return b.String()
}
