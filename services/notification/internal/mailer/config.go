package mailer

import (
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/mail"
	"os"
	"strings"
	"time"

	"github.com/ordermesh/ordermesh/internal/config"
)

// TLSMode says how the connection to the SMTP server is encrypted.
type TLSMode string

// TLS modes.
const (
	// TLSNone sends in plain text, as local mail catchers expect.
	TLSNone TLSMode = "none"
	// TLSStartTLS connects in plain text and upgrades with STARTTLS; a
	// server that does not offer it is an error (port 587, usually).
	TLSStartTLS TLSMode = "starttls"
	// TLSImplicit speaks TLS from the first byte (port 465, usually).
	TLSImplicit TLSMode = "tls"
)

// Environment variables read by ReadConfig, and their defaults.
const (
	EnvAddr     = "ORDERMESH_SMTP_ADDR"     // host:port of the SMTP server
	EnvUsername = "ORDERMESH_SMTP_USERNAME" // SMTP AUTH user; empty: no authentication
	EnvPassword = "ORDERMESH_SMTP_PASSWORD" // SMTP AUTH password
	EnvTLS      = "ORDERMESH_SMTP_TLS"      // none, starttls or tls
	EnvFrom     = "ORDERMESH_SMTP_FROM"     // From header and envelope sender
	EnvTimeout  = "ORDERMESH_SMTP_TIMEOUT"  // bound on one email's whole SMTP exchange
	EnvCAFile   = "ORDERMESH_SMTP_CA_FILE"  // PEM file of the CAs to trust for TLS; empty: the system's
	EnvHELO     = "ORDERMESH_SMTP_HELO"     // name given in EHLO; empty: the host's name

	DefaultAddr    = "127.0.0.1:1025"
	DefaultTLS     = TLSNone
	DefaultFrom    = "ordermesh <orders@ordermesh.localhost>"
	DefaultTimeout = 10 * time.Second
)

// Config is how the notification service reaches its SMTP server. The
// defaults suit a local run against the built-in SMTP sink (or Mailpit) on
// 127.0.0.1:1025.
//
//	variable                 field     default
//	ORDERMESH_SMTP_ADDR      Addr      127.0.0.1:1025
//	ORDERMESH_SMTP_USERNAME  Username  "" (no SMTP AUTH)
//	ORDERMESH_SMTP_PASSWORD  Password  ""
//	ORDERMESH_SMTP_TLS       TLS       none (none | starttls | tls)
//	ORDERMESH_SMTP_FROM      From      ordermesh <orders@ordermesh.localhost>
//	ORDERMESH_SMTP_TIMEOUT   Timeout   10s
//	ORDERMESH_SMTP_CA_FILE   CAFile    "" (the system's CAs)
//	ORDERMESH_SMTP_HELO      HELO      "" (the host's name)
type Config struct {
	// Addr is the server's host:port.
	Addr string
	// Username and Password are SMTP AUTH credentials; with an empty
	// Username the client does not authenticate. The client picks the
	// strongest mechanism the server offers; over an unencrypted
	// connection it refuses mechanisms that would send the password in
	// the clear.
	Username string
	Password string `secret:"true"`
	// TLS says how the connection is encrypted. The server's certificate
	// must be valid for the host of Addr and signed by a CA the system
	// trusts, or one in CAFile.
	TLS TLSMode
	// CAFile, if set, is a PEM file of the CAs that sign the server's
	// certificate (a company's own, say), trusted instead of the
	// system's. Only with TLS starttls or tls.
	CAFile string
	// From is the sender, an RFC 5322 address with an optional name.
	From string
	// HELO is the name the client gives in EHLO: a fully qualified domain
	// name, which servers that check it want (a container's host name is
	// often a bare id, which they refuse, and a refused session waits as an
	// outage). Empty: the host's name.
	HELO string
	// Timeout bounds one email: connecting, every command and the message
	// data (twice that for an email sent again on a new connection, see
	// the package documentation). A send that takes longer fails, and the
	// bus retries it.
	Timeout time.Duration
}

// DefaultConfig returns the configuration used when no variable is set.
func DefaultConfig() Config {
	return Config{Addr: DefaultAddr, TLS: DefaultTLS, From: DefaultFrom, Timeout: DefaultTimeout}
}

