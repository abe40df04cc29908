package contract

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// scratchRepo is a git repository holding a copy of the schemas and of
// .ci/breaking (make breaking) with the code it builds, with the schemas
// committed as "v1 schemas" on main.
type scratchRepo struct {
	t   *testing.T
	dir string
}

func newScratchRepo(t *testing.T) *scratchRepo {
	t.Helper()
	if _, err := exec.LookPath("git"); err != nil {
		t.Skip("git not installed")
	}
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	r := &scratchRepo{t: t, dir: t.TempDir()}
	for _, p := range []string{".ci/breaking", "buf.yaml", "go.mod", "go.sum", "tools.mod", "tools.sum", "proto", "third_party/proto",
		"gen/openapiv2/ordermesh.swagger.json", "internal/cmd/openapiroutes", "internal/openapi"} {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(r.dir, p)), 0o755); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command("cp", "-r", filepath.Join(root, p), filepath.Join(r.dir, p)).CombinedOutput(); err != nil {
			t.Fatalf("copy %s: %v: %s", p, err, out)
		}
	}
	r.git("init", "-q", "-b", "main")
	r.git("add", "-A")
	r.git("commit", "-q", "-m", "v1 schemas")
	return r
}

func (r *scratchRepo) git(args ...string) {
	r.t.Helper()
	cmd := exec.Command("git", append([]string{"-c", "user.name=test", "-c", "user.email=test@example.com", "-c", "commit.gpgsign=false"}, args...)...)
	cmd.Dir = r.dir
	if out, err := cmd.CombinedOutput(); err != nil {
		r.t.Fatalf("git %v: %v: %s", args, err, out)
	}
}

// check runs the breaking check at HEAD and returns its output and
// whether it passed.
func (r *scratchRepo) check() (string, bool) {
	r.t.Helper()
	cmd := exec.Command(filepath.Join(r.dir, ".ci/breaking"))
	cmd.Dir = r.dir
	out, err := cmd.CombinedOutput()
	return string(out), err == nil
}

// notificationEvents is the file the tests break.
const notificationEvents = "proto/ordermesh/notification/v1/events.proto"

// deleteField deletes the declaration of field, from its type to the end
// of its options, from the notification events.
func (r *scratchRepo) deleteField(field string) {
	r.t.Helper()
	path := filepath.Join(r.dir, notificationEvents)
	b, err := os.ReadFile(path)
	if err != nil {
		r.t.Fatal(err)
	}
	re := regexp.MustCompile(`(?s)\n  [A-Za-z.]+ ` + field + ` = \d+ [^;]*;`)
	if !re.Match(b) {
		r.t.Fatalf("field %s not found in %s", field, path)
	}
	if err := os.WriteFile(path, re.ReplaceAll(b, nil), 0o644); err != nil {
		r.t.Fatal(err)
	}
}

