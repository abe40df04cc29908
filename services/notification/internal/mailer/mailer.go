// Package mailer sends the notification service's emails over SMTP. It
// implements app.Sender.
//
// # Sessions
//
// A Mailer keeps a few SMTP sessions open (connected, greeted, and
// upgraded to TLS and authenticated as configured, by
// github.com/wneessen/go-mail) and sends each email over one of them, so
// that most emails cost one mail transaction instead of a new connection.
// A session carries one email at a time. A session that failed in any way
// is closed and never used again; one that has been idle for the idle
// timeout is closed with QUIT, as is every idle session when the Mailer is
// closed.
//
// # The mail transaction
//
// The Mailer writes each message and runs its transaction itself, on the
// session's connection: MAIL FROM, RCPT TO and DATA go out together when
// the server offers PIPELINING (RFC 2920), one by one otherwise, then the
// message, so that an email costs two round trips. A transaction that
// succeeded leaves the session ready for the next one (RFC 5321 4.1.1.4):
// no RSET follows it, and no NOOP precedes the next, since MAIL FROM on a
// closed session fails just as surely, before the message went out. Each
// body goes as it is, 7bit or, where the server offers 8BITMIME, 8bit,
// unless it cannot (a line over 998 octets, a CR, a NUL), when it goes
// quoted-printable.
//
// A server may close an idle session at any time. When an email fails on
// a session that had already carried one, before the message data went
// out (the connection turned out closed, or the server answered 421 to
// say it is closing it), the server cannot have taken the email, and
// Send tries once more on a new connection. A failure once the data is on
// its way is never retried here: the server may have taken the email.
package mailer

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	netmail "net/mail"
	"net/textproto"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/wneessen/go-mail"
	"github.com/wneessen/go-mail/smtp"

	"github.com/ordermesh/ordermesh/services/notification/internal/app"
)

// Defaults of a Mailer made by New.
const (
	// DefaultIdleSessions is how many idle sessions a Mailer keeps open
	// unless WithIdleSessions says otherwise. The service passes its
	// consumer concurrency instead, the most emails it sends at once.
	DefaultIdleSessions = 4
	// DefaultIdleTimeout is how long a session may stay idle before the
	// Mailer closes it: below the 30 s after which the built-in SMTP sink
	// drops a silent client, and far below the 5 minutes RFC 5321 asks
	// servers to wait.
	DefaultIdleTimeout = 20 * time.Second
)

// Mailer sends emails to one SMTP server over a small pool of open
// sessions (see the package documentation). It is safe for concurrent use.
type Mailer struct {
	client      *mail.Client
	cfg         Config
	tlsConfig   *tls.Config // nil in TLSNone mode
	log         *slog.Logger
	maxIdle     int
	idleTimeout time.Duration
	// fromHeader is the From header's value, reversePath the envelope
	// sender (MAIL FROM) and domain the sender's domain, which generated
	// Message-IDs end with.
	fromHeader, reversePath, domain string

	mu     sync.Mutex
	idle   []*session // the most recently used last
	closed bool
	// quitting counts the idle timers' goroutines closing a session, for
	// Close to wait on.
	quitting sync.WaitGroup
}

// session is one open SMTP connection.
type session struct {
	smtp *smtp.Client
	// pipelining and eightBit say whether the server offers PIPELINING
	// and 8BITMIME; mailParams are the parameters of MAIL FROM.
	pipelining, eightBit bool
	mailParams           string
	// timer closes the session once it has been idle for the idle timeout;
	// idleSince is when it was last put back. Both are guarded by the
	// Mailer's mu.
	timer     *time.Timer
	idleSince time.Time
}

var _ app.Sender = (*Mailer)(nil)

// Option adjusts a Mailer made by New.
type Option func(*Mailer)

// WithIdleSessions makes the Mailer keep at most n idle sessions open
// (DefaultIdleSessions otherwise). Emails sent at once beyond that many
// still get a session each, which is closed after its email. With 0 every
// email gets a connection of its own.
func WithIdleSessions(n int) Option {
	return func(m *Mailer) { m.maxIdle = n }
}

