package mailer_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	netmail "net/mail"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/ordermesh/ordermesh/internal/config"
	"github.com/ordermesh/ordermesh/internal/smtpsink"
	"github.com/ordermesh/ordermesh/internal/testpki"
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
				"ORDERMESH_SMTP_HELO": "orders.example.com",
			},
			want: mailer.Config{
				Addr: "smtp.example.com:587", Username: "shop", Password: "s3cret", TLS: mailer.TLSStartTLS,
				From: "Shop <shop@example.com>", Timeout: 3 * time.Second, HELO: "orders.example.com",
			},
		},
		{
			name: "every value invalid",
			env: map[string]string{
				"ORDERMESH_SMTP_ADDR": "no-port", "ORDERMESH_SMTP_PASSWORD": "s3cret",
				"ORDERMESH_SMTP_TLS": "ssl", "ORDERMESH_SMTP_FROM": "not an address",
				"ORDERMESH_SMTP_TIMEOUT": "-1s", "ORDERMESH_SMTP_HELO": "orders example",
			},
			wantErr: []string{"ORDERMESH_SMTP_ADDR", "ORDERMESH_SMTP_PASSWORD", "ORDERMESH_SMTP_TLS", "ORDERMESH_SMTP_FROM", "ORDERMESH_SMTP_TIMEOUT", "ORDERMESH_SMTP_HELO"},
		},
		{
			name:    "address without host",
			env:     map[string]string{"ORDERMESH_SMTP_ADDR": ":25"},
			wantErr: []string{"ORDERMESH_SMTP_ADDR"},
		},
		{
			name:    "a CA file without TLS",
			env:     map[string]string{"ORDERMESH_SMTP_CA_FILE": testpki.NewCA(t, "ca").File},
			wantErr: []string{"ORDERMESH_SMTP_CA_FILE"},
		},
		{
			name:    "a CA file that is not there",
			env:     map[string]string{"ORDERMESH_SMTP_TLS": "tls", "ORDERMESH_SMTP_CA_FILE": "/nonexistent/ca.pem"},
			wantErr: []string{"ORDERMESH_SMTP_CA_FILE"},
		},
		{
			name:    "a CA file without a certificate",
			env:     map[string]string{"ORDERMESH_SMTP_TLS": "tls", "ORDERMESH_SMTP_CA_FILE": notPEM(t)},
			wantErr: []string{"ORDERMESH_SMTP_CA_FILE"},
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

func newMailer(t testing.TB, addr string, timeout time.Duration, opts ...mailer.Option) *mailer.Mailer {
	t.Helper()
	return newMailerTLS(t, addr, timeout, mailer.TLSNone, opts...)
}

// newMailerTLS returns a Mailer that is closed when the test ends.
func newMailerTLS(t testing.TB, addr string, timeout time.Duration, mode mailer.TLSMode, opts ...mailer.Option) *mailer.Mailer {
	t.Helper()
	cfg := mailer.DefaultConfig()
	cfg.Addr, cfg.Timeout, cfg.TLS = addr, timeout, mode
	m, err := mailer.New(cfg, quiet, opts...)
	if err != nil {
		t.Fatalf("new mailer: %v", err)
	}
	t.Cleanup(m.Close)
	return m
}

// notPEM returns a file that holds no PEM certificate.
func notPEM(t *testing.T) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(f, []byte("not a certificate\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

// TestSendOverTLS sends through a sink that offers STARTTLS and through
// one that speaks TLS from the start, each with a certificate of a CA of
// the test's own: trusted through ORDERMESH_SMTP_CA_FILE the email goes
// out encrypted, authenticated with PLAIN; with the system's CAs, or to a
// host the certificate does not name, nothing is sent.
func TestSendOverTLS(t *testing.T) {
	ca := testpki.NewCA(t, "smtp-ca")
	// For localhost only, so that 127.0.0.1 names a host it does not.
	server := &tls.Config{Certificates: []tls.Certificate{ca.IssueFor(t, "smtp", x509.ExtKeyUsageServerAuth, "localhost")}}
	for _, tt := range []struct {
		name string
		mode mailer.TLSMode
		sink smtpsink.Option
	}{
		{"starttls", mailer.TLSStartTLS, smtpsink.WithStartTLS(server)},
		{"implicit tls", mailer.TLSImplicit, smtpsink.WithImplicitTLS(server)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s, err := smtpsink.Start(context.Background(), "127.0.0.1:0", tt.sink)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = s.Close() })
			_, port, err := net.SplitHostPort(s.Addr())
			if err != nil {
				t.Fatal(err)
			}
			send := func(host, caFile string) error {
				cfg := mailer.DefaultConfig()
				cfg.Addr, cfg.TLS, cfg.CAFile, cfg.Timeout = net.JoinHostPort(host, port), tt.mode, caFile, 5*time.Second
				// With SMTP AUTH: the sink offers PLAIN only, which the
				// client allows over an encrypted connection alone.
				cfg.Username, cfg.Password = "shop", "s3cret"
				m, err := mailer.New(cfg, quiet)
				if err != nil {
					t.Fatalf("new mailer: %v", err)
				}
				defer m.Close()
				return m.Send(context.Background(), email("ada@example.com"))
			}
			if err := send("localhost", ca.File); err != nil {
				t.Fatalf("send with the CA trusted: %v", err)
			}
			msgs := s.Messages()
			if len(msgs) != 1 {
				t.Fatalf("sink received %d messages, want 1", len(msgs))
			}
			if !msgs[0].TLS || msgs[0].User != "shop" {
				t.Errorf("message received with TLS %v as user %q, want encrypted and authenticated as shop", msgs[0].TLS, msgs[0].User)
			}
			for _, bad := range []struct{ what, host, caFile, want string }{
				{"with the system's CAs", "localhost", "", "certificate signed by unknown authority"},
				{"to a host the certificate does not name", "127.0.0.1", ca.File, "doesn't contain any IP SANs"},
			} {
				err := send(bad.host, bad.caFile)
				if err == nil || !strings.Contains(err.Error(), bad.want) {
					t.Errorf("send %s: %v, want an error saying %q", bad.what, err, bad.want)
				}
				if errors.Is(err, app.ErrRejected) {
					t.Errorf("send %s: %v is permanent; an operator can fix it, so the bus should retry", bad.what, err)
				}
			}
			if n := len(s.Messages()); n != 1 {
				t.Errorf("sink received %d messages, want only the one sent with the CA trusted", n)
			}
		})
	}
}

