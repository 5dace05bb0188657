package guard

import (
	"encoding/json"
	"io"
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/metalfleet/metalfleet"

type pkg struct {
	ImportPath   string
	Name         string
	Doc          string
	Imports      []string
	TestImports  []string
	XTestImports []string
}

func listPackages(t *testing.T) []pkg {
	t.Helper()
	out, err := exec.Command("go", "list", "-json", module+"/...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	dec := json.NewDecoder(strings.NewReader(string(out)))
	var pkgs []pkg
	for {
		var p pkg
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		pkgs = append(pkgs, p)
	}
	if len(pkgs) < 5 {
		t.Fatalf("go list found only %d packages", len(pkgs))
	}
	return pkgs
}

func TestEveryPackageHasADocComment(t *testing.T) {
	for _, p := range listPackages(t) {
		if strings.TrimSpace(p.Doc) == "" {
			t.Errorf("package %s has no doc comment", p.ImportPath)
		}
	}
}

// TestLayers: the rack agent never reaches into the coordinator (only its
// API client), proto depends on nothing of ours, and the coordinator's
// state and FSM know nothing of HTTP or the server around them.
func TestLayers(t *testing.T) {
	rules := []struct {
		from    string   // package prefix the rule is for
		forbid  []string // import prefixes it may not use
		allowed []string // exceptions to forbid
	}{
		{from: module + "/rackagent", forbid: []string{module + "/coordinator"}, allowed: []string{module + "/coordinator/apiclient"}},
		{from: module + "/proto", forbid: []string{module + "/"}},
		{from: module + "/cluster", forbid: []string{module + "/coordinator", module + "/rackagent"}},
		{from: module + "/coordinator/state", forbid: []string{module + "/coordinator/", "net/http"}},
		{from: module + "/coordinator/fsm", forbid: []string{module + "/coordinator/httpapi", module + "/coordinator/server", "net/http"}},
	}
	for _, p := range listPackages(t) {
		for _, r := range rules {
			if p.ImportPath != r.from && !strings.HasPrefix(p.ImportPath, r.from+"/") {
				continue
			}
		imports:
			for _, imp := range p.Imports {
				for _, a := range r.allowed {
					if imp == a || strings.HasPrefix(imp, a+"/") {
						continue imports
					}
				}
				for _, f := range r.forbid {
					if imp == strings.TrimSuffix(f, "/") || strings.HasPrefix(imp, f) {
						t.Errorf("%s imports %s, which its layer may not use", p.ImportPath, imp)
					}
				}
			}
		}
	}
}

// TestNodeagentImportsProtoOnly: the program inside every task ramdisk is
// small and static; of ours it uses only the wire types.
func TestNodeagentImportsProtoOnly(t *testing.T) {
	for _, p := range listPackages(t) {
		if p.ImportPath != module+"/rackagent/nodeagent" && p.ImportPath != module+"/cmd/nodeagent" {
			continue
		}
		for _, imp := range p.Imports {
			if strings.HasPrefix(imp, module+"/") && imp != module+"/proto" && imp != module+"/rackagent/nodeagent" {
				t.Errorf("%s imports %s: nodeagent may use only proto", p.ImportPath, imp)
			}
		}
	}
}

// TestRackAgentTestsOffCoordinatorInternals: rack-agent tests reach a
// coordinator the way an agent does (its API client) or start whole
// ones (coordtest); never its state, FSM, API handlers or server.
func TestRackAgentTestsOffCoordinatorInternals(t *testing.T) {
	allowed := []string{module + "/coordinator/apiclient", module + "/coordinator/coordtest"}
	for _, p := range listPackages(t) {
		if !strings.HasPrefix(p.ImportPath, module+"/rackagent") {
			continue
		}
		for _, imp := range append(p.TestImports, p.XTestImports...) {
			if strings.HasPrefix(imp, module+"/coordinator") && imp != allowed[0] && imp != allowed[1] {
				t.Errorf("tests of %s import %s: rack-agent tests use the API client or coordtest only", p.ImportPath, imp)
			}
		}
	}
}