// WithIdleTimeout makes the Mailer close a session that has carried no
// email for d (DefaultIdleTimeout otherwise).
func WithIdleTimeout(d time.Duration) Option {
	return func(m *Mailer) { m.idleTimeout = d }
}

// New returns a Mailer for cfg. It does not connect: an unreachable server
// shows as errors from Send, which the bus retries. Close it when done.
func New(cfg Config, log *slog.Logger, opts ...Option) (*Mailer, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("new mailer: %w", err)
	}
	from, err := netmail.ParseAddress(cfg.From)
	if err != nil {
		return nil, fmt.Errorf("new mailer: %s: %w", EnvFrom, err)
	}
	host, portText, err := net.SplitHostPort(cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("new mailer: %s: %w", EnvAddr, err)
	}
	port, err := strconv.Atoi(portText)
	if err != nil {
		return nil, fmt.Errorf("new mailer: %s: port %q: %w", EnvAddr, portText, err)
	}
	m := &Mailer{
		fromHeader: from.String(), reversePath: smtpPath(from), domain: from.Address[strings.LastIndexByte(from.Address, '@')+1:],
		cfg: cfg, log: log, maxIdle: DefaultIdleSessions, idleTimeout: DefaultIdleTimeout,
	}
	for _, opt := range opts {
		opt(m)
	}
	if m.maxIdle < 0 {
		return nil, fmt.Errorf("new mailer: %d idle sessions: must not be negative", m.maxIdle)
	}
	if m.idleTimeout <= 0 {
		return nil, fmt.Errorf("new mailer: idle timeout %s: must be positive", m.idleTimeout)
	}
	// The client dials, greets, upgrades and authenticates sessions, and
	// ends them; the mail transactions are the Mailer's own (see the
	// package documentation).
	mopts := []mail.Option{mail.WithPort(port), mail.WithTimeout(cfg.Timeout), mail.WithDialContextFunc(m.dialContext)}
	if cfg.HELO != "" {
		mopts = append(mopts, mail.WithHELO(cfg.HELO))
	}
	if cfg.TLS != TLSNone {
		m.tlsConfig = &tls.Config{ServerName: host, MinVersion: tls.VersionTLS12}
		if cfg.CAFile != "" {
			if m.tlsConfig.RootCAs, err = readCAs(cfg.CAFile); err != nil {
				return nil, fmt.Errorf("new mailer: %s: %w", EnvCAFile, err)
			}
		}
		mopts = append(mopts, mail.WithTLSConfig(m.tlsConfig))
	}
	switch cfg.TLS {
	case TLSNone:
		mopts = append(mopts, mail.WithTLSPolicy(mail.NoTLS))
	case TLSStartTLS:
		mopts = append(mopts, mail.WithTLSPolicy(mail.TLSMandatory))
	case TLSImplicit:
		// dialContext speaks TLS from the first byte; no STARTTLS is
		// offered over it, and go-mail reads the TLS state it finds.
		mopts = append(mopts, mail.WithTLSPolicy(mail.TLSOpportunistic))
	}
	if cfg.Username != "" {
		mopts = append(mopts, mail.WithSMTPAuth(mail.SMTPAuthAutoDiscover),
			mail.WithUsername(cfg.Username), mail.WithPassword(cfg.Password))
	}
	if m.client, err = mail.NewClient(host, mopts...); err != nil {
		return nil, fmt.Errorf("new mailer: %w", err)
	}
	return m, nil
}