// TestAuthRefusesPlainInTheClear: over a connection without TLS the
// client does not send the password with PLAIN, the only mechanism the
// sink offers, so nothing is sent (over TLS it does: TestSendOverTLS).
func TestAuthRefusesPlainInTheClear(t *testing.T) {
	s := startSink(t)
	cfg := mailer.DefaultConfig()
	cfg.Addr, cfg.Timeout, cfg.Username, cfg.Password = s.Addr(), 5*time.Second, "shop", "s3cret"
	m, err := mailer.New(cfg, quiet)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if err := m.Send(context.Background(), email("ada@example.com")); err == nil {
		t.Fatal("sent with PLAIN over a connection without TLS")
	}
	if n := len(s.Messages()); n != 0 {
		t.Errorf("sink received %d messages, want none", n)
	}
}

func startSink(t testing.TB) *smtpsink.Sink {
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
	// Without ORDERMESH_SMTP_HELO, EHLO gives the host's name.
	host, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	want.HELO = host
	got.Raw, got.Header, got.Received = nil, nil, time.Time{}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("received (-want +got):\n%s", diff)
	}
	if msgs[0].TLS || msgs[0].User != "" {
		t.Errorf("message received with TLS %v as user %q, want neither (none configured)", msgs[0].TLS, msgs[0].User)
	}
	if from := msgs[0].Header.Get("From"); from != `"ordermesh" <orders@ordermesh.localhost>` {
		t.Errorf("From header = %q", from)
	}
}

// quietAfterGreeting serves an SMTP server that greets, answers EHLO and
// then answers nothing, until the test ends, and returns its address.
func quietAfterGreeting(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				_, _ = c.Write([]byte("220 quiet.example.com ESMTP\r\n"))
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					if strings.HasPrefix(strings.ToUpper(line), "EHLO") || strings.HasPrefix(strings.ToUpper(line), "HELO") {
						_, _ = c.Write([]byte("250 quiet.example.com\r\n"))
					}
				}
			}()
		}
	}()
	return l.Addr().String()
}

