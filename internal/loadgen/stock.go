package loadgen

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"

	inventoryv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/inventory/v1"
)

// Products returns n product ids "<prefix>-0" … "<prefix>-(n-1)".
func Products(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s-%d", prefix, i)
	}
	return out
}

// StockGRPC sets each product's available stock to available with
// InventoryService.SetStock.
func StockGRPC(ctx context.Context, c inventoryv1.InventoryServiceClient, products []string, available int64) error {
	for _, p := range products {
		if _, err := c.SetStock(ctx, &inventoryv1.SetStockRequest{ProductId: p, Available: available}); err != nil {
			return fmt.Errorf("set stock of %s: %w", p, err)
		}
	}
	return nil
}

// StockREST sets each product's available stock to available with PUT
// /v1/stock/{product} through the gateway at base.
func StockREST(ctx context.Context, c *http.Client, base string, products []string, available int64) error {
	for _, p := range products {
		req, err := http.NewRequestWithContext(ctx, http.MethodPut, base+"/v1/stock/"+p,
			strings.NewReader(fmt.Sprintf(`{"available": %d}`, available)))
		if err != nil {
			return fmt.Errorf("set stock of %s: %w", p, err)
		}
		req.Header.Set("Content-Type", "application/json")
		resp, err := c.Do(req)
		if err != nil {
			return fmt.Errorf("set stock of %s: %w", p, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("set stock of %s: HTTP %d: %s", p, resp.StatusCode, truncate(string(b), 200))
		}
	}
	return nil
}