// Send delivers e. It returns an error wrapping app.ErrRejected when the
// server answers a recipient or the message data with a permanent (5xx)
// failure, or MAIL FROM with 552 (the message's size), and when e cannot
// be sent at all (an address that does not parse, a Message-ID that is
// not one); one wrapping app.ErrUnreachable when no session opens or the
// server answers MAIL FROM with another 5xx (it refuses the sender); one
// wrapping app.ErrDeferred when it answers the transaction with a
// temporary (4xx) failure. A message the server accepted counts as sent.
//
// Connecting ends when ctx does, and at the latest after the configured
// timeout; the exchange over a session ends after that timeout or at
// ctx's deadline, whichever comes first (it does not notice ctx's
// cancellation). An email that found its session closed by the server and
// goes out again on a new connection can take up to twice the timeout,
// unless ctx's deadline comes sooner.
func (m *Mailer) Send(ctx context.Context, e app.Email) error {
	to, err := netmail.ParseAddress(e.To)
	if err != nil {
		// An address the client cannot even parse will never be accepted.
		return fmt.Errorf("send email to %q: %w: %w", e.To, app.ErrRejected, err)
	}
	env := envelope{from: m.fromHeader, to: to.String(), messageID: e.MessageID, date: time.Now(), boundary: newBoundary()}
	if env.messageID == "" {
		env.messageID = rand.Text() + "@" + m.domain
	} else if err := checkMessageID(env.messageID); err != nil {
		return fmt.Errorf("send email to %s: %w: %w", e.To, app.ErrRejected, err)
	}
	forwardPath := smtpPath(to)
	if err := ctx.Err(); err != nil {
		// Ended before it began (its batch ran out of time): this says
		// nothing about the server.
		return fmt.Errorf("send email to %s: %w", e.To, err)
	}

	deadline, _ := ctx.Deadline()
	ctx, cancel := context.WithTimeout(ctx, m.cfg.Timeout)
	defer cancel()
	s, reused, err := m.take(ctx)
	if err != nil {
		return fmt.Errorf("send email to %s via %s: %w", e.To, m.cfg.Addr, err)
	}
	buf := messageBuffers.Get().(*[]byte)
	defer func() {
		if cap(*buf) <= maxPooledMessage {
			messageBuffers.Put(buf)
		}
	}()
	env.eightBit = s.eightBit
	*buf = appendMessage((*buf)[:0], env, e)
	err = m.transact(s, deadline, forwardPath, *buf)
	if err != nil && reused && retryable(err) && ctx.Err() == nil {
		m.discard(s)
		m.log.DebugContext(ctx, "smtp session closed by the server before the email went out; sending on a new connection",
			slog.String("message_id", e.MessageID), slog.Any("error", err))
		if s, err = m.dial(ctx); err != nil {
			return fmt.Errorf("send email to %s via %s: %w", e.To, m.cfg.Addr, err)
		}
		if s.eightBit != env.eightBit {
			env.eightBit = s.eightBit
			*buf = appendMessage((*buf)[:0], env, e)
		}
		err = m.transact(s, deadline, forwardPath, *buf)
	}
	if err != nil {
		m.discard(s)
	} else {
		m.put(s)
	}
	switch {
	case err == nil:
		return nil
	case senderRefused(err):
		return fmt.Errorf("send email to %s via %s: the server refuses the sender (ORDERMESH_SMTP_FROM) or wants authentication: %w: %w", e.To, m.cfg.Addr, app.ErrUnreachable, err)
	case rejected(err):
		return fmt.Errorf("send email to %s via %s: %w: %w", e.To, m.cfg.Addr, app.ErrRejected, err)
	case unanswered(err):
		return fmt.Errorf("send email to %s via %s: the server stopped answering before the message went out: %w: %w", e.To, m.cfg.Addr, app.ErrDeferred, err)
	case deferred(err):
		return fmt.Errorf("send email to %s via %s: %w: %w", e.To, m.cfg.Addr, app.ErrDeferred, err)
	case lostReply(err):
		return fmt.Errorf("send email to %s via %s: the message went out, its reply did not come: %w: %w", e.To, m.cfg.Addr, app.ErrMaybeSent, err)
	default:
		return fmt.Errorf("send email to %s via %s: %w", e.To, m.cfg.Addr, err)
	}
}

// messageBuffers holds the buffers messages are written to, each a
// *[]byte; one larger than maxPooledMessage is left to the collector.
var messageBuffers = sync.Pool{New: func() any { b := make([]byte, 0, 4<<10); return &b }}

