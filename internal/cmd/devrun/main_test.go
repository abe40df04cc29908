package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ordermesh/ordermesh/internal/platformtest"
)

// closedAddr returns a loopback address nothing listens on.
func closedAddr(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	if err := lis.Close(); err != nil {
		t.Fatal(err)
	}
	return addr
}

func TestRunSaysHowToStartWhatIsUnreachable(t *testing.T) {
	tests := []struct {
		name   string
		env    map[string]string
		want   []string
		before string // a line that must have been printed first, if any
	}{
		{
			name: "RabbitMQ",
			env:  map[string]string{"ORDERMESH_AMQP_URL": "amqp://guest:s3cret@" + closedAddr(t) + "/"},
			want: []string{"RabbitMQ is not reachable at amqp://guest:xxxxx@", "systemctl start rabbitmq-server", "ORDERMESH_AMQP_URL"},
		},
		{
			name: "PostgreSQL",
			env: map[string]string{
				"ORDERMESH_AMQP_URL":     platformtest.AMQPURL(),
				"ORDERMESH_DATABASE_URL": "postgres://postgres:s3cret@" + closedAddr(t) + "/ordermesh?sslmode=disable",
			},
			want:   []string{"PostgreSQL is not usable at postgres://postgres:xxxxx@", "systemctl start postgresql", "ORDERMESH_DATABASE_URL"},
			before: "RabbitMQ is up",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			var out bytes.Buffer
			err := run(ctx, nil, func(k string) string { return tt.env[k] }, &out)
			if err == nil {
				t.Fatal("run succeeded with a service unreachable")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error does not say %q:\n%v", w, err)
				}
			}
			if strings.Contains(err.Error()+out.String(), "s3cret") {
				t.Errorf("the password leaked:\n%v\n%s", err, out.String())
			}
			if tt.before != "" && !strings.Contains(out.String(), tt.before) {
				t.Errorf("output lacks %q:\n%s", tt.before, out.String())
			}
			if strings.Contains(out.String(), "building") {
				t.Errorf("run went on to build:\n%s", out.String())
			}
		})
	}
}

// startChild runs script in sh as the devrun child name, and returns once
// the script has printed the line "ready" (after setting its traps). The
// shell leads a process group of its own, which is killed with whatever
// the script started when the test ends: stopAll signals only the shell,
// and a shell that exits leaves its background jobs running.
func startChild(t *testing.T, name, script string) *child {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	cmd := exec.Command("sh", "-c", script)
	cmd.Stdout = w
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	err = cmd.Start()
	w.Close()
	if err != nil {
		t.Fatal(err)
	}
	c := &child{name: name, cmd: cmd, done: make(chan struct{})}
	go func() {
		c.err = cmd.Wait()
		close(c.done)
	}()
	t.Cleanup(func() {
		// The group outlives its leader while a member runs, so its id
		// is not reused before this.
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-c.done
	})
	// A script that ends or fails first closes the pipe: EOF, not a hang.
	line, err := bufio.NewReader(r).ReadString('\n')
	if line != "ready\n" {
		t.Fatalf("%s: script printed %q (%v), want the line \"ready\" once it is set up", name, line, err)
	}
	return c
}

// TestStopAll: the gateway stops before the services get SIGTERM; a
// process that does not stop within the grace is killed, and stopAll
// says so.
func TestStopAll(t *testing.T) {
	log := filepath.Join(t.TempDir(), "stopped")
	// Each writes its name to log once SIGTERM made it stop.
	stopsOnTerm := func(name string, after time.Duration) string {
		return fmt.Sprintf(`trap 'sleep %g; echo %s >> %s; exit 0' TERM; sleep 30 & echo ready; wait`, after.Seconds(), name, log)
	}
	gateway := startChild(t, "gateway", stopsOnTerm("gateway", 200*time.Millisecond))
	order := startChild(t, "order", stopsOnTerm("order", 0))
	var out bytes.Buffer
	if err := stopAll([]*child{order, gateway}, 5*time.Second, nil, &out); err != nil {
		t.Fatalf("stopAll: %v (%s)", err, out.String())
	}
	got, err := os.ReadFile(log)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != "gateway\norder\n" {
		t.Errorf("stopped in the order %q, want the gateway first", got)
	}

	// One ignores SIGTERM; the one after it, which stops at once, must
	// not be taken for killed once the grace has run out.
	stubborn := startChild(t, "payment", `trap '' TERM; sleep 30 & echo ready; wait`)
	prompt := startChild(t, "notification", `trap 'exit 0' TERM; sleep 30 & echo ready; wait`)
	err = stopAll([]*child{stubborn, prompt}, 300*time.Millisecond, nil, &out)
	if err == nil || err.Error() != "shutdown: payment (killed)" {
		t.Errorf("stopAll of a process that ignores SIGTERM and one that stops: %v, want only the first reported killed", err)
	}
	// Killed, not waited out: it ignores SIGTERM and would otherwise
	// have run until its sleep ended.
	if ws, ok := stubborn.cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Errorf("the process that ignores SIGTERM ended with %v, want killed by SIGKILL", stubborn.cmd.ProcessState)
	}
	if !strings.Contains(out.String(), "payment did not stop within 300ms; killing it") {
		t.Errorf("output %q does not say what it killed", out.String())
	}
}

