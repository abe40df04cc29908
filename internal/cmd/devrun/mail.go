package main

import (
	"context"
	"io"
	"log/slog"

	"github.com/ordermesh/ordermesh/internal/smtpsink"
)

// startMail makes sure mail sent by the notification service lands
// somewhere visible: an SMTP server already listening on addr (e.g.
// Mailpit) is used as is; otherwise a local sink is started that prints a
// line for each message it receives. It returns where mail shows up and a
// stop function.
func startMail(ctx context.Context, addr string, out io.Writer) (string, func(), error) {
	if listening(addr) {
		return "the SMTP server already listening on " + addr + " (e.g. Mailpit: http://127.0.0.1:8025)", func() {}, nil
	}
	log := slog.New(slog.NewTextHandler(prefixed(out, "mail"), &slog.HandlerOptions{Level: slog.LevelInfo}))
	// Not ended by ctx (Ctrl-C): the notification service may still be
	// sending while it drains, so the sink stops when the returned func is
	// called, after the services.
	sink, err := smtpsink.Start(context.WithoutCancel(ctx), addr, smtpsink.WithLogger(log))
	if err != nil {
		return "", nil, err
	}
	return "the dev SMTP sink on " + sink.Addr() + " (each message is logged with the mail | prefix)", func() { _ = sink.Close() }, nil
}
