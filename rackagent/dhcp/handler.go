package dhcp

import (
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"

	"github.com/metalfleet/metalfleet/proto"
	"github.com/metalfleet/metalfleet/rackagent/bootstate"
)

// Backend is what the handler knows of the rack: its boot state.
type Backend interface {
	View() *bootstate.View
}

// Reporter takes reports for the coordinator (the agent's durable outbox).
type Reporter interface {
	Report(r proto.AgentReport)
}

// Splitter says whether this agent answers an unknown MAC (RFC 3074-style
// load balancing between the agents of one rack).
type Splitter interface {
	Mine(mac net.HardwareAddr) bool
}

// allMine answers every MAC: a rack with one agent.
type allMine struct{}

func (allMine) Mine(net.HardwareAddr) bool { return true }

// Config configures a Handler.
type Config struct {
	Rack  string
	Agent string
	// ServerIP is this agent's address on the rack network: the server
	// identifier of its answers.
	ServerIP netip.Addr
	// HTTPBase is the agent's HTTP boot URL ("http://10.99.0.1:8080").
	HTTPBase string
	// Files names the first-stage files for PXE ROMs.
	Files Files
	// LeaseTime when the rack sets none (default 1h).
	LeaseTime time.Duration
	// OfferHold is how long an offered address is kept for its client
	// (default 30 s).
	OfferHold time.Duration
	// DeclineHold is how long a declined address is not offered (default
	// 10 min).
	DeclineHold time.Duration
	// SeenEvery rate-limits reports about one MAC (default 30 s): repeats
	// in between are counted and folded into the next report.
	SeenEvery time.Duration
	// SightingInterval is how often sightings of unknown MACs are
	// reported, one report per MAC with a count (default
	// DefaultSightingInterval); MaxNewSightings bounds the MACs in one
	// interval (default DefaultMaxNewSightings). RunSightings does the
	// reporting.
	SightingInterval time.Duration
	MaxNewSightings  int
	Now              func() time.Time
	Logger           *slog.Logger
}

// Handler decides the answer to each DHCP request. It does no socket I/O:
// the Server reads, calls Handle, and sends what it returns.
type Handler struct {
	cfg      Config
	backend  Backend
	pool     *Pool
	split    Splitter
	reporter Reporter
	log      *slog.Logger

	seenMu sync.Mutex
	seen   map[string]seenRec // known nodes' DHCP boot events
	sight  *sightings         // unknown MACs
}

type seenRec struct {
	last    time.Time
	pending int
}

