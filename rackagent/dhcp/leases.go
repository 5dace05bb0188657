package dhcp

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"go.etcd.io/bbolt"

	"github.com/metalfleet/metalfleet/proto"
)

// Pool hands out this agent's share of a rack's dynamic pool and keeps its
// leases in a bolt bucket, so a restarted agent never hands an address it
// leased to a second MAC. It also honours leases it learns of from the
// coordinator (another agent's), so no address is ever bound to two MACs.
//
// Offers are held in memory only: an offer that is lost in a crash was
// never acknowledged, and the client asks again.
type Pool struct {
	mu       sync.Mutex
	db       *bbolt.DB
	agent    string
	first    netip.Addr // first address of this agent's share
	last     netip.Addr // last address of this agent's share
	byIP     map[netip.Addr]*proto.Lease
	byMAC    map[string]*proto.Lease
	offers   map[string]offer // by MAC
	offerIP  map[netip.Addr]string
	declined map[netip.Addr]time.Time
	next     netip.Addr // where the search for a free address starts
}

type offer struct {
	ip    netip.Addr
	until time.Time
}

var leaseBucket = []byte("leases")

// ErrPoolExhausted: no free address is left in this agent's share.
var ErrPoolExhausted = errors.New("no free address in this agent's share of the pool")

// Share returns the sub-range [first, last] that agent k of n (0-based)
// offers from the pool [start, end]: contiguous, disjoint slices.
func Share(start, end netip.Addr, k, n int) (netip.Addr, netip.Addr, error) {
	if n < 1 || k < 0 || k >= n {
		return netip.Addr{}, netip.Addr{}, fmt.Errorf("pool share %d/%d: want 0 <= k < n", k, n)
	}
	lo, hi := u32(start), u32(end)
	if hi < lo {
		return netip.Addr{}, netip.Addr{}, fmt.Errorf("pool %s-%s is empty", start, end)
	}
	size := uint64(hi-lo) + 1
	if size < uint64(n) {
		return netip.Addr{}, netip.Addr{}, fmt.Errorf("pool %s-%s is too small to share %d ways", start, end, n)
	}
	a := lo + uint32(size*uint64(k)/uint64(n))
	b := lo + uint32(size*uint64(k+1)/uint64(n)) - 1
	return addr(a), addr(b), nil
}

