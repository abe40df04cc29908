package service

import (
	"context"
	"io"
	"log/slog"
	"net"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
)

// TestOutboxGaugesWithTheDatabaseDown: a scrape while the database does
// not answer says so (ordermesh_outbox_stats_up 0) rather than leaving
// only silence where the outbox gauges were.
func TestOutboxGaugesWithTheDatabaseDown(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	lis.Close() // nothing listens there now
	pool, err := pgxpool.New(context.Background(), "postgres://postgres@"+addr+"/x?sslmode=disable&connect_timeout=1")
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	reg := prometheus.NewRegistry()
	reg.MustRegister(&outboxCollector{log: slog.New(slog.NewTextHandler(io.Discard, nil)), pool: pool})
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, f := range families {
		got[f.GetName()] = f.GetMetric()[0].GetGauge().GetValue()
	}
	if up, ok := got["ordermesh_outbox_stats_up"]; !ok || up != 0 {
		t.Errorf("ordermesh_outbox_stats_up = %v (present %v), want 0", up, ok)
	}
	if _, ok := got["ordermesh_outbox_pending"]; ok {
		t.Error("ordermesh_outbox_pending reported though the database did not answer")
	}
}