func TestSendErrors(t *testing.T) {
	s := startSink(t)
	s.Reject("gone@example.com", 550, "mailbox unavailable")
	s.Reject("busy@example.com", 451, "try again later")
	s.Reject("locked@example.com", 530, "5.7.0 authentication required")
	// Sinks that refuse the mailer's sender (mailer.DefaultConfig's).
	from := mailer.DefaultConfig().From
	if a, err := netmail.ParseAddress(from); err == nil {
		from = a.Address
	}
	noSender := startSink(t)
	noSender.Reject(from, 550, "sender rejected")
	tooLarge := startSink(t)
	tooLarge.Reject(from, 552, "message size exceeds fixed limit")
	rateLimited := startSink(t)
	rateLimited.Reject(from, 421, "too many messages, closing")

	quiet := quietAfterGreeting(t)

	// A closed port: nothing listens there.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	closedAddr := l.Addr().String()
	l.Close()

	tests := []struct {
		name            string
		addr            string
		tls             mailer.TLSMode
		to              string
		wantRejected    bool
		wantUnreachable bool // no session could be opened
		wantDeferred    bool // a temporary refusal
	}{
		{name: "permanent 550 for the recipient", addr: s.Addr(), to: "gone@example.com", wantRejected: true},
		{name: "temporary 451 for the recipient", addr: s.Addr(), to: "busy@example.com", wantDeferred: true},
		{name: "temporary 421 for the sender", addr: rateLimited.Addr(), to: "ada@example.com", wantDeferred: true},
		{name: "server unreachable", addr: closedAddr, to: "ada@example.com", wantUnreachable: true},
		// Every email meets a refused sender: the configuration's fault.
		{name: "permanent 550 for the sender", addr: noSender.Addr(), to: "ada@example.com", wantUnreachable: true},
		// The mailer declares no size: a 552 to MAIL FROM is the server's
		// storage, not this message.
		{name: "552 for the sender", addr: tooLarge.Addr(), to: "ada@example.com", wantUnreachable: true},
		{name: "530 for the recipient: authentication required", addr: s.Addr(), to: "locked@example.com", wantUnreachable: true},
		{name: "server quiet after its greeting", addr: quiet, to: "ada@example.com", wantDeferred: true},
		{name: "unparseable recipient", addr: s.Addr(), to: "not an address", wantRejected: true},
		// The sink offers no TLS: the modes that demand it must refuse to
		// send in plain text.
		{name: "starttls demanded, not offered", addr: s.Addr(), tls: mailer.TLSStartTLS, to: "ada@example.com", wantUnreachable: true},
		{name: "implicit tls to a plain-text server", addr: s.Addr(), tls: mailer.TLSImplicit, to: "ada@example.com", wantUnreachable: true},
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
			if got := errors.Is(err, app.ErrUnreachable); got != tt.wantUnreachable {
				t.Errorf("errors.Is(%v, ErrUnreachable) = %v, want %v", err, got, tt.wantUnreachable)
			}
			if got := errors.Is(err, app.ErrDeferred); got != tt.wantDeferred {
				t.Errorf("errors.Is(%v, ErrDeferred) = %v, want %v", err, got, tt.wantDeferred)
			}
		})
	}
	if n := len(s.Messages()); n != 0 {
		t.Errorf("sink kept %d messages", n)
	}
}

// A Send whose context ended before it began says nothing about the
// server: it is not reported as unreachable.
func TestSendWithAnEndedContextIsNoOutage(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	closedAddr := l.Addr().String()
	l.Close()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err = newMailer(t, closedAddr, 5*time.Second).Send(ctx, email("ada@example.com"))
	if !errors.Is(err, context.Canceled) || errors.Is(err, app.ErrUnreachable) {
		t.Fatalf("Send = %v; want context.Canceled, not ErrUnreachable", err)
	}
}

// slowToAccept serves an SMTP server that takes every email but answers
// its data only after delay, until the test ends, and returns its
// address.
func slowToAccept(t *testing.T, delay time.Duration) string {
	t.Helper()
	return serveTCP(t, func(c net.Conn) {
		r := bufio.NewReader(c)
		_, _ = c.Write([]byte("220 slow.example.com ESMTP\r\n"))
		inData := false
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return
			}
			cmd := strings.ToUpper(line)
			switch {
			case inData && line == ".\r\n":
				inData = false
				time.Sleep(delay)
				_, _ = c.Write([]byte("250 queued\r\n"))
			case inData:
			case strings.HasPrefix(cmd, "DATA"):
				inData = true
				_, _ = c.Write([]byte("354 go on\r\n"))
			case strings.HasPrefix(cmd, "QUIT"):
				_, _ = c.Write([]byte("221 bye\r\n"))
				return
			default:
				_, _ = c.Write([]byte("250 ok\r\n"))
			}
		}
	})
}

