package rest

import (
	"context"
	"net/http"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/grpc/status"
)

// watchKey carries a watch's *watchWriter in its request's context, where
// streamErrorHandler finds it.
type watchKey struct{}

// watchWriter is a WatchOrder response as it goes out. grpc-gateway
// answers an error found before the first message (an invalid or unknown
// order id) as a stream's last line, {"error": Status}, under grpc-gateway's
// own status table; the gateway answers it instead as every other call's
// error, a Status with the gateway's HTTP status (see serveWatch).
type watchWriter struct {
	http.ResponseWriter
	// ended is the status the stream ended with, set by
	// streamErrorHandler before grpc-gateway writes it.
	ended *status.Status
	// started: a message (or the success header) went out.
	started bool
	// failed: the stream ended in error before it started; what
	// grpc-gateway writes of that error is dropped.
	failed bool
}

func (w *watchWriter) WriteHeader(code int) {
	if !w.started && code != http.StatusOK && w.ended != nil {
		w.failed = true
		return
	}
	w.started = true
	w.ResponseWriter.WriteHeader(code)
}

func (w *watchWriter) Write(b []byte) (int, error) {
	if w.failed {
		return len(b), nil
	}
	w.started = true
	return w.ResponseWriter.Write(b)
}

// FlushError flushes what went out (grpc-gateway flushes after every
// message, through http.ResponseController, which tries this first).
func (w *watchWriter) FlushError() error {
	if w.failed {
		return nil
	}
	return http.NewResponseController(w.ResponseWriter).Flush()
}

// Unwrap lets http.ResponseController reach the connection.
func (w *watchWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// serveWatch runs a WatchOrder call through next, answering an error that
// came before the first message as errorHandler answers any call's.
func serveWatch(w http.ResponseWriter, r *http.Request, params map[string]string, next runtime.HandlerFunc) {
	ww := &watchWriter{ResponseWriter: w}
	next(ww, r.WithContext(context.WithValue(r.Context(), watchKey{}, ww)), params)
	if ww.failed {
		w.Header().Del("Transfer-Encoding")
		writeStatus(w, httpStatus(ww.ended.Code()), withQueryViolation(ww.ended))
	}
}
