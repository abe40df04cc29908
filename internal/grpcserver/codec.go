package grpcserver

import (
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"unicode/utf8"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// requestCodec is grpc-go's proto codec, except for a request message that
// does not decode: grpc-go answers that with INTERNAL ("grpc: error
// unmarshalling request"), which tells the client the server failed, and
// runs no interceptor. This codec reports success instead and keeps the
// error, and the validation interceptors answer the call with
// INVALID_ARGUMENT before its handler runs: malformed wire data, or a
// string field that is not UTF-8 (which protobuf does not allow, and a
// client in a language that does not check may send), named as a field
// violation.
type requestCodec struct {
	encoding.CodecV2
	failures *decodeFailures
}

// decodeFailures holds the error of each request message that failed to
// decode until the interceptor that answers its call takes it. Messages
// are fresh for each call, so one is a key until then.
type decodeFailures struct {
	n sync.Map     // proto.Message → *status.Status
	k atomic.Int64 // entries in n, so that calls skip the lookup
}

func newRequestCodec(failures *decodeFailures) requestCodec {
	return requestCodec{CodecV2: encoding.GetCodecV2("proto"), failures: failures}
}

// Unmarshal decodes data into v; a failure is kept for take.
func (c requestCodec) Unmarshal(data mem.BufferSlice, v any) error {
	err := c.CodecV2.Unmarshal(data, v)
	if err == nil {
		return nil
	}
	m, ok := v.(proto.Message)
	if !ok {
		return err
	}
	c.failures.n.Store(m, decodeStatus(m.ProtoReflect().Descriptor(), data.Materialize(), err))
	c.failures.k.Add(1)
	return nil
}

// take returns the status answering the call whose request m failed to
// decode, or nil when m decoded.
func (f *decodeFailures) take(m any) *status.Status {
	if f.k.Load() == 0 {
		return nil
	}
	st, ok := f.n.LoadAndDelete(m)
	if !ok {
		return nil
	}
	f.k.Add(-1)
	return st.(*status.Status)
}

// decodeStatus is the INVALID_ARGUMENT status for a request of type md
// whose encoding b failed to decode with err.
func decodeStatus(md protoreflect.MessageDescriptor, b []byte, err error) *status.Status {
	if field, ok := invalidUTF8(md, b, ""); ok {
		st := status.New(codes.InvalidArgument, "invalid request: "+field+": not valid UTF-8")
		if d, err := st.WithDetails(&errdetails.BadRequest{FieldViolations: []*errdetails.BadRequest_FieldViolation{
			{Field: field, Description: "not valid UTF-8"},
		}}); err == nil {
			return d
		}
		return st
	}
	return status.New(codes.InvalidArgument, fmt.Sprintf("invalid request: not a %s: %v", md.FullName(), err))
}

// invalidUTF8 returns the path (as protovalidate writes field paths:
// items[0].product_id) of the first string field in b, an encoding of a
// message of type md, that is not valid UTF-8, looking into message
// fields; ok is false when there is none or b is not well-formed.
func invalidUTF8(md protoreflect.MessageDescriptor, b []byte, prefix string) (path string, ok bool) {
	seen := map[protowire.Number]int{}
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return "", false
		}
		b = b[n:]
		n = protowire.ConsumeFieldValue(num, typ, b)
		if n < 0 {
			return "", false
		}
		value := b[:n]
		b = b[n:]
		fd := md.Fields().ByNumber(num)
		if fd == nil || typ != protowire.BytesType {
			continue
		}
		name := prefix + string(fd.Name())
		if fd.IsList() {
			name += "[" + strconv.Itoa(seen[num]) + "]"
			seen[num]++
		}
		v, _ := protowire.ConsumeBytes(value)
		switch {
		case fd.Kind() == protoreflect.StringKind && !utf8.Valid(v):
			return name, true
		case fd.Message() != nil: // a map's entries too: name.key, name.value
			if path, ok := invalidUTF8(fd.Message(), v, name+"."); ok {
				return path, true
			}
		}
	}
	return "", false
}
