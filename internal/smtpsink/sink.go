// Package smtpsink is a tiny SMTP server that accepts every message, logs
// one line per message and keeps what it received in memory for inspection.
// Local runs use it as the mail catcher the notification service sends to
// (on 127.0.0.1:1025); tests start one on 127.0.0.1:0 and read the messages
// it received; the benchmark starts one that only counts them
// (WithoutKeeping).
//
// It is not a mail server: it relays nothing, stores nothing on disk and
// accepts any credentials. Bind it to a loopback address only.
package smtpsink

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// Defaults of a Sink.
const (
	// DefaultAddr is where the run command starts the sink.
	DefaultAddr = "127.0.0.1:1025"
	// MaxMessageBytes bounds the size of one message; larger ones are
	// refused with 552.
	MaxMessageBytes = 10 << 20
	// ioTimeout bounds each read and write on a connection, so a stuck
	// client cannot hold a connection open forever.
	ioTimeout = 30 * time.Second
	// closeTimeout bounds how long Close waits for connection handlers
	// after closing their connections.
	closeTimeout = 5 * time.Second
)

// Option adjusts a Sink started by Start.
type Option func(*Sink)

// WithLogger sets the logger that gets one line per received message and
// the server's connection errors. The default discards everything.
func WithLogger(log *slog.Logger) Option {
	return func(s *Sink) { s.log = log }
}

// WithoutKeeping makes the sink read each message to its end and count it
// (see Received) without parsing, keeping or logging it: for load runs, in
// which parsing and keeping every message would cost the machine more than
// the sending it stands in for. Messages, Matching and WaitFor then find
// nothing.
func WithoutKeeping() Option {
	return func(s *Sink) { s.discard = true }
}

// WithStartTLS makes the sink offer STARTTLS with config, as a mail
// submission server on port 587 does.
func WithStartTLS(config *tls.Config) Option {
	return func(s *Sink) { s.startTLS = config }
}

// WithImplicitTLS makes the sink speak TLS with config from the first
// byte, as a server on port 465 does.
func WithImplicitTLS(config *tls.Config) Option {
	return func(s *Sink) { s.implicitTLS = config }
}

// Sink is a running SMTP server. Its methods are safe for concurrent use.
type Sink struct {
	log *slog.Logger
	// startTLS and implicitTLS are set by WithStartTLS and
	// WithImplicitTLS.
	startTLS, implicitTLS *tls.Config
	srv                   *smtp.Server
	lis                   *trackingListener
	done                  chan struct{} // closed when the serving goroutines have returned
	served                chan struct{} // closed when Serve has returned
	closing               atomic.Bool   // set when shutting down begins
	// discard is set by WithoutKeeping.
	discard bool
	// received counts the messages accepted since Start.
	received atomic.Int64

	closeOnce sync.Once
	closeErr  error

	mu       sync.Mutex
	messages []Message
	changed  chan struct{} // closed and replaced whenever a message arrives
	rejects  map[string]*smtp.SMTPError
}

// Start listens on addr ("127.0.0.1:0" picks a free port) and serves SMTP
// until Close is called or ctx ends. It returns once the sink accepts
// connections.
func Start(ctx context.Context, addr string, opts ...Option) (*Sink, error) {
	s := &Sink{
		log:     slog.New(slog.DiscardHandler),
		done:    make(chan struct{}),
		served:  make(chan struct{}),
		changed: make(chan struct{}),
		rejects: map[string]*smtp.SMTPError{},
	}
	for _, opt := range opts {
		opt(s)
	}
	var lc net.ListenConfig
	l, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("start smtp sink: %w", err)
	}
	if s.implicitTLS != nil {
		l = tls.NewListener(l, s.implicitTLS)
	}
	s.lis = &trackingListener{Listener: l, conns: map[net.Conn]struct{}{}}

	s.srv = smtp.NewServer(backend{s})
	s.srv.Addr = l.Addr().String()
	s.srv.Domain = "localhost"
	s.srv.MaxMessageBytes = MaxMessageBytes
	s.srv.MaxRecipients = 100
	s.srv.AllowInsecureAuth = true
	s.srv.TLSConfig = s.startTLS
	s.srv.ReadTimeout = ioTimeout
	s.srv.WriteTimeout = ioTimeout
	s.srv.ErrorLog = errorLog{s.log}

	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		defer close(s.served)
		// Serve returns when shutdown closes the listener; otherwise the
		// listener broke, and the sink is of no use any more.
		if err := s.srv.Serve(s.lis); err != nil && !s.closing.Load() {
			s.log.ErrorContext(ctx, "smtp sink stopped serving", slog.String("addr", s.Addr()), slog.Any("error", err))
		}
	}()
	go func() {
		defer wg.Done()
		select {
		case <-ctx.Done():
			_ = s.shutdown() // Close reports the error to whoever calls it.
		case <-s.served:
		}
	}()
	go func() {
		wg.Wait()
		close(s.done)
	}()
	return s, nil
}

