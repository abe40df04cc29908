// Package testport hands out loopback TCP ports for tests that must tell a
// child process (a service, a private broker or database) which port to
// listen on before it starts.
//
// Asking the kernel for a port (listen on ":0", close, pass the number on)
// races with every outgoing connection on the machine: the kernel gives
// those their local port from the same ephemeral range, so by the time the
// child binds, the port may belong to someone's connection and the child
// fails with "address already in use". Processes that are killed and
// restarted on the same port (the fault suite does this dozens of times)
// widen the window. Ports are therefore chosen at random from below the
// ephemeral range, where the kernel never assigns anything by itself, and
// checked free before they are handed out; a port is never handed out
// twice by one process.
package testport

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
)

// floor is the lowest port handed out: above the registered ports most
// local servers use (RabbitMQ 5672/15672/25672, PostgreSQL 5432, ...).
const floor = 20000

// defaultEphemeralLow is Linux's default ip_local_port_range start, used
// when the range cannot be read.
const defaultEphemeralLow = 32768

var (
	mu     sync.Mutex
	issued = map[int]bool{}
)

// Ports returns n distinct ports free on the loopback interface right now,
// none of them in the kernel's ephemeral range.
func Ports(n int) ([]int, error) {
	low, high := candidateRange()
	mu.Lock()
	defer mu.Unlock()
	ports := make([]int, 0, n)
	for attempts := 0; len(ports) < n; attempts++ {
		if attempts > 1000 {
			return nil, fmt.Errorf("testport: no free port in %d-%d after %d attempts", low, high, attempts)
		}
		p := low + rand.IntN(high-low+1)
		if issued[p] || !free(p) {
			continue
		}
		issued[p] = true
		ports = append(ports, p)
	}
	return ports, nil
}

// TB is the part of testing.TB that Addr uses; the package does not import
// testing, so programs that are not tests (the benchmark) can use Ports.
type TB interface {
	Helper()
	Fatalf(format string, args ...any)
}

// Addr returns "127.0.0.1:port" for a port from Ports, failing the test if
// there is none.
func Addr(t TB) string {
	t.Helper()
	ports, err := Ports(1)
	if err != nil {
		t.Fatalf("find a free port: %v", err)
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[0]))
}

// free reports whether port can be listened on, both on the loopback
// address children bind and on every interface (a server bound to the
// wildcard address blocks the loopback one).
func free(port int) bool {
	for _, host := range []string{"127.0.0.1", ""} {
		l, err := net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(port)))
		if err != nil {
			return false
		}
		_ = l.Close()
	}
	return true
}

// candidateRange is [floor, start of the ephemeral range).
func candidateRange() (low, high int) {
	eph, err := ephemeralLow("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil || eph <= floor+1000 {
		eph = defaultEphemeralLow
	}
	return floor, eph - 1
}

// ephemeralLow reads the first number of an ip_local_port_range file.
func ephemeralLow(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	fields := strings.Fields(string(b))
	if len(fields) != 2 {
		return 0, errors.New("testport: unexpected ip_local_port_range " + strconv.Quote(string(b)))
	}
	return strconv.Atoi(fields[0])
}
