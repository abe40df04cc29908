package mailer_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/ordermesh/ordermesh/internal/config"
	"github.com/ordermesh/ordermesh/internal/smtpsink"
	"github.com/ordermesh/ordermesh/services/notification/internal/app"
	"github.com/ordermesh/ordermesh/services/notification/internal/mailer"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func mapEnv(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

func TestReadConfig(t *testing.T) {
	tests := []struct {
		name    string
		env     map[string]string
		want    mailer.Config
		wantErr []string // variables the error must name
	}{
		{
			name: "defaults",
			want: mailer.Config{Addr: "127.0.0.1:1025", TLS: mailer.TLSNone, From: "ordermesh <orders@ordermesh.localhost>", Timeout: 10 * time.Second},
		},
		{
			name: "everything set",
			env: map[string]string{
				"ORDERMESH_SMTP_ADDR": "smtp.example.com:587", "ORDERMESH_SMTP_USERNAME": "shop",
				"ORDERMESH_SMTP_PASSWORD": "s3cret", "ORDERMESH_SMTP_TLS": "starttls",
				"ORDERMESH_SMTP_FROM": "Shop <shop@example.com>", "ORDERMESH_SMTP_TIMEOUT": "3s",
			},
			want: mailer.Config{
				Addr: "smtp.example.com:587", Username: "shop", Password: "s3cret", TLS: mailer.TLSStartTLS,
				From: "Shop <shop@example.com>", Timeout: 3 * time.Second,
			},
		},
		{
			name: "every value invalid",
			env: map[string]string{
				"ORDERMESH_SMTP_ADDR": "no-port", "ORDERMESH_SMTP_PASSWORD": "s3cret",
				"ORDERMESH_SMTP_TLS": "ssl", "ORDERMESH_SMTP_FROM": "not an address",
				"ORDERMESH_SMTP_TIMEOUT": "-1s",
			},
			wantErr: []string{"ORDERMESH_SMTP_ADDR", "ORDERMESH_SMTP_PASSWORD", "ORDERMESH_SMTP_TLS", "ORDERMESH_SMTP_FROM", "ORDERMESH_SMTP_TIMEOUT"},
		},
		{
			name:    "address without host",
			env:     map[string]string{"ORDERMESH_SMTP_ADDR": ":25"},
			wantErr: []string{"ORDERMESH_SMTP_ADDR"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := config.NewEnv(mapEnv(tt.env))
			got := mailer.ReadConfig(env)
			err := env.Err()
			if len(tt.wantErr) == 0 {
				if err != nil {
					t.Fatalf("err = %v", err)
				}
				if diff := cmp.Diff(tt.want, got); diff != "" {
					t.Errorf("config (-want +got):\n%s", diff)
				}
				if err := got.Validate(); err != nil {
					t.Errorf("validate: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("no error")
			}
			for _, name := range tt.wantErr {
				if !strings.Contains(err.Error(), name+":") {
					t.Errorf("error does not name %s:\n%v", name, err)
				}
			}
		})
	}
}

func TestConfigLogValueMasksPassword(t *testing.T) {
	cfg := mailer.DefaultConfig()
	cfg.Username, cfg.Password = "shop", "s3cret"
	var b strings.Builder
	slog.New(slog.NewTextHandler(&b, nil)).Info("config", slog.Any("smtp", config.LogValue(cfg)))
	if strings.Contains(b.String(), "s3cret") || !strings.Contains(b.String(), "smtp.Password="+config.Mask) {
		t.Errorf("logged config does not mask the password: %s", b.String())
	}
}

func newMailer(t *testing.T, addr string, timeout time.Duration) *mailer.Mailer {
	t.Helper()
	return newMailerTLS(t, addr, timeout, mailer.TLSNone)
}

func newMailerTLS(t *testing.T, addr string, timeout time.Duration, mode mailer.TLSMode) *mailer.Mailer {
	t.Helper()
	cfg := mailer.DefaultConfig()
	cfg.Addr, cfg.Timeout, cfg.TLS = addr, timeout, mode
	m, err := mailer.New(cfg, quiet)
	if err != nil {
		t.Fatalf("new mailer: %v", err)
	}
	return m
}

func startSink(t *testing.T) *smtpsink.Sink {
	t.Helper()
	s, err := smtpsink.Start(context.Background(), "127.0.0.1:0")
	if err != nil {
		t.Fatalf("start sink: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func email(to string) app.Email {
	return app.Email{
		To: to, Subject: "Order 42 confirmed — thanks",
		Text: "Your order 42 is confirmed.\n", HTML: "<p>Your order <b>42</b> is confirmed.</p>",
		MessageID: "42.confirmed@ordermesh",
	}
}

func TestSendDeliversTextAndHTML(t *testing.T) {
	s := startSink(t)
	m := newMailer(t, s.Addr(), 5*time.Second)
	if err := m.Send(context.Background(), email("ada@example.com")); err != nil {
		t.Fatalf("send: %v", err)
	}
	msgs := s.Messages()
	if len(msgs) != 1 {
		t.Fatalf("sink received %d messages, want 1", len(msgs))
	}
	got := msgs[0]
	want := smtpsink.Message{
		From: "orders@ordermesh.localhost", To: []string{"ada@example.com"},
		Subject: "Order 42 confirmed — thanks", MessageID: "<42.confirmed@ordermesh>",
		Text: "Your order 42 is confirmed.\r\n", HTML: "<p>Your order <b>42</b> is confirmed.</p>",
	}
	got.Raw, got.Header, got.Received = nil, nil, time.Time{}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("received (-want +got):\n%s", diff)
	}
	if from := msgs[0].Header.Get("From"); from != `"ordermesh" <orders@ordermesh.localhost>` {
		t.Errorf("From header = %q", from)
	}
}

func TestSendErrors(t *testing.T) {
	s := startSink(t)
	s.Reject("gone@example.com", 550, "mailbox unavailable")
	s.Reject("busy@example.com", 451, "try again later")

	// A closed port: nothing listens there.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	closedAddr := l.Addr().String()
	l.Close()

	tests := []struct {
		name         string
		addr         string
		tls          mailer.TLSMode
		to           string
		wantRejected bool
	}{
		{name: "permanent 550 for the recipient", addr: s.Addr(), to: "gone@example.com", wantRejected: true},
		{name: "temporary 451 for the recipient", addr: s.Addr(), to: "busy@example.com", wantRejected: false},
		{name: "server unreachable", addr: closedAddr, to: "ada@example.com", wantRejected: false},
		{name: "unparseable recipient", addr: s.Addr(), to: "not an address", wantRejected: true},
		// The sink offers no TLS: the modes that demand it must refuse to
		// send in plain text.
		{name: "starttls demanded, not offered", addr: s.Addr(), tls: mailer.TLSStartTLS, to: "ada@example.com"},
		{name: "implicit tls to a plain-text server", addr: s.Addr(), tls: mailer.TLSImplicit, to: "ada@example.com"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mode := tt.tls
			if mode == "" {
				mode = mailer.TLSNone
			}
			err := newMailerTLS(t, tt.addr, 5*time.Second, mode).Send(context.Background(), email(tt.to))
			if err == nil {
				t.Fatal("send succeeded")
			}
			if got := errors.Is(err, app.ErrRejected); got != tt.wantRejected {
				t.Errorf("errors.Is(%v, ErrRejected) = %v, want %v", err, got, tt.wantRejected)
			}
		})
	}
	if n := len(s.Messages()); n != 0 {
		t.Errorf("sink kept %d messages", n)
	}
}

func TestSendTimesOutOnASilentServer(t *testing.T) {
	// A server that accepts connections and never greets.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	defer l.Close()
	wg.Go(func() {
		var conns []net.Conn
		defer func() {
			for _, c := range conns {
				c.Close()
			}
		}()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			conns = append(conns, c)
		}
	})

	m := newMailer(t, l.Addr().String(), 300*time.Millisecond)
	begin := time.Now()
	err = m.Send(context.Background(), email("ada@example.com"))
	if err == nil {
		t.Fatal("send to a silent server succeeded")
	}
	if errors.Is(err, app.ErrRejected) {
		t.Errorf("timeout reported as a rejection: %v", err)
	}
	if d := time.Since(begin); d > 3*time.Second {
		t.Errorf("send took %v with a 300ms timeout", d)
	}
}

func TestSendConcurrently(t *testing.T) {
	s := startSink(t)
	m := newMailer(t, s.Addr(), 5*time.Second)
	const n = 10
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() { errs[i] = m.Send(context.Background(), email(fmt.Sprintf("c%d@example.com", i))) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("send %d: %v", i, err)
		}
	}
	for i := range n {
		to := fmt.Sprintf("c%d@example.com", i)
		if got := len(s.Matching(func(m smtpsink.Message) bool { return m.HasRecipient(to) })); got != 1 {
			t.Errorf("%s received %d messages, want 1", to, got)
		}
	}
}

func TestNewRejectsInvalidConfig(t *testing.T) {
	cfg := mailer.DefaultConfig()
	cfg.TLS = "ssl"
	if _, err := mailer.New(cfg, quiet); err == nil || !strings.Contains(err.Error(), "ORDERMESH_SMTP_TLS") {
		t.Errorf("err = %v, want one naming ORDERMESH_SMTP_TLS", err)
	}
}
