package grpcserver

import (
	"context"
	"errors"
	"log/slog"
	"strings"

	"buf.build/gen/go/bufbuild/protovalidate/protocolbuffers/go/buf/validate"
	"buf.build/go/protovalidate"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// The go-grpc-middleware protovalidate interceptor attaches only the
// buf.validate.Violations detail and turns validator failures into INTERNAL
// carrying the validator's error text. The interceptors below also attach a
// google.rpc.BadRequest, which grpc-gateway and most gRPC clients render, and
// keep validator failures out of responses.

// validateUnary returns a unary interceptor that validates every request
// message with v before the handler runs, and refuses one that did not
// decode (see requestCodec).
func validateUnary(log *slog.Logger, v protovalidate.Validator, mark *decodeMark) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if st := mark.take(req); st != nil {
			return nil, st.Err()
		}
		if err := validateMessage(ctx, log, v, req); err != nil {
			return nil, err
		}
		return handler(ctx, req)
	}
}

// validateStream returns a stream interceptor that validates every message
// the handler receives with v, and refuses one that did not decode.
func validateStream(log *slog.Logger, v protovalidate.Validator, mark *decodeMark) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		return handler(srv, &validatingStream{ServerStream: ss, log: log, v: v, mark: mark})
	}
}

// validatingStream validates each message received on the wrapped stream.
type validatingStream struct {
	grpc.ServerStream
	log  *slog.Logger
	v    protovalidate.Validator
	mark *decodeMark
}

// RecvMsg receives the next message and validates it.
func (s *validatingStream) RecvMsg(m any) error {
	if err := s.ServerStream.RecvMsg(m); err != nil {
		return err
	}
	if st := s.mark.take(m); st != nil {
		return st.Err()
	}
	return validateMessage(s.Context(), s.log, s.v, m)
}

// validateMessage returns nil for a valid message, an INVALID_ARGUMENT status
// error built by ValidationStatus for an invalid one, and INTERNAL with a
// generic message (the cause logged) when the rules cannot be evaluated.
func validateMessage(ctx context.Context, log *slog.Logger, v protovalidate.Validator, m any) error {
	msg, ok := m.(proto.Message)
	if !ok {
		log.ErrorContext(ctx, "validate request: not a protobuf message",
			slog.String("method", methodFromContext(ctx)), slog.String("type", typeName(m)))
		return status.Error(codes.Internal, internalMessage)
	}
	err := v.Validate(msg)
	if err == nil {
		return nil
	}
	if verr, ok := errors.AsType[*protovalidate.ValidationError](err); ok {
		return ValidationStatus(verr.ToProto()).Err()
	}
	log.ErrorContext(ctx, "validate request", slog.String("method", methodFromContext(ctx)),
		slog.String("message", string(msg.ProtoReflect().Descriptor().FullName())), slog.Any("error", err))
	return status.Error(codes.Internal, internalMessage)
}

// ValidationStatus returns the INVALID_ARGUMENT status for a request that
// broke its protovalidate rules. Its message lists every violation on one
// line; its details are a google.rpc.BadRequest with one field violation per
// protovalidate violation (see FieldViolations) followed by the original
// buf.validate.Violations.
func ValidationStatus(violations *validate.Violations) *status.Status {
	parts := make([]string, 0, len(violations.GetViolations()))
	for _, fv := range FieldViolations(violations) {
		if fv.GetField() == "" {
			parts = append(parts, fv.GetDescription())
			continue
		}
		parts = append(parts, fv.GetField()+": "+fv.GetDescription())
	}
	st := status.New(codes.InvalidArgument, "invalid request: "+strings.Join(parts, "; "))
	withDetails, err := st.WithDetails(
		&errdetails.BadRequest{FieldViolations: FieldViolations(violations)},
		violations,
	)
	if err != nil {
		// WithDetails fails only for a status with code OK or a detail that
		// cannot be marshalled; neither applies, but the plain status is
		// still a correct answer.
		return st
	}
	return withDetails
}

// FieldViolations converts protovalidate violations into google.rpc.BadRequest
// field violations, one per violation and in the same order. Field is the
// violation's field path as protovalidate renders it (`customer_email`,
// `items[0].quantity`, `items[0].unit_price.currency_code`, `labels["k"]`),
// empty for a rule on the request message itself. Description is the
// violation's message, or the rule id in brackets when the rule has no
// message.
func FieldViolations(violations *validate.Violations) []*errdetails.BadRequest_FieldViolation {
	out := make([]*errdetails.BadRequest_FieldViolation, 0, len(violations.GetViolations()))
	for _, v := range violations.GetViolations() {
		desc := v.GetMessage()
		if desc == "" && v.GetRuleId() != "" {
			desc = "[" + v.GetRuleId() + "]"
		}
		out = append(out, &errdetails.BadRequest_FieldViolation{
			Field:       protovalidate.FieldPathString(v.GetField()),
			Description: desc,
		})
	}
	return out
}
