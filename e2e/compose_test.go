package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"
)

// grpcPorts are the services' documented gRPC ports.
var grpcPorts = map[string]string{"order": "50051", "inventory": "50052", "payment": "50053", "notification": "50054"}

var envNamePattern = regexp.MustCompile(`"(ORDERMESH_[A-Z0-9_]+)"`)

// TestComposeFile loads docker-compose.yml with the Compose reference
// library and checks it agrees with the code: every service and the gateway
// are there, built from the Dockerfile, published on the documented ports,
// health-checked with the gRPC health protocol, started after their
// dependencies are healthy, and configured only with variables their own
// binary's code reads.
func TestComposeFile(t *testing.T) {
	root := filepath.Join("..")
	opts, err := cli.NewProjectOptions([]string{filepath.Join(root, "docker-compose.yml")},
		cli.WithWorkingDirectory(root), cli.WithName("ordermesh"))
	if err != nil {
		t.Fatalf("compose options: %v", err)
	}
	project, err := opts.LoadProject(context.Background())
	if err != nil {
		t.Fatalf("docker-compose.yml does not load: %v", err)
	}
	dockerfile, err := os.ReadFile(filepath.Join(root, "Dockerfile"))
	if err != nil {
		t.Fatalf("read Dockerfile: %v", err)
	}

	for _, infra := range []string{"rabbitmq", "postgres", "mailpit"} {
		svc, ok := project.Services[infra]
		if !ok {
			t.Errorf("service %s missing", infra)
			continue
		}
		if svc.HealthCheck == nil || len(svc.HealthCheck.Test) == 0 {
			t.Errorf("%s has no healthcheck", infra)
		}
	}
	if !publishes(project.Services["rabbitmq"], "15672") {
		t.Error("rabbitmq does not publish the management UI (15672)")
	}

	for name, port := range grpcPorts {
		svc, ok := project.Services[name]
		if !ok {
			t.Errorf("service %s missing", name)
			continue
		}
		checkBinaryService(t, svc, name, dockerfile)
		if got := env(svc, "ORDERMESH_GRPC_ADDR"); !strings.HasSuffix(got, ":"+port) {
			t.Errorf("%s: ORDERMESH_GRPC_ADDR = %q, want port %s", name, got, port)
		}
		if !publishes(svc, port) {
			t.Errorf("%s does not publish %s", name, port)
		}
		hc := strings.Join(svc.HealthCheck.Test, " ")
		if !strings.Contains(hc, "ordermeshctl") || !strings.Contains(hc, "127.0.0.1:"+port) || !strings.Contains(hc, "health") {
			t.Errorf("%s healthcheck %q does not check gRPC health on port %s", name, hc, port)
		}
		for _, dep := range []string{"rabbitmq", "postgres"} {
			if d, ok := svc.DependsOn[dep]; !ok || d.Condition != types.ServiceConditionHealthy {
				t.Errorf("%s does not wait for %s to be healthy", name, dep)
			}
		}
		if !strings.HasPrefix(env(svc, "ORDERMESH_AMQP_URL"), "amqp://") || !strings.HasPrefix(env(svc, "ORDERMESH_DATABASE_URL"), "postgres://") {
			t.Errorf("%s lacks broker or database URL", name)
		}
	}
	if got := env(project.Services["notification"], "ORDERMESH_SMTP_ADDR"); got != "mailpit:1025" {
		t.Errorf("notification sends mail to %q, want mailpit:1025", got)
	}

	gw, ok := project.Services["gateway"]
	if !ok {
		t.Fatal("service gateway missing")
	}
	checkBinaryService(t, gw, "gateway", dockerfile)
	if !publishes(gw, "8080") {
		t.Error("gateway does not publish 8080")
	}
	if hc := strings.Join(gw.HealthCheck.Test, " "); !strings.Contains(hc, "/healthz") {
		t.Errorf("gateway healthcheck %q does not use /healthz", hc)
	}
	for _, dep := range []string{"order", "inventory"} {
		if d, ok := gw.DependsOn[dep]; !ok || d.Condition != types.ServiceConditionHealthy {
			t.Errorf("gateway does not wait for %s to be healthy", dep)
		}
		if got, want := env(gw, "ORDERMESH_"+strings.ToUpper(dep)+"_ADDR"), dep+":"+grpcPorts[dep]; got != want {
			t.Errorf("gateway reaches %s at %q, want %q", dep, got, want)
		}
	}
}

func checkBinaryService(t *testing.T, svc types.ServiceConfig, name string, dockerfile []byte) {
	t.Helper()
	if svc.Build == nil {
		t.Errorf("%s is not built from the Dockerfile", name)
	}
	if len(svc.Command) == 0 || svc.Command[0] != "/usr/local/bin/"+name {
		t.Errorf("%s runs %q, want /usr/local/bin/%s", name, svc.Command, name)
	}
	pkg := "./services/" + name
	if name == "gateway" {
		pkg = "./gateway"
	}
	if !strings.Contains(string(dockerfile), pkg) {
		t.Errorf("the Dockerfile does not build %s", pkg)
	}
	if svc.HealthCheck == nil || len(svc.HealthCheck.Test) == 0 {
		t.Errorf("%s has no healthcheck", name)
	}
	known := envNamesOf(t, pkg)
	for k := range svc.Environment {
		if strings.HasPrefix(k, "ORDERMESH_") && !known[k] {
			t.Errorf("%s sets %s, which the %s binary does not read", name, k, name)
		}
	}
}

func env(svc types.ServiceConfig, key string) string {
	if v := svc.Environment[key]; v != nil {
		return *v
	}
	return ""
}

// publishes reports whether svc publishes port on the same host port.
func publishes(svc types.ServiceConfig, port string) bool {
	return slices.ContainsFunc(svc.Ports, func(p types.ServicePortConfig) bool {
		return p.Published == port && strconv.FormatUint(uint64(p.Target), 10) == port
	})
}

// envNamesOf collects the ORDERMESH_* names that appear as string
// literals in the non-test Go code of pkg and the module's packages it
// imports, directly or not: the variables its binary can read.
func envNamesOf(t *testing.T, pkg string) map[string]bool {
	t.Helper()
	cmd := exec.Command("go", "list", "-deps", "-f", "{{if .Module}}{{if .Module.Main}}{{.Dir}}{{range .GoFiles}}\t{{.}}{{end}}{{end}}{{end}}", pkg)
	cmd.Dir = ".."
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list -deps %s: %v", pkg, err)
	}
	known := map[string]bool{}
	for line := range strings.Lines(string(out)) {
		fields := strings.Split(strings.TrimSuffix(line, "\n"), "\t")
		if len(fields) < 2 {
			continue
		}
		for _, f := range fields[1:] {
			b, err := os.ReadFile(filepath.Join(fields[0], f))
			if err != nil {
				t.Fatal(err)
			}
			for _, m := range envNamePattern.FindAllStringSubmatch(string(b), -1) {
				known[m[1]] = true
			}
		}
	}
	if len(known) < 5 {
		t.Fatalf("found only %d ORDERMESH_ variables in %s's code: %v", len(known), pkg, known)
	}
	return known
}
