package sim

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// StormRack is one rack of a storm: where its machines send DHCP, which
// machines it has, and how to learn that a machine's node exists.
type StormRack struct {
	Name     string
	DHCP     *net.UDPAddr
	RelayIP  net.IP
	TFTPPort int
	MACs     []net.HardwareAddr
	// Names, if set, name the machines (as MACs), for the output.
	Names []string
	// Hosts, if set, are the machines (as MACs) with power and a BMC:
	// the storm presses each one's power button instead of booting a
	// Machine of its own, and the hosts stay after it (powered on) for
	// their BMCs to drive. Their Machines are used as they are, but for
	// OnLease, which the storm sets.
	Hosts []*Host
	// Known says whether the boot state of the rack's agent holds a node
	// with mac, and its uuid and name. Changed returns a channel closed at
	// the agent's next boot state. With Known nil, a machine is done
	// when its inventory is accepted.
	Known   func(mac net.HardwareAddr) (uuid, name string, ok bool)
	Changed func() <-chan struct{}
}

// Storm powers on many machines at once, each booting concurrently with
// Machine.Run, and follows each until its node exists.
type Storm struct {
	Racks []StormRack
	// Spread staggers power-on: each machine starts at a random moment
	// in [0, Spread) after the storm's start, as firmware's POST times
	// vary.
	Spread    time.Duration
	Firmware  Firmware
	BindLease bool
	Report    ReportFunc
	// NodeWait bounds the wait, after its inventory was accepted, for a
	// machine's node to reach its agent (default 3 min).
	NodeWait time.Duration
	// OnDone, if set, hears each machine's outcome when it ends (from
	// the machine's goroutine).
	OnDone func(o *Outcome)
	// Progress, if set, gets a line every ProgressEvery (default 5 s).
	Progress      io.Writer
	ProgressEvery time.Duration
	Log           func(format string, args ...any)
}

// Outcome is what became of one machine.
type Outcome struct {
	Rack, Name string
	MAC        net.HardwareAddr
	Result     *Result
	Err        error // the boot failed (after its retries)
	// Start is when the machine was powered on; Reported when its
	// inventory was accepted; Enrolled when its node reached its agent.
	Start, Reported, Enrolled time.Time
	// Node and NodeName are the machine's node: the one that appeared,
	// or the known one that booted its disk.
	Node, NodeName string
	// NoNode: the inventory was accepted but no node appeared within
	// NodeWait.
	NoNode bool
}

// Summary is what a storm did.
type Summary struct {
	Machines int
	// Start is the storm's power-on moment; Last is when the last
	// machine's node appeared (zero if none did).
	Start, Last time.Time
	// Enrolled machines reported an inventory and their node appeared;
	// Known ones booted their local disk (already nodes); Failed ones
	// never finished a boot; NoNode ones reported but no node appeared.
	Enrolled, Known, Failed, NoNode int
	Retries                         Retries
	// MachinesRetried is how many machines retried anything.
	MachinesRetried int
	// Duplicates lists every address ACKed to a second MAC while the
	// first one's lease ran.
	Duplicates []string
	Outcomes   []*Outcome
}