const maxPooledMessage = 64 << 10

// transact sends msg, a message as appendMessage writes it, to the
// address forwardPath (angle brackets included) in one mail transaction
// on s, and returns nil once the server accepted it. The transaction ends
// after the configured timeout, or at deadline if that is not zero and
// comes sooner. Its errors are *transactionError, saying how far the
// transaction went.
func (m *Mailer) transact(s *session, deadline time.Time, forwardPath string, msg []byte) error {
	timeout := m.cfg.Timeout
	if !deadline.IsZero() {
		timeout = min(timeout, time.Until(deadline))
	}
	if timeout <= 0 {
		return &transactionError{stage: stageSession, err: context.DeadlineExceeded}
	}
	// cut says the caller's deadline, not the server's own timeout,
	// bounds the transaction: a wait for the last reply that it ended
	// says nothing of the server.
	cut := timeout < m.cfg.Timeout
	if err := s.smtp.UpdateDeadline(timeout); err != nil {
		return &transactionError{stage: stageSession, err: err}
	}
	text := s.smtp.Text
	cmds := [...]struct {
		stage stage
		code  int // expected reply; 25 is any 25x
		line  []string
	}{
		{stageMail, 250, []string{"MAIL FROM:", m.reversePath, s.mailParams}},
		{stageRcpt, 25, []string{"RCPT TO:", forwardPath}},
		{stageData, 354, []string{"DATA"}},
	}
	replied := 0
	for i, cmd := range cmds {
		for _, part := range cmd.line {
			_, _ = text.W.WriteString(part) // A write error shows at Flush.
		}
		_, _ = text.W.WriteString("\r\n")
		if s.pipelining && i < len(cmds)-1 {
			continue
		}
		if err := text.W.Flush(); err != nil {
			return &transactionError{stage: cmds[replied].stage, err: err}
		}
		for ; replied <= i; replied++ {
			if _, _, err := text.ReadResponse(cmds[replied].code); err != nil {
				return &transactionError{stage: cmds[replied].stage, err: err}
			}
		}
	}
	if _, err := text.W.Write(msg); err != nil {
		return &transactionError{stage: stageMessage, err: err}
	}
	if err := text.W.Flush(); err != nil {
		return &transactionError{stage: stageMessage, err: err}
	}
	if _, _, err := text.ReadResponse(250); err != nil {
		return &transactionError{stage: stageAccept, err: err, cut: cut}
	}
	return nil
}

// stage is how far a mail transaction went.
type stage string

// The stages of a mail transaction.
const (
	stageSession stage = "extend the session's deadline"
	stageMail    stage = "MAIL FROM"
	stageRcpt    stage = "RCPT TO"
	stageData    stage = "DATA"
	stageMessage stage = "send the message"
	stageAccept  stage = "message accepted"
)

// transactionError is a mail transaction's failure at a stage: a reply
// other than the one expected (a *textproto.Error), or a failure of the
// connection.
type transactionError struct {
	stage stage
	err   error
	// cut says the caller's deadline ended the transaction's time before
	// the server's timeout would have.
	cut bool
}

func (e *transactionError) Error() string {
	return fmt.Sprintf("smtp %s: %v", e.stage, e.err)
}

func (e *transactionError) Unwrap() error { return e.err }

// code returns the server's reply code, or 0 when the failure was not a
// reply.
func (e *transactionError) code() int {
	var te *textproto.Error
	if errors.As(e.err, &te) {
		return te.Code
	}
	return 0
}

// smtpPath returns a in angle brackets without its name, as MAIL FROM and
// RCPT TO take it.
func smtpPath(a *netmail.Address) string {
	return (&netmail.Address{Address: a.Address}).String()
}

// checkMessageID returns an error unless id can stand between the angle
// brackets of a Message-ID header: printable ASCII, no space, no angle
// bracket.
func checkMessageID(id string) error {
	for i := 0; i < len(id); i++ {
		if c := id[i]; c <= ' ' || c > '~' || c == '<' || c == '>' {
			return fmt.Errorf("message id %q: byte %q not allowed", id, c)
		}
	}
	return nil
}

