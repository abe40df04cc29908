package smtpsink_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/ordermesh/ordermesh/internal/smtpsink"
)

func start(t *testing.T, opts ...smtpsink.Option) *smtpsink.Sink {
	t.Helper()
	s, err := smtpsink.Start(context.Background(), "127.0.0.1:0", opts...)
	if err != nil {
		t.Fatalf("start sink: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("close sink: %v", err)
		}
	})
	return s
}

// send delivers msg (with LF line ends) over a plaintext connection.
func send(addr, from string, to []string, msg string) error {
	c, err := smtp.Dial(addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.SendMail(from, to, strings.NewReader(strings.ReplaceAll(msg, "\n", "\r\n"))); err != nil {
		return err
	}
	return c.Quit()
}

const multipartMessage = `From: Shop <shop@example.com>
To: ada@example.com
Subject: =?UTF-8?q?Order_caf=C3=A9?=
Message-ID: <42.received@ordermesh>
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary=outer

--outer
Content-Type: multipart/alternative; boundary=inner

--inner
Content-Type: text/plain; charset=UTF-8
Content-Transfer-Encoding: quoted-printable

Total: EUR 20.00 =E2=80=94 thank you, a very long line that is soft-wrap=
ped.
--inner
Content-Type: text/html; charset=UTF-8
Content-Transfer-Encoding: base64

PHA+VG90YWw6IEVVUiAyMC4wMDwvcD4=
--inner--
--outer
Content-Type: application/pdf
Content-Transfer-Encoding: base64

JVBERg==
--outer--
`

func TestReceivesAndParses(t *testing.T) {
	var logs bytes.Buffer
	var logMu sync.Mutex
	log := slog.New(slog.NewJSONHandler(&lockedWriter{w: &logs, mu: &logMu}, nil))
	s := start(t, smtpsink.WithLogger(log))

	tests := []struct {
		name string
		msg  string
		want smtpsink.Message
	}{
		{
			name: "nested multipart with quoted-printable and base64",
			msg:  multipartMessage,
			want: smtpsink.Message{
				From:      "shop@example.com",
				To:        []string{"ada@example.com", "audit@example.com"},
				Subject:   "Order café",
				MessageID: "<42.received@ordermesh>",
				Text:      "Total: EUR 20.00 — thank you, a very long line that is soft-wrapped.",
				HTML:      "<p>Total: EUR 20.00</p>",
			},
		},
		{
			name: "plain single-part message",
			msg:  "From: shop@example.com\nSubject: hello\n\nline one\nline two\n",
			want: smtpsink.Message{
				From:    "shop@example.com",
				To:      []string{"ada@example.com", "audit@example.com"},
				Subject: "hello",
				Text:    "line one\r\nline two\r\n",
			},
		},
		{
			name: "unparseable header is kept raw",
			msg:  "this is not a header\n",
			want: smtpsink.Message{
				From:       "shop@example.com",
				To:         []string{"ada@example.com", "audit@example.com"},
				ParseError: "read message: malformed header line: this is not a header",
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s.Reset()
			if err := send(s.Addr(), "shop@example.com", []string{"ada@example.com", "audit@example.com"}, tt.msg); err != nil {
				t.Fatalf("send: %v", err)
			}
			got := s.Messages()
			if len(got) != 1 {
				t.Fatalf("received %d messages, want 1", len(got))
			}
			if !bytes.Equal(got[0].Raw, []byte(strings.ReplaceAll(tt.msg, "\n", "\r\n"))) {
				t.Errorf("raw message differs from what was sent:\n%s", got[0].Raw)
			}
			if got[0].Received.IsZero() {
				t.Error("received time not set")
			}
			opts := cmpopts.IgnoreFields(smtpsink.Message{}, "Raw", "Received", "Header")
			tt.want.HELO = "localhost" // what net/smtp's client says in EHLO
			if diff := cmp.Diff(tt.want, got[0], opts); diff != "" {
				t.Errorf("message (-want +got):\n%s", diff)
			}
		})
	}

	logMu.Lock()
	defer logMu.Unlock()
	if n := strings.Count(logs.String(), `"msg":"smtp message received"`); n != len(tests) {
		t.Errorf("logged %d received lines, want %d:\n%s", n, len(tests), logs.String())
	}
	if !strings.Contains(logs.String(), `"subject":"Order café"`) {
		t.Errorf("log lacks the subject:\n%s", logs.String())
	}
}

type lockedWriter struct {
	w  *bytes.Buffer
	mu *sync.Mutex
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func TestWithoutKeeping(t *testing.T) {
	var logs bytes.Buffer
	s := start(t, smtpsink.WithoutKeeping(), smtpsink.WithLogger(slog.New(slog.NewTextHandler(&logs, nil))))
	for i := range 3 {
		if err := send(s.Addr(), "shop@example.com", []string{"ada@example.com"}, multipartMessage); err != nil {
			t.Fatalf("send message %d: %v", i, err)
		}
	}
	// A message over the size limit is refused, and not counted.
	tooLarge := "Subject: big\n\n" + strings.Repeat(strings.Repeat("x", 999)+"\n", smtpsink.MaxMessageBytes/1000+1)
	if err := send(s.Addr(), "shop@example.com", []string{"ada@example.com"}, tooLarge); err == nil {
		t.Fatal("a message over the size limit was accepted")
	}
	s.Reject("bounce@example.com", 550, "no such mailbox")
	if err := send(s.Addr(), "shop@example.com", []string{"bounce@example.com"}, "Subject: x\n\nx\n"); err == nil {
		t.Fatal("a message to a rejected recipient was accepted")
	}
	if got := s.Received(); got != 3 {
		t.Errorf("Received() = %d, want 3", got)
	}
	if msgs := s.Messages(); len(msgs) != 0 {
		t.Errorf("kept %d messages", len(msgs))
	}
	if strings.Contains(logs.String(), "smtp message received") {
		t.Errorf("logged the messages it did not keep:\n%s", logs.String())
	}
}

func TestReceivedCountsKeptMessages(t *testing.T) {
	s := start(t)
	for i := range 2 {
		if err := send(s.Addr(), "shop@example.com", []string{"ada@example.com"}, multipartMessage); err != nil {
			t.Fatalf("send message %d: %v", i, err)
		}
	}
	s.Reset()
	if got, kept := s.Received(), len(s.Messages()); got != 2 || kept != 0 {
		t.Errorf("after Reset: Received() = %d, %d kept; want 2 received, none kept", got, kept)
	}
}

func TestRejectRecipient(t *testing.T) {
	s := start(t)
	tests := []struct {
		name     string
		code     int
		wantCode int
	}{
		{name: "permanent", code: 550, wantCode: 550},
		{name: "temporary", code: 451, wantCode: 451},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s.Reject("Bounce@Example.com", tt.code, "no such mailbox")
			err := send(s.Addr(), "shop@example.com", []string{"bounce@example.com"}, "Subject: x\n\nx\n")
			var smtpErr *smtp.SMTPError
			if !errors.As(err, &smtpErr) || smtpErr.Code != tt.wantCode {
				t.Fatalf("send err = %v, want SMTP %d", err, tt.wantCode)
			}
			if n := len(s.Messages()); n != 0 {
				t.Errorf("kept %d messages for a rejected recipient", n)
			}
		})
	}
	s.Reject("bounce@example.com", 0, "")
	if err := send(s.Addr(), "shop@example.com", []string{"bounce@example.com"}, "Subject: x\n\nx\n"); err != nil {
		t.Fatalf("send after lifting the rejection: %v", err)
	}
}