// Run boots every machine and returns when each is done or ctx ends.
func (s *Storm) Run(ctx context.Context) *Summary {
	book := &LeaseBook{}
	sum := &Summary{Start: time.Now()}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var enrolled, done, failed atomic.Int64
	total := 0
	for _, r := range s.Racks {
		total += len(r.MACs)
	}
	sum.Machines = total
	progCtx, stopProg := context.WithCancel(ctx)
	if s.Progress != nil {
		go s.progress(progCtx, sum.Start, total, &enrolled, &done, &failed)
	}
	for _, r := range s.Racks {
		for i, mac := range r.MACs {
			o := &Outcome{Rack: r.Name, MAC: mac, Name: mac.String()}
			if i < len(r.Names) {
				o.Name = r.Names[i]
			}
			m := &Machine{MAC: mac, DHCP: r.DHCP, RelayIP: r.RelayIP, TFTPPort: r.TFTPPort, BindLease: s.BindLease,
				Report: s.Report, Firmware: s.Firmware, OnLease: book.Ack, Log: s.Log}
			var host *Host
			if i < len(r.Hosts) && r.Hosts[i] != nil {
				host = r.Hosts[i]
				host.M.OnLease = book.Ack
			}
			var delay time.Duration
			if s.Spread > 0 {
				delay = time.Duration(rand.Int64N(int64(s.Spread)))
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				s.boot(ctx, r, m, host, o, sum.Start.Add(delay))
				switch {
				case o.Err != nil:
					failed.Add(1)
				case !o.Enrolled.IsZero():
					enrolled.Add(1)
				}
				done.Add(1)
				mu.Lock()
				sum.Outcomes = append(sum.Outcomes, o)
				mu.Unlock()
				if s.OnDone != nil {
					s.OnDone(o)
				}
			}()
		}
	}
	wg.Wait()
	stopProg()
	for _, o := range sum.Outcomes {
		switch {
		case o.Err != nil:
			sum.Failed++
		case o.NoNode:
			sum.NoNode++
		case !o.Enrolled.IsZero():
			sum.Enrolled++
			if o.Enrolled.After(sum.Last) {
				sum.Last = o.Enrolled
			}
		default:
			sum.Known++
		}
		if o.Result != nil {
			sum.Retries.Add(o.Result.Retries)
			if o.Result.Retries != (Retries{}) {
				sum.MachinesRetried++
			}
		}
	}
	sum.Duplicates = book.Duplicates()
	sort.Slice(sum.Outcomes, func(i, j int) bool { return sum.Outcomes[i].Name < sum.Outcomes[j].Name })
	return sum
}

func (s *Storm) progress(ctx context.Context, start time.Time, total int, enrolled, done, failed *atomic.Int64) {
	every := s.ProgressEvery
	if every <= 0 {
		every = 5 * time.Second
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			fmt.Fprintf(s.Progress, "%5.1fs: %d of %d machines enrolled, %d done, %d failed\n",
				time.Since(start).Seconds(), enrolled.Load(), total, done.Load(), failed.Load())
		}
	}
}

// boot powers one machine on at start, boots it, and waits for its node.
// A host is powered on with its button, and its first boot is followed.
func (s *Storm) boot(ctx context.Context, r StormRack, m *Machine, host *Host, o *Outcome, start time.Time) {
	if !wait(ctx, time.Until(start)) {
		o.Err = ctx.Err()
		return
	}
	o.Start = time.Now()
	if host != nil {
		m = host.M
		o.Result, o.Err = host.PressPower(ctx)
	} else {
		o.Result, o.Err = m.Run(ctx)
	}
	if o.Err != nil {
		return
	}
	if !o.Result.Reported {
		// A known node booted its disk: name it, if the agent knows it.
		if r.Known != nil {
			o.Node, o.NodeName, _ = r.Known(m.MAC)
		}
		return
	}
	o.Reported = time.Now()
	if r.Known == nil {
		o.Enrolled = o.Reported
		return
	}
	limit := s.NodeWait
	if limit <= 0 {
		limit = 3 * time.Minute
	}
	timer := time.NewTimer(limit)
	defer timer.Stop()
	for {
		changed := r.Changed()
		if id, name, ok := r.Known(m.MAC); ok {
			o.Enrolled, o.Node, o.NodeName = time.Now(), id, name
			return
		}
		select {
		case <-changed:
		case <-timer.C:
			o.NoNode = true
			return
		case <-ctx.Done():
			o.NoNode = true
			return
		}
	}
}

// LeaseBook checks that no address is ACKed to two MACs at once, across
// every rack of a storm.
type LeaseBook struct {
	// Now is the clock (nil: time.Now).
	Now   func() time.Time
	mu    sync.Mutex
	by    map[string]bookLease
	dupes []string
}

type bookLease struct {
	mac     string
	expires time.Time
}

