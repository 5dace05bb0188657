package decide

import (
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"strings"
	"sync"

	"github.com/metalfleet/metalfleet/proto"
)

// Scheduling (issue 10, "Scheduling"): Schedule filters a state view's
// nodes for a flavor and weighs the survivors; CheckForce is the part of
// it a forced placement keeps; Admit bounds how many deploys run at once.
//
// Units: a flavor's memory_mb is MiB of the memory the kernel sees
// (inventory memory.total_bytes, a little less than the DIMMs' sum), its
// disk_gb is GiB (2^30 bytes) of the largest plain disk. Linux software
// RAID arrays (md, Disk.RAID set) do not count: an image is written to a
// whole disk the firmware boots from, which an md array is not.

// Scheduler filter names, in the order Schedule applies them (NoFit lists
// every one of them, a zero count included).
const (
	FilterState       = "state"       // not available
	FilterEnrolled    = "enrolled"    // not enrolled
	FilterMaintenance = "maintenance" // in maintenance
	FilterBound       = "bound"       // holds an instance
	FilterBMC         = "bmc"         // no BMC, or known unreachable or refusing the credentials
	FilterRack        = "rack"        // the flavor names another rack
	FilterCPUs        = "cpus"
	FilterMemory      = "memory"
	FilterDisk        = "disk"
	FilterTraits      = "traits" // misses a required trait (NodeTraits)
)

// Filters lists the scheduler filters in order.
var Filters = []string{FilterState, FilterEnrolled, FilterMaintenance, FilterBound, FilterBMC,
	FilterRack, FilterCPUs, FilterMemory, FilterDisk, FilterTraits}

// facts is what scheduling reads from a node's inventory.
type facts struct {
	cpus   int
	memMB  int64
	diskGB int64
	ok     bool   // an inventory was decoded
	arch   string // TraitX86_64, TraitAArch64 or ""
	boot   string // TraitBootUEFI, TraitBootBIOS or ""
}

// invFacts is the part of proto.Inventory scheduling reads (decoding only
// these fields allocates far less than the whole inventory).
type invFacts struct {
	BootMode string `json:"boot_mode"`
	CPUs     struct {
		Count        int    `json:"count"`
		Architecture string `json:"architecture"`
	} `json:"cpus"`
	Memory struct {
		TotalBytes int64 `json:"total_bytes"`
	} `json:"memory"`
	Disks []struct {
		SizeBytes int64  `json:"size_bytes"`
		RAID      string `json:"raid"`
	} `json:"disks"`
}

// nodeFacts decodes n's inventory; ok is false without one or when it
// does not decode.
func nodeFacts(n *proto.Node) facts {
	var fa facts
	if len(n.Inventory) == 0 {
		return fa
	}
	var inv invFacts
	if json.Unmarshal(n.Inventory, &inv) != nil {
		return fa
	}
	fa.ok = true
	fa.cpus = inv.CPUs.Count
	fa.memMB = inv.Memory.TotalBytes >> 20
	for _, d := range inv.Disks {
		if d.RAID == "" && d.SizeBytes>>30 > fa.diskGB {
			fa.diskGB = d.SizeBytes >> 30
		}
	}
	switch strings.ToLower(inv.CPUs.Architecture) {
	case "x86_64", "amd64":
		fa.arch = proto.TraitX86_64
	case "aarch64", "arm64":
		fa.arch = proto.TraitAArch64
	}
	switch strings.ToLower(inv.BootMode) {
	case "uefi":
		fa.boot = proto.TraitBootUEFI
	case "bios":
		fa.boot = proto.TraitBootBIOS
	}
	return fa
}

// NodeTraits is n's traits: the operators' (n.Traits) and those its
// inventory makes obvious: CPU_X86_64 or CPU_AARCH64 from
// cpus.architecture, BOOT_UEFI or BOOT_BIOS from boot_mode; sorted, each
// once.
func NodeTraits(n *proto.Node) []string {
	return nodeTraits(n, nodeFacts(n))
}

