package rest

import (
	"net/http"
	"time"
)

// boundWrites gives every write of a response a deadline: the client must
// take what a handler writes within timeout of the write's start, or the
// write fails and net/http closes the connection. A client that stops
// reading so no longer holds the handler, its response and the connection
// (nor a graceful shutdown) for as long as it likes: grpc-gateway writes a
// unary response, up to a few MiB for a page of orders, in one write, and
// a WatchOrder stream writes and flushes each message. The deadline moves
// with each write rather than bounding the whole response, as
// http.Server.WriteTimeout would, which would cut off a watch that simply
// lasts.
func boundWrites(timeout time.Duration, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		dw := &deadlineWriter{ResponseWriter: w, rc: http.NewResponseController(w), timeout: timeout}
		// net/http keeps a connection's write deadline from one request
		// to the next: a previous response's must not cut this one off,
		// and what net/http writes on its own (a 100 Continue) gets one.
		dw.extend()
		next.ServeHTTP(dw, r)
	})
}

// deadlineWriter is a response that moves the connection's write deadline
// to timeout from now before each write and flush.
type deadlineWriter struct {
	http.ResponseWriter
	rc      *http.ResponseController
	timeout time.Duration
}

func (w *deadlineWriter) extend() {
	// A server that supports no deadlines (not net/http's) writes
	// without one.
	_ = w.rc.SetWriteDeadline(time.Now().Add(w.timeout))
}

// WriteHeader moves the deadline too: net/http writes the header of a
// response with no body only once the handler returns.
func (w *deadlineWriter) WriteHeader(code int) {
	w.extend()
	w.ResponseWriter.WriteHeader(code)
}

func (w *deadlineWriter) Write(b []byte) (int, error) {
	w.extend()
	return w.ResponseWriter.Write(b)
}

// FlushError sends what the response has buffered (a watch flushes after
// every message).
func (w *deadlineWriter) FlushError() error {
	w.extend()
	return w.rc.Flush()
}

// Unwrap lets http.ResponseController reach the connection.
func (w *deadlineWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