// Ack records that ip was ACKed to mac for d (0: taken as an hour).
func (b *LeaseBook) Ack(mac net.HardwareAddr, ip net.IP, d time.Duration) {
	if d <= 0 {
		d = time.Hour
	}
	now := time.Now()
	if b.Now != nil {
		now = b.Now()
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.by == nil {
		b.by = map[string]bookLease{}
	}
	k := ip.String()
	if old, ok := b.by[k]; ok && old.mac != mac.String() && old.expires.After(now) {
		b.dupes = append(b.dupes, fmt.Sprintf("%s ACKed to %s while leased to %s until %s", k, mac, old.mac, old.expires.Format(time.RFC3339)))
	}
	b.by[k] = bookLease{mac: mac.String(), expires: now.Add(d)}
}

// Duplicates lists the addresses ACKed to a second MAC during a lease.
func (b *LeaseBook) Duplicates() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.dupes)
}

// Quantiles returns the p50, p99 and max of ds (zeros if empty).
func Quantiles(ds []time.Duration) (p50, p99, worst time.Duration) {
	if len(ds) == 0 {
		return 0, 0, 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	q := func(p float64) time.Duration {
		i := int(p*float64(len(s))+0.5) - 1
		return s[min(max(i, 0), len(s)-1)]
	}
	return q(0.50), q(0.99), s[len(s)-1]
}

// Print writes the summary: counts, time to the last node, retries,
// duplicates, and where the time went, phase by phase.
func (sum *Summary) Print(w io.Writer) {
	fmt.Fprintf(w, "machines: %d; enrolled %d, booted their disk (known) %d, failed %d, reported but no node %d\n",
		sum.Machines, sum.Enrolled, sum.Known, sum.Failed, sum.NoNode)
	if !sum.Last.IsZero() {
		fmt.Fprintf(w, "time from power-on to the last node enrolled: %s\n", sum.Last.Sub(sum.Start).Round(time.Millisecond))
	}
	r := sum.Retries
	fmt.Fprintf(w, "retries: DHCP %d, TFTP %d, HTTP %d, inventory callback %d, whole boots %d (%d machines retried anything)\n",
		r.DHCP, r.TFTP, r.HTTP, r.Callback, r.Boots, sum.MachinesRetried)
	fmt.Fprintf(w, "addresses ACKed to two MACs at once: %d\n", len(sum.Duplicates))
	for i, d := range sum.Duplicates {
		if i == 10 {
			fmt.Fprintf(w, "  ... and %d more\n", len(sum.Duplicates)-10)
			break
		}
		fmt.Fprintf(w, "  %s\n", d)
	}
	var phases [NumPhases][]time.Duration
	var delivery, boot, total []time.Duration
	for _, o := range sum.Outcomes {
		if o.Result == nil || o.Err != nil {
			continue
		}
		for p := range NumPhases {
			if o.Result.Phases[p] > 0 {
				phases[p] = append(phases[p], o.Result.Phases[p])
			}
		}
		if !o.Enrolled.IsZero() {
			delivery = append(delivery, o.Enrolled.Sub(o.Reported))
			total = append(total, o.Enrolled.Sub(o.Start))
		}
		boot = append(boot, o.Result.Took)
	}
	fmt.Fprintf(w, "%-48s %6s %9s %9s %9s\n", "where the time goes (per machine)", "n", "p50", "p99", "max")
	row := func(name string, ds []time.Duration) {
		p50, p99, mx := Quantiles(ds)
		fmt.Fprintf(w, "%-48s %6d %9s %9s %9s\n", name, len(ds), fmtDur(p50), fmtDur(p99), fmtDur(mx))
	}
	for p := range NumPhases {
		row("  "+p.String(), phases[p])
	}
	row("  report to coordinator, apply, back to agent", delivery)
	row("  whole boot (failed boots and waits included)", boot)
	row("  power-on to node enrolled", total)
	var failures []string
	for _, o := range sum.Outcomes {
		if o.Err != nil {
			failures = append(failures, fmt.Sprintf("%s %s: %v", o.Name, o.MAC, o.Err))
		}
	}
	for i, f := range failures {
		if i == 5 {
			fmt.Fprintf(w, "  ... and %d more failures\n", len(failures)-5)
			break
		}
		fmt.Fprintf(w, "failed: %s\n", strings.TrimSpace(f))
	}
}

func fmtDur(d time.Duration) string {
	switch {
	case d >= time.Second:
		return d.Round(10 * time.Millisecond).String()
	case d >= time.Millisecond:
		return d.Round(100 * time.Microsecond).String()
	}
	return d.Round(time.Microsecond).String()
}
