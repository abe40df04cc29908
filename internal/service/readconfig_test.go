package service_test

import (
	"strings"
	"testing"
	"time"

	"github.com/ordermesh/ordermesh/internal/config"
	"github.com/ordermesh/ordermesh/internal/service"
)

// TestReadConfigHandlerTimeout: a handler's bound is its own variable, so
// shortening shutdowns does not cut slow handlers short while the service
// runs; it must be positive.
func TestReadConfigHandlerTimeout(t *testing.T) {
	spec := service.Spec{Name: "worker", GRPCAddr: ":50052", AdminAddr: "127.0.0.1:9092"}
	for _, tt := range []struct {
		env                   map[string]string
		wantHandler, wantShut time.Duration
		err                   string
	}{
		{env: nil, wantHandler: 15 * time.Second, wantShut: 15 * time.Second},
		{env: map[string]string{"ORDERMESH_SHUTDOWN_TIMEOUT": "5s"}, err: "ORDERMESH_HANDLER_TIMEOUT: 15s is longer than ORDERMESH_SHUTDOWN_TIMEOUT (5s)"},
		{env: map[string]string{"ORDERMESH_SHUTDOWN_TIMEOUT": "5s", "ORDERMESH_HANDLER_TIMEOUT": "5s"}, wantHandler: 5 * time.Second, wantShut: 5 * time.Second},
		{env: map[string]string{"ORDERMESH_HANDLER_TIMEOUT": "40s", "ORDERMESH_SHUTDOWN_TIMEOUT": "45s"}, wantHandler: 40 * time.Second, wantShut: 45 * time.Second},
		{env: map[string]string{"ORDERMESH_HANDLER_TIMEOUT": "0s"}, err: "ORDERMESH_HANDLER_TIMEOUT: must be positive"},
	} {
		env := config.NewEnv(func(k string) string { return tt.env[k] })
		cfg := service.ReadConfig(env, spec)
		if tt.err != "" {
			if err := env.Err(); err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("%v: Err() = %v, want it to say %q", tt.env, err, tt.err)
			}
			continue
		}
		if err := env.Err(); err != nil {
			t.Fatalf("%v: %v", tt.env, err)
		}
		if cfg.HandlerTimeout != tt.wantHandler || cfg.ShutdownTimeout != tt.wantShut {
			t.Errorf("%v: handler, shutdown timeout = %v, %v; want %v, %v", tt.env, cfg.HandlerTimeout, cfg.ShutdownTimeout, tt.wantHandler, tt.wantShut)
		}
	}
}

// TestReadConfigDrainDelay: none by default; zero or more.
func TestReadConfigDrainDelay(t *testing.T) {
	spec := service.Spec{Name: "worker", GRPCAddr: ":50052", AdminAddr: "127.0.0.1:9092"}
	for _, tt := range []struct {
		v    string
		want time.Duration
		err  string
	}{
		{"", 0, ""},
		{"5s", 5 * time.Second, ""},
		{"-1s", 0, "ORDERMESH_DRAIN_DELAY: must be zero or more"},
	} {
		env := config.NewEnv(func(k string) string { return map[string]string{"ORDERMESH_DRAIN_DELAY": tt.v}[k] })
		cfg := service.ReadConfig(env, spec)
		err := env.Err()
		if cfg.DrainDelay != tt.want || (tt.err == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tt.err)) {
			t.Errorf("ORDERMESH_DRAIN_DELAY=%q: %v, %v; want %v, %q", tt.v, cfg.DrainDelay, err, tt.want, tt.err)
		}
	}
}