// appendComment makes a compatible change to the schema file at path.
func (r *scratchRepo) appendComment(path string) {
	r.t.Helper()
	f, err := os.OpenFile(filepath.Join(r.dir, path), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		r.t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString("\n// A comment.\n"); err != nil {
		r.t.Fatal(err)
	}
}

// TestBreakingCheckAndDeclaredBreaks runs .ci/breaking (make breaking) in a
// scratch repository: a commit that deletes an event field fails the
// check; the same commit with a Breaking-Change trailer passes it; later
// commits are checked against the versions from the declared break on, not
// before it; a further undeclared break fails again; and a declaration
// excuses its own commit's break only, not an undeclared one before it.
func TestBreakingCheckAndDeclaredBreaks(t *testing.T) {
	if testing.Short() {
		t.Skip("runs buf several times")
	}
	r := newScratchRepo(t)

	r.deleteField("recipient")
	r.git("commit", "-q", "-am", "notification: drop recipient")
	if out, ok := r.check(); ok || !strings.Contains(out, `"recipient"`) {
		t.Fatalf("an undeclared deleted field passed, or failed for another reason:\n%s", out)
	}

	r.git("commit", "-q", "--amend", "-m", "notification: drop recipient\n\nBreaking-Change: recipients are no longer published")
	if out, ok := r.check(); !ok || !strings.Contains(out, "declares a deliberate break: recipients are no longer published") {
		t.Fatalf("a declared break failed the check:\n%s", out)
	}

	// A later compatible change: compared with the break, not with v1.
	r.appendComment(notificationEvents)
	r.git("commit", "-q", "-am", "notification: a comment")
	if out, ok := r.check(); !ok || !strings.Contains(out, "against the 1 earlier versions") {
		t.Fatalf("a compatible change after a declared break failed, or was compared with versions before it:\n%s", out)
	}

	// A further break, undeclared, fails again.
	r.deleteField("kind")
	r.git("commit", "-q", "-am", "notification: drop kind")
	if out, ok := r.check(); ok || !strings.Contains(out, `"kind"`) {
		t.Fatalf("an undeclared break after a declared one passed:\n%s", out)
	}

	// An undeclared break followed, in the same push, by a commit that
	// declares another: the declaration excuses its own break only.
	r.git("reset", "-q", "--hard", "HEAD~1")
	r.deleteField("order_id")
	r.git("commit", "-q", "-am", "notification: drop order_id")
	r.deleteField("kind")
	r.git("commit", "-q", "-am", "notification: drop kind\n\nBreaking-Change: kinds are gone")
	if out, ok := r.check(); ok || !strings.Contains(out, `"order_id"`) {
		t.Fatalf("an undeclared break before a declared one passed:\n%s", out)
	}
}

// TestBreakingCheckAfterMergingADeclaredBreak: a declared break made on a
// branch and merged, while the main line changed the schemas compatibly
// meanwhile: the merge and what follows are compared with the versions
// that contain the break, not with the main line's from before it.
func TestBreakingCheckAfterMergingADeclaredBreak(t *testing.T) {
	if testing.Short() {
		t.Skip("runs buf several times")
	}
	r := newScratchRepo(t)
	r.git("checkout", "-q", "-b", "side")
	r.deleteField("recipient")
	r.git("commit", "-q", "-am", "notification: drop recipient\n\nBreaking-Change: recipients are no longer published")
	r.git("checkout", "-q", "main")
	r.appendComment("proto/ordermesh/order/v1/events.proto")
	r.git("commit", "-q", "-am", "order: a comment")
	r.git("merge", "-q", "--no-ff", "-m", "merge side", "side")
	if out, ok := r.check(); !ok {
		t.Fatalf("the merge of a declared break failed:\n%s", out)
	}
	r.appendComment(notificationEvents)
	r.git("commit", "-q", "-am", "notification: a comment")
	if out, ok := r.check(); !ok {
		t.Fatalf("a compatible change after the merge of a declared break failed:\n%s", out)
	}
	r.deleteField("kind")
	r.git("commit", "-q", "-am", "notification: drop kind")
	if out, ok := r.check(); ok || !strings.Contains(out, `"kind"`) {
		t.Fatalf("an undeclared break after the merge passed:\n%s", out)
	}
}

// TestBreakingCheckSeesARemovedRoute: a REST route that goes away (its
// HTTP rule changed or its method removed, and the OpenAPI document
// regenerated) fails the check, which buf's categories would pass; a
// declared break passes.
func TestBreakingCheckSeesARemovedRoute(t *testing.T) {
	if testing.Short() {
		t.Skip("runs buf several times")
	}
	r := newScratchRepo(t)
	path := filepath.Join(r.dir, "gen/openapiv2/ordermesh.swagger.json")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	const from, to = `"/v1/orders/{order_id}/events"`, `"/v1/orders/{order_id}/history"`
	if !strings.Contains(string(b), from) {
		t.Fatalf("%s has no route %s", path, from)
	}
	if err := os.WriteFile(path, []byte(strings.Replace(string(b), from, to, 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	r.git("commit", "-q", "-am", "order: events are history")
	if out, ok := r.check(); ok || !strings.Contains(out, "GET /v1/orders/{}/events") {
		t.Fatalf("a removed REST route passed, or failed for another reason:\n%s", out)
	}
	r.git("commit", "-q", "--amend", "-m", "order: events are history\n\nBreaking-Change: no client reads events yet")
	if out, ok := r.check(); !ok {
		t.Fatalf("a declared removal of a route failed the check:\n%s", out)
	}
}
