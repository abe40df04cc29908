package rest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// checkBody returns the INVALID_ARGUMENT status for a request whose body
// its route cannot take, or nil: an empty body on a PUT (needsBody), or a
// body repeating a path variable's field with another value (pathInBody:
// PUT /v1/stock/SKU-1 with {"product_id": "SKU-2"} would otherwise set
// SKU-1). Only such routes have their body read here; it is put back for
// the route's handler, which also meets any error reading it met (a body
// over the size limit is still a 413).
func (q *queryRoute) checkBody(r *http.Request, params map[string]string) *status.Status {
	if !q.needsBody && len(q.pathInBody) == 0 {
		return nil
	}
	body, err := io.ReadAll(r.Body)
	r.Body = readAgain{Reader: io.MultiReader(bytes.NewReader(body), errorReader{err}), Closer: r.Body}
	if err != nil {
		return nil
	}
	if len(trimJSONSpace(body)) == 0 {
		if q.needsBody {
			return status.New(codes.InvalidArgument, "the request body is required: the resource's new state, as a JSON object")
		}
		return nil
	}
	if len(q.pathInBody) == 0 {
		return nil
	}
	var fields map[string]json.RawMessage
	if json.Unmarshal(body, &fields) != nil {
		return nil // The handler's decoder says what is wrong with it.
	}
	for _, fd := range q.pathInBody {
		v := string(fd.Name()) // the path variable's name
		for _, name := range []string{string(fd.Name()), fd.JSONName()} {
			raw, ok := fields[name]
			if !ok || string(bytes.TrimSpace(raw)) == "null" {
				continue // null, as protojson reads it: left out
			}
			var got string
			if json.Unmarshal(raw, &got) != nil {
				continue // Not a string: the handler's decoder refuses it.
			}
			if got != params[v] {
				return fieldViolation(
					fmt.Sprintf("%s in the body (%q) differs from the path's (%q)", name, got, params[v]),
					string(fd.Name()), "must be left out of the body, or equal to the path's value")
			}
		}
	}
	return nil
}

// readAgain is a request body read ahead and put back.
type readAgain struct {
	io.Reader
	io.Closer
}

// errorReader fails every read with err, or ends at once if err is nil.
type errorReader struct{ err error }

func (e errorReader) Read([]byte) (int, error) {
	if e.err != nil {
		return 0, e.err
	}
	return 0, io.EOF
}
