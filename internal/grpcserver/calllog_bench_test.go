package grpcserver

import (
	"context"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/logging"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
)

// BenchmarkCallLog measures what logging a successful unary call costs
// the server at the services' default level (info, so the call's line is
// not written): callLog against go-grpc-middleware's logging interceptor,
// which the services used before, with a handler that does nothing.
//
//	go test -run '^$' -bench CallLog -benchmem ./internal/grpcserver/
func BenchmarkCallLog(b *testing.B) {
	log := slog.New(slog.NewJSONHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelInfo}))
	ctx := peer.NewContext(context.Background(), &peer.Peer{
		Addr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 54321},
	})
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	info := &grpc.UnaryServerInfo{FullMethod: "/ordermesh.order.v1.OrderService/CreateOrder"}
	handler := func(context.Context, any) (any, error) { return nil, nil }
	middleware := logging.UnaryServerInterceptor(
		logging.LoggerFunc(func(ctx context.Context, lvl logging.Level, msg string, fields ...any) {
			log.Log(ctx, slog.Level(lvl), msg, fields...)
		}),
		logging.WithLogOnEvents(logging.FinishCall),
		// As the services had it: successful calls at debug level.
		logging.WithLevels(func(code codes.Code) logging.Level { return logging.Level(callLevel(code, "")) }),
	)
	for _, bb := range []struct {
		name string
		ic   grpc.UnaryServerInterceptor
	}{
		{"go-grpc-middleware", middleware},
		{"callLog", callLog{log: log}.unary},
	} {
		b.Run(bb.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := bb.ic(ctx, nil, info, handler); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
