package inbox_test

import (
	"context"
	"embed"
	"log"

	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/proto"

	orderv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/order/v1"
	"github.com/ordermesh/ordermesh/internal/eventbus"
	"github.com/ordermesh/ordermesh/internal/inbox"
	"github.com/ordermesh/ordermesh/internal/outbox"
	"github.com/ordermesh/ordermesh/internal/postgres"
)

var migrations embed.FS // In a service: //go:embed migrations/*.sql

// A service opens its schema, gets its domain tables, the outbox and the
// inbox with one Migrate call, and wraps each event handler so its effects,
// its inbox row and its outgoing events commit together.
func Example() {
	ctx := context.Background()
	const schema = "inventory"
	pool, err := postgres.Open(ctx, "postgres://postgres@127.0.0.1:5432/ordermesh?sslmode=disable", schema)
	if err != nil {
		log.Print(err)
		return
	}
	defer pool.Close()
	err = postgres.Migrate(ctx, pool, schema,
		postgres.Source{Name: "inventory", FS: migrations},
		outbox.Migrations,
		inbox.Migrations,
	)
	if err != nil {
		log.Print(err)
		return
	}

	runner := inbox.NewRunner(pool, "inventory", inbox.Metrics{})
	handle := inbox.Wrap(runner, func(ctx context.Context, tx pgx.Tx, ev *orderv1.OrderCreated, meta eventbus.Meta) ([]proto.Message, error) {
		// Reserve stock with tx, then announce the outcome.
		return nil, nil
	})
	_ = handle // eventbus.Handle(sub, handle)

	// State changes outside a handler write their events the same way.
	_ = postgres.WithTx(ctx, pool, func(tx pgx.Tx) error {
		// ... change state with tx ...
		return outbox.AddEvents(ctx, tx, "inventory", "order-id", &orderv1.OrderCancelled{})
	})
}