func nodeTraits(n *proto.Node, fa facts) []string {
	out := append(make([]string, 0, len(n.Traits)+2), n.Traits...)
	for _, t := range []string{fa.arch, fa.boot} {
		if t != "" {
			out = append(out, t)
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// hasTraits reports whether n has every trait of want (NodeTraits),
// without building the list.
func hasTraits(n *proto.Node, fa facts, want []string) bool {
	for _, t := range want {
		if t != fa.arch && t != fa.boot && !slices.Contains(n.Traits, t) {
			return false
		}
	}
	return true
}

// Capacity is n's capacity from its inventory: logical CPUs, memory in
// MiB (memory.total_bytes), the largest plain disk in GiB (md arrays do
// not count); ok is false when n has no inventory or it does not decode.
func Capacity(n *proto.Node) (cpus int, memMB int64, diskGB int64, ok bool) {
	fa := nodeFacts(n)
	return fa.cpus, fa.memMB, fa.diskGB, fa.ok
}

// nodeLabel names n in messages: its name, else its uuid.
func nodeLabel(n *proto.Node) string {
	if n.Name != "" {
		return n.Name
	}
	return n.UUID
}

// bmcProblem says why n's BMC cannot be used ("" when it can): none set
// (driver and address), or the rack agent found it unreachable or
// refusing the credentials. A BMC never checked, or one that answered but
// refused a command, is usable.
func bmcProblem(n *proto.Node) string {
	if n.BMC.Driver == "" || n.BMC.Address == "" {
		return "has no BMC (driver and address)"
	}
	if st := n.BMCStatus; st != nil && (st.State == proto.BMCUnreachable || st.State == proto.BMCAuthFailed) {
		msg := "BMC is " + string(st.State)
		if st.Error != "" {
			msg += ": " + st.Error
		}
		return msg
	}
	return ""
}

// CheckForce is what a forced placement never skips: the node is
// available, enrolled, not in maintenance, holds no instance, and has a
// BMC that is set and not known unreachable or refusing the credentials.
// The error is a CodeWrongState one naming the node and its state.
func CheckForce(n *proto.Node) error {
	name := nodeLabel(n)
	switch {
	case n.ProvisionState != proto.StateAvailable:
		return proto.Errorf(proto.CodeWrongState, "node %s is %s, not available", name, n.ProvisionState)
	case !n.Enrolled:
		return proto.Errorf(proto.CodeWrongState, "node %s is not enrolled", name)
	case n.Maintenance:
		msg := fmt.Sprintf("node %s is in maintenance", name)
		if n.MaintenanceReason != "" {
			msg += ": " + n.MaintenanceReason
		}
		return proto.Errorf(proto.CodeWrongState, "%s", msg)
	case n.InstanceUUID != "":
		return proto.Errorf(proto.CodeWrongState, "node %s already holds instance %s", name, n.InstanceUUID)
	}
	if p := bmcProblem(n); p != "" {
		return proto.Errorf(proto.CodeWrongState, "node %s %s", name, p)
	}
	return nil
}

// Schedule picks the node for flavor f among nodes, or says why none
// fits. Filters, in order (each node counts against the first that
// removes it): state (not available), enrolled, maintenance, bound (holds
// an instance), bmc (none, or unreachable or refusing the credentials),
// rack (f.Rack set and different), cpus, memory, disk (Capacity), traits
// (misses one of f.RequiredTraits, against NodeTraits). A node without a
// decodable inventory has an unknown capacity, which satisfies no
// positive requirement (it falls at the first of cpus, memory, disk that
// f asks for).
//
// The survivors are weighed: least excess capacity first (the sum over
// cpus, memory and disk of (have-want)/max(want,1); an unknown capacity
// comes last), then the rack with the fewest instances in rackLoad, then
// by name, then by uuid, so the answer is deterministic.
//
// Schedule decodes the inventory of every node that reaches the capacity
// filters; a caller deciding often keeps a CapacityCache instead.
func Schedule(nodes []*proto.Node, f *proto.Flavor, rackLoad map[string]int) (*proto.Node, *proto.NoFit) {
	return schedule(nodes, f, rackLoad, nodeFacts)
}

// filter indexes, in Filters order.
const (
	fState = iota
	fEnrolled
	fMaintenance
	fBound
	fBMC
	fRack
	fCPUs
	fMemory
	fDisk
	fTraits
	nFilters
)

func schedule(nodes []*proto.Node, f *proto.Flavor, rackLoad map[string]int, factsOf func(*proto.Node) facts) (*proto.Node, *proto.NoFit) {
	if f == nil {
		f = &proto.Flavor{}
	}
	var removed [nFilters]int
	var best *proto.Node
	var bestExcess float64
	for _, n := range nodes {
		if n == nil {
			continue
		}
		out := -1
		switch {
		case n.ProvisionState != proto.StateAvailable:
			out = fState
		case !n.Enrolled:
			out = fEnrolled
		case n.Maintenance:
			out = fMaintenance
		case n.InstanceUUID != "":
			out = fBound
		case bmcProblem(n) != "":
			out = fBMC
		case f.Rack != "" && n.Rack != f.Rack:
			out = fRack
		}
		if out >= 0 {
			removed[out]++
			continue
		}
		fa := factsOf(n)
		switch {
		case f.CPUs > 0 && (!fa.ok || fa.cpus < f.CPUs):
			out = fCPUs
		case f.MemoryMB > 0 && (!fa.ok || fa.memMB < f.MemoryMB):
			out = fMemory
		case f.DiskGB > 0 && (!fa.ok || fa.diskGB < f.DiskGB):
			out = fDisk
		case !hasTraits(n, fa, f.RequiredTraits):
			out = fTraits
		}
		if out >= 0 {
			removed[out]++
			continue
		}
		ex := excess(fa, f)
		if best == nil || better(n, ex, best, bestExcess, rackLoad) {
			best, bestExcess = n, ex
		}
	}
	if best != nil {
		return best, nil
	}
	nf := &proto.NoFit{Removed: make([]proto.FilterCount, nFilters)}
	for i, name := range Filters {
		nf.Removed[i] = proto.FilterCount{Filter: name, Removed: removed[i]}
		nf.Considered += removed[i]
	}
	return nil, nf
}

// excess is how much more than f node capacity fa has, normalized per
// resource; +Inf for an unknown capacity.
func excess(fa facts, f *proto.Flavor) float64 {
	if !fa.ok {
		return math.Inf(1)
	}
	return float64(int64(fa.cpus)-int64(f.CPUs))/float64(max(int64(f.CPUs), 1)) +
		float64(fa.memMB-f.MemoryMB)/float64(max(f.MemoryMB, 1)) +
		float64(fa.diskGB-f.DiskGB)/float64(max(f.DiskGB, 1))
}

// better reports whether a (with excess ea) ranks before b (eb).
func better(a *proto.Node, ea float64, b *proto.Node, eb float64, rackLoad map[string]int) bool {
	if ea != eb {
		return ea < eb
	}
	if a.Rack != b.Rack {
		if la, lb := rackLoad[a.Rack], rackLoad[b.Rack]; la != lb {
			return la < lb
		}
	}
	if a.Name != b.Name {
		return a.Name < b.Name
	}
	return a.UUID < b.UUID
}

// NoFitError is the CodeConflict error for a flavor no node fits:
// "no node fits flavor F: N considered; state removed 3, cpus removed 1"
// (filters that removed none are left out).
func NoFitError(f *proto.Flavor, nf *proto.NoFit) error {
	name := ""
	if f != nil {
		name = f.Name
	}
	if nf == nil {
		return proto.Errorf(proto.CodeConflict, "no node fits flavor %s", name)
	}
	var parts []string
	for _, fc := range nf.Removed {
		if fc.Removed > 0 {
			parts = append(parts, fmt.Sprintf("%s removed %d", fc.Filter, fc.Removed))
		}
	}
	msg := fmt.Sprintf("no node fits flavor %s: %d considered", name, nf.Considered)
	if len(parts) > 0 {
		msg += "; " + strings.Join(parts, ", ")
	}
	return proto.Errorf(proto.CodeConflict, "%s", msg)
}

// CapacityCache keeps what scheduling reads from node inventories
// (capacity and inventory traits) between decisions, keyed by node uuid
// and ModifyIndex (and the inventory's length, for nodes not from the
// store): a node's inventory is decoded again only after the node was
// written. Without it every decision decodes the inventory of every node
// that reaches the capacity filters (most of a fleet's available nodes).
// Entries of nodes no longer given are dropped when they outnumber the
// nodes. The zero value is ready; it is safe for concurrent use.
type CapacityCache struct {
	mu sync.Mutex
	m  map[string]*cacheEntry
}

type cacheEntry struct {
	modify uint64
	invLen int
	facts  facts
}

// facts is n's facts, decoded again when n changed. The caller holds mu.
func (c *CapacityCache) facts(n *proto.Node) facts {
	if e := c.m[n.UUID]; e != nil && e.modify == n.ModifyIndex && e.invLen == len(n.Inventory) {
		return e.facts
	}
	fa := nodeFacts(n)
	c.m[n.UUID] = &cacheEntry{modify: n.ModifyIndex, invLen: len(n.Inventory), facts: fa}
	return fa
}

// Schedule is Schedule with the inventories read through the cache.
func (c *CapacityCache) Schedule(nodes []*proto.Node, f *proto.Flavor, rackLoad map[string]int) (*proto.Node, *proto.NoFit) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = make(map[string]*cacheEntry, len(nodes))
	}
	best, nf := schedule(nodes, f, rackLoad, c.facts)
	if len(c.m) > 2*len(nodes)+64 {
		present := make(map[string]bool, len(nodes))
		for _, n := range nodes {
			if n != nil {
				present[n.UUID] = true
			}
		}
		for id := range c.m {
			if !present[id] {
				delete(c.m, id)
			}
		}
	}
	return best, nf
}

// Capacity is Capacity through the cache.
func (c *CapacityCache) Capacity(n *proto.Node) (cpus int, memMB int64, diskGB int64, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = make(map[string]*cacheEntry)
	}
	fa := c.facts(n)
	return fa.cpus, fa.memMB, fa.diskGB, fa.ok
}

