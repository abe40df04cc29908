package rest

import (
	"context"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// unreachable is what a REST client learns when the gateway could not
// reach an upstream.
var unreachable = status.New(codes.Unavailable, "upstream service unavailable; retry later")

// UpstreamDialOptions are the options for the gateway's connections to
// its upstreams (with the transport credentials). When a call fails in
// the gRPC client before any upstream answered it (a refused connection,
// a name that does not resolve), its error's text names internal
// addresses: a REST client then gets UNAVAILABLE "upstream service
// unavailable; retry later", and the gateway logs the text. Errors an
// upstream returned pass unchanged.
func UpstreamDialOptions() []grpc.DialOption {
	return []grpc.DialOption{
		grpc.WithChainUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
			var p peer.Peer
			err := invoker(ctx, method, req, reply, cc, append(opts, grpc.Peer(&p))...)
			if p.Addr == nil {
				// No stream was opened: the error is the client's own.
				return clientError(err)
			}
			return err
		}),
		grpc.WithChainStreamInterceptor(func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
			// A stream's own errors come from RecvMsg, an upstream's;
			// NewStream fails only in the client.
			s, err := streamer(ctx, desc, cc, method, opts...)
			return s, clientError(err)
		}),
	}
}

// clientError hides the text of err, an UNAVAILABLE error the gRPC client
// raised itself, behind unreachable; other errors pass unchanged.
func clientError(err error) error {
	if status.Code(err) != codes.Unavailable {
		return err
	}
	return &hiddenError{cause: err}
}

// hiddenError is an error whose status for clients is unreachable and
// whose text, for the gateway's log, is its cause's.
type hiddenError struct{ cause error }

func (e *hiddenError) Error() string              { return e.cause.Error() }
func (e *hiddenError) Unwrap() error              { return e.cause }
func (e *hiddenError) GRPCStatus() *status.Status { return unreachable }
