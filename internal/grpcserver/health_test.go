package grpcserver

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

const (
	serving    = healthpb.HealthCheckResponse_SERVING
	notServing = healthpb.HealthCheckResponse_NOT_SERVING
)

// failing returns a check func that fails while *fail is non-nil.
func failing(fail *error) CheckFunc {
	return func(context.Context) error { return *fail }
}

func statuses(t *testing.T, hs *health.Server, names []string) map[string]healthpb.HealthCheckResponse_ServingStatus {
	t.Helper()
	got := make(map[string]healthpb.HealthCheckResponse_ServingStatus)
	for _, name := range names {
		resp, err := hs.Check(context.Background(), &healthpb.HealthCheckRequest{Service: name})
		if err != nil {
			t.Fatalf("Check(%q): %v", name, err)
		}
		got[name] = resp.GetStatus()
	}
	return got
}

func TestReadinessGates(t *testing.T) {
	var dbErr, brokerErr, consumerErr error
	checks := []Check{
		{Name: "database", Func: failing(&dbErr)},
		{Name: "broker", Func: failing(&brokerErr), Services: []string{"ordermesh.eventbus"}},
		{Name: "consumer", Func: failing(&consumerErr), Services: []string{"", "svc.B"}},
	}
	names := []string{"", "ordermesh.eventbus", "svc.A", "svc.B"}
	down := errors.New("down")
	tests := []struct {
		name                 string
		db, broker, consumer error
		want                 map[string]healthpb.HealthCheckResponse_ServingStatus
	}{
		{
			name: "all pass",
			want: map[string]healthpb.HealthCheckResponse_ServingStatus{"": serving, "ordermesh.eventbus": serving, "svc.A": serving, "svc.B": serving},
		},
		{
			name: "database gates overall and every registered service",
			db:   down,
			want: map[string]healthpb.HealthCheckResponse_ServingStatus{"": notServing, "ordermesh.eventbus": serving, "svc.A": notServing, "svc.B": notServing},
		},
		{
			name:   "broker gates only its own name",
			broker: down,
			want:   map[string]healthpb.HealthCheckResponse_ServingStatus{"": serving, "ordermesh.eventbus": notServing, "svc.A": serving, "svc.B": serving},
		},
		{
			name:     "consumer gates the names it lists",
			consumer: down,
			want:     map[string]healthpb.HealthCheckResponse_ServingStatus{"": notServing, "ordermesh.eventbus": serving, "svc.A": serving, "svc.B": notServing},
		},
		{
			name: "recovers",
			want: map[string]healthpb.HealthCheckResponse_ServingStatus{"": serving, "ordermesh.eventbus": serving, "svc.A": serving, "svc.B": serving},
		},
	}

	log, buf := testLogger(t)
	hs := health.NewServer()
	r, err := NewReadiness(log, hs, []string{"svc.A", "svc.B"}, checks, time.Second, time.Second)
	if err != nil {
		t.Fatalf("NewReadiness: %v", err)
	}
	if diff := cmp.Diff(names, r.Names()); diff != "" {
		t.Fatalf("Names() mismatch (-want +got):\n%s", diff)
	}
	before := map[string]healthpb.HealthCheckResponse_ServingStatus{"": notServing, "ordermesh.eventbus": notServing, "svc.A": notServing, "svc.B": notServing}
	if diff := cmp.Diff(before, statuses(t, hs, names)); diff != "" {
		t.Fatalf("before the first evaluation (-want +got):\n%s", diff)
	}
	// The cases run in order against one Readiness, as transitions.
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dbErr, brokerErr, consumerErr = tt.db, tt.broker, tt.consumer
			r.Evaluate(context.Background())
			if diff := cmp.Diff(tt.want, statuses(t, hs, names)); diff != "" {
				t.Errorf("statuses mismatch (-want +got):\n%s", diff)
			}
		})
	}
	if logs := buf.String(); !strings.Contains(logs, `"check":"database"`) || !strings.Contains(logs, `"error":"down"`) {
		t.Errorf("transition logs do not name the failing check and its error:\n%s", logs)
	}

	t.Run("shutdown is final", func(t *testing.T) {
		dbErr, brokerErr, consumerErr = nil, nil, nil
		r.Shutdown(context.Background())
		r.Evaluate(context.Background())
		hs.SetServingStatus("", serving)
		want := map[string]healthpb.HealthCheckResponse_ServingStatus{"": notServing, "ordermesh.eventbus": notServing, "svc.A": notServing, "svc.B": notServing}
		if diff := cmp.Diff(want, statuses(t, hs, names)); diff != "" {
			t.Errorf("statuses after shutdown (-want +got):\n%s", diff)
		}
	})
}

func TestReadinessCheckTimeout(t *testing.T) {
	log, _ := testLogger(t)
	hs := health.NewServer()
	hang := func(ctx context.Context) error {
		<-ctx.Done()
		return ctx.Err()
	}
	r, err := NewReadiness(log, hs, nil, []Check{{Name: "hang", Func: hang}}, time.Second, 20*time.Millisecond)
	if err != nil {
		t.Fatalf("NewReadiness: %v", err)
	}
	start := time.Now()
	r.Evaluate(context.Background())
	if d := time.Since(start); d > time.Second {
		t.Errorf("Evaluate took %v with a 20ms check timeout", d)
	}
	if got := statuses(t, hs, []string{""})[""]; got != notServing {
		t.Errorf("overall = %v, want NOT_SERVING", got)
	}
}

func TestNewReadinessRejectsBadConfig(t *testing.T) {
	log, _ := testLogger(t)
	ok := func(context.Context) error { return nil }
	tests := []struct {
		name              string
		checks            []Check
		interval, timeout time.Duration
	}{
		{name: "zero interval", checks: []Check{{Name: "a", Func: ok}}, interval: 0, timeout: time.Second},
		{name: "negative timeout", checks: []Check{{Name: "a", Func: ok}}, interval: time.Second, timeout: -1},
		{name: "nil func", checks: []Check{{Name: "a"}}, interval: time.Second, timeout: time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := NewReadiness(log, health.NewServer(), nil, tt.checks, tt.interval, tt.timeout); err == nil {
				t.Error("NewReadiness() = nil error, want one")
			}
		})
	}
}
