package rest

import (
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// unreachable is what a REST client learns when the gateway could not
// reach an upstream.
var unreachable = status.New(codes.Unavailable, "upstream service unavailable; retry later")

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
