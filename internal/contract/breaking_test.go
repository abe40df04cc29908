package contract

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestBreakingCheckAndDeclaredBreaks runs .ci/breaking (make breaking) in a
// scratch repository holding a copy of the schemas: a commit that deletes
// an event field fails the check; the same commit with a Breaking-Change
// trailer passes it; later commits are checked against the versions from
// the declared break on, not before it, and a further undeclared break
// fails again.
func TestBreakingCheckAndDeclaredBreaks(t *testing.T) {
	if testing.Short() {
		t.Skip("runs buf several times")
	}
	if _, err := exec.LookPath("git"); err != nil {
		t.Skip("git not installed")
	}
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for _, p := range []string{".ci/breaking", "buf.yaml", "go.mod", "tools.mod", "tools.sum", "proto", "third_party/proto"} {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(dir, p)), 0o755); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command("cp", "-r", filepath.Join(root, p), filepath.Join(dir, p)).CombinedOutput(); err != nil {
			t.Fatalf("copy %s: %v: %s", p, err, out)
		}
	}
	git := func(args ...string) {
		t.Helper()
		cmd := exec.Command("git", append([]string{"-c", "user.name=test", "-c", "user.email=test@example.com", "-c", "commit.gpgsign=false"}, args...)...)
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("git %v: %v: %s", args, err, out)
		}
	}
	check := func() (string, bool) {
		t.Helper()
		cmd := exec.Command(filepath.Join(dir, ".ci/breaking"))
		cmd.Dir = dir
		out, err := cmd.CombinedOutput()
		return string(out), err == nil
	}
	event := filepath.Join(dir, "proto/ordermesh/notification/v1/events.proto")
	deleteField := func(field string) {
		t.Helper()
		b, err := os.ReadFile(event)
		if err != nil {
			t.Fatal(err)
		}
		// The field's declaration, from its type to the end of its options.
		re := regexp.MustCompile(`(?s)\n  [A-Za-z.]+ ` + field + ` = \d+ [^;]*;`)
		if !re.Match(b) {
			t.Fatalf("field %s not found in %s", field, event)
		}
		if err := os.WriteFile(event, re.ReplaceAll(b, nil), 0o644); err != nil {
			t.Fatal(err)
		}
	}

	git("init", "-q", "-b", "main")
	git("add", "-A")
	git("commit", "-q", "-m", "v1 schemas")

	deleteField("recipient")
	git("commit", "-q", "-am", "notification: drop recipient")
	if out, ok := check(); ok || !strings.Contains(out, `"recipient"`) {
		t.Fatalf("an undeclared deleted field passed, or failed for another reason:\n%s", out)
	}

	git("commit", "-q", "--amend", "-m", "notification: drop recipient\n\nBreaking-Change: recipients are no longer published")
	if out, ok := check(); !ok || !strings.Contains(out, "declares a deliberate break: recipients are no longer published") {
		t.Fatalf("a declared break failed the check:\n%s", out)
	}

	// A later compatible change: compared with the break, not with v1.
	b, err := os.ReadFile(event)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(event, append(b, "\n// A comment.\n"...), 0o644); err != nil {
		t.Fatal(err)
	}
	git("commit", "-q", "-am", "notification: a comment")
	if out, ok := check(); !ok || !strings.Contains(out, "against the 1 earlier versions") {
		t.Fatalf("a compatible change after a declared break failed, or was compared with versions before it:\n%s", out)
	}

	// A further break, undeclared, fails again.
	deleteField("kind")
	git("commit", "-q", "-am", "notification: drop kind")
	if out, ok := check(); ok || !strings.Contains(out, `"kind"`) {
		t.Fatalf("an undeclared break after a declared one passed:\n%s", out)
	}
}
