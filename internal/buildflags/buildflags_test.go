package buildflags

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// The files that build binaries without going through this package must
// pass the same tags.
func TestBuildFilesUseTags(t *testing.T) {
	for _, name := range []string{"Makefile", "Dockerfile"} {
		b, err := os.ReadFile(filepath.Join("..", "..", name))
		if err != nil {
			t.Fatal(err)
		}
		var builds, tagged int
		for line := range strings.SplitSeq(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "TAGS"); ok {
				if v = strings.TrimSpace(strings.TrimLeft(strings.TrimSpace(v), ":?=")); v != "-tags "+Tags {
					t.Errorf("%s: TAGS is %q, want %q", name, v, "-tags "+Tags)
				}
			}
			if !strings.Contains(line, "go build") && !strings.Contains(line, "$(GO) build") {
				continue
			}
			builds++
			if strings.Contains(line, "-tags "+Tags) || strings.Contains(line, "-tags="+Tags) || strings.Contains(line, "$(TAGS)") {
				tagged++
			}
		}
		if builds == 0 || tagged != builds {
			t.Errorf("%s: %d of %d go build lines pass -tags %s", name, tagged, builds, Tags)
		}
	}
}

// The tag must keep golang.org/x/net/trace out of the services and the
// gateway; if grpc-go dropped the tag, the package would come back.
func TestTagsDropNetTrace(t *testing.T) {
	if testing.Short() {
		t.Skip("runs go list")
	}
	args := append([]string{"list", "-deps"}, Args()...)
	args = append(args, "../../services/...", "../../gateway")
	out, err := exec.Command("go", args...).Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	deps := strings.Fields(string(out))
	if len(deps) < 100 {
		t.Fatalf("go list listed %d packages; want the binaries' dependencies", len(deps))
	}
	for _, p := range deps {
		if p == "golang.org/x/net/trace" {
			t.Errorf("with -tags %s the binaries still import %s", Tags, p)
		}
	}
}