// TestSendWhoseReplyCameTooLate: a reply to the data that does not come
// within the SMTP timeout is a lost reply, the email likely taken
// (app.ErrMaybeSent); one the caller's earlier deadline stopped waiting
// for is not (the server may refuse the email still): a retryable
// failure.
func TestSendWhoseReplyCameTooLate(t *testing.T) {
	addr := slowToAccept(t, 2*time.Second)
	err := newMailer(t, addr, time.Second).Send(context.Background(), email("slow@example.com"))
	if !errors.Is(err, app.ErrMaybeSent) {
		t.Errorf("reply later than the SMTP timeout: %v, want app.ErrMaybeSent", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	err = newMailer(t, addr, 10*time.Second).Send(ctx, email("slow@example.com"))
	if err == nil || errors.Is(err, app.ErrMaybeSent) || errors.Is(err, app.ErrRejected) || errors.Is(err, app.ErrDeferred) || errors.Is(err, app.ErrUnreachable) {
		t.Errorf("reply later than the caller's deadline: %v, want a plain (retryable, counted) failure", err)
	}
}

func TestSendTimesOutOnASilentServer(t *testing.T) {
	// A server that accepts connections and never greets.
	addr := serveTCP(t, func(c net.Conn) { _, _ = io.Copy(io.Discard, c) })

	m := newMailer(t, addr, 300*time.Millisecond)
	begin := time.Now()
	err := m.Send(context.Background(), email("ada@example.com"))
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

// TestSendEndsAtTheDeadlineOfItsContext: a server that greets and then
// falls silent holds the mail transaction until the context's deadline,
// when that comes before the configured timeout, and no longer.
func TestSendEndsAtTheDeadlineOfItsContext(t *testing.T) {
	addr := serveTCP(t, greetOnly(nil))

	m := newMailer(t, addr, 10*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	begin := time.Now()
	err := m.Send(ctx, email("ada@example.com"))
	if err == nil {
		t.Fatal("send to a silent server succeeded")
	}
	if errors.Is(err, app.ErrRejected) {
		t.Errorf("timeout reported as a rejection: %v", err)
	}
	if d := time.Since(begin); d > 3*time.Second {
		t.Errorf("send took %v with a 500ms deadline and a 10s timeout", d)
	}
}

// TestConnectingEndsWithItsContext: a server that takes the connection
// and never greets holds a Send only as long as the Send's context lasts,
// not the configured timeout (go-mail bounds its setup by that timeout
// alone).
func TestConnectingEndsWithItsContext(t *testing.T) {
	addr := serveTCP(t, func(c net.Conn) { _, _ = io.Copy(io.Discard, c) })
	m := newMailer(t, addr, 10*time.Second)
	for _, tt := range []struct {
		name string
		ctx  func() (context.Context, context.CancelFunc)
	}{
		{"its deadline passes", func() (context.Context, context.CancelFunc) {
			return context.WithTimeout(context.Background(), 300*time.Millisecond)
		}},
		{"it is cancelled", func() (context.Context, context.CancelFunc) {
			ctx, cancel := context.WithCancel(context.Background())
			time.AfterFunc(300*time.Millisecond, cancel)
			return ctx, cancel
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := tt.ctx()
			defer cancel()
			begin := time.Now()
			err := m.Send(ctx, email("ada@example.com"))
			if err == nil || errors.Is(err, app.ErrRejected) {
				t.Fatalf("send to a server that never greets: %v, want a retryable error", err)
			}
			if d := time.Since(begin); d > 3*time.Second {
				t.Errorf("send took %v; its context ended after 300ms (timeout 10s)", d)
			}
		})
	}
}

// TestFailedSetupClosesItsConnection: a session whose setup fails (here
// STARTTLS demanded and not offered) leaves no connection open.
func TestFailedSetupClosesItsConnection(t *testing.T) {
	closed := make(chan struct{}, 1)
	addr := serveTCP(t, greetOnly(closed))
	m := newMailerTLS(t, addr, 5*time.Second, mailer.TLSStartTLS)
	if err := m.Send(context.Background(), email("ada@example.com")); err == nil || !strings.Contains(err.Error(), "STARTTLS") {
		t.Fatalf("send: %v, want STARTTLS refused", err)
	}
	select {
	case <-closed:
	case <-time.After(3 * time.Second):
		t.Error("the connection of the failed setup is still open 3s after Send returned")
	}
}

func TestSendConcurrently(t *testing.T) {
	const n = 10
	tests := []struct {
		name     string
		idle     int
		wantOpen int // connections left open once every email is sent; -1: not checked
	}{
		{name: "as many idle sessions as senders", idle: n, wantOpen: -1},
		{name: "fewer idle sessions than senders", idle: 2, wantOpen: 2},
		{name: "no idle sessions", idle: 0, wantOpen: 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := startSink(t)
			p := newProxy(t, s.Addr())
			m := newMailer(t, p.Addr(), 5*time.Second, mailer.WithIdleSessions(tt.idle))
			const rounds = 3
			for round := range rounds {
				var wg sync.WaitGroup
				errs := make([]error, n)
				for i := range n {
					wg.Go(func() {
						errs[i] = m.Send(context.Background(), email(fmt.Sprintf("r%dc%d@example.com", round, i)))
					})
				}
				wg.Wait()
				for i, err := range errs {
					if err != nil {
						t.Errorf("round %d: send %d: %v", round, i, err)
					}
				}
			}
			for round := range rounds {
				for i := range n {
					expectOnce(t, s, fmt.Sprintf("r%dc%d@example.com", round, i))
				}
			}
			switch {
			case tt.idle >= n:
				// A session is dialed only while every other one is busy
				// and none is ever closed, so there are never more than
				// there are senders.
				if got := p.Accepted(); got > n {
					t.Errorf("%d connections for %d concurrent senders, want at most %d", got, n, n)
				}
			case tt.idle == 0:
				if got := p.Accepted(); got != rounds*n {
					t.Errorf("%d connections, want one per email: %d", got, rounds*n)
				}
			}
			if tt.wantOpen >= 0 {
				eventually(t, fmt.Sprintf("at most %d connections open", tt.wantOpen), func() bool { return p.Open() <= tt.wantOpen })
			}
		})
	}
}

// expectOnce checks that exactly one message reached to, addressed to it
// alone.
func expectOnce(t *testing.T, s *smtpsink.Sink, to string) {
	t.Helper()
	got := s.Matching(func(m smtpsink.Message) bool { return m.HasRecipient(to) })
	if len(got) != 1 {
		t.Errorf("%s received %d messages, want 1", to, len(got))
		return
	}
	if diff := cmp.Diff([]string{to}, got[0].To); diff != "" {
		t.Errorf("envelope recipients of the message to %s (-want +got):\n%s", to, diff)
	}
}

// eventually waits up to 5 s for cond to hold.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestSendReusesOneConnection(t *testing.T) {
	s := startSink(t)
	p := newProxy(t, s.Addr())
	m := newMailer(t, p.Addr(), 5*time.Second)
	const n = 5
	for i := range n {
		if err := m.Send(context.Background(), email(fmt.Sprintf("seq%d@example.com", i))); err != nil {
			t.Fatalf("send %d: %v", i, err)
		}
	}
	if got := p.Accepted(); got != 1 {
		t.Errorf("%d emails sent one after another used %d connections, want 1", n, got)
	}
	if got := len(s.Messages()); got != n {
		t.Errorf("sink received %d messages, want %d", got, n)
	}
	for i := range n {
		expectOnce(t, s, fmt.Sprintf("seq%d@example.com", i))
	}
}

func TestSendOverASessionTheServerClosed(t *testing.T) {
	tests := []struct {
		name    string
		goodbye string // what the server says before it closes the idle connection
	}{
		{name: "closed without a word"},
		{name: "closed with 421", goodbye: "421 4.4.2 localhost Error: timeout exceeded\r\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := startSink(t)
			p := newProxy(t, s.Addr())
			m := newMailer(t, p.Addr(), 5*time.Second)
			const n = 4
			for i := range n {
				if err := m.Send(context.Background(), email(fmt.Sprintf("drop%d@example.com", i))); err != nil {
					t.Fatalf("send %d: %v", i, err)
				}
				p.DropAll(tt.goodbye)
			}
			for i := range n {
				expectOnce(t, s, fmt.Sprintf("drop%d@example.com", i))
			}
			// Each email after the first found its session closed and was
			// sent once more on a new connection; no other connection was
			// made.
			if got := p.Accepted(); got != n {
				t.Errorf("%d connections, want %d", got, n)
			}
		})
	}
}

// TestSendRunsOneTransactionPerEmail sends emails one after another over
// one session: each costs MAIL, RCPT and DATA, with no RSET after it and
// no NOOP before the next.
func TestSendRunsOneTransactionPerEmail(t *testing.T) {
	for _, hide := range [][]string{nil, {"PIPELINING"}} {
		t.Run(fmt.Sprintf("hidden %v", hide), func(t *testing.T) {
			s := startSink(t)
			p := newProxy(t, s.Addr())
			p.Hide(hide...)
			m := newMailer(t, p.Addr(), 5*time.Second)
			const n = 3
			for i := range n {
				if err := m.Send(context.Background(), email(fmt.Sprintf("txn%d@example.com", i))); err != nil {
					t.Fatalf("send %d: %v", i, err)
				}
			}
			for i := range n {
				expectOnce(t, s, fmt.Sprintf("txn%d@example.com", i))
			}
			want := map[string]int{"MAIL": n, "RCPT": n, "DATA": n, "RSET": 0, "NOOP": 0}
			got := map[string]int{}
			for verb := range want {
				got[verb] = p.Commands(verb)
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("commands (-want +got):\n%s", diff)
			}
			if got := p.Accepted(); got != 1 {
				t.Errorf("%d connections, want 1", got)
			}
		})
	}
}

// TestSendEncodesEachBody checks the transfer encoding each body gets and
// that every body arrives as it was rendered, its line breaks as CRLF.
func TestSendEncodesEachBody(t *testing.T) {
	long := strings.Repeat("a", 998)
	tests := []struct {
		name     string
		hide     []string // extensions the server does not offer
		text     string
		wantText string // "" for text with CRLF line breaks
		wantEnc  string
	}{
		{name: "ascii", text: "Hello,\nyour order.\n", wantEnc: "7bit"},
		{name: "utf-8", text: "2 × SKU-1 — EUR 9.50\n", wantEnc: "8bit"},
		{name: "utf-8 without 8BITMIME", hide: []string{"8BITMIME"}, text: "2 × SKU-1 — EUR 9.50\n", wantEnc: "quoted-printable"},
		{name: "signature delimiter keeps its space", text: "Thanks\n-- \nordermesh\n", wantEnc: "7bit"},
		{name: "lines starting with dots", text: ".\n..\n.hidden\nend\n.", wantEnc: "7bit"},
		{name: "line of 998 octets", text: long + "\n", wantEnc: "7bit"},
		{name: "line of 999 octets", text: long + "a\n", wantEnc: "quoted-printable"},
		{name: "NUL", text: "a\x00b\n", wantEnc: "quoted-printable"},
		{name: "CR alone", text: "a\rb\n", wantText: "a\r\nb\r\n", wantEnc: "quoted-printable"},
		{name: "no line break at the end", text: "one line", wantEnc: "7bit"},
		{name: "empty", text: "", wantEnc: "7bit"},
	}
	for _, tt := range tests {
		for _, html := range []string{"<p>Hello</p>", ""} {
			t.Run(fmt.Sprintf("%s, html %v", tt.name, html != ""), func(t *testing.T) {
				s := startSink(t)
				p := newProxy(t, s.Addr())
				p.Hide(tt.hide...)
				m := newMailer(t, p.Addr(), 5*time.Second)
				e := email("enc@example.com")
				e.Text, e.HTML = tt.text, html
				if err := m.Send(context.Background(), e); err != nil {
					t.Fatalf("send: %v", err)
				}
				got := s.Messages()[0]
				if got.ParseError != "" {
					t.Fatalf("sink could not parse the message: %s\n%s", got.ParseError, got.Raw)
				}
				wantText := tt.wantText
				if wantText == "" {
					wantText = strings.ReplaceAll(tt.text, "\n", "\r\n")
				}
				if html == "" && tt.text != "" && !strings.HasSuffix(tt.text, "\n") {
					// The message data ends with a line break.
					wantText += "\r\n"
				}
				if got.Text != wantText {
					t.Errorf("text = %q, want %q\n%s", got.Text, wantText, got.Raw)
				}
				if got.HTML != html {
					t.Errorf("html = %q, want %q", got.HTML, html)
				}
				if want := "Content-Transfer-Encoding: " + tt.wantEnc + "\r\nContent-Type: text/plain; charset=UTF-8\r\n"; !strings.Contains(string(got.Raw), want) {
					t.Errorf("message lacks %q:\n%s", want, got.Raw)
				}
				if html != "" && !strings.Contains(string(got.Raw), "Content-Transfer-Encoding: 7bit\r\nContent-Type: text/html; charset=UTF-8\r\n") {
					t.Errorf("html part not 7bit:\n%s", got.Raw)
				}
				// A multipart entity with an 8bit part says it is 8bit
				// (RFC 2045 6.4); one without says nothing (7bit).
				if want := "Content-Transfer-Encoding: 8bit\r\nContent-Type: multipart/alternative;"; html != "" && strings.Contains(string(got.Raw), want) != (tt.wantEnc == "8bit") {
					t.Errorf("multipart header with a %s text part: %q present = %v\n%s", tt.wantEnc, want, !(tt.wantEnc == "8bit"), got.Raw)
				}
				for i, line := range strings.Split(string(got.Raw), "\r\n") {
					if len(line) > 998 {
						t.Errorf("line %d is %d octets long", i+1, len(line))
					}
				}
			})
		}
	}
}

func TestSendHeaders(t *testing.T) {
	s := startSink(t)
	m := newMailer(t, s.Addr(), 5*time.Second)
	long := "Order 0192f0e8-0000-7000-8000-000000000000 confirmed — thanks for shopping with ordermesh, Zoë"
	tests := []struct {
		name          string
		subject       string
		messageID     string
		wantMessageID *regexp.Regexp
	}{
		{name: "ascii", subject: "Order 42 confirmed", messageID: "42.confirmed@ordermesh", wantMessageID: regexp.MustCompile(`^<42\.confirmed@ordermesh>$`)},
		{name: "long and not ascii", subject: long, messageID: "43.confirmed@ordermesh", wantMessageID: regexp.MustCompile(`^<43\.confirmed@ordermesh>$`)},
		{name: "no message id", subject: "Order 44 confirmed", wantMessageID: regexp.MustCompile(`^<[A-Z2-7]{26}@ordermesh\.localhost>$`)},
		// The renderer keeps line breaks out of subjects; the mailer
		// encodes any it is given.
		{name: "line break", subject: "Order 45\r\nBcc: eve@example.com", messageID: "45.confirmed@ordermesh", wantMessageID: regexp.MustCompile(`^<45\.confirmed@ordermesh>$`)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s.Reset()
			e := email("headers@example.com")
			e.Subject, e.MessageID = tt.subject, tt.messageID
			if err := m.Send(context.Background(), e); err != nil {
				t.Fatalf("send: %v", err)
			}
			got := s.Messages()[0]
			if got.Subject != tt.subject {
				t.Errorf("subject = %q, want %q", got.Subject, tt.subject)
			}
			if !tt.wantMessageID.MatchString(got.MessageID) {
				t.Errorf("Message-ID = %q, want one matching %s", got.MessageID, tt.wantMessageID)
			}
			header, _, _ := strings.Cut(string(got.Raw), "\r\n\r\n")
			for i, line := range strings.Split(header, "\r\n") {
				if len(line) > 76 {
					t.Errorf("header line %d is %d characters long: %q", i+1, len(line), line)
				}
			}
			if got.Header.Get("Bcc") != "" {
				t.Errorf("the subject made a Bcc header:\n%s", got.Raw)
			}
			for _, name := range []string{"Date", "MIME-Version", "User-Agent", "X-Mailer"} {
				if got.Header.Get(name) == "" {
					t.Errorf("no %s header", name)
				}
			}
		})
	}
}