func TestWaitFor(t *testing.T) {
	s := start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	var wg sync.WaitGroup
	defer wg.Wait()
	errc := make(chan error, 5)
	for i := range 5 {
		wg.Go(func() {
			time.Sleep(20 * time.Millisecond)
			errc <- send(s.Addr(), "shop@example.com", []string{fmt.Sprintf("c%d@example.com", i)}, fmt.Sprintf("Subject: n%d\n\nbody\n", i))
		})
	}
	got, err := s.WaitFor(ctx, func(m smtpsink.Message) bool { return m.HasRecipient("C3@example.com") })
	if err != nil {
		t.Fatalf("wait: %v", err)
	}
	if got.Subject != "n3" {
		t.Errorf("subject = %q, want n3", got.Subject)
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		if err != nil {
			t.Errorf("send: %v", err)
		}
	}
	if n := len(s.Messages()); n != 5 {
		t.Errorf("received %d messages, want 5", n)
	}
	if n := len(s.Matching(func(m smtpsink.Message) bool { return m.Subject == "n1" })); n != 1 {
		t.Errorf("matching n1 = %d, want 1", n)
	}

	short, cancelShort := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancelShort()
	if _, err := s.WaitFor(short, func(smtpsink.Message) bool { return false }); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("wait for nothing: err = %v, want DeadlineExceeded", err)
	}
}

func TestCloseEndsIdleConnectionsAndFreesThePort(t *testing.T) {
	s, err := smtpsink.Start(context.Background(), "127.0.0.1:0")
	if err != nil {
		t.Fatalf("start: %v", err)
	}
	addr := s.Addr()
	// An idle client must not keep Close waiting.
	c, err := smtp.Dial(addr)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer c.Close()
	if err := c.Hello("localhost"); err != nil {
		t.Fatalf("hello: %v", err)
	}

	begin := time.Now()
	if err := s.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	if d := time.Since(begin); d > 2*time.Second {
		t.Errorf("close took %v with an idle client", d)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second close: %v", err)
	}
	if err := send(addr, "a@example.com", []string{"b@example.com"}, "Subject: x\n\nx\n"); err == nil {
		t.Error("send to a closed sink succeeded")
	}

	// The same address can serve again, as tests that take the server
	// down and bring it back rely on.
	again, err := smtpsink.Start(context.Background(), addr)
	if err != nil {
		t.Fatalf("restart on %s: %v", addr, err)
	}
	defer again.Close()
	if err := send(addr, "a@example.com", []string{"b@example.com"}, "Subject: x\n\nx\n"); err != nil {
		t.Errorf("send to restarted sink: %v", err)
	}
}

func TestContextEndStopsTheSink(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	s, err := smtpsink.Start(ctx, "127.0.0.1:0")
	if err != nil {
		t.Fatalf("start: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	cancel()
	// Without Close: the context's end alone stops it.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		c, err := net.DialTimeout("tcp", s.Addr(), time.Second)
		if err != nil {
			break
		}
		c.Close()
		if time.Now().After(deadline) {
			t.Fatal("sink still accepts connections 10 s after its context ended")
		}
	}
	if err := s.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
}

func TestRun(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	// Find a free port first; Run reports its address only in the log.
	probe, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	addr := probe.Addr().String()
	probe.Close()

	done := make(chan error, 1)
	go func() { done <- smtpsink.Run(ctx, addr, slog.New(slog.DiscardHandler)) }()
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := send(addr, "a@example.com", []string{"b@example.com"}, "Subject: x\n\nx\n")
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("send to Run's sink: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("run: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after its context ended")
	}
}
