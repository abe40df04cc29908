package mailer_test

import (
	"bufio"
	"bytes"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

// proxy sits between a Mailer and an SMTP server, counts the connections
// and QUIT commands passing through, and breaks connections the ways a
// server or the network does.
type proxy struct {
	lis    net.Listener
	target string

	mu           sync.Mutex
	open         map[net.Conn]struct{} // client sides
	accepted     int
	quits        int
	cutBefore    []byte // a command the proxy answers by closing instead of passing it on
	cutAfterData bool   // close the client side as soon as a message's data has passed
	hide         []string
	commands     map[string]int // commands clients sent, by verb
	wg           sync.WaitGroup
}

func newProxy(t *testing.T, target string) *proxy {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("proxy listen: %v", err)
	}
	p := &proxy{lis: lis, target: target, open: map[net.Conn]struct{}{}, commands: map[string]int{}}
	p.wg.Go(p.accept)
	t.Cleanup(func() {
		_ = lis.Close()
		p.DropAll("")
		p.wg.Wait()
	})
	return p
}

func (p *proxy) Addr() string { return p.lis.Addr().String() }

// Accepted returns how many connections the proxy has accepted.
func (p *proxy) Accepted() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.accepted
}

// Open returns how many connections are open.
func (p *proxy) Open() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.open)
}

// Quits returns how many QUIT commands clients sent.
func (p *proxy) Quits() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.quits
}

// Commands returns how many times clients sent the command verb (e.g.
// "RSET"), counted at the start of each line outside message data.
func (p *proxy) Commands(verb string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.commands[verb]
}

// Hide makes the proxy drop the EHLO reply lines of the extensions
// (e.g. "PIPELINING") on the connections it accepts from now on, as if
// the server did not offer them. The extensions must not be the reply's
// last line.
func (p *proxy) Hide(extensions ...string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.hide = extensions
}

// CutBefore makes the proxy close a connection whose client sends cmd
// (e.g. "RSET") instead of passing the command on; "" stops it.
func (p *proxy) CutBefore(cmd string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cutBefore = []byte(cmd)
}

// CutAfterData makes the proxy pass a message's data on to the server in
// full and then close the client's side, so that the server takes the
// message and its reply is lost.
func (p *proxy) CutAfterData(on bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cutAfterData = on
}

// DropAll closes every open connection as a server dropping its clients
// does, first sending goodbye to each client unless it is empty.
func (p *proxy) DropAll(goodbye string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.open {
		if goodbye != "" {
			_, _ = c.Write([]byte(goodbye))
		}
		_ = c.Close()
	}
}

func (p *proxy) accept() {
	for {
		c, err := p.lis.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		p.accepted++
		p.open[c] = struct{}{}
		p.mu.Unlock()
		p.wg.Go(func() { p.serve(c) })
	}
}

func (p *proxy) serve(c net.Conn) {
	defer func() {
		p.mu.Lock()
		delete(p.open, c)
		p.mu.Unlock()
		_ = c.Close()
	}()
	up, err := net.DialTimeout("tcp", p.target, 2*time.Second)
	if err != nil {
		return
	}
	defer up.Close()
	p.mu.Lock()
	hide := p.hide
	p.mu.Unlock()
	down := make(chan struct{})
	go func() {
		defer close(down)
		if len(hide) > 0 {
			serverToClientHiding(up, c, hide)
			return
		}
		buf := make([]byte, 32<<10)
		for {
			n, err := up.Read(buf)
			if n > 0 {
				if _, werr := c.Write(buf[:n]); werr != nil {
					return
				}
			}
			if err != nil {
				return
			}
		}
	}()
	afterData := p.clientToServer(c, up)
	_ = c.Close()
	if afterData {
		// Let the server read the whole message and answer it before its
		// side closes too.
		select {
		case <-down:
		case <-time.After(2 * time.Second):
		}
	}
	_ = up.Close()
	<-down
}

// serverToClientHiding copies the server's replies to the client line by
// line, leaving out the EHLO lines of the hidden extensions.
func serverToClientHiding(up, c net.Conn, hide []string) {
	r := bufio.NewReader(up)
	for {
		line, err := r.ReadString('\n')
		drop := false
		for _, ext := range hide {
			drop = drop || strings.EqualFold(strings.TrimSpace(strings.TrimPrefix(line, "250-")), ext)
		}
		if line != "" && !drop {
			if _, werr := c.Write([]byte(line)); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// clientToServer copies what the client sends to up until either side
// closes or a cut applies; it reports whether it stopped right after a
// message's data.
func (p *proxy) clientToServer(c, up net.Conn) (afterData bool) {
	buf := make([]byte, 32<<10)
	var tail []byte
	var lines commandLines
	for {
		n, err := c.Read(buf)
		if n > 0 {
			chunk := buf[:n]
			p.mu.Lock()
			cutBefore, cutAfterData := p.cutBefore, p.cutAfterData
			if bytes.HasPrefix(chunk, []byte("QUIT")) {
				p.quits++
			}
			lines.count(chunk, p.commands)
			p.mu.Unlock()
			if len(cutBefore) > 0 && bytes.HasPrefix(chunk, cutBefore) {
				return false
			}
			if _, werr := up.Write(chunk); werr != nil {
				return false
			}
			tail = append(tail, chunk...)
			if len(tail) > 5 {
				tail = tail[len(tail)-5:]
			}
			if cutAfterData && bytes.Equal(tail, []byte("\r\n.\r\n")) {
				return true
			}
		}
		if err != nil {
			return false
		}
	}
}

// commandLines follows a client's side of an SMTP session to count its
// commands: the first word of every line outside message data.
type commandLines struct {
	line   []byte
	inData bool
}

func (l *commandLines) count(chunk []byte, commands map[string]int) {
	for _, b := range chunk {
		l.line = append(l.line, b)
		if b != '\n' {
			continue
		}
		line := strings.TrimRight(string(l.line), "\r\n")
		l.line = l.line[:0]
		switch {
		case l.inData:
			l.inData = line != "."
		default:
			verb, _, _ := strings.Cut(line, " ")
			verb, _, _ = strings.Cut(verb, ":")
			verb = strings.ToUpper(verb)
			commands[verb]++
			// A DATA the server refuses is followed by commands, not
			// data; the tests that count send data after every DATA.
			l.inData = verb == "DATA"
		}
	}
}
