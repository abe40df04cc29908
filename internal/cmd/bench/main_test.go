package main

import (
	"bytes"
	"context"
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
