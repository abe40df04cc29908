// Package app is the inventory service's application layer: it runs the
// stock domain's rules inside PostgreSQL transactions — the stock admin
// use cases behind InventoryService, and the handlers of the order events,
// which run in the inbox runner's transaction and return the events to
// write to the outbox in it.
package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/ordermesh/ordermesh/internal/postgres"
	"github.com/ordermesh/ordermesh/services/inventory/internal/stock"
	"github.com/ordermesh/ordermesh/services/inventory/internal/store"
)

// Source is the app_id of every event the inventory service publishes.
const Source = "inventory"

// ErrUnavailable is returned when the database cannot be reached or the
// connection broke. SetStock sets a level rather than adding to it, so a
// call that got it may be repeated (with its expected level, if any: a
// repeat of a call that did take effect then fails, saying the level is
// no longer the one expected).
var ErrUnavailable = errors.New("inventory store unavailable; retry later")

// App runs the inventory use cases. It is safe for concurrent use.
type App struct {
	pool *pgxpool.Pool
	log  *slog.Logger
}

// New returns an App keeping stock in pool.
func New(pool *pgxpool.Pool, log *slog.Logger) *App {
	return &App{pool: pool, log: log}
}

// SetStock sets how many units of product id are available to reserve,
// creating the product if it is new; units already reserved are not
// affected. With expected not nil it does so only if the product's
// available units are still *expected (0 for a product not stocked yet),
// and otherwise returns an error wrapping stock.ErrLevelChanged that says
// the current level. It returns the stock after the change. An invalid
// id or level is an error wrapping stock.ErrInvalid.
func (a *App) SetStock(ctx context.Context, id string, available int64, expected *int64) (stock.Level, error) {
	if err := stock.ValidateProductID(id); err != nil {
		return stock.Level{}, err
	}
	if err := stock.ValidateAvailable(available); err != nil {
		return stock.Level{}, err
	}
	if expected == nil {
		l, err := store.SetStock(ctx, a.pool, id, available)
		return l, unavailable(err)
	}
	l, err := store.SetStockIf(ctx, a.pool, id, available, *expected)
	if errors.Is(err, stock.ErrLevelChanged) {
		if now, gerr := store.GetStock(ctx, a.pool, id); gerr == nil {
			return stock.Level{}, fmt.Errorf("%w (%d now, %d reserved)", err, now.Available, now.Reserved)
		}
	}
	return l, unavailable(err)
}

// GetStock returns the stock of product id, or an error wrapping
// stock.ErrNotFound for a product that was never stocked.
func (a *App) GetStock(ctx context.Context, id string) (stock.Level, error) {
	if err := stock.ValidateProductID(id); err != nil {
		return stock.Level{}, err
	}
	l, err := store.GetStock(ctx, a.pool, id)
	return l, unavailable(err)
}

// Reservation returns what the service recorded for order id; its status
// is stock.StatusNone when it never heard of the order.
func (a *App) Reservation(ctx context.Context, id string) (stock.Reservation, error) {
	r, err := store.GetReservation(ctx, a.pool, id)
	return r, unavailable(err)
}

// unavailable marks errors that mean the database could not be reached (or
// the connection broke; see postgres.Unreachable) with ErrUnavailable;
// other errors pass unchanged.
func unavailable(err error) error {
	if !postgres.Unreachable(err) {
		return err
	}
	return fmt.Errorf("%w: %v", ErrUnavailable, err)
}
