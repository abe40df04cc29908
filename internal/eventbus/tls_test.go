package eventbus

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	orderv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/order/v1"
	"github.com/ordermesh/ordermesh/internal/testpki"
)

// tlsProxy terminates TLS in front of the test broker, which listens
// without it: each connection it accepts is forwarded to the broker once
// its handshake succeeded.
type tlsProxy struct {
	addr string

	mu      sync.Mutex
	clients []string // per completed handshake: the client certificate's CN, or ""
	failed  []string // handshake errors
}

// startTLSProxy serves cert; with clientCAs set it requires a client
// certificate they signed.
func startTLSProxy(t *testing.T, cert tls.Certificate, clientCAs *x509.CertPool) *tlsProxy {
	t.Helper()
	broker, err := amqp.ParseURI(testURL())
	if err != nil {
		t.Fatal(err)
	}
	brokerAddr := net.JoinHostPort(broker.Host, strconv.Itoa(broker.Port))
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	if clientCAs != nil {
		cfg.ClientCAs, cfg.ClientAuth = clientCAs, tls.RequireAndVerifyClientCert
	}
	lis, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	p := &tlsProxy{addr: lis.Addr().String()}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns []net.Conn
	)
	track := func(c net.Conn) {
		mu.Lock()
		defer mu.Unlock()
		conns = append(conns, c)
	}
	wg.Go(func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			track(c)
			wg.Go(func() { p.serve(c.(*tls.Conn), brokerAddr, track) })
		}
	})
	t.Cleanup(func() {
		_ = lis.Close()
		mu.Lock()
		for _, c := range conns {
			_ = c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return p
}

func (p *tlsProxy) serve(c *tls.Conn, brokerAddr string, track func(net.Conn)) {
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.HandshakeContext(ctx); err != nil {
		p.mu.Lock()
		p.failed = append(p.failed, err.Error())
		p.mu.Unlock()
		return
	}
	client := ""
	if certs := c.ConnectionState().PeerCertificates; len(certs) > 0 {
		client = certs[0].Subject.CommonName
	}
	p.mu.Lock()
	p.clients = append(p.clients, client)
	p.mu.Unlock()
	b, err := net.DialTimeout("tcp", brokerAddr, 5*time.Second)
	if err != nil {
		return
	}
	track(b)
	defer b.Close()
	done := make(chan struct{})
	go func() {
		_, _ = io.Copy(b, c)
		_ = b.Close()
		close(done)
	}()
	_, _ = io.Copy(c, b)
	_ = c.Close()
	<-done
}

func (p *tlsProxy) handshakes() (clients, failed []string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.clients...), append([]string(nil), p.failed...)
}

// url is the test broker's URL, with its user and vhost, pointed at the
// proxy over amqps with the TLS query parameters params.
func (p *tlsProxy) url(t *testing.T, host string, params url.Values) string {
	t.Helper()
	u, err := url.Parse(testURL())
	if err != nil {
		t.Fatal(err)
	}
	_, port, err := net.SplitHostPort(p.addr)
	if err != nil {
		t.Fatal(err)
	}
	u.Scheme, u.Host, u.RawQuery = "amqps", net.JoinHostPort(host, port), params.Encode()
	return u.String()
}

func TestTLSRoundTrip(t *testing.T) {
	ca := testpki.NewCA(t, "ordermesh-test-ca")
	server := ca.Issue(t, "broker", x509.ExtKeyUsageServerAuth)
	clientCert, clientKey := ca.IssueFiles(t, "ordermesh-test-client", x509.ExtKeyUsageClientAuth)
	tests := []struct {
		name       string
		clientCAs  *x509.CertPool
		host       string
		params     url.Values
		wantClient string
	}{
		{
			name:   "the broker's certificate verified against cacertfile",
			host:   "localhost",
			params: url.Values{"cacertfile": {ca.File}},
		},
		{
			name:   "server_name_indication names the certificate's host",
			host:   "127.0.0.1",
			params: url.Values{"cacertfile": {ca.File}, "server_name_indication": {"localhost"}},
		},
		{
			name:       "mutual TLS: the client certificate from certfile and keyfile",
			clientCAs:  ca.Pool(),
			host:       "localhost",
			params:     url.Values{"cacertfile": {ca.File}, "certfile": {clientCert}, "keyfile": {clientKey}},
			wantClient: "ordermesh-test-client",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			proxy := startTLSProxy(t, server, tt.clientCAs)
			cfg := testConfig(t, "tls")
			cfg.URL = proxy.url(t, tt.host, tt.params)
			sub, err := NewSubscriber(cfg, testLogger())
			if err != nil {
				t.Fatal(err)
			}
			got := make(chan received, 1)
			if err := Handle(sub, collect[*orderv1.OrderCreated](got)); err != nil {
				t.Fatal(err)
			}
			startSubscriber(t, sub)
			pub := startPublisher(t, cfg)

			_, msg := newOrderCreated(t)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := pub.Publish(ctx, msg); err != nil {
				t.Fatalf("Publish over TLS: %v", err)
			}
			select {
			case r := <-got:
				if r.meta.ID != msg.ID {
					t.Errorf("received event %s, want %s", r.meta.ID, msg.ID)
				}
			case <-ctx.Done():
				t.Fatal("the event published over TLS never arrived")
			}
			clients, failed := proxy.handshakes()
			if len(clients) < 2 || len(failed) > 0 {
				t.Fatalf("proxy handshakes: %d completed, failed %q; want the publisher's and the subscriber's, none failed", len(clients), failed)
			}
			for _, c := range clients {
				if c != tt.wantClient {
					t.Errorf("client certificate CN %q, want %q", c, tt.wantClient)
				}
			}
		})
	}
}