// Domain returns the domain of the address the emails come from
// (Config.From).
func (m *Mailer) Domain() string { return m.domain }

// Close ends the idle sessions with QUIT and closes their connections, and
// waits for sessions that idle timers are closing. Sessions in use are
// closed when their Send returns; Sends after Close still work, each over
// a connection of its own. Failures to say QUIT are logged, not returned:
// every email the sessions carried was accepted by then. Calling Close
// again does nothing.
func (m *Mailer) Close() {
	m.mu.Lock()
	m.closed = true
	idle := m.idle
	m.idle = nil
	for _, s := range idle {
		s.timer.Stop()
	}
	m.mu.Unlock()

	var wg sync.WaitGroup
	for _, s := range idle {
		wg.Go(func() { m.quit(s) })
	}
	wg.Wait()
	m.quitting.Wait()
}

// take returns an idle session, the most recently used one, or dials a new
// one; reused says which.
func (m *Mailer) take(ctx context.Context) (s *session, reused bool, err error) {
	m.mu.Lock()
	if n := len(m.idle); n > 0 {
		s = m.idle[n-1]
		m.idle[n-1] = nil
		m.idle = m.idle[:n-1]
		s.timer.Stop() // If it fired already, expire finds s gone and leaves it.
	}
	m.mu.Unlock()
	if s != nil {
		return s, true, nil
	}
	s, err = m.dial(ctx)
	return s, false, err
}

// dial opens a new session: connection, greeting, EHLO, and STARTTLS and
// AUTH as configured, ending when ctx does. A connection whose setup
// failed is closed.
func (m *Mailer) dial(ctx context.Context) (*session, error) {
	dl := &dialing{ctx: ctx}
	c, err := m.client.DialToSMTPClientWithContext(context.WithValue(ctx, dialingKey{}, dl))
	if err != nil {
		if dl.conn != nil {
			_ = dl.conn.Close()
		}
		return nil, fmt.Errorf("connect: %w: %w", app.ErrUnreachable, err)
	}
	if dl.conn != nil {
		dl.conn.setUp()
	}
	s := &session{smtp: c}
	s.pipelining, _ = c.Extension("PIPELINING")
	s.eightBit, _ = c.Extension("8BITMIME")
	// The parameters go-mail gave MAIL FROM.
	if s.eightBit {
		s.mailParams += " BODY=8BITMIME"
	}
	if ok, _ := c.Extension("SMTPUTF8"); ok {
		s.mailParams += " SMTPUTF8"
	}
	return s, nil
}

// put hands s, which has just carried an email, back to the pool, or
// closes it if the Mailer is closed or has enough idle sessions.
func (m *Mailer) put(s *session) {
	m.mu.Lock()
	if m.closed || len(m.idle) >= m.maxIdle {
		m.mu.Unlock()
		m.quit(s)
		return
	}
	s.idleSince = time.Now()
	if s.timer == nil {
		s.timer = time.AfterFunc(m.idleTimeout, func() { m.expire(s) })
	} else {
		s.timer.Reset(m.idleTimeout)
	}
	m.idle = append(m.idle, s)
	m.mu.Unlock()
}

// expire closes s if it is still idle and has been for the idle timeout.
// It runs on s's timer, which may fire late, after a Send took s and put
// it back.
func (m *Mailer) expire(s *session) {
	m.mu.Lock()
	i := slices.Index(m.idle, s)
	if i < 0 || time.Since(s.idleSince) < m.idleTimeout {
		m.mu.Unlock()
		return
	}
	m.idle = slices.Delete(m.idle, i, i+1)
	m.quitting.Add(1)
	m.mu.Unlock()
	defer m.quitting.Done()
	m.quit(s)
}