func u32(a netip.Addr) uint32 {
	b := a.As4()
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

func addr(v uint32) netip.Addr {
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// OpenPool loads agent's leases from db. first and last bound its share.
func OpenPool(db *bbolt.DB, agent string, first, last netip.Addr) (*Pool, error) {
	p := &Pool{db: db, agent: agent, first: first, last: last,
		byIP: map[netip.Addr]*proto.Lease{}, byMAC: map[string]*proto.Lease{},
		offers: map[string]offer{}, offerIP: map[netip.Addr]string{}, declined: map[netip.Addr]time.Time{}, next: first}
	err := db.Update(func(tx *bbolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(leaseBucket)
		if err != nil {
			return err
		}
		return b.ForEach(func(k, v []byte) error {
			var l proto.Lease
			if err := json.Unmarshal(v, &l); err != nil {
				return fmt.Errorf("lease %s: %w", k, err)
			}
			ip, err := netip.ParseAddr(l.IP)
			if err != nil {
				return fmt.Errorf("lease %s: %w", k, err)
			}
			p.byIP[ip], p.byMAC[l.MAC] = &l, &l
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("leases: %w", err)
	}
	return p, nil
}

// SetShare changes the share new addresses come from (existing leases
// are kept wherever they are).
func (p *Pool) SetShare(first, last netip.Addr) {
	p.mu.Lock()
	p.first, p.last = first, last
	p.mu.Unlock()
}

// InShare reports whether ip is in this agent's share of the pool.
func (p *Pool) InShare(ip netip.Addr) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.first.IsValid() && !ip.Less(p.first) && !p.last.Less(ip)
}

// External is what the pool knows from the coordinator: leases other
// agents reported.
type External interface {
	LeaseOfMAC(mac string) (proto.Lease, bool)
	LeaseOfIP(ip netip.Addr) (proto.Lease, bool)
}

type noExternal struct{}

func (noExternal) LeaseOfMAC(string) (proto.Lease, bool)    { return proto.Lease{}, false }
func (noExternal) LeaseOfIP(netip.Addr) (proto.Lease, bool) { return proto.Lease{}, false }

// Lookup returns mac's active lease, held here or known from the
// coordinator.
func (p *Pool) Lookup(mac string, ext External, now time.Time) (netip.Addr, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if l, ok := p.byMAC[mac]; ok && l.Expires.After(now) {
		return netip.MustParseAddr(l.IP), true
	}
	if l, ok := ext.LeaseOfMAC(mac); ok && l.Expires.After(now) {
		return netip.MustParseAddr(l.IP), true
	}
	return netip.Addr{}, false
}

// Held returns the address of mac's lease held here, if it lasts past
// now.
func (p *Pool) Held(mac string, now time.Time) (netip.Addr, bool) {
	return p.Lookup(mac, noExternal{}, now)
}

// usedBy returns the MAC an address is bound or offered to (or declined,
// as "declined"), "" if it is free at now.
func (p *Pool) usedBy(ip netip.Addr, ext External, now time.Time) string {
	if l, ok := p.byIP[ip]; ok && l.Expires.After(now) {
		return l.MAC
	}
	if l, ok := ext.LeaseOfIP(ip); ok && l.Expires.After(now) {
		return l.MAC
	}
	if t, ok := p.declined[ip]; ok && t.After(now) {
		return "declined"
	}
	if mac, ok := p.offerIP[ip]; ok && p.offers[mac].until.After(now) {
		return mac
	}
	return ""
}

func (p *Pool) setOffer(mac string, ip netip.Addr, until time.Time) {
	p.dropOffer(mac)
	p.offers[mac] = offer{ip: ip, until: until}
	p.offerIP[ip] = mac
}

func (p *Pool) dropOffer(mac string) {
	if o, ok := p.offers[mac]; ok {
		delete(p.offers, mac)
		if p.offerIP[o.ip] == mac {
			delete(p.offerIP, o.ip)
		}
	}
}

// Offer picks an address for mac: its current lease (here or another
// agent's), else the address offered it a moment ago, else the lowest
// free address of this agent's share. The offer is held for hold.
func (p *Pool) Offer(mac string, ext External, now time.Time, hold time.Duration) (netip.Addr, error) {
	return p.OfferValid(mac, ext, now, hold, nil)
}

// OfferValid is Offer that passes over a held lease or an earlier offer
// valid refuses (an address outside the rack's pool since the pool
// changed, or reserved for a node): such an address would be NAKed at
// REQUEST, and the client would loop. nil accepts every address.
func (p *Pool) OfferValid(mac string, ext External, now time.Time, hold time.Duration, valid func(netip.Addr) bool) (netip.Addr, error) {
	ok := func(ip netip.Addr) bool { return valid == nil || valid(ip) }
	p.mu.Lock()
	defer p.mu.Unlock()
	if l, held := p.byMAC[mac]; held && l.Expires.After(now) {
		if ip := netip.MustParseAddr(l.IP); ok(ip) {
			return ip, nil
		}
	}
	if l, held := ext.LeaseOfMAC(mac); held && l.Expires.After(now) {
		ip, err := netip.ParseAddr(l.IP)
		if err == nil && ok(ip) {
			if u := p.usedBy(ip, ext, now); u == "" || u == mac {
				return ip, nil
			}
		}
	}
	if o, held := p.offers[mac]; held && o.until.After(now) && ok(o.ip) {
		p.setOffer(mac, o.ip, now.Add(hold))
		return o.ip, nil
	}
	// Search round the share from where the last search stopped, so a
	// busy pool does not rescan its bound addresses on every offer. A
	// free address may hold an expired lease of another MAC: that one is
	// forgotten when the new lease is bound.
	if p.next.Less(p.first) || p.last.Less(p.next) {
		p.next = p.first
	}
	size := int(u32(p.last)-u32(p.first)) + 1
	a := p.next
	for i := 0; i < size; i++ {
		if p.usedBy(a, ext, now) == "" && ok(a) {
			p.setOffer(mac, a, now.Add(hold))
			p.next = a.Next()
			return a, nil
		}
		if a = a.Next(); p.last.Less(a) {
			a = p.first
		}
	}
	return netip.Addr{}, ErrPoolExhausted
}

// Bind leases ip to mac until now+d, durably: it returns once the lease
// is committed to disk. It refuses an address bound to another MAC here
// or at another agent, or declined.
func (p *Pool) Bind(mac string, ip netip.Addr, ext External, now time.Time, d time.Duration) (proto.Lease, error) {
	p.mu.Lock()
	if u := p.usedBy(ip, ext, now); u != "" && u != mac {
		p.mu.Unlock()
		return proto.Lease{}, fmt.Errorf("%s is in use by %s", ip, u)
	}
	l := &proto.Lease{MAC: mac, IP: ip.String(), Expires: now.Add(d).Truncate(time.Second), Agent: p.agent}
	oldIP := p.byMAC[mac]
	old := p.byIP[ip]
	p.byIP[ip], p.byMAC[mac] = l, l
	if oldIP != nil && oldIP.IP != l.IP {
		delete(p.byIP, netip.MustParseAddr(oldIP.IP))
	}
	if old != nil && old.MAC != mac {
		delete(p.byMAC, old.MAC)
	}
	p.dropOffer(mac)
	p.mu.Unlock()

	raw, _ := json.Marshal(l)
	// db.Batch folds concurrent binds into one commit: one fsync for many.
	err := p.db.Batch(func(tx *bbolt.Tx) error {
		b := tx.Bucket(leaseBucket)
		if oldIP != nil && oldIP.IP != l.IP {
			if err := b.Delete([]byte(oldIP.IP)); err != nil {
				return err
			}
		}
		return b.Put([]byte(l.IP), raw)
	})
	if err != nil {
		// Not durable: do not answer with it. Forget it in memory so a
		// retry starts over.
		p.mu.Lock()
		if p.byIP[ip] == l {
			delete(p.byIP, ip)
			delete(p.byMAC, mac)
		}
		p.mu.Unlock()
		return proto.Lease{}, fmt.Errorf("saving lease: %w", err)
	}
	return *l, nil
}

// Release ends mac's lease of ip (if it holds it); it reports whether
// there was one.
func (p *Pool) Release(mac string, ip netip.Addr) (bool, error) {
	p.mu.Lock()
	l, ok := p.byIP[ip]
	if !ok || l.MAC != mac {
		p.dropOffer(mac)
		p.mu.Unlock()
		return false, nil
	}
	delete(p.byIP, ip)
	delete(p.byMAC, mac)
	p.dropOffer(mac)
	gone := *l
	p.mu.Unlock()
	return true, p.db.Batch(func(tx *bbolt.Tx) error { return deleteIfSame(tx, gone) })
}

// deleteIfSame deletes l's key only if it still holds l: the address may
// have been bound again (to another MAC) since l ended in memory.
func deleteIfSame(tx *bbolt.Tx, l proto.Lease) error {
	b := tx.Bucket(leaseBucket)
	var cur proto.Lease
	if raw := b.Get([]byte(l.IP)); raw == nil || json.Unmarshal(raw, &cur) != nil || cur.MAC != l.MAC || !cur.Expires.Equal(l.Expires) {
		return nil
	}
	return b.Delete([]byte(l.IP))
}

// Decline marks ip unusable until until (a client found it in use) and
// ends mac's lease of it.
func (p *Pool) Decline(mac string, ip netip.Addr, until time.Time) error {
	_, err := p.Release(mac, ip)
	p.mu.Lock()
	p.declined[ip] = until
	p.mu.Unlock()
	return err
}

// Expire removes leases that ended before now and returns them.
func (p *Pool) Expire(now time.Time) ([]proto.Lease, error) {
	p.mu.Lock()
	var gone []proto.Lease
	for ip, l := range p.byIP {
		if !l.Expires.After(now) {
			gone = append(gone, *l)
			delete(p.byIP, ip)
			if p.byMAC[l.MAC] == l {
				delete(p.byMAC, l.MAC)
			}
		}
	}
	for mac, o := range p.offers {
		if !o.until.After(now) {
			p.dropOffer(mac)
		}
	}
	for ip, t := range p.declined {
		if !t.After(now) {
			delete(p.declined, ip)
		}
	}
	p.mu.Unlock()
	return gone, p.deleteOnDisk(gone)
}

// Adopt takes l, a lease the coordinator records as this agent's, into
// the pool (durably) when the pool holds nothing for its MAC or address:
// an agent that lost its data directory gets its leases back this way.
// It reports whether l was adopted.
func (p *Pool) Adopt(l proto.Lease, now time.Time) (bool, error) {
	ip, err := netip.ParseAddr(l.IP)
	if err != nil || l.Agent != p.agent || !l.Expires.After(now) {
		return false, nil
	}
	p.mu.Lock()
	if _, ok := p.byIP[ip]; ok {
		p.mu.Unlock()
		return false, nil
	}
	if _, ok := p.byMAC[l.MAC]; ok {
		p.mu.Unlock()
		return false, nil
	}
	nl := l
	p.byIP[ip], p.byMAC[l.MAC] = &nl, &nl
	p.mu.Unlock()
	raw, _ := json.Marshal(&nl)
	if err := p.db.Batch(func(tx *bbolt.Tx) error { return tx.Bucket(leaseBucket).Put([]byte(nl.IP), raw) }); err != nil {
		p.mu.Lock()
		if p.byIP[ip] == &nl {
			delete(p.byIP, ip)
			delete(p.byMAC, l.MAC)
		}
		p.mu.Unlock()
		return false, fmt.Errorf("saving lease: %w", err)
	}
	return true, nil
}

// DropInvalid ends every lease held here whose address valid refuses (the
// rack's pool changed) and returns them.
func (p *Pool) DropInvalid(valid func(netip.Addr) bool) ([]proto.Lease, error) {
	p.mu.Lock()
	var gone []proto.Lease
	for ip, l := range p.byIP {
		if !valid(ip) {
			gone = append(gone, *l)
			delete(p.byIP, ip)
			if p.byMAC[l.MAC] == l {
				delete(p.byMAC, l.MAC)
			}
			p.dropOffer(l.MAC)
		}
	}
	p.mu.Unlock()
	return gone, p.deleteOnDisk(gone)
}

// Leases returns the leases held here.
func (p *Pool) Leases() []proto.Lease {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]proto.Lease, 0, len(p.byIP))
	for _, l := range p.byIP {
		out = append(out, *l)
	}
	return out
}

// deleteOnDisk deletes leases ended in memory from the bucket, each only
// if its key still holds it.
func (p *Pool) deleteOnDisk(gone []proto.Lease) error {
	if len(gone) == 0 {
		return nil
	}
	return p.db.Update(func(tx *bbolt.Tx) error {
		for _, l := range gone {
			if err := deleteIfSame(tx, l); err != nil {
				return err
			}
		}
		return nil
	})
}
