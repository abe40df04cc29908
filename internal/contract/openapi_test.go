package contract

import (
	"regexp"
	"slices"
	"testing"

	"github.com/ordermesh/ordermesh/gen/openapiv2"
	"github.com/ordermesh/ordermesh/internal/openapi"
)

// httpStatus matches a status an API text promises: "(HTTP 429)", "HTTP 409".
var httpStatus = regexp.MustCompile(`HTTP ([1-5][0-9][0-9])\b`)

// TestEveryPromisedStatusIsDeclared: a status code that an operation's
// summary or description says it answers with is among the responses the
// OpenAPI document declares for it, so a client generated from the
// document knows its shape.
func TestEveryPromisedStatusIsDeclared(t *testing.T) {
	ops, err := openapi.Operations(openapiv2.JSON)
	if err != nil {
		t.Fatal(err)
	}
	promised := 0
	for _, op := range ops {
		for _, m := range httpStatus.FindAllStringSubmatch(op.Summary+"\n"+op.Description, -1) {
			promised++
			if !slices.Contains(op.Responses, m[1]) {
				t.Errorf("%s %s says it answers HTTP %s, which its responses do not declare (%v)", op.Method, op.Path, m[1], op.Responses)
			}
		}
	}
	if promised == 0 {
		t.Error("no operation's text names an HTTP status: the test shows nothing")
	}
}