func TestSendRefusesAnInvalidMessageID(t *testing.T) {
	s := startSink(t)
	m := newMailer(t, s.Addr(), 5*time.Second)
	for _, id := range []string{"a b@ordermesh", "a>\r\nBcc: x@example.com", "é@ordermesh"} {
		e := email("id@example.com")
		e.MessageID = id
		if err := m.Send(context.Background(), e); !errors.Is(err, app.ErrRejected) {
			t.Errorf("Message-ID %q: err = %v, want ErrRejected", id, err)
		}
	}
	if n := len(s.Messages()); n != 0 {
		t.Errorf("sink received %d messages", n)
	}
}

func TestSendDoesNotRetryWhenTheReplyToTheDataIsLost(t *testing.T) {
	s := startSink(t)
	p := newProxy(t, s.Addr())
	m := newMailer(t, p.Addr(), 5*time.Second)
	if err := m.Send(context.Background(), email("first@example.com")); err != nil {
		t.Fatalf("first send: %v", err)
	}
	// On the session the first email used, the server takes the second
	// one, and its reply never arrives: whether it was accepted is unknown
	// to the mailer, which must not send it again itself.
	p.CutAfterData(true)
	err := m.Send(context.Background(), email("lost-reply@example.com"))
	if err == nil {
		t.Fatal("send with the reply lost succeeded")
	}
	if errors.Is(err, app.ErrRejected) || !errors.Is(err, app.ErrMaybeSent) {
		t.Errorf("lost reply: %v, want app.ErrMaybeSent (not a rejection)", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := s.WaitFor(ctx, func(m smtpsink.Message) bool { return m.HasRecipient("lost-reply@example.com") }); err != nil {
		t.Fatalf("the server did not get the message: %v", err)
	}
	p.CutAfterData(false)
	if err := m.Send(context.Background(), email("third@example.com")); err != nil {
		t.Fatalf("third send: %v", err)
	}
	for _, to := range []string{"first@example.com", "lost-reply@example.com", "third@example.com"} {
		expectOnce(t, s, to)
	}
	if got := p.Accepted(); got != 2 {
		t.Errorf("%d connections, want 2: the failed session dropped, no retry", got)
	}
}

func TestSendRejectionsOnAReusedSession(t *testing.T) {
	s := startSink(t)
	s.Reject("busy@example.com", 451, "try again later")
	s.Reject("gone@example.com", 550, "mailbox unavailable")
	p := newProxy(t, s.Addr())
	m := newMailer(t, p.Addr(), 5*time.Second)

	steps := []struct {
		to           string
		wantErr      bool
		wantRejected bool
	}{
		{to: "ok1@example.com"},
		{to: "busy@example.com", wantErr: true},
		{to: "ok2@example.com"},
		{to: "gone@example.com", wantErr: true, wantRejected: true},
		{to: "ok3@example.com"},
	}
	for _, st := range steps {
		err := m.Send(context.Background(), email(st.to))
		if (err != nil) != st.wantErr {
			t.Fatalf("send to %s: err = %v, want error: %v", st.to, err, st.wantErr)
		}
		if got := errors.Is(err, app.ErrRejected); got != st.wantRejected {
			t.Errorf("send to %s: errors.Is(%v, ErrRejected) = %v, want %v", st.to, err, got, st.wantRejected)
		}
	}
	for _, to := range []string{"ok1@example.com", "ok2@example.com", "ok3@example.com"} {
		expectOnce(t, s, to)
	}
	if got := len(s.Messages()); got != 3 {
		t.Errorf("sink received %d messages, want 3", got)
	}
	// Each refusal came on a reused session, which was then dropped; a
	// refusal is the server's answer, so no new connection was tried for
	// it.
	if got := p.Accepted(); got != 3 {
		t.Errorf("%d connections, want 3", got)
	}
}

func TestCloseEndsTheSessions(t *testing.T) {
	s := startSink(t)
	p := newProxy(t, s.Addr())
	cfg := mailer.DefaultConfig()
	cfg.Addr, cfg.Timeout = p.Addr(), 5*time.Second
	m, err := mailer.New(cfg, quiet)
	if err != nil {
		t.Fatalf("new mailer: %v", err)
	}
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Go(func() {
			if err := m.Send(context.Background(), email(fmt.Sprintf("close%d@example.com", i))); err != nil {
				t.Errorf("send %d: %v", i, err)
			}
		})
	}
	wg.Wait()
	if p.Open() == 0 {
		t.Fatal("no session open after sending")
	}
	m.Close()
	eventually(t, "every connection closed", func() bool { return p.Open() == 0 })
	if q, a := p.Quits(), p.Accepted(); q != a {
		t.Errorf("%d QUIT for %d connections", q, a)
	}

	// A Send after Close still delivers, on a connection of its own.
	if err := m.Send(context.Background(), email("after-close@example.com")); err != nil {
		t.Fatalf("send after close: %v", err)
	}
	expectOnce(t, s, "after-close@example.com")
	eventually(t, "the connection closed", func() bool { return p.Open() == 0 })
	if q, a := p.Quits(), p.Accepted(); q != a {
		t.Errorf("after the last send: %d QUIT for %d connections", q, a)
	}
	m.Close()
}

func TestIdleSessionsAreClosed(t *testing.T) {
	s := startSink(t)
	p := newProxy(t, s.Addr())
	m := newMailer(t, p.Addr(), 5*time.Second, mailer.WithIdleTimeout(50*time.Millisecond))
	if err := m.Send(context.Background(), email("idle1@example.com")); err != nil {
		t.Fatalf("send: %v", err)
	}
	eventually(t, "the idle session closed", func() bool { return p.Open() == 0 })
	if got := p.Quits(); got != 1 {
		t.Errorf("%d QUIT, want 1", got)
	}
	if err := m.Send(context.Background(), email("idle2@example.com")); err != nil {
		t.Fatalf("send after the idle timeout: %v", err)
	}
	if got := p.Accepted(); got != 2 {
		t.Errorf("%d connections, want 2", got)
	}
	expectOnce(t, s, "idle1@example.com")
	expectOnce(t, s, "idle2@example.com")
}

// TestSendGivesTheConfiguredHELO: EHLO carries ORDERMESH_SMTP_HELO when
// it is set; address literals are taken, other text is refused.
func TestSendGivesTheConfiguredHELO(t *testing.T) {
	s := startSink(t)
	cfg := mailer.DefaultConfig()
	cfg.Addr, cfg.Timeout, cfg.HELO = s.Addr(), 5*time.Second, "orders.example.com"
	m, err := mailer.New(cfg, quiet)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if err := m.Send(context.Background(), email("helo@example.com")); err != nil {
		t.Fatalf("send: %v", err)
	}
	if got := s.Messages()[0].HELO; got != "orders.example.com" {
		t.Errorf("EHLO %q, want orders.example.com", got)
	}
	for name, ok := range map[string]bool{"[192.0.2.1]": true, "[IPv6:2001:db8::1]": true, "[ipv6:2001:db8::1]": true, "mail": true,
		"orders example": false, "-mail.example.com": false, "mail..example.com": false, "[not-an-ip]": false, "mäil.example.com": false,
		"[2001:db8::1]": false, "[IPv6:192.0.2.1]": false, "192.0.2.1": false} {
		cfg.HELO = name
		if err := cfg.Validate(); (err == nil) != ok {
			t.Errorf("HELO %q: Validate = %v, want accepted %v", name, err, ok)
		}
	}
}

func TestNewRejectsInvalidConfig(t *testing.T) {
	cfg := mailer.DefaultConfig()
	cfg.TLS = "ssl"
	if _, err := mailer.New(cfg, quiet); err == nil || !strings.Contains(err.Error(), "ORDERMESH_SMTP_TLS") {
		t.Errorf("err = %v, want one naming ORDERMESH_SMTP_TLS", err)
	}
	// An address the mailer cannot give without SMTPUTF8; a display name
	// that is not ASCII is encoded, and fine.
	cfg = mailer.DefaultConfig()
	cfg.From = "Bestellungen <bestellungen@bäckerei.example>"
	if _, err := mailer.New(cfg, quiet); err == nil || !strings.Contains(err.Error(), "ORDERMESH_SMTP_FROM") {
		t.Errorf("From with a non-ASCII address: err = %v, want one naming ORDERMESH_SMTP_FROM", err)
	}
	cfg.From = "Bäckerei <orders@example.com>"
	m, err := mailer.New(cfg, quiet)
	if err != nil {
		t.Errorf("From with a non-ASCII display name: %v", err)
	} else {
		m.Close()
	}
}

func TestNewRejectsInvalidOptions(t *testing.T) {
	tests := []struct {
		name string
		opt  mailer.Option
	}{
		{name: "negative idle sessions", opt: mailer.WithIdleSessions(-1)},
		{name: "zero idle timeout", opt: mailer.WithIdleTimeout(0)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := mailer.New(mailer.DefaultConfig(), quiet, tt.opt); err == nil {
				t.Error("no error")
			}
		})
	}
}

// serveTCP runs handle on each connection to a loopback listener until
// the test ends, and returns the listener's address. At the end it closes
// the listener and the connections and waits for the handlers.
// greetOnly is a server that greets and answers EHLO (offering
// PIPELINING, no STARTTLS, no AUTH) and then answers nothing, and sends on
// closed, if not nil, when the client closes the connection.
func greetOnly(closed chan<- struct{}) func(net.Conn) {
	return func(c net.Conn) {
		_, _ = io.WriteString(c, "220 localhost ESMTP\r\n")
		r := bufio.NewReader(c)
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				if closed != nil {
					closed <- struct{}{}
				}
				return
			}
			if strings.HasPrefix(strings.ToUpper(line), "EHLO") {
				_, _ = io.WriteString(c, "250-localhost\r\n250 PIPELINING\r\n")
			}
		}
	}
}

func serveTCP(t *testing.T, handle func(net.Conn)) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns []net.Conn
	)
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Go(func() { handle(c) })
		}
	})
	return l.Addr().String()
}