// NewHandler returns a handler. split may be nil (one agent per rack).
func NewHandler(cfg Config, backend Backend, pool *Pool, split Splitter, reporter Reporter) *Handler {
	if cfg.LeaseTime == 0 {
		cfg.LeaseTime = time.Hour
	}
	if cfg.OfferHold == 0 {
		cfg.OfferHold = 30 * time.Second
	}
	if cfg.DeclineHold == 0 {
		cfg.DeclineHold = 10 * time.Minute
	}
	if cfg.SeenEvery == 0 {
		cfg.SeenEvery = 30 * time.Second
	}
	if cfg.SightingInterval <= 0 {
		cfg.SightingInterval = DefaultSightingInterval
	}
	if cfg.MaxNewSightings <= 0 {
		cfg.MaxNewSightings = DefaultMaxNewSightings
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if split == nil {
		split = allMine{}
	}
	return &Handler{cfg: cfg, backend: backend, pool: pool, split: split, reporter: reporter, log: cfg.Logger, seen: map[string]seenRec{},
		sight: newSightings(cfg.MaxNewSightings, cfg.SeenEvery)}
}

// Request is one received packet and where it came from.
type Request struct {
	Msg   *dhcpv4.DHCPv4
	Src   netip.AddrPort
	Iface string
}

// Reply is an answer and where it goes. Broadcast means 255.255.255.255 on
// the receiving interface.
type Reply struct {
	Msg       *dhcpv4.DHCPv4
	Dst       netip.AddrPort
	Broadcast bool
}

// errDrop is a request that gets no answer; the reason is logged.
type errDrop struct{ why string }

func (e errDrop) Error() string { return e.why }

func drop(format string, a ...any) error { return errDrop{fmt.Sprintf(format, a...)} }

// Handle returns the reply to a request, or nil and why there is none.
func (h *Handler) Handle(req Request) (*Reply, error) {
	m := req.Msg
	if m.OpCode != dhcpv4.OpcodeBootRequest {
		return nil, drop("not a BOOTREQUEST (op %d)", m.OpCode)
	}
	if len(m.ClientHWAddr) != 6 {
		return nil, drop("hardware address of length %d, want 6 (Ethernet)", len(m.ClientHWAddr))
	}
	view := h.backend.View()
	if view == nil {
		return nil, drop("no boot state yet (coordinator never reached)")
	}
	if !view.Prefix.IsValid() {
		return nil, drop("rack %s has no subnet", h.cfg.Rack)
	}
	if gi := m.GatewayIPAddr; gi != nil && !gi.IsUnspecified() {
		a, ok := netip.AddrFromSlice(gi.To4())
		if !ok || !view.Prefix.Contains(a) {
			return nil, drop("relayed from %s, outside rack subnet %s", gi, view.Prefix)
		}
	}
	switch m.MessageType() {
	case dhcpv4.MessageTypeDiscover:
		return h.discover(req, view)
	case dhcpv4.MessageTypeRequest:
		return h.request(req, view)
	case dhcpv4.MessageTypeRelease:
		return nil, h.release(req, view)
	case dhcpv4.MessageTypeDecline:
		return nil, h.decline(req, view)
	case dhcpv4.MessageTypeInform:
		return h.inform(req, view)
	}
	return nil, drop("message type %s is not served", m.MessageType())
}

// target is the address a client gets and how the answer is built.
type target struct {
	ip    netip.Addr
	node  *proto.BootNode // nil for an unknown MAC
	lease bool            // from the dynamic pool
}

// choose picks mac's address: a known node's reservation, or (for an
// unknown MAC this agent answers) a pool address.
func (h *Handler) choose(req Request, view *bootstate.View) (target, error) {
	m := req.Msg
	mac := m.ClientHWAddr
	if n, ok := view.Node(mac); ok {
		ip, ok := view.NodeIP(n)
		if !ok {
			return target{}, drop("known node %s has no reserved address", n.UUID)
		}
		return target{ip: ip, node: n}, nil
	}
	kind := Kind(m)
	st := view.State
	switch {
	case kind == NotNetboot && !st.Rack.AnswerNonPXE:
		return target{}, drop("unknown MAC, not a netboot client, and the rack does not answer those")
	case kind != NotNetboot && !st.DiscoveryEnabled:
		return target{}, drop("unknown MAC and discovery is off")
	case !h.split.Mine(mac):
		return target{}, drop("unknown MAC answered by this rack's other agent")
	}
	return target{lease: true}, nil
}

func (h *Handler) discover(req Request, view *bootstate.View) (*Reply, error) {
	t, err := h.choose(req, view)
	mac := req.Msg.ClientHWAddr.String()
	h.noteSeen(req, t.node)
	if err != nil {
		return nil, err
	}
	if t.lease {
		now := h.cfg.Now()
		// A lease held here that the rack's pool no longer allows (the
		// pool changed) is ended now: offering it would get the client a
		// NAK at REQUEST, and it would loop until the lease ran out.
		if held, ok := h.pool.Lookup(mac, noExternal{}, now); ok && h.invalid(held, view) != "" {
			if had, _ := h.pool.Release(mac, held); had {
				h.log.Info("lease ended: no longer valid in the rack's pool", "mac", mac, "ip", held, "why", h.invalid(held, view))
				h.report(proto.AgentReport{Kind: proto.ReportLease, MAC: mac, LeaseEvent: "released", Lease: &proto.Lease{MAC: mac, IP: held.String()}})
			}
		}
		ip, err := h.pool.OfferValid(mac, view, now, h.cfg.OfferHold, func(ip netip.Addr) bool { return h.invalid(ip, view) == "" })
		if err != nil {
			return nil, drop("%v", err)
		}
		t.ip = ip
	}
	// No conflict probe before an offer (dnsmasq's no-ping): it would
	// delay every boot, and DECLINE handles the rare conflict.
	return h.reply(req, view, t, dhcpv4.MessageTypeOffer)
}

func (h *Handler) request(req Request, view *bootstate.View) (*Reply, error) {
	m := req.Msg
	mac := m.ClientHWAddr.String()
	if sid := m.ServerIdentifier(); sid != nil && !sid.IsUnspecified() && !sid.Equal(h.cfg.ServerIP.AsSlice()) {
		// SELECTING another server's offer: forget ours.
		_, _ = h.pool.Release(mac, netip.Addr{})
		return nil, drop("client chose server %s", sid)
	}
	want := m.RequestedIPAddress()
	if want == nil || want.IsUnspecified() {
		want = m.ClientIPAddr // RENEWING / REBINDING: ciaddr
	}
	wantIP, ok := netip.AddrFromSlice(want.To4())
	if !ok || !wantIP.IsValid() || wantIP.IsUnspecified() {
		return h.nak(req, "no requested address")
	}
	t, err := h.choose(req, view)
	h.noteSeen(req, t.node)
	if err != nil {
		// Not ours to answer. An unknown MAC asking for an address that
		// this agent leased it is still ours, whatever the split says.
		if ip, held := h.pool.Lookup(mac, noExternal{}, h.cfg.Now()); !held || ip != wantIP {
			return nil, err
		}
		t = target{lease: true}
	}
	switch {
	case t.node != nil:
		if wantIP != t.ip {
			return h.nak(req, fmt.Sprintf("%s is reserved %s, not %s", mac, t.ip, wantIP))
		}
	default:
		if why := h.leasable(mac, wantIP, view); why != "" {
			return h.nak(req, why)
		}
		lt := h.leaseTime(view)
		l, err := h.pool.Bind(mac, wantIP, view, h.cfg.Now(), lt)
		if err != nil {
			return h.nak(req, err.Error())
		}
		t.ip = wantIP
		h.report(proto.AgentReport{Kind: proto.ReportLease, MAC: mac, LeaseEvent: "bound", Lease: &l})
	}
	return h.reply(req, view, t, dhcpv4.MessageTypeAck)
}

// leasable says why ip cannot be leased to mac, or "" if it can: it must
// lie in the rack's dynamic pool (never a node's reservation or an
// address outside the pool, whatever a client with a stale lease asks
// for), and in this agent's share unless mac already holds it here or, by
// the coordinator's record, at the rack's other agent.
func (h *Handler) leasable(mac string, ip netip.Addr, view *bootstate.View) string {
	if why := h.invalid(ip, view); why != "" {
		return why
	}
	now := h.cfg.Now()
	if held, ok := h.pool.Lookup(mac, noExternal{}, now); ok && held == ip {
		return ""
	}
	if l, ok := view.LeaseOfMAC(mac); ok && l.IP == ip.String() && l.Expires.After(now) {
		return ""
	}
	if !h.pool.InShare(ip) {
		return fmt.Sprintf("%s is in another agent's share of the pool", ip)
	}
	return ""
}

// invalid says why ip may not be a dynamic lease at all in view's rack
// (outside the pool, or a node's reservation), or "".
func (h *Handler) invalid(ip netip.Addr, view *bootstate.View) string {
	if !view.HasPool() {
		return "the rack has no dynamic pool"
	}
	if !view.InPool(ip) {
		return fmt.Sprintf("%s is outside the rack's pool %s-%s", ip, view.PoolStart, view.PoolEnd)
	}
	if n, ok := view.NodeByIP(ip); ok {
		return fmt.Sprintf("%s is reserved for node %s", ip, n.UUID)
	}
	return ""
}

func (h *Handler) release(req Request, view *bootstate.View) error {
	m := req.Msg
	ip, ok := netip.AddrFromSlice(m.ClientIPAddr.To4())
	if !ok {
		return drop("release without ciaddr")
	}
	mac := m.ClientHWAddr.String()
	had, err := h.pool.Release(mac, ip)
	if err != nil {
		return err
	}
	if had {
		h.report(proto.AgentReport{Kind: proto.ReportLease, MAC: mac, LeaseEvent: "released", Lease: &proto.Lease{MAC: mac, IP: ip.String()}})
	}
	return drop("RELEASE answered by silence (held: %v)", had)
}

func (h *Handler) decline(req Request, view *bootstate.View) error {
	m := req.Msg
	ip, ok := netip.AddrFromSlice(m.RequestedIPAddress().To4())
	if !ok || !view.Prefix.Contains(ip) {
		return drop("decline of an address outside the rack")
	}
	mac := m.ClientHWAddr.String()
	if err := h.pool.Decline(mac, ip, h.cfg.Now().Add(h.cfg.DeclineHold)); err != nil {
		return err
	}
	h.log.Warn("address declined: another host may be using it", "mac", mac, "ip", ip, "xid", m.TransactionID.String())
	h.report(proto.AgentReport{Kind: proto.ReportLease, MAC: mac, LeaseEvent: "declined", Lease: &proto.Lease{MAC: mac, IP: ip.String()}})
	return drop("DECLINE answered by silence")
}

func (h *Handler) inform(req Request, view *bootstate.View) (*Reply, error) {
	m := req.Msg
	ci, ok := netip.AddrFromSlice(m.ClientIPAddr.To4())
	if !ok || !view.Prefix.Contains(ci) {
		return nil, drop("INFORM from %s, outside the rack", m.ClientIPAddr)
	}
	r, err := h.reply(req, view, target{}, dhcpv4.MessageTypeAck)
	if err != nil {
		return nil, err
	}
	// RFC 2131 3.4: no lease, no lease time; answer to ciaddr.
	r.Msg.YourIPAddr = net.IPv4zero
	r.Msg.Options.Del(dhcpv4.OptionIPAddressLeaseTime)
	if !h.relayed(m) {
		r.Dst, r.Broadcast = netip.AddrPortFrom(ci, 68), false
	}
	return r, nil
}

func (h *Handler) leaseTime(view *bootstate.View) time.Duration {
	if lt := time.Duration(view.State.Rack.LeaseTime); lt > 0 {
		return lt
	}
	return h.cfg.LeaseTime
}

func (h *Handler) relayed(m *dhcpv4.DHCPv4) bool {
	return m.GatewayIPAddr != nil && !m.GatewayIPAddr.IsUnspecified()
}

// reply builds an OFFER or ACK for t with the rack's options and the
// netboot options the client's kind calls for.
func (h *Handler) reply(req Request, view *bootstate.View, t target, typ dhcpv4.MessageType) (*Reply, error) {
	m := req.Msg
	lt := h.leaseTime(view)
	mods := []dhcpv4.Modifier{
		dhcpv4.WithMessageType(typ),
		dhcpv4.WithServerIP(h.cfg.ServerIP.AsSlice()),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(h.cfg.ServerIP.AsSlice())),
		dhcpv4.WithNetmask(net.CIDRMask(view.Prefix.Bits(), 32)),
		dhcpv4.WithLeaseTime(uint32(lt / time.Second)),
	}
	if t.ip.IsValid() {
		mods = append(mods, dhcpv4.WithYourIP(t.ip.AsSlice()))
	}
	if view.Gateway.IsValid() {
		mods = append(mods, dhcpv4.WithRouter(view.Gateway.AsSlice()))
	}
	if len(view.DNS) > 0 {
		dns := make([]net.IP, len(view.DNS))
		for i, a := range view.DNS {
			dns[i] = a.AsSlice()
		}
		mods = append(mods, dhcpv4.WithDNS(dns...))
	}
	if t.node != nil && t.node.Name != "" {
		mods = append(mods, dhcpv4.WithOption(dhcpv4.OptHostName(t.node.Name)))
	}
	kind := Kind(m)
	if kind != NotNetboot && kind != Ramdisk { // a ramdisk has booted: no boot file
		bootServer := h.cfg.ServerIP
		if view.BootServer.IsValid() {
			bootServer = view.BootServer
		}
		name, viaTFTP := Bootfile(kind, Arch(m), h.cfg.Files, h.cfg.HTTPBase, m.ClientHWAddr.String())
		mods = append(mods, dhcpv4.WithOption(dhcpv4.OptBootFileName(name)))
		if len(name) < 128 {
			// Also in the BOOTP header's file field: some firmware reads
			// only that one.
			mods = append(mods, func(d *dhcpv4.DHCPv4) { d.BootFileName = name })
		}
		if viaTFTP {
			mods = append(mods,
				func(d *dhcpv4.DHCPv4) { d.ServerIPAddr = bootServer.AsSlice() },
				dhcpv4.WithOption(dhcpv4.OptTFTPServerName(bootServer.String())))
		}
		switch kind {
		case PXE:
			mods = append(mods,
				dhcpv4.WithOption(dhcpv4.OptClassIdentifier("PXEClient")),
				dhcpv4.WithGeneric(dhcpv4.OptionVendorSpecificInformation, pxeVendorOptions))
		case HTTPBoot:
			mods = append(mods, dhcpv4.WithOption(dhcpv4.OptClassIdentifier("HTTPClient")))
		case IPXE:
			mods = append(mods, dhcpv4.WithGeneric(dhcpv4.GenericOptionCode(175), ipxeNoPXEDHCP))
		}
	}
	out, err := dhcpv4.NewReplyFromRequest(m, mods...)
	if err != nil {
		return nil, err
	}
	return &Reply{Msg: out, Dst: h.destination(req, out), Broadcast: h.broadcast(req)}, nil
}

