package testport

import (
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"
)

func TestPortsAreDistinctFreeAndBelowTheEphemeralRange(t *testing.T) {
	low, high := candidateRange()
	ports, err := Ports(50)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[int]bool{}
	for _, p := range ports {
		if p < low || p > high {
			t.Errorf("port %d outside %d-%d", p, low, high)
		}
		if seen[p] {
			t.Errorf("port %d handed out twice", p)
		}
		seen[p] = true
	}
	// Each can be listened on by the caller.
	for _, p := range ports[:5] {
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
		if err != nil {
			t.Errorf("listen on handed-out port %d: %v", p, err)
			continue
		}
		l.Close()
	}
}

func TestPortInUseIsNotFree(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if free(l.Addr().(*net.TCPAddr).Port) {
		t.Errorf("port %s is listened on but free reports it free", l.Addr())
	}
}

func TestEphemeralLow(t *testing.T) {
	dir := t.TempDir()
	for _, tt := range []struct {
		content string
		want    int
		wantErr bool
	}{
		{content: "32768\t60999\n", want: 32768},
		{content: "40000 50000", want: 40000},
		{content: "garbage", wantErr: true},
	} {
		path := filepath.Join(dir, "range")
		if err := os.WriteFile(path, []byte(tt.content), 0o600); err != nil {
			t.Fatal(err)
		}
		got, err := ephemeralLow(path)
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("ephemeralLow(%q) = %d, %v; want %d, error %v", tt.content, got, err, tt.want, tt.wantErr)
		}
	}
}
