package main

import (
	"bytes"
	"context"
	"flag"
	"io"
	"strings"
	"testing"
)

// TestShortRunsAreNotWrittenToTheDocument: a -quick or -skip run's
// figures rest on short or missing trials, so asking to write them into
// the benchmark document is refused before anything runs.
func TestShortRunsAreNotWrittenToTheDocument(t *testing.T) {
	for _, args := range [][]string{
		{"-quick", "-doc", "docs/benchmarks.md"},
		{"-skip", "bus", "-doc", "report.md"},
	} {
		var stdout, stderr bytes.Buffer
		err := run(context.Background(), args, func(string) string { return "" }, &stdout, &stderr)
		if err == nil || !strings.Contains(err.Error(), "not written to a document") {
			t.Errorf("bench %s: err = %v, want a refusal to write the document", strings.Join(args, " "), err)
		}
	}
}

// TestRecordedCommandNamesTheFlags: the report's command names the flags
// that change what is measured, not -command or -doc.
func TestRecordedCommandNamesTheFlags(t *testing.T) {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Float64("relay-rate", 0, "")
	command := fs.String("command", "make bench", "")
	fs.String("doc", "docs/benchmarks.md", "")
	if err := fs.Parse([]string{"-relay-rate", "500", "-doc", "x.md"}); err != nil {
		t.Fatal(err)
	}
	if got, want := recorded(fs, *command), "make bench -relay-rate=500"; got != want {
		t.Errorf("recorded = %q, want %q", got, want)
	}
}
