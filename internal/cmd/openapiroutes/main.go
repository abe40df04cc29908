// Command openapiroutes prints the operations of the OpenAPI (Swagger 2)
// document on its standard input, "METHOD /path" a line, sorted, with the
// names of path variables left out ({order_id} is {}: renaming one moves
// no route). The
// breaking-change check (.ci/breaking) compares them across versions of
// gen/openapiv2: a REST route that goes away breaks its clients, which
// buf's checks of the schemas do not see.
package main

import (
	"fmt"
	"io"
	"os"
	"regexp"
	"slices"

	"github.com/ordermesh/ordermesh/internal/openapi"
)

func main() {
	if err := run(os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "openapiroutes:", err)
		os.Exit(1)
	}
}

// pathVariable matches a variable of a path template.
var pathVariable = regexp.MustCompile(`\{[^}]*\}`)

func run(in io.Reader, out io.Writer) error {
	doc, err := io.ReadAll(in)
	if err != nil {
		return fmt.Errorf("read the document: %w", err)
	}
	ops, err := openapi.Operations(doc)
	if err != nil {
		return err
	}
	var lines []string
	for _, op := range ops {
		lines = append(lines, op.Method+" "+pathVariable.ReplaceAllString(op.Path, "{}"))
	}
	slices.Sort(lines)
	for _, l := range lines {
		if _, err := fmt.Fprintln(out, l); err != nil {
			return err
		}
	}
	return nil
}
