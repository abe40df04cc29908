// Command openapiroutes prints the operations of the OpenAPI (Swagger 2)
// document on its standard input, "METHOD /path" a line, sorted, with the
// names of path variables left out ({order_id} is {}: renaming one moves
// no route). The
// breaking-change check (.ci/breaking) compares them across versions of
// gen/openapiv2: a REST route that goes away breaks its clients, which
// buf's checks of the schemas do not see.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"regexp"
	"slices"
	"strings"
)

func main() {
	if err := run(os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "openapiroutes:", err)
		os.Exit(1)
	}
}

// methods are the keys of a path item that name operations.
var methods = map[string]bool{"get": true, "put": true, "post": true, "delete": true, "options": true, "head": true, "patch": true}

// pathVariable matches a variable of a path template.
var pathVariable = regexp.MustCompile(`\{[^}]*\}`)

func run(in io.Reader, out io.Writer) error {
	var doc struct {
		Paths map[string]map[string]json.RawMessage `json:"paths"`
	}
	if err := json.NewDecoder(in).Decode(&doc); err != nil {
		return fmt.Errorf("read the document: %w", err)
	}
	var lines []string
	for path, item := range doc.Paths {
		for method := range item {
			if methods[method] {
				lines = append(lines, strings.ToUpper(method)+" "+pathVariable.ReplaceAllString(path, "{}"))
			}
		}
	}
	slices.Sort(lines)
	for _, l := range lines {
		if _, err := fmt.Fprintln(out, l); err != nil {
			return err
		}
	}
	return nil
}
