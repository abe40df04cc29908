package grpcserver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ordermesh/ordermesh/internal/logtest"
)

func testLogger(t *testing.T) (*slog.Logger, *logtest.Buffer) {
	t.Helper()
	return logtest.New()
}

var (
	errStoreDown     = errors.New("store down")
	errNotFound      = errors.New("order not found")
	errAlreadyExists = errors.New("request id already used with a different payload")
	errTerminal      = errors.New("order is terminal")
)

func TestMapError(t *testing.T) {
	mapping := []ErrorCode{
		{Err: errNotFound, Code: codes.NotFound},
		{Err: errAlreadyExists, Code: codes.AlreadyExists},
		{Err: errTerminal, Code: codes.FailedPrecondition},
		{Err: errStoreDown, Code: codes.Unavailable, Message: "store unavailable"},
	}
	tests := []struct {
		name     string
		err      error
		wantNil  bool
		wantCode codes.Code
		wantMsg  string
		wantLog  bool
	}{
		{name: "nil", err: nil, wantNil: true},
		{
			name:     "sentinel",
			err:      errNotFound,
			wantCode: codes.NotFound,
			wantMsg:  "order not found",
		},
		{
			name:     "wrapped sentinel keeps the wrapping message",
			err:      fmt.Errorf("get order 42: %w", errNotFound),
			wantCode: codes.NotFound,
			wantMsg:  "get order 42: order not found",
		},
		{
			name:     "first matching entry wins",
			err:      errors.Join(errTerminal, errNotFound),
			wantCode: codes.NotFound,
			wantMsg:  "order is terminal\norder not found",
		},
		{
			name:     "fixed message hides the cause",
			err:      fmt.Errorf("create order: %w: dial tcp 127.0.0.9:5432: refused", errStoreDown),
			wantCode: codes.Unavailable,
			wantMsg:  "store unavailable",
			wantLog:  true,
		},
		{
			name:     "status error passes through",
			err:      status.Error(codes.ResourceExhausted, "slow down"),
			wantCode: codes.ResourceExhausted,
			wantMsg:  "slow down",
		},
		{
			name:     "wrapped status error passes through without the wrapping text",
			err:      fmt.Errorf("reserve stock: %w", status.Error(codes.Unavailable, "inventory is down")),
			wantCode: codes.Unavailable,
			wantMsg:  "inventory is down",
		},
		{
			name:     "canceled",
			err:      fmt.Errorf("query orders: %w", context.Canceled),
			wantCode: codes.Canceled,
			wantMsg:  "request canceled",
		},
		{
			name:     "deadline exceeded",
			err:      fmt.Errorf("query orders: %w", context.DeadlineExceeded),
			wantCode: codes.DeadlineExceeded,
			wantMsg:  "deadline exceeded",
		},
		{
			name:     "unknown error is internal and logged",
			err:      errors.New("insert order: pq: password authentication failed for user secret"),
			wantCode: codes.Internal,
			wantMsg:  "internal error",
			wantLog:  true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			log, buf := testLogger(t)
			got := MapError(context.Background(), log, tt.err, mapping)
			if tt.wantNil {
				if got != nil {
					t.Fatalf("MapError() = %v, want nil", got)
				}
				return
			}
			st, ok := status.FromError(got)
			if !ok {
				t.Fatalf("MapError() = %v, not a status error", got)
			}
			if st.Code() != tt.wantCode || st.Message() != tt.wantMsg {
				t.Errorf("MapError() = %v %q, want %v %q", st.Code(), st.Message(), tt.wantCode, tt.wantMsg)
			}
			logged := buf.String()
			if tt.wantLog != (logged != "") {
				t.Errorf("logged %q, want logging %v", logged, tt.wantLog)
			}
			if tt.wantLog && !strings.Contains(logged, tt.err.Error()) {
				t.Errorf("log %q does not contain the error %q", logged, tt.err)
			}
			if tt.wantLog && !strings.Contains(logged, `"method":"unknown"`) {
				t.Errorf("log %q does not name the method", logged)
			}
		})
	}
}

// testFieldError is a domain error about one request field.
type testFieldError struct{ field, desc string }

func (e testFieldError) Error() string        { return e.field + ": " + e.desc }
func (e testFieldError) Field() string        { return e.field }
func (e testFieldError) Description() string  { return e.desc }
func (e testFieldError) Is(target error) bool { return target == errInvalid }

var errInvalid = errors.New("invalid order")

func TestMapErrorFieldViolation(t *testing.T) {
	fe := testFieldError{field: "items[1].unit_price.currency_code", desc: "USD, where items[0] is in EUR"}
	for _, tt := range []struct {
		name       string
		code       codes.Code
		wantDetail bool
	}{
		{name: "invalid argument names the field", code: codes.InvalidArgument, wantDetail: true},
		{name: "other codes do not", code: codes.FailedPrecondition},
	} {
		t.Run(tt.name, func(t *testing.T) {
			log, _ := testLogger(t)
			err := MapError(context.Background(), log, fmt.Errorf("create order: %w", fe), []ErrorCode{{Err: errInvalid, Code: tt.code}})
			st := status.Convert(err)
			if st.Code() != tt.code || st.Message() != "create order: "+fe.Error() {
				t.Errorf("MapError() = %v %q", st.Code(), st.Message())
			}
			var got []*errdetails.BadRequest_FieldViolation
			for _, d := range st.Details() {
				if br, ok := d.(*errdetails.BadRequest); ok {
					got = append(got, br.GetFieldViolations()...)
				}
			}
			if !tt.wantDetail {
				if len(got) > 0 {
					t.Errorf("field violations %v, want none", got)
				}
				return
			}
			if len(got) != 1 || got[0].GetField() != fe.field || got[0].GetDescription() != fe.desc {
				t.Errorf("field violations %v, want one of %s: %s", got, fe.field, fe.desc)
			}
		})
	}
}

// TestMapErrorUnavailableCarriesRetryInfo: the UNAVAILABLE a mapping
// makes carries a google.rpc.RetryInfo, which tells it from one a gRPC
// client raises itself; other codes carry none.
func TestMapErrorUnavailableCarriesRetryInfo(t *testing.T) {
	log, _ := testLogger(t)
	mapping := []ErrorCode{{Err: errStoreDown, Code: codes.Unavailable, Message: "store unavailable"}, {Err: errNotFound, Code: codes.NotFound}}
	st := status.Convert(MapError(context.Background(), log, fmt.Errorf("get: %w", errStoreDown), mapping))
	var info *errdetails.RetryInfo
	for _, d := range st.Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok {
			info = ri
		}
	}
	if st.Code() != codes.Unavailable || st.Message() != "store unavailable" || info == nil || info.GetRetryDelay().AsDuration() != RetryDelay {
		t.Errorf("MapError = %v %q with details %v, want UNAVAILABLE %q with a RetryInfo of %v", st.Code(), st.Message(), st.Details(), "store unavailable", RetryDelay)
	}
	if st := status.Convert(MapError(context.Background(), log, errNotFound, mapping)); len(st.Details()) != 0 {
		t.Errorf("NOT_FOUND carries details %v, want none", st.Details())
	}
}
