package rest

import "github.com/grpc-ecosystem/grpc-gateway/v2/runtime"

const eventStreamMIME = "text/event-stream"

// sseMarshaler frames each message of a server stream as a Server-Sent
// Event ("data: <json>\n\n"); grpc-gateway picks it when the client sends
// "Accept: text/event-stream" and flushes after every message.
type sseMarshaler struct {
	*runtime.JSONPb
}

var _ runtime.Delimited = (*sseMarshaler)(nil)

// ContentType is always text/event-stream.
func (*sseMarshaler) ContentType(any) string { return eventStreamMIME }

// Marshal renders v as one SSE data line.
func (m *sseMarshaler) Marshal(v any) ([]byte, error) {
	b, err := m.JSONPb.Marshal(v)
	if err != nil {
		return nil, err
	}
	out := make([]byte, 0, len(b)+7)
	out = append(out, "data: "...)
	out = append(out, b...)
	return append(out, '\n'), nil
}

// Delimiter ends an event with the blank line SSE requires.
func (*sseMarshaler) Delimiter() []byte { return []byte("\n") }
