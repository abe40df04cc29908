package mailer_test

import (
	"bytes"
	"net"
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
	wg           sync.WaitGroup
}

func newProxy(t *testing.T, target string) *proxy {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("proxy listen: %v", err)
	}
	p := &proxy{lis: lis, target: target, open: map[net.Conn]struct{}{}}
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
	down := make(chan struct{})
	go func() {
		defer close(down)
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

// clientToServer copies what the client sends to up until either side
// closes or a cut applies; it reports whether it stopped right after a
// message's data.
func (p *proxy) clientToServer(c, up net.Conn) (afterData bool) {
	buf := make([]byte, 32<<10)
	var tail []byte
	for {
		n, err := c.Read(buf)
		if n > 0 {
			chunk := buf[:n]
			p.mu.Lock()
			cutBefore, cutAfterData := p.cutBefore, p.cutAfterData
			if bytes.HasPrefix(chunk, []byte("QUIT")) {
				p.quits++
			}
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
