package guard

import (
	"strings"
	"testing"
)

// TestDecideIsPure: coordinator/decide holds pure decisions over a state
// view, so it imports proto and the standard library only (no store, no
// HTTP, no Raft, no third-party packages).
func TestDecideIsPure(t *testing.T) {
	found := false
	for _, p := range listPackages(t) {
		if p.ImportPath != module+"/coordinator/decide" && !strings.HasPrefix(p.ImportPath, module+"/coordinator/decide/") {
			continue
		}
		found = true
		for _, imp := range p.Imports {
			first, _, _ := strings.Cut(imp, "/")
			stdlib := !strings.Contains(first, ".")
			if imp == module+"/proto" || stdlib && imp != "net/http" && !strings.HasPrefix(imp, "net/http/") && imp != "os/exec" {
				continue
			}
			t.Errorf("%s imports %s; decide may import only proto and the standard library (no I/O)", p.ImportPath, imp)
		}
	}
	if !found {
		t.Errorf("package %s/coordinator/decide not found", module)
	}
}
