// Package mailer sends the notification service's emails over SMTP with
// github.com/wneessen/go-mail. It implements app.Sender.
package mailer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	netmail "net/mail"
	"strconv"

	"github.com/wneessen/go-mail"

	"github.com/ordermesh/ordermesh/services/notification/internal/app"
)

// Mailer sends emails to one SMTP server, one connection per email. It is
// safe for concurrent use.
type Mailer struct {
	client *mail.Client
	from   *netmail.Address
	cfg    Config
	log    *slog.Logger
}

var _ app.Sender = (*Mailer)(nil)

// New returns a Mailer for cfg. It does not connect: an unreachable server
// shows as errors from Send, which the bus retries.
func New(cfg Config, log *slog.Logger) (*Mailer, error) {
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
	opts := []mail.Option{mail.WithPort(port), mail.WithTimeout(cfg.Timeout)}
	switch cfg.TLS {
	case TLSNone:
		opts = append(opts, mail.WithTLSPolicy(mail.NoTLS))
	case TLSStartTLS:
		opts = append(opts, mail.WithTLSPolicy(mail.TLSMandatory))
	case TLSImplicit:
		opts = append(opts, mail.WithSSL())
	}
	if cfg.Username != "" {
		opts = append(opts, mail.WithSMTPAuth(mail.SMTPAuthAutoDiscover),
			mail.WithUsername(cfg.Username), mail.WithPassword(cfg.Password))
	}
	client, err := mail.NewClient(host, opts...)
	if err != nil {
		return nil, fmt.Errorf("new mailer: %w", err)
	}
	return &Mailer{client: client, from: from, cfg: cfg, log: log}, nil
}

// Send delivers e within the configured timeout (or sooner if ctx ends).
// It returns an error wrapping app.ErrRejected when the server answers a
// recipient or the message data with a permanent (5xx) failure. A message
// the server accepted counts as sent even if closing the connection fails
// afterwards, so that it is not sent again.
func (m *Mailer) Send(ctx context.Context, e app.Email) error {
	msg, err := m.message(e)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, m.cfg.Timeout)
	defer cancel()
	err = m.client.DialAndSendWithContext(ctx, msg)
	if err == nil {
		return nil
	}
	if msg.IsDelivered() {
		m.log.WarnContext(ctx, "smtp server accepted the email; closing the connection failed",
			slog.String("message_id", e.MessageID), slog.Any("error", err))
		return nil
	}
	if rejected(err) {
		return fmt.Errorf("send email to %s via %s: %w: %w", e.To, m.cfg.Addr, app.ErrRejected, err)
	}
	return fmt.Errorf("send email to %s via %s: %w", e.To, m.cfg.Addr, err)
}

// message builds the MIME message: the text body with the HTML body as its
// alternative.
func (m *Mailer) message(e app.Email) (*mail.Msg, error) {
	msg := mail.NewMsg()
	msg.FromMailAddress(m.from)
	if err := msg.To(e.To); err != nil {
		// An address the client cannot even parse will never be accepted.
		return nil, fmt.Errorf("send email to %q: %w: %w", e.To, app.ErrRejected, err)
	}
	msg.Subject(e.Subject)
	if e.MessageID != "" {
		msg.SetMessageIDWithValue(e.MessageID)
	} else {
		msg.SetMessageID()
	}
	msg.SetDate()
	msg.SetUserAgent("ordermesh notification")
	msg.SetBodyString(mail.TypeTextPlain, e.Text)
	if e.HTML != "" {
		msg.AddAlternativeString(mail.TypeTextHTML, e.HTML)
	}
	return msg, nil
}

// rejected reports whether err is a permanent (5xx) SMTP reply to a
// recipient or to the message data: the server will refuse this email
// however often it is sent. A 5xx reply elsewhere (to MAIL FROM, or to
// AUTH while connecting) points at the configuration instead, and is left
// transient so that the email goes out once the configuration is fixed.
func rejected(err error) bool {
	var se *mail.SendError
	if !errors.As(err, &se) || se.IsTemp() {
		return false
	}
	switch se.Reason {
	case mail.ErrSMTPRcptTo, mail.ErrSMTPData, mail.ErrSMTPDataClose:
		return se.ErrorCode() >= 500 && se.ErrorCode() < 600
	default:
		return false
	}
}
