package nodeagent

import (
	"bufio"
	"fmt"
	"io"
	"path"
	"strings"
)

// ModuleName is the name of a kernel module file:
// "kernel/drivers/net/net_failover.ko" and "crc-t10dif.ko.xz" are
// "net_failover" and "crc_t10dif" (the kernel treats - and _ alike).
func ModuleName(file string) string {
	base := path.Base(file)
	if i := strings.Index(base, ".ko"); i >= 0 {
		base = base[:i]
	}
	return strings.ReplaceAll(base, "-", "_")
}

// ModuleDeps is a kernel's modules.dep: each module file (relative to
// /lib/modules/VERSION) with the files it needs loaded first.
type ModuleDeps struct {
	deps   map[string][]string // file -> dependency files
	byName map[string]string   // ModuleName -> file
}

// ParseModulesDep reads modules.dep ("file: dep dep ...", one module a
// line).
func ParseModulesDep(r io.Reader) (*ModuleDeps, error) {
	md := &ModuleDeps{deps: map[string][]string{}, byName: map[string]string{}}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		file, deps, ok := strings.Cut(line, ":")
		if !ok || file == "" {
			return nil, fmt.Errorf("modules.dep line %d: %q is not \"file: deps\"", n, line)
		}
		md.deps[file] = strings.Fields(deps)
		md.byName[ModuleName(file)] = file
	}
	return md, sc.Err()
}

// LoadOrder returns the files to load, dependencies first, for the named
// modules (names or files; - and _ alike). Each file appears once. Names
// in builtin (module names of modules.builtin) are built into the kernel
// and skipped; the second result lists them. An unknown module or a
// dependency cycle is an error.
func (md *ModuleDeps) LoadOrder(names []string, builtin map[string]bool) (files, skipped []string, err error) {
	const (
		visiting = 1
		done     = 2
	)
	state := map[string]int{}
	var visit func(file string, chain []string) error
	visit = func(file string, chain []string) error {
		switch state[file] {
		case done:
			return nil
		case visiting:
			return fmt.Errorf("module dependency cycle: %s -> %s", strings.Join(chain, " -> "), ModuleName(file))
		}
		deps, ok := md.deps[file]
		if !ok {
			return fmt.Errorf("module file %s is not in modules.dep", file)
		}
		state[file] = visiting
		// modules.dep lists a module's dependencies last-loaded first,
		// as modprobe loads them from the end of the list.
		for i := len(deps) - 1; i >= 0; i-- {
			if err := visit(deps[i], append(chain, ModuleName(file))); err != nil {
				return err
			}
		}
		state[file] = done
		files = append(files, file)
		return nil
	}
	for _, n := range names {
		name := ModuleName(n)
		file, ok := md.byName[name]
		if !ok {
			if builtin[name] {
				skipped = append(skipped, name)
				continue
			}
			return nil, nil, fmt.Errorf("module %s: not in modules.dep nor built in", n)
		}
		if err := visit(file, nil); err != nil {
			return nil, nil, err
		}
	}
	return files, skipped, nil
}

// ParseModulesBuiltin reads modules.builtin (one file a line) into a set
// of module names.
func ParseModulesBuiltin(r io.Reader) (map[string]bool, error) {
	set := map[string]bool{}
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		if line := strings.TrimSpace(sc.Text()); line != "" {
			set[ModuleName(line)] = true
		}
	}
	return set, sc.Err()
}

// ParseModuleList reads the ramdisk's /etc/metalfleet/modules: module
// files relative to /lib/modules/VERSION, one a line, in load order;
// blank lines and # comments are skipped.
func ParseModuleList(r io.Reader) ([]string, error) {
	var out []string
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if i := strings.Index(line, "#"); i >= 0 {
			line = strings.TrimSpace(line[:i])
		}
		if line != "" {
			out = append(out, line)
		}
	}
	return out, sc.Err()
}
