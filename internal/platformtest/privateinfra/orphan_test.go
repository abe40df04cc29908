package privateinfra_test

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ordermesh/ordermesh/internal/platformtest/privateinfra"
)

// childEnv makes the test binary start both servers under the directory it
// names, print their ports and wait to be killed (see TestMain).
const childEnv = "ORDERMESH_PRIVATEINFRA_TEST_CHILD"

func TestMain(m *testing.M) {
	if dir := os.Getenv(childEnv); dir != "" {
		os.Exit(startAndWait(dir))
	}
	os.Exit(m.Run())
}

func startAndWait(dir string) int {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	r, err := privateinfra.StartRabbitMQ(ctx, filepath.Join(dir, "rabbitmq"))
	if err != nil {
		fmt.Println("error:", err)
		return 1
	}
	p, err := privateinfra.StartPostgreSQL(ctx, filepath.Join(dir, "pg"))
	if err != nil {
		r.Close()
		fmt.Println("error:", err)
		return 1
	}
	fmt.Println("ports:", r.Port, r.EPMDPort, p.Port)
	time.Sleep(3 * time.Minute)
	p.Close()
	r.Close()
	return 0
}

// TestServersDieWithTheTest: a test process that is killed outright, with
// no chance to stop its servers, takes the RabbitMQ node, its epmd and
// the PostgreSQL cluster with it instead of leaving them running.
func TestServersDieWithTheTest(t *testing.T) {
	t.Parallel()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+publicDir(t))
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start child: %v", err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	lines := bufio.NewScanner(out)
	if !lines.Scan() {
		t.Fatalf("child said nothing: %v", lines.Err())
	}
	var ports [3]int
	if _, err := fmt.Sscanf(lines.Text(), "ports: %d %d %d", &ports[0], &ports[1], &ports[2]); err != nil {
		t.Fatalf("child said %q: %v", lines.Text(), err)
	}
	names := []string{"RabbitMQ", "epmd", "PostgreSQL"}
	for i, port := range ports {
		if !listening(port) {
			t.Fatalf("%s is not listening on port %d while the child runs", names[i], port)
		}
	}

	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	// Their exit takes a moment after the signal; this deadline only
	// guards against waiting for ever.
	deadline := time.Now().Add(time.Minute)
	for i, port := range ports {
		for listening(port) {
			if time.Now().After(deadline) {
				t.Fatalf("%s still listens on port %d after the test process was killed", names[i], port)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
}

func listening(port int) bool {
	c, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), time.Second)
	if err != nil {
		return !strings.Contains(err.Error(), "refused")
	}
	_ = c.Close()
	return true
}
