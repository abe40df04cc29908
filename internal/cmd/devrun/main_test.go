package main

import (
	"bytes"
	"context"
	"net"
	"strings"
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
			err := run(ctx, func(k string) string { return tt.env[k] }, &out)
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
