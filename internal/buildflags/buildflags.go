// Package buildflags holds the go build flags every ordermesh binary is
// built with, by make build, make run, the benchmark, the end-to-end tests
// and the Dockerfile alike.
package buildflags

// Tags are the build tags of every ordermesh binary.
//
// grpcnotrace leaves out grpc-go's support for golang.org/x/net/trace
// (grpc.EnableTracing and its /debug/requests pages), which ordermesh never
// turns on. That package renders its pages with html/template, and a
// template's method calls look methods up by name at run time, so with it
// in the binary the linker must keep every exported method of every type
// that can reach an interface. Without it a service binary is about 18 %
// (4.8 MB) smaller, and a worker's code is most of its resident memory.
// For the same reason the notification service writes its emails in code
// rather than with text/template and html/template.
const Tags = "grpcnotrace"

// Args are Tags as arguments to go build, go run or go test.
func Args() []string { return []string{"-tags=" + Tags} }