func TestTLSRefusesUnverifiedPeers(t *testing.T) {
	ca := testpki.NewCA(t, "ordermesh-test-ca")
	other := testpki.NewCA(t, "other-ca")
	server := ca.Issue(t, "broker", x509.ExtKeyUsageServerAuth)
	tests := []struct {
		name       string
		clientCAs  *x509.CertPool
		host       string
		params     url.Values
		wantReason string
	}{
		{
			name:       "the system's CAs do not know the broker's",
			host:       "localhost",
			wantReason: "certificate signed by unknown authority",
		},
		{
			name:       "cacertfile of another CA",
			host:       "localhost",
			params:     url.Values{"cacertfile": {other.File}},
			wantReason: "certificate signed by unknown authority",
		},
		{
			name:       "a host the certificate does not name",
			host:       "127.0.0.1",
			params:     url.Values{"cacertfile": {ca.File}, "server_name_indication": {"mq.example"}},
			wantReason: "certificate is valid for localhost, not mq.example",
		},
		{
			name:       "no client certificate where the broker requires one",
			clientCAs:  ca.Pool(),
			host:       "localhost",
			params:     url.Values{"cacertfile": {ca.File}},
			wantReason: "tls: certificate required",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			proxy := startTLSProxy(t, server, tt.clientCAs)
			cfg := testConfig(t, "tls")
			cfg.URL = proxy.url(t, tt.host, tt.params)
			pub, err := NewPublisher(cfg, testLogger())
			if err != nil {
				t.Fatal(err)
			}
			defer pub.Close()
			// The attempts' outcomes: up, or down with their reason. With
			// TLS 1.3 the broker's refusal of a client without a
			// certificate comes after the client's handshake, and
			// amqp091-go sometimes reports the connection it then closes
			// ("channel/connection is not open", or a write to it: "use of
			// closed network connection") instead; the publisher tries
			// again, and an attempt soon says why.
			timeout := time.After(10 * time.Second)
			st, changed := pub.Watch()
			var reasons []string
			for !st.Up && !strings.Contains(st.Reason, tt.wantReason) {
				if st.Reason != "connecting" && (len(reasons) == 0 || reasons[len(reasons)-1] != st.Reason) {
					reasons = append(reasons, st.Reason)
					if !strings.Contains(st.Reason, "channel/connection is not open") && !strings.Contains(st.Reason, "use of closed network connection") {
						break // another reason: wrong
					}
				}
				select {
				case <-changed:
				case <-timeout:
					t.Fatalf("no attempt within 10s said %q: %q", tt.wantReason, reasons)
				}
				st, changed = pub.Watch()
			}
			if st.Up || !strings.Contains(st.Reason, tt.wantReason) {
				t.Errorf("state = %+v, want down with a reason containing %q (reasons before: %q)", st, tt.wantReason, reasons)
			}
			eventually(t, 5*time.Second, "the proxy's end of the failed handshake", func() bool {
				_, failed := proxy.handshakes()
				return len(failed) > 0
			})
			if clients, _ := proxy.handshakes(); len(clients) > 0 {
				t.Errorf("proxy: %d handshakes completed, want none", len(clients))
			}
		})
	}
}