// ReadConfig reads the SMTP configuration from env (see Config for the
// variables and defaults). Problems are recorded in env, each naming its
// variable, for the caller to report with env.Err().
func ReadConfig(env *config.Env) Config {
	def := DefaultConfig()
	cfg := Config{
		Addr:     env.Addr(EnvAddr, def.Addr),
		Username: env.String(EnvUsername, ""),
		Password: env.String(EnvPassword, ""),
		TLS:      TLSMode(env.String(EnvTLS, string(def.TLS))),
		From:     env.String(EnvFrom, def.From),
		Timeout:  env.Duration(EnvTimeout, def.Timeout),
		CAFile:   env.String(EnvCAFile, ""),
		HELO:     env.String(EnvHELO, ""),
	}
	for _, p := range cfg.problems() {
		env.Fail(p.name, p.err)
	}
	return cfg
}

// Validate reports every problem with c, each naming the variable that
// sets the field.
func (c Config) Validate() error {
	var errs []error
	for _, p := range c.problems() {
		errs = append(errs, fmt.Errorf("%s: %w", p.name, p.err))
	}
	return errors.Join(errs...)
}

type problem struct {
	name string
	err  error
}

func (c Config) problems() []problem {
	var ps []problem
	if host, port, err := net.SplitHostPort(c.Addr); err != nil {
		ps = append(ps, problem{EnvAddr, fmt.Errorf("invalid address %q: %w", c.Addr, err)})
	} else if host == "" || port == "" || port == "0" {
		ps = append(ps, problem{EnvAddr, fmt.Errorf("invalid address %q: want host:port", c.Addr)})
	}
	switch c.TLS {
	case TLSNone, TLSStartTLS, TLSImplicit:
	default:
		ps = append(ps, problem{EnvTLS, fmt.Errorf("invalid TLS mode %q: want none, starttls or tls", c.TLS)})
	}
	if from, err := mail.ParseAddress(c.From); err != nil {
		ps = append(ps, problem{EnvFrom, fmt.Errorf("invalid address %q: %w", c.From, err)})
	} else if !isASCII(from.Address) {
		// The mailer does not ask for SMTPUTF8: a server would refuse
		// every email at MAIL FROM, which waits as an outage.
		ps = append(ps, problem{EnvFrom, fmt.Errorf("address %q is not ASCII (the display name may be anything)", from.Address)})
	}
	if c.Timeout <= 0 {
		ps = append(ps, problem{EnvTimeout, fmt.Errorf("must be positive, got %s", c.Timeout)})
	}
	if !validHELO(c.HELO) {
		ps = append(ps, problem{EnvHELO, fmt.Errorf("%q is not a host name (letters, digits, hyphens and dots) or an address literal ([192.0.2.1])", c.HELO)})
	}
	if c.Password != "" && c.Username == "" {
		ps = append(ps, problem{EnvPassword, fmt.Errorf("set without %s", EnvUsername)})
	}
	if c.CAFile != "" {
		if c.TLS == TLSNone {
			ps = append(ps, problem{EnvCAFile, fmt.Errorf("set, but %s is none: the CAs apply to TLS only", EnvTLS)})
		} else if _, err := readCAs(c.CAFile); err != nil {
			ps = append(ps, problem{EnvCAFile, err})
		}
	}
	return ps
}

// readCAs returns a pool of the certificates in the PEM file, at least one.
func readCAs(file string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s holds no PEM certificate", file)
	}
	return pool, nil
}

// isASCII reports whether s is 7-bit ASCII.
func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

// validHELO reports whether name can follow EHLO: empty (the host's name
// then), a domain name of letters, digits, hyphens and dots (not all of its
// labels digits), or an address literal as RFC 5321 writes one: [192.0.2.1]
// or [IPv6:2001:db8::1].
func validHELO(name string) bool {
	if name == "" {
		return true
	}
	if len(name) > 255 {
		return false
	}
	if strings.HasPrefix(name, "[") && strings.HasSuffix(name, "]") {
		literal := name[1 : len(name)-1]
		if len(literal) > 5 && strings.EqualFold(literal[:5], "IPv6:") {
			ip := net.ParseIP(literal[5:])
			return ip != nil && ip.To4() == nil
		}
		ip := net.ParseIP(literal)
		return ip != nil && ip.To4() != nil && !strings.Contains(literal, ":")
	}
	if net.ParseIP(name) != nil {
		return false // an address goes in brackets
	}
	for _, label := range strings.Split(name, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
				return false
			}
		}
	}
	return true
}
