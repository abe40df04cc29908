package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"log/slog"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func mapEnv(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

func TestEnvTypedValues(t *testing.T) {
	tests := []struct {
		name string
		env  map[string]string
		read func(e *Env) any
		want any
	}{
		{name: "string default", read: func(e *Env) any { return e.String("S", "def") }, want: "def"},
		{name: "string set, kept as is", env: map[string]string{"S": " v "}, read: func(e *Env) any { return e.String("S", "def") }, want: " v "},
		{name: "int default", read: func(e *Env) any { return e.Int("I", 7) }, want: 7},
		{name: "int set", env: map[string]string{"I": " -42 "}, read: func(e *Env) any { return e.Int("I", 7) }, want: -42},
		{name: "duration default", read: func(e *Env) any { return e.Duration("D", time.Second) }, want: time.Second},
		{name: "duration set", env: map[string]string{"D": "1m30s"}, read: func(e *Env) any { return e.Duration("D", time.Second) }, want: 90 * time.Second},
		{name: "positive duration set", env: map[string]string{"D": "2s"}, read: func(e *Env) any { return e.PositiveDuration("D", time.Second) }, want: 2 * time.Second},
		{name: "bool default", read: func(e *Env) any { return e.Bool("B", true) }, want: true},
		{name: "bool set", env: map[string]string{"B": "FALSE"}, read: func(e *Env) any { return e.Bool("B", true) }, want: false},
		{name: "bytes default", read: func(e *Env) any { return e.Bytes("M", 18<<20) }, want: Bytes(18 << 20)},
		{name: "bytes in MiB", env: map[string]string{"M": " 24MiB "}, read: func(e *Env) any { return e.Bytes("M", 1) }, want: Bytes(24 << 20)},
		{name: "bytes in KiB", env: map[string]string{"M": "1536KiB"}, read: func(e *Env) any { return e.Bytes("M", 1) }, want: Bytes(1536 << 10)},
		{name: "bytes in GiB", env: map[string]string{"M": "2GiB"}, read: func(e *Env) any { return e.Bytes("M", 1) }, want: Bytes(2 << 30)},
		{name: "bytes in TiB", env: map[string]string{"M": "1TiB"}, read: func(e *Env) any { return e.Bytes("M", 1) }, want: Bytes(1 << 40)},
		{name: "bytes with unit B", env: map[string]string{"M": "100B"}, read: func(e *Env) any { return e.Bytes("M", 1) }, want: Bytes(100)},
		{name: "bytes without unit", env: map[string]string{"M": "1048576"}, read: func(e *Env) any { return e.Bytes("M", 1) }, want: Bytes(1 << 20)},
		{name: "bytes zero", env: map[string]string{"M": "0"}, read: func(e *Env) any { return e.Bytes("M", 1) }, want: Bytes(0)},
		{name: "addr default", read: func(e *Env) any { return e.Addr("A", ":50051") }, want: ":50051"},
		{name: "addr set", env: map[string]string{"A": "127.0.0.1:0"}, read: func(e *Env) any { return e.Addr("A", ":50051") }, want: "127.0.0.1:0"},
		{name: "addr ipv6", env: map[string]string{"A": "[::1]:8080"}, read: func(e *Env) any { return e.Addr("A", ":50051") }, want: "[::1]:8080"},
		{
			name: "url default",
			read: func(e *Env) any { return e.URL("U", "amqp://guest:guest@127.0.0.1:5672/", "amqp", "amqps") },
			want: "amqp://guest:guest@127.0.0.1:5672/",
		},
		{
			name: "url set, no scheme restriction",
			env:  map[string]string{"U": "postgres:///ordermesh?host=/run/postgresql"},
			read: func(e *Env) any { return e.URL("U", "postgres://x") },
			want: "postgres:///ordermesh?host=/run/postgresql",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := NewEnv(mapEnv(tt.env))
			got := tt.read(e)
			if err := e.Err(); err != nil {
				t.Fatalf("Err() = %v", err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("value mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestEnvErrors(t *testing.T) {
	tests := []struct {
		name string
		env  map[string]string
		read func(e *Env) any
		want any // the default, returned on error
		err  string
	}{
		{
			name: "int",
			env:  map[string]string{"ORDERMESH_PREFETCH": "ten"},
			read: func(e *Env) any { return e.Int("ORDERMESH_PREFETCH", 16) },
			want: 16,
			err:  `ORDERMESH_PREFETCH: invalid integer "ten": invalid syntax`,
		},
		{
			name: "int out of range",
			env:  map[string]string{"N": "99999999999999999999"},
			read: func(e *Env) any { return e.Int("N", 1) },
			want: 1,
			err:  `N: invalid integer "99999999999999999999": value out of range`,
		},
		{
			name: "duration without unit",
			env:  map[string]string{"ORDERMESH_SHUTDOWN_TIMEOUT": "10"},
			read: func(e *Env) any { return e.Duration("ORDERMESH_SHUTDOWN_TIMEOUT", 10*time.Second) },
			want: 10 * time.Second,
			err:  `ORDERMESH_SHUTDOWN_TIMEOUT: invalid duration "10": want a number with a unit such as 300ms, 1.5s or 2m`,
		},
		{
			name: "positive duration zero",
			env:  map[string]string{"T": "0s"},
			read: func(e *Env) any { return e.PositiveDuration("T", 10*time.Second) },
			want: 10 * time.Second,
			err:  `T: must be positive`,
		},
		{
			name: "positive duration negative",
			env:  map[string]string{"T": "-1s"},
			read: func(e *Env) any { return e.PositiveDuration("T", 10*time.Second) },
			want: 10 * time.Second,
			err:  `T: must be positive`,
		},
		{
			name: "bool",
			env:  map[string]string{"B": "yes"},
			read: func(e *Env) any { return e.Bool("B", false) },
			want: false,
			err:  `B: invalid boolean "yes": want true or false`,
		},
		{
			name: "bytes with a decimal point",
			env:  map[string]string{"ORDERMESH_MEMORY_LIMIT": "1.5MiB"},
			read: func(e *Env) any { return e.Bytes("ORDERMESH_MEMORY_LIMIT", 18<<20) },
			want: Bytes(18 << 20),
			err:  `ORDERMESH_MEMORY_LIMIT: invalid size "1.5MiB": want a whole number with an optional unit B, KiB, MiB, GiB or TiB, such as 64MiB`,
		},
		{
			name: "bytes with an SI unit",
			env:  map[string]string{"ORDERMESH_MEMORY_LIMIT": "64MB"},
			read: func(e *Env) any { return e.Bytes("ORDERMESH_MEMORY_LIMIT", 18<<20) },
			want: Bytes(18 << 20),
			err:  `ORDERMESH_MEMORY_LIMIT: invalid size "64MB": want a whole number with an optional unit B, KiB, MiB, GiB or TiB, such as 64MiB`,
		},
		{
			name: "bytes with a space before the unit",
			env:  map[string]string{"ORDERMESH_MEMORY_LIMIT": "64 MiB"},
			read: func(e *Env) any { return e.Bytes("ORDERMESH_MEMORY_LIMIT", 18<<20) },
			want: Bytes(18 << 20),
			err:  `ORDERMESH_MEMORY_LIMIT: invalid size "64 MiB": want a whole number with an optional unit B, KiB, MiB, GiB or TiB, such as 64MiB`,
		},
		{
			name: "bytes negative",
			env:  map[string]string{"ORDERMESH_MEMORY_LIMIT": "-1MiB"},
			read: func(e *Env) any { return e.Bytes("ORDERMESH_MEMORY_LIMIT", 18<<20) },
			want: Bytes(18 << 20),
			err:  `ORDERMESH_MEMORY_LIMIT: invalid size "-1MiB": want a whole number with an optional unit B, KiB, MiB, GiB or TiB, such as 64MiB`,
		},
		{
			name: "bytes with a plus sign",
			env:  map[string]string{"ORDERMESH_MEMORY_LIMIT": "+64MiB"},
			read: func(e *Env) any { return e.Bytes("ORDERMESH_MEMORY_LIMIT", 18<<20) },
			want: Bytes(18 << 20),
			err:  `ORDERMESH_MEMORY_LIMIT: invalid size "+64MiB": want a whole number with an optional unit B, KiB, MiB, GiB or TiB, such as 64MiB`,
		},
		{
			name: "bytes unit only",
			env:  map[string]string{"ORDERMESH_MEMORY_LIMIT": "MiB"},
			read: func(e *Env) any { return e.Bytes("ORDERMESH_MEMORY_LIMIT", 18<<20) },
			want: Bytes(18 << 20),
			err:  `ORDERMESH_MEMORY_LIMIT: invalid size "MiB": want a whole number with an optional unit B, KiB, MiB, GiB or TiB, such as 64MiB`,
		},
		{
			name: "bytes overflow",
			env:  map[string]string{"ORDERMESH_MEMORY_LIMIT": "9000000TiB"},
			read: func(e *Env) any { return e.Bytes("ORDERMESH_MEMORY_LIMIT", 18<<20) },
			want: Bytes(18 << 20),
			err:  `ORDERMESH_MEMORY_LIMIT: invalid size "9000000TiB": want a whole number with an optional unit B, KiB, MiB, GiB or TiB, such as 64MiB`,
		},
		{
			name: "addr without port",
			env:  map[string]string{"ORDERMESH_GRPC_ADDR": "x"},
			read: func(e *Env) any { return e.Addr("ORDERMESH_GRPC_ADDR", ":50051") },
			want: ":50051",
			err:  `ORDERMESH_GRPC_ADDR: invalid address "x": address x: missing port in address`,
		},
		{
			name: "addr with a named port",
			env:  map[string]string{"A": "localhost:http"},
			read: func(e *Env) any { return e.Addr("A", ":1") },
			want: ":1",
			err:  `A: invalid address "localhost:http": port "http" is not a number from 0 to 65535`,
		},
		{
			name: "invalid default addr",
			read: func(e *Env) any { return e.Addr("A", "nope") },
			want: "nope",
			err:  `A: invalid address "nope": address nope: missing port in address`,
		},
		{
			name: "url with wrong scheme masks the password",
			env:  map[string]string{"ORDERMESH_AMQP_URL": "http://guest:s3cret@127.0.0.1:5672/"},
			read: func(e *Env) any { return e.URL("ORDERMESH_AMQP_URL", "amqp://127.0.0.1/", "amqp", "amqps") },
			want: "amqp://127.0.0.1/",
			err:  `ORDERMESH_AMQP_URL: invalid URL "http://guest:xxxxx@127.0.0.1:5672/": scheme "http" is not one of amqp, amqps`,
		},
		{
			name: "unparsable url with a password does not echo any of it",
			env:  map[string]string{"U": "postgres://u:s3cret@host:port/db"},
			read: func(e *Env) any { return e.URL("U", "postgres://x/") },
			want: "postgres://x/",
			err:  `U: invalid URL: it does not parse (not shown: it may hold a password; percent-encode any of @ : / ? # % in the user name and password)`,
		},
		{
			name: "unparsable url without a password says why",
			env:  map[string]string{"U": "postgres://host:port/db"},
			read: func(e *Env) any { return e.URL("U", "postgres://x/") },
			want: "postgres://x/",
			err:  `U: invalid URL: invalid port ":port" after host`,
		},
		{
			name: "a password cut short by an unencoded / is refused, not echoed",
			env:  map[string]string{"U": "postgres://u:12/s3cret@host/db"},
			read: func(e *Env) any { return e.URL("U", "postgres://x/") },
			want: "postgres://x/",
			err:  `U: invalid URL: its user name and password seem cut short (not shown: percent-encode any of @ : / ? # % in them)`,
		},
		{
			name: "a password with an unencoded # is not echoed",
			env:  map[string]string{"U": "postgres://u:s3cr#et@host/db"},
			read: func(e *Env) any { return e.URL("U", "postgres://x/") },
			want: "postgres://x/",
			err:  `U: invalid URL: it does not parse (not shown: it may hold a password; percent-encode any of @ : / ? # % in the user name and password)`,
		},
		{
			name: "a password with a bad escape is not echoed",
			env:  map[string]string{"U": "postgres://u:pa%zzword@host/db"},
			read: func(e *Env) any { return e.URL("U", "postgres://x/") },
			want: "postgres://x/",
			err:  `U: invalid URL: it does not parse (not shown: it may hold a password; percent-encode any of @ : / ? # % in the user name and password)`,
		},
		{
			name: "url without scheme",
			env:  map[string]string{"U": "127.0.0.1/db"},
			read: func(e *Env) any { return e.URL("U", "postgres://x/") },
			want: "postgres://x/",
			err:  `U: invalid URL "127.0.0.1/db": no scheme`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := NewEnv(mapEnv(tt.env))
			got := tt.read(e)
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("value mismatch (-want +got):\n%s", diff)
			}
			err := e.Err()
			if err == nil || err.Error() != tt.err {
				t.Errorf("Err() = %v, want %s", err, tt.err)
			}
			if err != nil && strings.Contains(err.Error(), "s3cret") {
				t.Errorf("Err() leaks the password: %v", err)
			}
		})
	}
}

func TestEnvCollectsAllErrors(t *testing.T) {
	e := NewEnv(mapEnv(map[string]string{
		"ORDERMESH_GRPC_ADDR":  "x",
		"ORDERMESH_PREFETCH":   "many",
		"ORDERMESH_LOG_DEBUG":  "maybe",
		"ORDERMESH_SERVICE":    "order",
		"ORDERMESH_POLL_EVERY": "-1s",
	}))
	_ = e.Addr("ORDERMESH_GRPC_ADDR", ":50051")
	_ = e.Int("ORDERMESH_PREFETCH", 16)
	_ = e.Bool("ORDERMESH_LOG_DEBUG", false)
	_ = e.String("ORDERMESH_SERVICE", "")
	if d := e.Duration("ORDERMESH_POLL_EVERY", time.Second); d <= 0 {
		e.Fail("ORDERMESH_POLL_EVERY", errors.New("must be positive"))
	}
	want := strings.Join([]string{
		`ORDERMESH_GRPC_ADDR: invalid address "x": address x: missing port in address`,
		`ORDERMESH_PREFETCH: invalid integer "many": invalid syntax`,
		`ORDERMESH_LOG_DEBUG: invalid boolean "maybe": want true or false`,
		`ORDERMESH_POLL_EVERY: must be positive`,
	}, "\n")
	if err := e.Err(); err == nil || err.Error() != want {
		t.Errorf("Err() = %v\nwant %s", err, want)
	}
}

func TestBytesString(t *testing.T) {
	tests := []struct {
		in   Bytes
		want string
	}{
		{0, "0B"},
		{100, "100B"},
		{1 << 10, "1KiB"},
		{1536 << 10, "1536KiB"},
		{18 << 20, "18MiB"},
		{3 << 30, "3GiB"},
		{1 << 40, "1TiB"},
		{1<<20 + 1, "1048577B"},
	}
	for _, tt := range tests {
		if got := tt.in.String(); got != tt.want {
			t.Errorf("Bytes(%d).String() = %q, want %q", int64(tt.in), got, tt.want)
		}
		// What String prints, Env.Bytes reads back.
		e := NewEnv(mapEnv(map[string]string{"M": tt.want}))
		if got := e.Bytes("M", -1); got != tt.in || e.Err() != nil {
			t.Errorf("Bytes(%q) = %d, %v; want %d", tt.want, int64(got), e.Err(), int64(tt.in))
		}
	}
}

func TestRedactURL(t *testing.T) {
	tests := []struct {
		name, in, want string
	}{
		{name: "user and password", in: "amqp://guest:guest@127.0.0.1:5672/", want: "amqp://guest:xxxxx@127.0.0.1:5672/"},
		{name: "user only", in: "postgres://postgres@127.0.0.1:5432/ordermesh?sslmode=disable", want: "postgres://postgres@127.0.0.1:5432/ordermesh?sslmode=disable"},
		{name: "password query parameters", in: "postgres://u@h/db?sslmode=verify-full&sslpassword=p&password=q", want: "postgres://u@h/db?password=xxxxx&sslmode=verify-full&sslpassword=xxxxx"},
		{name: "not a URL", in: "127.0.0.1:1025", want: "127.0.0.1:1025"},
		{name: "plain text", in: "order", want: "order"},
		{name: "unparsable, with what may be a password", in: "postgres://u:p#w@host/", want: "(a URL that does not parse as it seems meant to, not shown: it may hold a password)"},
		{name: "a password cut short into the path", in: "postgres://u:12/secret@host/db", want: "(a URL that does not parse as it seems meant to, not shown: it may hold a password)"},
		{name: "unparsable, no user info", in: "postgres://host:port/", want: "postgres://host:port/"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := RedactURL(tt.in); got != tt.want {
				t.Errorf("RedactURL(%q) = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
}

func TestLogValue(t *testing.T) {
	type smtp struct {
		Addr     string
		Username string
		Password string `secret:"true"`
	}
	type cfg struct {
		GRPCAddr        string
		AMQPURL         string
		BrokerURL       *url.URL
		ShutdownTimeout time.Duration
		RetryDelays     []time.Duration
		MemoryLimit     Bytes
		Prefetch        int
		Debug           bool
		APIToken        string `secret:"true"`
		EmptySecret     string `secret:"true"`
		SMTP            smtp
		unexported      string
	}
	in := cfg{
		GRPCAddr:        ":50051",
		AMQPURL:         "amqp://guest:guest@127.0.0.1:5672/",
		BrokerURL:       &url.URL{Scheme: "amqps", User: url.UserPassword("svc", "pw"), Host: "mq:5671"},
		ShutdownTimeout: 10 * time.Second,
		RetryDelays:     []time.Duration{time.Second, 500 * time.Millisecond},
		MemoryLimit:     18 << 20,
		Prefetch:        16,
		Debug:           true,
		APIToken:        "tok",
		SMTP:            smtp{Addr: "127.0.0.1:1025", Username: "mailer", Password: "hunter2"},
		unexported:      "hidden",
	}
	var buf bytes.Buffer
	slog.New(slog.NewJSONHandler(&buf, nil)).Info("config", slog.Any("config", LogValue(&in)))
	var got struct {
		Config map[string]any `json:"config"`
	}
	if err := json.Unmarshal(buf.Bytes(), &got); err != nil {
		t.Fatalf("unmarshal %s: %v", buf.String(), err)
	}
	want := map[string]any{
		"GRPCAddr":        ":50051",
		"AMQPURL":         "amqp://guest:xxxxx@127.0.0.1:5672/",
		"BrokerURL":       "amqps://svc:xxxxx@mq:5671",
		"ShutdownTimeout": "10s",
		"RetryDelays":     "1s,500ms",
		"MemoryLimit":     "18MiB",
		"Prefetch":        float64(16),
		"Debug":           true,
		"APIToken":        "xxxxx",
		"EmptySecret":     "",
		"SMTP":            map[string]any{"Addr": "127.0.0.1:1025", "Username": "mailer", "Password": "xxxxx"},
	}
	if diff := cmp.Diff(want, got.Config); diff != "" {
		t.Errorf("LogValue mismatch (-want +got):\n%s", diff)
	}
	for _, secret := range []string{"guest@", "pw@", "tok\"", "hunter2", "hidden"} {
		if strings.Contains(buf.String(), secret) {
			t.Errorf("log %s contains %q", buf.String(), secret)
		}
	}
}
