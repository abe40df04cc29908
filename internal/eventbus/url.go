package eventbus

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/ordermesh/ordermesh/internal/config"
)

// CheckURL reports whether rawURL is a broker URL the bus can dial, so a
// mistake shows when a service starts rather than as a link that never
// comes up. The URL is amqp:// or amqps://; for amqps it may name, as
// RabbitMQ's URI query parameters do:
//
//	cacertfile              PEM file of the CAs to trust instead of the system's
//	certfile, keyfile       PEM client certificate and its key (mutual TLS)
//	server_name_indication  name to verify the broker's certificate against,
//	                        when it is not the URL's host
//
// CheckURL reads the files now; the bus reads them again at every
// connection, so a renewed certificate needs no restart. Its errors never
// contain the URL's password.
func CheckURL(rawURL string) error {
	u, err := config.ParseURL(rawURL)
	if err != nil {
		return fmt.Errorf("invalid URL: %w", err)
	}
	uri, err := amqp.ParseURI(rawURL)
	if err != nil {
		return fmt.Errorf("invalid URL %q: %w", u.Redacted(), err)
	}
	if uri.Port < 1 || uri.Port > 65535 {
		return fmt.Errorf("invalid URL %q: port %d is out of range 1..65535", u.Redacted(), uri.Port)
	}
	q := u.Query()
	if uri.Scheme != "amqps" {
		for _, p := range []string{"cacertfile", "certfile", "keyfile", "server_name_indication"} {
			if q.Has(p) {
				return fmt.Errorf("%s applies to TLS connections only: use amqps://", p)
			}
		}
		return nil
	}
	if uri.CACertFile != "" {
		pem, err := os.ReadFile(uri.CACertFile)
		if err != nil {
			return fmt.Errorf("cacertfile: %w", err)
		}
		if !x509.NewCertPool().AppendCertsFromPEM(pem) {
			return fmt.Errorf("cacertfile %s holds no PEM certificate", uri.CACertFile)
		}
	}
	switch {
	case uri.CertFile != "" && uri.KeyFile == "":
		return errors.New("certfile needs keyfile (the client certificate's private key)")
	case uri.CertFile == "" && uri.KeyFile != "":
		return errors.New("keyfile needs certfile (the client certificate)")
	case uri.CertFile != "":
		if _, err := tls.LoadX509KeyPair(uri.CertFile, uri.KeyFile); err != nil {
			return fmt.Errorf("client certificate %s, key %s: %w", uri.CertFile, uri.KeyFile, err)
		}
	}
	return nil
}
