package shutdown_test

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"

	"github.com/ordermesh/ordermesh/internal/shutdown"
)

// childEnv makes the test binary act as a process that drains slowly after
// its first signal (see TestMain).
const childEnv = "ORDERMESH_SHUTDOWN_TEST_CHILD"

func TestMain(m *testing.M) {
	switch os.Getenv(childEnv) {
	case "":
	case "pipe":
		os.Exit(pipeChild())
	default:
		os.Exit(child())
	}
	os.Exit(m.Run())
}

// pipeChild, after its first signal, writes to its output (which the test
// no longer reads) for half a second, then exits 0.
func pipeChild() int {
	ctx, stop := shutdown.OnSignal()
	defer stop()
	fmt.Println("ready")
	<-ctx.Done()
	for end := time.Now().Add(500 * time.Millisecond); time.Now().Before(end); {
		fmt.Println("draining")
		time.Sleep(10 * time.Millisecond)
	}
	return 0
}

// TestDrainOutlivesItsOutputsReader: a process whose output pipe lost
// its reader (a supervisor stopped with it) drains on after the signal and
// exits 0, instead of being ended by SIGPIPE at its first log line.
func TestDrainOutlivesItsOutputsReader(t *testing.T) {
	cmd, out := startChild(t, "pipe")
	lines := bufio.NewScanner(out)
	if !lines.Scan() || lines.Text() != "ready" {
		t.Fatalf("child said %q (%v), want ready", lines.Text(), lines.Err())
	}
	_ = out.Close()
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("child ended with %v, want exit status 0 after its drain", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("child still running 10 s after SIGTERM")
	}
}

// child reports each step on stdout and, after the first signal, "drains"
// for far longer than the test waits, then exits 0.
func child() int {
	ctx, stop := shutdown.OnSignal()
	defer stop()
	fmt.Println("ready")
	<-ctx.Done()
	fmt.Println("draining")
	time.Sleep(30 * time.Second)
	fmt.Println("drained")
	return 0
}

// TestSecondSignalEndsTheProcess: the first SIGTERM only ends the
// context (the process goes on draining); the second kills the process
// by the signal's default action, instead of being swallowed while the
// drain goes on.
func TestSecondSignalEndsTheProcess(t *testing.T) {
	cmd, out := startChild(t, "1")
	lines := bufio.NewScanner(out)
	expect := func(want string) {
		t.Helper()
		if !lines.Scan() {
			t.Fatalf("child ended its output before %q: %v", want, lines.Err())
		}
		if got := lines.Text(); got != want {
			t.Fatalf("child said %q, want %q", got, want)
		}
	}

	expect("ready")
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	expect("draining")
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	for lines.Scan() {
		t.Errorf("child went on after the second signal: %q", lines.Text())
	}
	err := cmd.Wait()
	var exit *exec.ExitError
	if !errors.As(err, &exit) {
		t.Fatalf("child exited with %v, want killed by SIGTERM", err)
	}
	if ws, ok := exit.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGTERM {
		t.Fatalf("child ended with %v, want killed by SIGTERM", exit)
	}
}

// startChild starts the test binary as a child of the given kind (see
// TestMain) and returns it with its standard output; the child is killed
// when the test ends.
func startChild(t *testing.T, kind string) (*exec.Cmd, io.ReadCloser) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+kind)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start child: %v", err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	return cmd, out
}