// TestReadConfigRejectsWhatTheBusOrDatabaseWould: values the broker or
// PostgreSQL would refuse only after the service had started are
// refused at start, naming the variable.
func TestReadConfigRejectsWhatTheBusOrDatabaseWould(t *testing.T) {
	spec := service.Spec{Name: "worker", GRPCAddr: ":50052", AdminAddr: "127.0.0.1:9092"}
	for _, tt := range []struct{ name, value, err string }{
		{"ORDERMESH_PREFETCH", "70000", "ORDERMESH_PREFETCH: must be at most 65535"},
		{"ORDERMESH_RETRY_DELAYS", "1s,500us", `ORDERMESH_RETRY_DELAYS: "500us" is not a duration of 1ms or more`},
		{"ORDERMESH_DATABASE_SCHEMA", "   ", "ORDERMESH_DATABASE_SCHEMA:"},
		{"ORDERMESH_DATABASE_SCHEMA", "inventory ", `ORDERMESH_DATABASE_SCHEMA: "inventory " is not a schema name`},
		{"ORDERMESH_RETRY_DELAYS", "60s,1s", "ORDERMESH_RETRY_DELAYS: 1s comes after 1m0s"},
		{"ORDERMESH_DATABASE_SCHEMA", strings.Repeat("s", 64), "ORDERMESH_DATABASE_SCHEMA:"},
		{"ORDERMESH_DATABASE_SCHEMA", "pg_orders", "ORDERMESH_DATABASE_SCHEMA:"},
		{"ORDERMESH_TOPOLOGY_PREFIX", " test. ", "ORDERMESH_TOPOLOGY_PREFIX:"},
		{"ORDERMESH_TOPOLOGY_PREFIX", "a\tb", "ORDERMESH_TOPOLOGY_PREFIX:"},
	} {
		env := config.NewEnv(func(k string) string { return map[string]string{tt.name: tt.value}[k] })
		service.ReadConfig(env, spec)
		if err := env.Err(); err == nil || !strings.Contains(err.Error(), tt.err) {
			t.Errorf("%s=%q: Err() = %v, want it to say %q", tt.name, tt.value, err, tt.err)
		}
	}
	// And what they accept.
	env := config.NewEnv(func(k string) string {
		return map[string]string{"ORDERMESH_PREFETCH": "65535", "ORDERMESH_RETRY_DELAYS": "1ms,2s", "ORDERMESH_DATABASE_SCHEMA": "Order Two",
			"ORDERMESH_TOPOLOGY_PREFIX": "tenant-a.", "ORDERMESH_ADMIN_ADDR": " OFF"}[k]
	})
	cfg := service.ReadConfig(env, spec)
	if err := env.Err(); err != nil {
		t.Errorf("valid values: %v", err)
	}
	if cfg.Admin.Addr != "" {
		t.Errorf("ORDERMESH_ADMIN_ADDR=\" OFF\": admin address %q, want none", cfg.Admin.Addr)
	}
}

// TestProfilingOnlyOnLoopbackByDefault: the admin endpoint serves
// /debug/pprof/ by default only on a loopback address; ORDERMESH_PPROF
// says otherwise either way.
func TestProfilingOnlyOnLoopbackByDefault(t *testing.T) {
	spec := service.Spec{Name: "inventory", GRPCAddr: "127.0.0.1:50052", AdminAddr: "127.0.0.1:9092"}
	for _, tt := range []struct {
		addr, pprof string
		want        bool
	}{
		{"", "", true}, // the spec's loopback default
		{"0.0.0.0:9092", "", false},
		{":9092", "", false},
		{"[::1]:9092", "", true},
		{"localhost:9092", "", true},
		{"10.0.0.5:9092", "", false},
		{"0.0.0.0:9092", "true", true},
		{"127.0.0.1:9092", "false", false},
	} {
		env := config.NewEnv(func(k string) string {
			return map[string]string{"ORDERMESH_ADMIN_ADDR": tt.addr, "ORDERMESH_PPROF": tt.pprof}[k]
		})
		cfg := service.ReadConfig(env, spec)
		if err := env.Err(); err != nil {
			t.Fatalf("ORDERMESH_ADMIN_ADDR=%q ORDERMESH_PPROF=%q: %v", tt.addr, tt.pprof, err)
		}
		if cfg.Admin.Profiling != tt.want {
			t.Errorf("ORDERMESH_ADMIN_ADDR=%q ORDERMESH_PPROF=%q: profiling %v, want %v", tt.addr, tt.pprof, cfg.Admin.Profiling, tt.want)
		}
	}
}