// Run serves SMTP on addr until ctx ends, then closes the sink. It is the
// form the run command starts in its errgroup.
func Run(ctx context.Context, addr string, log *slog.Logger) error {
	s, err := Start(ctx, addr, WithLogger(log))
	if err != nil {
		return err
	}
	log.InfoContext(ctx, "smtp sink listening", slog.String("addr", s.Addr()))
	<-ctx.Done()
	return s.Close()
}

// Addr returns the address the sink listens on, with the port it chose.
func (s *Sink) Addr() string {
	return s.lis.Addr().String()
}

// Close stops accepting connections, closes open ones (a message not yet
// fully received is lost, and its client sees an error) and waits for the
// sink's goroutines to return. The received messages stay readable. Calling
// Close again returns the first call's result.
func (s *Sink) Close() error {
	err := s.shutdown()
	<-s.done
	return err
}

func (s *Sink) shutdown() error {
	s.closeOnce.Do(func() {
		// Closing the listener closes every open connection (see
		// trackingListener) and ends Serve, also one that had not started
		// yet. Only then may the server's Shutdown wait for the
		// connections' handlers: go-smtp counts a connection Serve
		// accepted with a WaitGroup, whose Add must not race that Wait.
		s.closing.Store(true)
		_ = s.lis.Close()
		<-s.served
		ctx, cancel := context.WithTimeout(context.Background(), closeTimeout)
		defer cancel()
		if err := s.srv.Shutdown(ctx); err != nil {
			s.closeErr = fmt.Errorf("close smtp sink: %w", err)
		}
	})
	return s.closeErr
}

// Reject makes the sink answer RCPT TO for rcpt, and MAIL FROM for it as
// a sender (compared without case), with code and text instead of
// accepting it, e.g. 550 for an unknown mailbox or 451 for a temporary
// failure. A code of 0 accepts rcpt again.
func (s *Sink) Reject(rcpt string, code int, text string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	key := strings.ToLower(rcpt)
	if code == 0 {
		delete(s.rejects, key)
		return
	}
	s.rejects[key] = &smtp.SMTPError{Code: code, EnhancedCode: smtp.EnhancedCodeNotSet, Message: text}
}

func (s *Sink) rejection(rcpt string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e, ok := s.rejects[strings.ToLower(rcpt)]; ok {
		return e
	}
	return nil
}

// Messages returns a copy of the messages received so far, oldest first.
func (s *Sink) Messages() []Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Message, len(s.messages))
	for i, m := range s.messages {
		out[i] = m.clone()
	}
	return out
}

// Matching returns the received messages for which match reports true,
// oldest first.
func (s *Sink) Matching(match func(Message) bool) []Message {
	var out []Message
	for _, m := range s.Messages() {
		if match(m) {
			out = append(out, m)
		}
	}
	return out
}

// WaitFor returns the first received message for which match reports true,
// waiting for one to arrive until ctx ends.
func (s *Sink) WaitFor(ctx context.Context, match func(Message) bool) (Message, error) {
	for {
		s.mu.Lock()
		changed := s.changed
		for _, m := range s.messages {
			if match(m) {
				s.mu.Unlock()
				return m.clone(), nil
			}
		}
		s.mu.Unlock()
		select {
		case <-ctx.Done():
			return Message{}, fmt.Errorf("wait for smtp message: %w", ctx.Err())
		case <-changed:
		}
	}
}

// Received returns how many messages the sink has accepted since it
// started, kept or not; Reset does not change it.
func (s *Sink) Received() int64 {
	return s.received.Load()
}

