// Package telemetry sets up what every binary reports about itself: the
// structured logger (and, as they are added, metrics and traces).
package telemetry

import (
	"fmt"
	"io"
	"log/slog"
	"strings"
)

// ParseLevel reads a log level name: debug, info, warn or error.
func ParseLevel(name string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(strings.TrimSpace(name))); err != nil {
		return 0, fmt.Errorf("log level %q: want debug, info, warn or error", name)
	}
	return l, nil
}

// NewLogger returns a JSON logger writing to w at level, with every record
// carrying the service's name.
func NewLogger(w io.Writer, service string, level slog.Level) *slog.Logger {
	h := slog.NewJSONHandler(w, &slog.HandlerOptions{Level: level})
	return slog.New(h).With(slog.String("service", service))
}
