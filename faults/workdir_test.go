package faults

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
)

// TestRemoveAbandoned: a working directory whose owner is gone is removed;
// one whose owner runs, and a fresh one without an owner yet, are kept.
func TestRemoveAbandoned(t *testing.T) {
	tmp := t.TempDir()
	// A pid that no process has any more: a child that has been reaped.
	gone := exec.Command("true")
	if err := gone.Run(); err != nil {
		t.Fatal(err)
	}
	dirs := map[string]string{
		"dead":  strconv.Itoa(gone.Process.Pid),
		"alive": strconv.Itoa(os.Getpid()),
		"fresh": "",
	}
	for name, owner := range dirs {
		dir := filepath.Join(tmp, workDirPattern+name)
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if owner != "" {
			if err := os.WriteFile(filepath.Join(dir, ownerFile), []byte(owner), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	removeAbandoned(tmp)
	for name := range dirs {
		_, err := os.Stat(filepath.Join(tmp, workDirPattern+name))
		if kept := err == nil; kept != (name != "dead") {
			t.Errorf("%s: kept = %v", name, kept)
		}
	}
}