// Once hurry is closed (a second Ctrl-C), what is still stopping is
// killed rather than waited for until the grace runs out.
func TestStopAllInAHurry(t *testing.T) {
	stubborn := startChild(t, "payment", `trap '' TERM; sleep 60 & echo ready; wait`)
	hurry := make(chan struct{})
	time.AfterFunc(300*time.Millisecond, func() { close(hurry) })
	var out bytes.Buffer
	done := make(chan error, 1)
	go func() { done <- stopAll([]*child{stubborn}, time.Minute, hurry, &out) }()
	select {
	case err := <-done:
		if err == nil || err.Error() != "shutdown: payment (killed)" {
			t.Errorf("stopAll = %v, want payment reported killed", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("stopAll still waits for the grace after hurry was closed")
	}
	if !strings.Contains(out.String(), "payment is still stopping; killing it, as asked") {
		t.Errorf("output %q does not say why it killed", out.String())
	}
}

func TestStopGraceFollowsTheShutdownTimeout(t *testing.T) {
	for _, tt := range []struct {
		env, drain string
		want       time.Duration
	}{
		{"", "", 50 * time.Second},
		{"4s", "", 17 * time.Second},
		{"nonsense", "", 50 * time.Second},
		{"4s", "10s", 27 * time.Second},
		{"", "-1s", 50 * time.Second},
	} {
		cfg := loadConfig(func(k string) string {
			switch k {
			case "ORDERMESH_SHUTDOWN_TIMEOUT":
				return tt.env
			case "ORDERMESH_DRAIN_DELAY":
				return tt.drain
			}
			return ""
		})
		if cfg.stopGrace != tt.want {
			t.Errorf("ORDERMESH_SHUTDOWN_TIMEOUT=%q ORDERMESH_DRAIN_DELAY=%q: grace %s, want %s", tt.env, tt.drain, cfg.stopGrace, tt.want)
		}
	}
}

func TestSharedSettingsAreRefused(t *testing.T) {
	for _, tt := range []struct {
		env     map[string]string
		refused bool
	}{
		{nil, false},
		{map[string]string{"ORDERMESH_ADMIN_ADDR": "off"}, false},
		{map[string]string{"ORDERMESH_ADMIN_ADDR": "127.0.0.1:9100"}, true},
		{map[string]string{"ORDERMESH_DATABASE_SCHEMA": "shop"}, true},
		{map[string]string{"ORDERMESH_LOG_LEVEL": "debug"}, false},
	} {
		err := checkShared(func(k string) string { return tt.env[k] })
		if (err != nil) != tt.refused {
			t.Errorf("%v: %v, want refused %v", tt.env, err, tt.refused)
		}
	}
}

// failingWriter fails every write, as a closed terminal does.
type failingWriter struct{ writes int }

func (f *failingWriter) Write([]byte) (int, error) {
	f.writes++
	return 0, errors.New("input/output error")
}

// TestOutputToAClosedTerminalIsDropped: a line devrun's output fails to
// take is dropped, not failed, so the processes' pipes go on being read
// (a failed copy would leave them to SIGPIPE), and each later line is
// tried again.
func TestOutputToAClosedTerminalIsDropped(t *testing.T) {
	f := &failingWriter{}
	w := prefixed(&lockedWriter{w: f}, "order")
	for range 3 {
		if n, err := w.Write([]byte("a line\n")); err != nil || n != len("a line\n") {
			t.Errorf("Write = %d, %v; want the line taken", n, err)
		}
	}
	if f.writes != 3 {
		t.Errorf("%d writes reached the output, want each of the 3 tried", f.writes)
	}
}