// Reset forgets the received messages.
func (s *Sink) Reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.messages = nil
}

func (s *Sink) add(m Message) {
	s.received.Add(1)
	s.mu.Lock()
	s.messages = append(s.messages, m)
	close(s.changed)
	s.changed = make(chan struct{})
	s.mu.Unlock()
	s.log.Info("smtp message received",
		slog.String("from", m.From),
		slog.String("to", strings.Join(m.To, ", ")),
		slog.String("subject", m.Subject),
		slog.String("message_id", m.MessageID),
		slog.Int("bytes", len(m.Raw)))
}

// backend starts a session per connection.
type backend struct{ sink *Sink }

func (b backend) NewSession(c *smtp.Conn) (smtp.Session, error) {
	return &session{sink: b.sink, conn: c}, nil
}

// session is one SMTP connection's transaction state.
type session struct {
	sink *Sink
	conn *smtp.Conn
	user string // authenticated as, if at all
	from string
	to   []string
}

var _ smtp.AuthSession = (*session)(nil)

// AuthMechanisms offers PLAIN, so clients configured with credentials can
// talk to the sink too.
func (*session) AuthMechanisms() []string { return []string{sasl.Plain} }

// Auth accepts any credentials, and remembers the user name.
func (s *session) Auth(string) (sasl.Server, error) {
	return sasl.NewPlainServer(func(_, user, _ string) error {
		s.user = user
		return nil
	}), nil
}

func (s *session) Mail(from string, _ *smtp.MailOptions) error {
	if err := s.sink.rejection(from); err != nil {
		return err
	}
	s.from = from
	return nil
}

func (s *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	if err := s.sink.rejection(to); err != nil {
		return err
	}
	s.to = append(s.to, to)
	return nil
}

func (s *session) Data(r io.Reader) error {
	if s.sink.discard {
		if _, err := io.Copy(io.Discard, r); err != nil {
			return fmt.Errorf("read message: %w", err)
		}
		s.sink.received.Add(1)
		return nil
	}
	raw, err := io.ReadAll(r)
	if err != nil {
		return fmt.Errorf("read message: %w", err)
	}
	m := parse(raw)
	m.From, m.To, m.Received = s.from, append([]string(nil), s.to...), time.Now()
	// With implicit TLS every connection is encrypted (the tracking
	// listener's wrapper hides its *tls.Conn from TLSConnectionState).
	_, startedTLS := s.conn.TLSConnectionState()
	m.TLS = startedTLS || s.sink.implicitTLS != nil
	m.User = s.user
	m.HELO = s.conn.Hostname()
	s.sink.add(m)
	return nil
}

func (s *session) Reset() {
	s.from, s.to = "", nil
}

func (*session) Logout() error { return nil }

// trackingListener remembers the connections it accepted, so that closing
// it (which smtp.Server.Shutdown does) also closes them and Shutdown does
// not wait on idle clients.
type trackingListener struct {
	net.Listener

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
}

func (l *trackingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		_ = c.Close()
		return nil, net.ErrClosed
	}
	tc := &trackedConn{Conn: c, l: l}
	l.conns[tc] = struct{}{}
	return tc, nil
}

// Close closes the listener and every connection it accepted. Calls after
// the first do nothing.
func (l *trackingListener) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	conns := make([]net.Conn, 0, len(l.conns))
	for c := range l.conns {
		conns = append(conns, c)
	}
	l.mu.Unlock()
	err := l.Listener.Close()
	for _, c := range conns {
		_ = c.Close() // The connection's handler sees the error and returns.
	}
	return err
}

type trackedConn struct {
	net.Conn
	l    *trackingListener
	once sync.Once
}

func (c *trackedConn) Close() error {
	c.once.Do(func() {
		c.l.mu.Lock()
		delete(c.l.conns, c)
		c.l.mu.Unlock()
	})
	return c.Conn.Close()
}

// errorLog sends the SMTP server's own log lines to slog.
type errorLog struct{ log *slog.Logger }

func (e errorLog) Printf(format string, v ...any) {
	e.log.Warn("smtp sink", slog.String("detail", fmt.Sprintf(format, v...)))
}

func (e errorLog) Println(v ...any) {
	e.log.Warn("smtp sink", slog.String("detail", strings.TrimSuffix(fmt.Sprintln(v...), "\n")))
}