func TestCheckURL(t *testing.T) {
	ca := testpki.NewCA(t, "ordermesh-test-ca")
	certFile, keyFile := ca.IssueFiles(t, "client", x509.ExtKeyUsageClientAuth)
	otherCert, _ := ca.IssueFiles(t, "other", x509.ExtKeyUsageClientAuth)
	notPEM := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(notPEM, []byte("not a certificate\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(t.TempDir(), "missing.pem")
	tests := []struct {
		name string
		url  string
		err  string // "" for none; else a part of the error
	}{
		{name: "amqp", url: "amqp://guest:guest@127.0.0.1:5672/"},
		{name: "amqps with the system's CAs", url: "amqps://guest:guest@mq.example/"},
		{name: "amqps with a CA file", url: "amqps://guest:guest@mq.example/?cacertfile=" + ca.File},
		{
			name: "amqps with a client certificate",
			url:  "amqps://mq.example/?cacertfile=" + ca.File + "&certfile=" + certFile + "&keyfile=" + keyFile,
		},
		{name: "another scheme", url: "http://guest:secret@127.0.0.1/", err: "AMQP scheme must be either 'amqp://' or 'amqps://'"},
		{name: "a port out of range", url: "amqp://guest:secret@127.0.0.1:99999/", err: `invalid URL "amqp://guest:xxxxx@127.0.0.1:99999/": port 99999 is out of range 1..65535`},
		{name: "a bad heartbeat", url: "amqp://guest:secret@127.0.0.1/?heartbeat=often", err: `invalid URL "amqp://guest:xxxxx@127.0.0.1/?heartbeat=often": heartbeat is not an uint16`},
		{name: "unparsable", url: "amqp://guest@127.0.0.1:5672/%zz", err: `invalid URL: invalid URL escape "%zz"`},
		{name: "unparsable, with a password", url: "amqp://guest:secret@127.0.0.1:5672/%zz", err: `invalid URL: it does not parse (not shown: it may hold a password; percent-encode any of @ : / ? # % in the user name and password)`},
		{name: "a password cut short by an unencoded /", url: "amqp://guest:12/secret@127.0.0.1:5672/", err: `invalid URL: its user name and password seem cut short (not shown: percent-encode any of @ : / ? # % in them)`},
		{name: "a password cut short by an unencoded #", url: "amqp://guest:sec#ret@127.0.0.1:5672/", err: `invalid URL: it does not parse (not shown: it may hold a password; percent-encode any of @ : / ? # % in the user name and password)`},
		{name: "a CA file without TLS", url: "amqp://127.0.0.1/?cacertfile=" + ca.File, err: "cacertfile applies to TLS connections only: use amqps://"},
		{name: "a server name without TLS", url: "amqp://127.0.0.1/?server_name_indication=mq", err: "server_name_indication applies to TLS connections only"},
		{name: "a missing CA file", url: "amqps://mq.example/?cacertfile=" + missing, err: "cacertfile: open " + missing + ": no such file or directory"},
		{name: "a CA file without a certificate", url: "amqps://mq.example/?cacertfile=" + notPEM, err: "cacertfile " + notPEM + " holds no PEM certificate"},
		{name: "a certificate without its key", url: "amqps://mq.example/?certfile=" + certFile, err: "certfile needs keyfile"},
		{name: "a key without its certificate", url: "amqps://mq.example/?keyfile=" + keyFile, err: "keyfile needs certfile"},
		{
			name: "a key of another certificate",
			url:  "amqps://mq.example/?certfile=" + otherCert + "&keyfile=" + keyFile,
			err:  "client certificate " + otherCert + ", key " + keyFile + ": tls: private key does not match public key",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := CheckURL(tt.url)
			switch {
			case tt.err == "" && err != nil:
				t.Fatalf("CheckURL: %v", err)
			case tt.err == "":
				return
			case err == nil:
				t.Fatalf("CheckURL = nil, want an error containing %q", tt.err)
			case !strings.Contains(err.Error(), tt.err):
				t.Errorf("CheckURL = %q, want it to contain %q", err, tt.err)
			}
			if strings.Contains(err.Error(), "secret") {
				t.Errorf("CheckURL = %q, which shows the password", err)
			}
			if _, cfgErr := (Config{Service: "s", URL: tt.url}).WithDefaults(); cfgErr == nil || !strings.Contains(cfgErr.Error(), tt.err) {
				t.Errorf("WithDefaults = %v, want the same error", cfgErr)
			}
		})
	}
}