// nak refuses a REQUEST.
func (h *Handler) nak(req Request, why string) (*Reply, error) {
	m := req.Msg
	h.log.Info("NAK", "mac", m.ClientHWAddr.String(), "xid", m.TransactionID.String(), "iface", req.Iface, "why", why)
	out, err := dhcpv4.NewReplyFromRequest(m,
		dhcpv4.WithMessageType(dhcpv4.MessageTypeNak),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(h.cfg.ServerIP.AsSlice())),
		dhcpv4.WithOption(dhcpv4.OptMessage(why)),
	)
	if err != nil {
		return nil, err
	}
	r := &Reply{Msg: out, Dst: h.destination(req, out), Broadcast: !h.relayed(m)}
	if h.relayed(m) {
		// RFC 2131 4.3.2: a NAK through a relay sets the broadcast bit so
		// the relay broadcasts it to the client.
		out.SetBroadcast()
	}
	return r, nil
}

// destination applies RFC 2131 4.1: to the relay if relayed, else to a
// client that has an address (ciaddr), else broadcast.
func (h *Handler) destination(req Request, out *dhcpv4.DHCPv4) netip.AddrPort {
	m := req.Msg
	if h.relayed(m) {
		gi, _ := netip.AddrFromSlice(m.GatewayIPAddr.To4())
		return netip.AddrPortFrom(gi, relayPort(req))
	}
	if ci, ok := netip.AddrFromSlice(m.ClientIPAddr.To4()); ok && !ci.IsUnspecified() {
		return netip.AddrPortFrom(ci, 68)
	}
	return netip.AddrPortFrom(netip.IPv4Unspecified(), 68)
}

