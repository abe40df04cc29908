package rest

import (
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
)

// unreachable is what a REST client learns when the gateway could not
// reach an upstream.
var unreachable = func() *status.Status {
	st := status.New(codes.Unavailable, "upstream service unavailable; retry later")
	if withInfo, err := st.WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(time.Second)}); err == nil {
		return withInfo
	}
	return st
}()

// hideClientError returns unreachable for st, an UNAVAILABLE the gRPC
// client raised itself (a refused connection, a name that does not
// resolve, an upstream that went away mid-call), whose text may name
// internal addresses; the gateway logs that text. The services' own
// UNAVAILABLE errors carry a google.rpc.RetryInfo (grpcserver.Unavailable)
// and pass unchanged, as does every other status.
func hideClientError(st *status.Status) *status.Status {
	if st.Code() != codes.Unavailable {
		return st
	}
	for _, d := range st.Details() {
		if _, ok := d.(*errdetails.RetryInfo); ok {
			return st
		}
	}
	return unreachable
}
