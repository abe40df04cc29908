package contract

import (
	"encoding/json"
	"maps"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/ordermesh/ordermesh/gen/openapiv2"
)

// httpStatus matches a status an API text promises: "(HTTP 429)", "HTTP 409".
var httpStatus = regexp.MustCompile(`HTTP ([1-5][0-9][0-9])\b`)

// TestEveryPromisedStatusIsDeclared: a status code that an operation's
// summary or description says it answers with is among the responses the
// OpenAPI document declares for it, so a client generated from the
// document knows its shape.
func TestEveryPromisedStatusIsDeclared(t *testing.T) {
	var doc struct {
		Paths map[string]map[string]struct {
			Summary     string                     `json:"summary"`
			Description string                     `json:"description"`
			Responses   map[string]json.RawMessage `json:"responses"`
		} `json:"paths"`
	}
	if err := json.Unmarshal(openapiv2.JSON, &doc); err != nil {
		t.Fatal(err)
	}
	promised := 0
	for _, path := range slices.Sorted(maps.Keys(doc.Paths)) {
		for _, method := range slices.Sorted(maps.Keys(doc.Paths[path])) {
			if method == "parameters" || strings.HasPrefix(method, "x-") {
				continue
			}
			op := doc.Paths[path][method]
			for _, m := range httpStatus.FindAllStringSubmatch(op.Summary+"\n"+op.Description, -1) {
				promised++
				if _, ok := op.Responses[m[1]]; !ok {
					t.Errorf("%s %s says it answers HTTP %s, which its responses do not declare (%v)",
						strings.ToUpper(method), path, m[1], slices.Sorted(maps.Keys(op.Responses)))
				}
			}
		}
	}
	if promised == 0 {
		t.Error("no operation's text names an HTTP status: the test shows nothing")
	}
}