// relayPort is where a relay gets answers: the port it sent from (67 for
// a real relay; a test's or dev-mode relay may use another).
func relayPort(req Request) uint16 {
	if p := req.Src.Port(); p != 0 {
		return p
	}
	return 67
}

func (h *Handler) broadcast(req Request) bool {
	m := req.Msg
	if h.relayed(m) {
		return false
	}
	ci, ok := netip.AddrFromSlice(m.ClientIPAddr.To4())
	return !ok || ci.IsUnspecified()
}

// noteSeen reports an unknown MAC's sighting (gathered, and reported by
// FlushSightings) or a known node's DHCP boot event, at most once per
// SeenEvery per MAC, folding repeats into a count.
func (h *Handler) noteSeen(req Request, node *proto.BootNode) {
	m := req.Msg
	mac := m.ClientHWAddr.String()
	if node == nil {
		r := proto.AgentReport{Kind: proto.ReportMACSeen, MAC: mac, Arch: ArchName(Arch(m)), Interface: req.Iface}
		if gi := m.GatewayIPAddr; gi != nil && !gi.IsUnspecified() {
			r.Giaddr = gi.String()
		}
		h.sight.note(r)
		return
	}
	now := h.cfg.Now()
	h.seenMu.Lock()
	rec := h.seen[mac]
	rec.pending++
	if now.Sub(rec.last) < h.cfg.SeenEvery {
		h.seen[mac] = rec
		h.seenMu.Unlock()
		return
	}
	count := rec.pending
	h.seen[mac] = seenRec{last: now}
	if len(h.seen) > 100000 { // bound memory under a flood of made-up MACs
		// Forget some, without scanning the whole map on every packet:
		// at most one in a hundred entries goes per packet over the cap.
		n := 0
		for k := range h.seen {
			if k != mac {
				delete(h.seen, k)
			}
			if n++; n >= 100 {
				break
			}
		}
	}
	h.seenMu.Unlock()
	r := proto.AgentReport{MAC: mac, Arch: ArchName(Arch(m)), Interface: req.Iface, Count: count}
	if gi := m.GatewayIPAddr; gi != nil && !gi.IsUnspecified() {
		r.Giaddr = gi.String()
	}
	r.Kind, r.Node, r.Event = proto.ReportBootEvent, node.UUID, "dhcp"
	h.report(r)
}

func (h *Handler) report(r proto.AgentReport) {
	if h.reporter == nil {
		return
	}
	r.Rack, r.Agent = h.cfg.Rack, h.cfg.Agent
	if r.Time.IsZero() {
		r.Time = h.cfg.Now().UTC()
	}
	h.reporter.Report(r)
}
