package grpcserver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
)

// internalMessage is the only text a client sees for an unexpected failure;
// the cause is logged on the server.
const internalMessage = "internal error"

// ErrorCode maps a domain sentinel error to the gRPC code an API returns for
// it.
type ErrorCode struct {
	// Err is matched with errors.Is.
	Err error
	// Code is the code returned for an error that matches Err.
	Code codes.Code
	// Message, if set, is what the client is told instead of the error's
	// text: for errors whose chain carries details (driver errors, hosts)
	// that are logged but not for clients.
	Message string
}

// FieldError is implemented by domain errors about one field of a
// request. MapError reports one mapped to INVALID_ARGUMENT with a
// google.rpc.BadRequest field violation, as request validation does.
type FieldError interface {
	error
	// Field is the field's path, spelled as protovalidate spells paths:
	// "customer_email", "items[1].unit_price.currency_code".
	Field() string
	// Description says what is wrong with the field.
	Description() string
}

// MapError turns the error a handler got from its application layer into the
// status error it returns. It is the one place an API decides what a client
// learns about a failure:
//
//   - nil stays nil;
//   - an error that is or wraps a gRPC status error returns that status
//     unchanged (without the wrapping text);
//   - an error matching context.Canceled or context.DeadlineExceeded returns
//     CANCELED or DEADLINE_EXCEEDED with a generic message;
//   - an error matching the Err of an entry in mapping (checked in order, the
//     first match wins) returns that entry's Code with the entry's Message,
//     or err.Error() when it has none (so such sentinel messages must be
//     fit for clients); an error given a fixed Message is logged; an
//     INVALID_ARGUMENT error that is or wraps a FieldError carries a
//     google.rpc.BadRequest naming its field, an UNAVAILABLE one a
//     google.rpc.RetryInfo (see Unavailable);
//   - anything else returns INTERNAL with the message "internal error" and is
//     logged at error level on log together with the RPC's method.
//
// mapping is a slice rather than a map so that an error matching several
// sentinels maps deterministically.
func MapError(ctx context.Context, log *slog.Logger, err error, mapping []ErrorCode) error {
	if err == nil {
		return nil
	}
	if st, ok := statusFromError(err); ok {
		return st.Err()
	}
	switch {
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, "request canceled")
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, "deadline exceeded")
	}
	for _, m := range mapping {
		if m.Err != nil && errors.Is(err, m.Err) {
			msg := err.Error()
			if m.Message != "" {
				log.WarnContext(ctx, "request failed", slog.String("method", methodFromContext(ctx)), slog.Any("error", err))
				msg = m.Message
			}
			if m.Code == codes.Unavailable {
				return Unavailable(msg, RetryDelay)
			}
			st := status.New(m.Code, msg)
			if fe, ok := errors.AsType[FieldError](err); ok && m.Code == codes.InvalidArgument {
				st = withFieldViolation(st, fe)
			}
			return st.Err()
		}
	}
	log.ErrorContext(ctx, "request failed", slog.String("method", methodFromContext(ctx)), slog.Any("error", err))
	return status.Error(codes.Internal, internalMessage)
}

// RetryDelay is the google.rpc.RetryInfo delay MapError gives the
// UNAVAILABLE errors it makes.
const RetryDelay = time.Second

// Unavailable returns an UNAVAILABLE status error with message msg and a
// google.rpc.RetryInfo saying when to try again: a failure of the
// service's own that a retry may get past (its database unreachable, the
// service shutting down). The detail also tells it from the UNAVAILABLE a
// gRPC client raises itself when the connection fails, whose message may
// name internal addresses: the gateway passes on only those that carry
// one.
func Unavailable(msg string, retryAfter time.Duration) error {
	return WithRetryInfo(status.New(codes.Unavailable, msg), retryAfter).Err()
}

// WithRetryInfo returns st with a google.rpc.RetryInfo saying to try again
// after retryAfter (REST clients of the gateway read it as Retry-After).
func WithRetryInfo(st *status.Status, retryAfter time.Duration) *status.Status {
	if withInfo, err := st.WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(retryAfter)}); err == nil {
		return withInfo
	}
	return st
}

// statusFromError returns the status of err or of the first error in its
// chain that carries one. Unlike status.FromError it keeps the status's own
// message instead of replacing it with the wrapping chain's text.
func statusFromError(err error) (*status.Status, bool) {
	type grpcStatus interface {
		error
		GRPCStatus() *status.Status
	}
	gs, ok := errors.AsType[grpcStatus](err)
	if !ok {
		return nil, false
	}
	st := gs.GRPCStatus()
	if st == nil || st.Code() == codes.OK {
		return nil, false
	}
	return st, true
}

// methodFromContext returns the full method name of the RPC ctx belongs to,
// or "unknown".
func methodFromContext(ctx context.Context) string {
	if m, ok := grpc.Method(ctx); ok {
		return m
	}
	return "unknown"
}

// typeName returns the dynamic type of v for log messages.
func typeName(v any) string {
	return fmt.Sprintf("%T", v)
}

// withFieldViolation returns st with a google.rpc.BadRequest detail naming
// fe's field, or st as it is if the detail cannot be added.
func withFieldViolation(st *status.Status, fe FieldError) *status.Status {
	withDetails, err := st.WithDetails(&errdetails.BadRequest{FieldViolations: []*errdetails.BadRequest_FieldViolation{
		{Field: fe.Field(), Description: fe.Description()},
	}})
	if err != nil {
		// As in ValidationStatus: the plain status is still a correct answer.
		return st
	}
	return withDetails
}
