package grpcserver

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"strconv"
	"unicode/utf8"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	spb "google.golang.org/genproto/googleapis/rpc/status"
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
// runs no interceptor. This codec reports success instead, leaving the
// message empty but for a mark that carries the answer, and the validation
// interceptors answer the call with it before its handler runs:
// INVALID_ARGUMENT for malformed wire data, or for a string field that is
// not UTF-8 (which protobuf does not allow, and a client in a language
// that does not check may send), named as a field violation. The mark
// lives in the message, so a call that ends before an interceptor sees it
// (the client sent a second request, or reset the stream) leaves nothing
// behind.
type requestCodec struct {
	encoding.CodecV2
	mark *decodeMark
}

// decodeMark marks a message that failed to decode: an unknown field of
// the message holding the nonce and the status to answer with. The nonce,
// random per server, keeps a client from marking its own requests.
type decodeMark struct {
	nonce [16]byte
}

// markField is the field number of the mark: the largest there is, in no
// message's schema.
const markField protowire.Number = protowire.MaxValidNumber

func newDecodeMark() *decodeMark {
	var m decodeMark
	_, _ = rand.Read(m.nonce[:]) // crypto/rand.Read never fails
	return &m
}

func newRequestCodec(mark *decodeMark) requestCodec {
	return requestCodec{CodecV2: encoding.GetCodecV2("proto"), mark: mark}
}

// Unmarshal decodes data into v; a message that fails to decode is reset
// and marked with the status for its call.
func (c requestCodec) Unmarshal(data mem.BufferSlice, v any) error {
	err := c.CodecV2.Unmarshal(data, v)
	if err == nil {
		return nil
	}
	m, ok := v.(proto.Message)
	if !ok {
		return err
	}
	st := decodeStatus(m.ProtoReflect().Descriptor(), data.Materialize(), err)
	b, merr := proto.Marshal(st.Proto())
	if merr != nil {
		return err
	}
	proto.Reset(m)
	value := append(c.mark.nonce[:len(c.mark.nonce):len(c.mark.nonce)], b...)
	m.ProtoReflect().SetUnknown(protowire.AppendBytes(protowire.AppendTag(nil, markField, protowire.BytesType), value))
	return nil
}

// take returns the status answering the call whose request m failed to
// decode, or nil when m decoded.
func (d *decodeMark) take(m any) *status.Status {
	msg, ok := m.(proto.Message)
	if !ok {
		return nil
	}
	unknown := msg.ProtoReflect().GetUnknown()
	if len(unknown) == 0 {
		return nil
	}
	num, typ, n := protowire.ConsumeTag(unknown)
	if n < 0 || num != markField || typ != protowire.BytesType {
		return nil
	}
	value, n2 := protowire.ConsumeBytes(unknown[n:])
	if n2 < 0 || n+n2 != len(unknown) || len(value) < len(d.nonce) || !bytes.Equal(value[:len(d.nonce)], d.nonce[:]) {
		return nil
	}
	var st spb.Status
	if err := proto.Unmarshal(value[len(d.nonce):], &st); err != nil {
		return nil
	}
	return status.FromProto(&st)
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
