package rest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"sync"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// jsonMarshaler is runtime.JSONPb without three of its costs on every
// request: Marshal returns protojson's output instead of copying it into
// a second buffer, the responses that carry orders are written without
// reflection (appendOrderResponse) when the options are the gateway's,
// and a request body is handed to protojson as read instead of first
// being scanned by encoding/json to find where its value ends. What it
// accepts, rejects and writes is JSONPb's (but for protojson's random
// spaces, which are not part of its output's meaning), except a body with
// more after its JSON value, which it refuses (bodyDecoder).
type jsonMarshaler struct {
	*runtime.JSONPb
}

var (
	_ runtime.Marshaler         = (*jsonMarshaler)(nil)
	_ runtime.StreamContentType = (*jsonMarshaler)(nil)
)

// Marshal renders a message with protojson, anything else as JSONPb does.
func (m *jsonMarshaler) Marshal(v any) ([]byte, error) {
	if p, ok := v.(proto.Message); ok {
		if isOrderJSONOptions(m.MarshalOptions) {
			if b, ok := appendOrderResponse(make([]byte, 0, 512), p); ok {
				return b, nil
			}
		}
		return m.MarshalOptions.Marshal(p)
	}
	return m.JSONPb.Marshal(v)
}

// ndjsonMIME is the media type of a stream of JSON values, one per line.
const ndjsonMIME = "application/x-ndjson"

// StreamContentType is the Content-Type of a stream's response (a watch):
// newline-delimited JSON, not one JSON document. A stream that fails
// before its first message is answered with an error, as application/json.
func (m *jsonMarshaler) StreamContentType(any) string { return ndjsonMIME }

// orderJSONOptions are the options appendOrderResponse writes as.
var orderJSONOptions = protojson.MarshalOptions{UseProtoNames: true, EmitUnpopulated: true}

// isOrderJSONOptions reports whether o are orderJSONOptions. (Comparing
// the structs with == would compare their Resolver interfaces, which
// panics for a resolver of a type that cannot be compared.)
func isOrderJSONOptions(o protojson.MarshalOptions) bool {
	return o.UseProtoNames && o.EmitUnpopulated && !o.Multiline && o.Indent == "" && !o.AllowPartial &&
		!o.UseEnumNumbers && !o.EmitDefaultValues && o.Resolver == nil
}

// NewDecoder returns a decoder of the request body r.
func (m *jsonMarshaler) NewDecoder(r io.Reader) runtime.Decoder {
	return &bodyDecoder{r: r, jsonpb: m.JSONPb}
}

// bodyPool holds the buffers request bodies are read into; protojson
// copies what it keeps, so a buffer is free again once Decode returns.
var bodyPool = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// maxPooledBody is the largest buffer put back into bodyPool, so that one
// large body does not stay allocated.
const maxPooledBody = 64 << 10

// bodyDecoder decodes a request body into a message in one protojson
// pass. A body that could not be read to its end (over the size limit,
// too slow, cut off) is that read error, even when what arrived holds a
// whole JSON value. A body that pass does not take whole (malformed, or
// more than one JSON value) goes to JSONPb's decoder, so the result and
// the error are JSONPb's, except that data after the first JSON value is
// an error (JSONPb's decoder reads the first value and stops).
type bodyDecoder struct {
	r      io.Reader
	jsonpb *runtime.JSONPb
	// fallback, once set, decodes the rest of the body.
	fallback runtime.Decoder
}

// Decode reads the rest of the body into v. An empty body is io.EOF, as
// from JSONPb's decoder.
func (d *bodyDecoder) Decode(v any) error {
	if d.fallback != nil {
		return d.fallback.Decode(v)
	}
	p, ok := v.(proto.Message)
	if !ok {
		d.fallback = d.jsonpb.NewDecoder(d.r)
		return d.fallback.Decode(v)
	}
	buf := bodyPool.Get().(*bytes.Buffer)
	defer func() {
		if buf.Cap() <= maxPooledBody {
			buf.Reset()
			bodyPool.Put(buf)
		}
	}()
	if _, err := buf.ReadFrom(d.r); err != nil {
		d.fallback = failingDecoder{err}
		return err
	}
	body := buf.Bytes()
	if len(trimJSONSpace(body)) == 0 {
		return io.EOF
	}
	if d.jsonpb.UnmarshalOptions.Unmarshal(body, p) == nil {
		return nil
	}
	body = bytes.Clone(body)
	d.fallback = d.jsonpb.NewDecoder(bytes.NewReader(body))
	if err := d.fallback.Decode(v); err != nil {
		return err
	}
	// JSONPb's decoder took the first JSON value: refuse what follows it,
	// as protojson would, rather than drop it.
	if end, ok := firstValueEnd(body); ok && len(trimJSONSpace(body[end:])) > 0 {
		err := fmt.Errorf("unexpected data after the JSON value, at offset %d", end)
		d.fallback = failingDecoder{err}
		return err
	}
	return nil
}

// trimJSONSpace returns b without the whitespace JSON allows around a
// value (RFC 8259: space, tab, CR, LF), which is not all that Unicode
// calls white space.
func trimJSONSpace(b []byte) []byte {
	return bytes.Trim(b, " \t\r\n")
}

// firstValueEnd returns the offset just past body's first JSON value.
func firstValueEnd(body []byte) (int, bool) {
	dec := json.NewDecoder(bytes.NewReader(body))
	var first json.RawMessage
	if dec.Decode(&first) != nil {
		return 0, false
	}
	return int(dec.InputOffset()), true
}

// failingDecoder returns err from every Decode.
type failingDecoder struct{ err error }

func (f failingDecoder) Decode(any) error { return f.err }
