//go:build unix

package mailer_test

import (
	"context"
	"testing"
	"time"

	"github.com/ordermesh/ordermesh/internal/cputime"
	"github.com/ordermesh/ordermesh/services/notification/internal/mailer"
)

// BenchmarkSend sends emails to the in-process SMTP sink over loopback,
// each over a connection of its own (WithIdleSessions(0): connect, EHLO,
// MAIL, RCPT, DATA, QUIT per email) and over pooled sessions, from
// one sender and from several at once. It reports emails/s and the
// process's CPU time (user and system) per email, the sink's included.
//
//	go test -run '^$' -bench BenchmarkSend ./services/notification/internal/mailer/
func BenchmarkSend(b *testing.B) {
	modes := []struct {
		name string
		idle int
	}{
		{name: "connection per email", idle: 0},
		{name: "pooled", idle: mailer.DefaultIdleSessions},
	}
	for _, mode := range modes {
		b.Run(mode.name, func(b *testing.B) {
			s := startSink(b)
			m := newMailer(b, s.Addr(), 10*time.Second, mailer.WithIdleSessions(mode.idle))
			e := email("bench@example.com")
			cpu := cputime.Self(b)
			for i := 0; b.Loop(); i++ {
				if err := m.Send(context.Background(), e); err != nil {
					b.Fatalf("send: %v", err)
				}
				if i%1000 == 999 {
					s.Reset() // The sink keeps what it receives; keep memory flat.
				}
			}
			report(b, cputime.Self(b)-cpu)
		})
		b.Run(mode.name+", parallel", func(b *testing.B) {
			s := startSink(b)
			m := newMailer(b, s.Addr(), 10*time.Second, mailer.WithIdleSessions(mode.idle))
			e := email("bench@example.com")
			cpu := cputime.Self(b)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if err := m.Send(context.Background(), e); err != nil {
						b.Errorf("send: %v", err)
						return
					}
				}
			})
			b.StopTimer()
			report(b, cputime.Self(b)-cpu)
		})
	}
}

func report(b *testing.B, cpu time.Duration) {
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "emails/s")
	b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-µs/email")
}
