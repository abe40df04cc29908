package mailer

import (
	"context"
	"crypto/tls"
	"net"
	"sync"
	"time"
)

// setupConn is a session's connection. While the session is being set up
// (greeting, EHLO, STARTTLS and AUTH, go-mail's part, which sets deadlines
// of the configured timeout on its own), it keeps every deadline within
// the context's and ends pending reads and writes when the context ends,
// so that connecting ends when the Send that asked for it must; once set
// up (setUp), it is a plain connection whose deadlines the Mailer sets.
type setupConn struct {
	net.Conn
	mu sync.Mutex
	// ctx bounds the connection while it is set up; nil afterwards.
	ctx  context.Context
	stop func() bool
}

// past is a deadline that has passed: it ends pending I/O at once.
var past = time.Unix(1, 0)

func newSetupConn(ctx context.Context, c net.Conn) *setupConn {
	s := &setupConn{Conn: c, ctx: ctx}
	s.stop = context.AfterFunc(ctx, func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.ctx != nil {
			_ = s.Conn.SetDeadline(past)
		}
	})
	return s
}

// bound returns t, or ctx's deadline if that comes sooner, while the
// connection is set up; s.mu must be held.
func (s *setupConn) bound(t time.Time) time.Time {
	if s.ctx == nil {
		return t
	}
	if s.ctx.Err() != nil {
		return past
	}
	if d, ok := s.ctx.Deadline(); ok && (t.IsZero() || d.Before(t)) {
		return d
	}
	return t
}

func (s *setupConn) SetDeadline(t time.Time) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.Conn.SetDeadline(s.bound(t))
}

func (s *setupConn) SetReadDeadline(t time.Time) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.Conn.SetReadDeadline(s.bound(t))
}

func (s *setupConn) SetWriteDeadline(t time.Time) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.Conn.SetWriteDeadline(s.bound(t))
}

// setUp ends the context's hold on the connection.
func (s *setupConn) setUp() {
	s.stop()
	s.mu.Lock()
	s.ctx = nil
	s.mu.Unlock()
}

// dialing is a dial of a session, put in the context go-mail dials with:
// dialContext bounds the connection's setup by ctx (go-mail's own context
// ends as soon as its part is done) and leaves the connection in conn,
// for the dial to finish setting it up or to close it.
type dialing struct {
	ctx  context.Context
	conn *setupConn
}

type dialingKey struct{}

// dialContext opens a session's connection for go-mail: TCP, and TLS from
// the first byte in TLSImplicit mode. go-mail's own dialer would do the
// same, but its connections' setup would not end with the Send's context
// (see setupConn), and one whose setup failed would not be closed.
// Implicit TLS is ours, so go-mail learns the connection is encrypted
// from its TLS state (its opportunistic STARTTLS policy, in that mode,
// finds no STARTTLS offered and reads that state), as it must to allow
// AUTH mechanisms that send the password.
func (m *Mailer) dialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	var d net.Dialer
	raw, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	bound := ctx
	dl, _ := ctx.Value(dialingKey{}).(*dialing)
	if dl != nil {
		bound = dl.ctx
	}
	c := newSetupConn(bound, raw)
	if dl != nil {
		dl.conn = c
	}
	if m.cfg.TLS != TLSImplicit {
		return c, nil
	}
	tc := tls.Client(c, m.tlsConfig)
	if err := tc.HandshakeContext(ctx); err != nil {
		_ = c.Close()
		return nil, err
	}
	return tc, nil
}