// quit ends a healthy session politely: QUIT, then close the connection
// whatever the server answered.
func (m *Mailer) quit(s *session) {
	err := s.smtp.UpdateDeadline(m.cfg.Timeout)
	if err == nil {
		err = s.smtp.Quit()
	}
	if err != nil {
		m.log.Debug("smtp session: QUIT failed", slog.String("addr", m.cfg.Addr), slog.Any("error", err))
	}
	// Quit closes the connection only when the server answered it.
	_ = s.smtp.Close()
}

// discard closes the connection of a session that failed, without a
// word: where the exchange broke off is unknown.
func (m *Mailer) discard(s *session) {
	_ = s.smtp.Close()
}

// retryable reports whether err, from sending over a session that had
// carried an email before, shows the session was closed before the
// message data went out: extending the connection's deadline, MAIL FROM,
// RCPT TO or DATA failed without an SMTP reply (the connection was
// closed or reset), or with 421, the reply a server gives as it closes
// the connection. The server cannot have taken such an email, so sending
// it again cannot duplicate it. Any other reply is the server's answer to
// this email and is kept.
func retryable(err error) bool {
	st, code, ok := reply(err)
	switch {
	case !ok:
		return false
	case st == stageSession, st == stageMail, st == stageRcpt, st == stageData:
		return code == 0 || code == 421
	default:
		return false
	}
}

// lostReply reports whether err is the failure to read the server's reply
// to the message data, which went out whole: the connection was reset, or
// the server did not reply within its whole timeout. The server may well
// have taken the email. A wait the caller's deadline cut short is not one:
// the server may have been deciding still, to refuse it as well.
func lostReply(err error) bool {
	var te *transactionError
	if !errors.As(err, &te) || te.stage != stageAccept || te.code() != 0 {
		return false
	}
	ne, isNet := errors.AsType[net.Error](te.err)
	return !te.cut || !isNet || !ne.Timeout()
}

// rejected reports whether err is a permanent (5xx) SMTP reply to a
// recipient or to the message data: the server will refuse this email
// however often it is sent. A 5xx reply to MAIL FROM, or 530 at any
// stage, like a refused AUTH while connecting, points at the
// configuration instead (senderRefused).
func rejected(err error) bool {
	st, code, ok := reply(err)
	switch {
	case !ok:
		return false
	case st == stageRcpt, st == stageData, st == stageAccept:
		return code >= 500 && code < 600
	default:
		return false
	}
}

// unanswered reports whether err is a failure of the connection (no
// reply) before the message data went out: the server went quiet or away
// in the session, or no time was left to begin. It cannot have taken the
// email, so it is reported as app.ErrDeferred, retried uncounted for a
// while (a server's or a network's trouble is every email's), but not for
// ever (a server that hangs on one recipient is that email's).
func unanswered(err error) bool {
	st, code, ok := reply(err)
	return ok && code == 0 && (st == stageSession || st == stageMail || st == stageRcpt || st == stageData)
}

// deferred reports whether err is a temporary (4xx) SMTP reply in the
// mail transaction: the server will take the email later (greylisting, a
// rate limit, a full mailbox, a 421 as it closes the session).
func deferred(err error) bool {
	_, code, ok := reply(err)
	return ok && code >= 400 && code < 500
}

// senderRefused reports whether err is a permanent (5xx) SMTP reply to
// MAIL FROM, or a 530 (authentication required) at any stage: the server
// refuses the configured sender, wants authentication first, or has no
// room for any message (552: the mailer declares no size, so a 552 there
// is not this message's), which every email meets until the
// configuration or the server is fixed, so it is reported as
// app.ErrUnreachable and the emails wait, as when AUTH fails.
func senderRefused(err error) bool {
	st, code, ok := reply(err)
	return ok && (code == 530 || st == stageMail && code >= 500 && code < 600)
}

// reply returns the stage a mail transaction failed at and the server's
// reply code (0 for a failure of the connection), with ok false when err
// is no transaction's failure.
func reply(err error) (st stage, code int, ok bool) {
	var te *transactionError
	if !errors.As(err, &te) {
		return "", 0, false
	}
	return te.stage, te.code(), true
}