// Len is the number of nodes the cache holds.
func (c *CapacityCache) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.m)
}

// Admit picks which queued instances start deploying now, in order
// (queued is in creation order): at most max(0, maxTotal-runningTotal) in
// all, and per rack at most max(0, maxPerRack-runningPerRack[rack]), the
// rack of an instance being rackOf[its uuid] ("" when unknown, a rack of
// its own). An instance whose rack is full is skipped and does not block
// later instances of other racks; it keeps its place for the next call.
// maxTotal and maxPerRack <= 0 mean proto.DefaultDeployMax and
// proto.DefaultDeployMaxPerRack. It returns the uuids to start, in order.
func Admit(queued []*proto.Instance, rackOf map[string]string, runningTotal int, runningPerRack map[string]int, maxTotal, maxPerRack int) []string {
	if maxTotal <= 0 {
		maxTotal = proto.DefaultDeployMax
	}
	if maxPerRack <= 0 {
		maxPerRack = proto.DefaultDeployMaxPerRack
	}
	budget := maxTotal - runningTotal
	var out []string
	started := map[string]int{}
	for _, in := range queued {
		if len(out) >= budget {
			break
		}
		if in == nil {
			continue
		}
		r := rackOf[in.UUID]
		if runningPerRack[r]+started[r] >= maxPerRack {
			continue
		}
		started[r]++
		out = append(out, in.UUID)
	}
	return out
}
