// Package openapi reads the operations of an OpenAPI (Swagger 2) document,
// such as the one gen/openapiv2 embeds, for the tools and tests that walk
// every REST route.
package openapi

import (
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"
)

// Operation is one operation of a document: a method on a path.
type Operation struct {
	// Method is upper case: GET, POST, …
	Method string
	// Path is the path template as the document writes it:
	// /v1/orders/{order_id}.
	Path                 string
	Summary, Description string
	// Responses are the status codes the operation declares, sorted
	// ("default" among them when declared).
	Responses []string
}

// methods are the keys of a path item that name operations; the others
// (parameters, x-…) do not.
var methods = map[string]bool{"get": true, "put": true, "post": true, "delete": true, "options": true, "head": true, "patch": true}

// Operations returns doc's operations, sorted by path and then method.
func Operations(doc []byte) ([]Operation, error) {
	var d struct {
		Paths map[string]map[string]json.RawMessage `json:"paths"`
	}
	if err := json.Unmarshal(doc, &d); err != nil {
		return nil, fmt.Errorf("read the OpenAPI document: %w", err)
	}
	var ops []Operation
	for _, path := range slices.Sorted(maps.Keys(d.Paths)) {
		item := d.Paths[path]
		for _, method := range slices.Sorted(maps.Keys(item)) {
			if !methods[method] {
				continue
			}
			var op struct {
				Summary     string                     `json:"summary"`
				Description string                     `json:"description"`
				Responses   map[string]json.RawMessage `json:"responses"`
			}
			if err := json.Unmarshal(item[method], &op); err != nil {
				return nil, fmt.Errorf("read the OpenAPI document: %s %s: %w", method, path, err)
			}
			ops = append(ops, Operation{
				Method: strings.ToUpper(method), Path: path,
				Summary: op.Summary, Description: op.Description,
				Responses: slices.Sorted(maps.Keys(op.Responses)),
			})
		}
	}
	return ops, nil
}
