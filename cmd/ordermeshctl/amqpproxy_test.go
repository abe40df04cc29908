package main

import (
	"bufio"
	"encoding/binary"
	"io"
	"net"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ordermesh/ordermesh/internal/platformtest"
)

// AMQP 0-9-1 frame types and the methods the tests stop at (class, method).
const (
	frameMethod    = 1
	frameHeartbeat = 8

	classQueue, methodQueueDeclare = 50, 10
	classBasic, methodBasicGet     = 60, 70
)

// proxyMode is what an amqpProxy does once the client sends its trigger
// method.
type proxyMode int

const (
	// proxyCut closes both sides of the link: the broker is lost.
	proxyCut proxyMode = iota
	// proxyStall forwards the method, but from then on nothing the broker
	// sends except heartbeats: the broker hangs, the link stays up.
	proxyStall
	// proxyHold keeps the method, and everything the client sends after
	// it except heartbeats, until resume, then forwards them.
	proxyHold
)

// amqpProxy relays AMQP connections between ordermeshctl and the test
// broker frame by frame and, the first time the client sends one method,
// cuts, stalls or holds the link: broker faults on cue, against the real
// broker.
type amqpProxy struct {
	ln             net.Listener
	upstream       string // the broker's host:port
	brokerURL      *url.URL
	class, method  uint16
	mode           proxyMode
	fired          chan struct{} // closed when the trigger went by
	fireOnce       sync.Once
	resumed        chan struct{} // closed by resume
	resumeOnce     sync.Once
	stalled        atomic.Bool
	mu             sync.Mutex
	conns          []net.Conn
	closed         chan struct{} // closed when the test ends
	closeListeners sync.Once
}

// startAMQPProxy starts a proxy to the test broker that acts (mode) when
// the client first sends method of class, and stops it when the test ends.
func startAMQPProxy(t *testing.T, class, method uint16, mode proxyMode) *amqpProxy {
	t.Helper()
	u, err := url.Parse(platformtest.AMQPURL())
	if err != nil {
		t.Fatalf("broker URL: %v", err)
	}
	upstream := u.Host
	if u.Port() == "" {
		upstream = net.JoinHostPort(u.Hostname(), "5672")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &amqpProxy{
		ln: ln, upstream: upstream, brokerURL: u, class: class, method: method, mode: mode,
		fired: make(chan struct{}), resumed: make(chan struct{}), closed: make(chan struct{}),
	}
	go p.serve()
	t.Cleanup(p.stop)
	return p
}

// url is the broker's URL through the proxy.
func (p *amqpProxy) url() string {
	u := *p.brokerURL
	u.Host = p.ln.Addr().String()
	return u.String()
}

// resume forwards what proxyHold holds, and lets the link run on.
func (p *amqpProxy) resume() { p.resumeOnce.Do(func() { close(p.resumed) }) }

// waitFired waits until the client sent the trigger method.
func (p *amqpProxy) waitFired(t *testing.T, timeout time.Duration) {
	t.Helper()
	select {
	case <-p.fired:
	case <-time.After(timeout):
		t.Fatalf("the client never sent method %d.%d", p.class, p.method)
	}
}

// stop closes the listener and every link.
func (p *amqpProxy) stop() {
	p.closeListeners.Do(func() {
		close(p.closed)
		_ = p.ln.Close()
		p.mu.Lock()
		defer p.mu.Unlock()
		for _, c := range p.conns {
			_ = c.Close()
		}
	})
}

// serve accepts clients until the listener closes.
func (p *amqpProxy) serve() {
	for {
		client, err := p.ln.Accept()
		if err != nil {
			return
		}
		go p.link(client)
	}
}

// link relays one client's connection to the broker, both ways.
func (p *amqpProxy) link(client net.Conn) {
	broker, err := net.DialTimeout("tcp", p.upstream, 5*time.Second)
	if err != nil {
		_ = client.Close()
		return
	}
	p.mu.Lock()
	p.conns = append(p.conns, client, broker)
	p.mu.Unlock()
	closeBoth := func() { _ = client.Close(); _ = broker.Close() }
	go func() { defer closeBoth(); p.fromClient(client, broker) }()
	go func() { defer closeBoth(); p.fromBroker(broker, client) }()
}

// fromClient relays the client's protocol header and frames to the broker,
// acting on the trigger.
func (p *amqpProxy) fromClient(client, broker net.Conn) {
	r := bufio.NewReader(client)
	header := make([]byte, 8) // "AMQP" 0 0 9 1
	if _, err := io.ReadFull(r, header); err != nil {
		return
	}
	if _, err := broker.Write(header); err != nil {
		return
	}
	frames := make(chan []byte)
	go func() {
		defer close(frames)
		for {
			f, err := readFrame(r)
			if err != nil {
				return
			}
			select {
			case frames <- f:
			case <-p.closed:
				return
			}
		}
	}()
	var held [][]byte
	holding := false
	for {
		var resumed <-chan struct{}
		if holding {
			resumed = p.resumed
		}
		select {
		case f, ok := <-frames:
			if !ok {
				return
			}
			if p.isTrigger(f) && p.fire() {
				switch p.mode {
				case proxyCut:
					return // closes both sides
				case proxyStall:
					p.stalled.Store(true)
				case proxyHold:
					holding = true
				}
			}
			if holding && f[0] != frameHeartbeat {
				held = append(held, f)
				continue
			}
			if _, err := broker.Write(f); err != nil {
				return
			}
		case <-resumed:
			for _, f := range held {
				if _, err := broker.Write(f); err != nil {
					return
				}
			}
			held, holding = nil, false
		case <-p.closed:
			return
		}
	}
}

// fromBroker relays the broker's frames to the client, only heartbeats
// once stalled.
func (p *amqpProxy) fromBroker(broker, client net.Conn) {
	r := bufio.NewReader(broker)
	for {
		f, err := readFrame(r)
		if err != nil {
			return
		}
		if p.stalled.Load() && f[0] != frameHeartbeat {
			continue
		}
		if _, err := client.Write(f); err != nil {
			return
		}
	}
}

// isTrigger reports whether frame f is the trigger method.
func (p *amqpProxy) isTrigger(f []byte) bool {
	return f[0] == frameMethod && len(f) >= 11 &&
		binary.BigEndian.Uint16(f[7:9]) == p.class && binary.BigEndian.Uint16(f[9:11]) == p.method
}

// fire marks the trigger seen and reports whether it was the first time.
func (p *amqpProxy) fire() bool {
	first := false
	p.fireOnce.Do(func() { first = true; close(p.fired) })
	return first
}

// readFrame reads one whole frame: type, channel, payload size, payload
// and frame end.
func readFrame(r *bufio.Reader) ([]byte, error) {
	head := make([]byte, 7)
	if _, err := io.ReadFull(r, head); err != nil {
		return nil, err
	}
	f := make([]byte, 7+int(binary.BigEndian.Uint32(head[3:7]))+1)
	copy(f, head)
	if _, err := io.ReadFull(r, f[7:]); err != nil {
		return nil, err
	}
	return f, nil
}

// silentBroker listens on a local port, accepts connections and never
// answers, as a hung broker would; it returns an AMQP URL to it.
func silentBroker(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			_ = c.Close()
		}
	})
	return "amqp://guest:guest@" + ln.Addr().String() + "/"
}
