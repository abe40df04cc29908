package openapi_test

import (
	"slices"
	"testing"

	"github.com/ordermesh/ordermesh/internal/openapi"
)

func TestOperations(t *testing.T) {
	doc := []byte(`{"paths": {
		"/v1/b": {"parameters": [], "x-note": 1, "post": {"summary": "make", "responses": {"200": {}, "default": {}}}},
		"/v1/a/{id}": {"get": {"description": "read", "responses": {"404": {}, "200": {}}}, "delete": {}}
	}}`)
	ops, err := openapi.Operations(doc)
	if err != nil {
		t.Fatal(err)
	}
	want := []openapi.Operation{
		{Method: "DELETE", Path: "/v1/a/{id}", Responses: []string{}},
		{Method: "GET", Path: "/v1/a/{id}", Description: "read", Responses: []string{"200", "404"}},
		{Method: "POST", Path: "/v1/b", Summary: "make", Responses: []string{"200", "default"}},
	}
	if !slices.EqualFunc(ops, want, func(a, b openapi.Operation) bool {
		return a.Method == b.Method && a.Path == b.Path && a.Summary == b.Summary && a.Description == b.Description && slices.Equal(a.Responses, b.Responses)
	}) {
		t.Errorf("Operations = %+v, want %+v", ops, want)
	}
	if _, err := openapi.Operations([]byte(`{"paths": {"/x": {"get": []}}}`)); err == nil {
		t.Error("an operation that is no object: no error")
	}
}
