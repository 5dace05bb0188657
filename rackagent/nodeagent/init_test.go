package nodeagent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/metalfleet/metalfleet/proto"
)

// fakeMachine is an initSystem whose NICs appear after a few polls, and
// which records what init asked of it.
type fakeMachine struct {
	mu sync.Mutex
	// links the machine has; visibleAfter polls of links() pass before
	// they show (the driver probing).
	all          []Link
	visibleAfter int
	polls        int
	cmdline      string
	// dhcpOK names the interfaces a DHCP server answers on.
	dhcpOK map[string]bool
	// reportErr is what the callback answers.
	reportErr error

	up         []string
	configured *Lease
	reports    []fakeReport
	collected  Options
	actions    []string // poweroff, reboot
	out        bytes.Buffer
}

type fakeReport struct{ callback, mac, token, step string }

func (f *fakeMachine) system(t *testing.T) *initSystem {
	return &initSystem{
		mountAll:    func() error { return nil },
		loadModules: func() (int, []error) { return 3, []error{errors.New("e1000e: bad")} },
		cmdline:     func() (string, error) { return f.cmdline, nil },
		links: func() []Link {
			f.mu.Lock()
			defer f.mu.Unlock()
			f.polls++
			if f.polls <= f.visibleAfter {
				return nil
			}
			out := append([]Link(nil), f.all...)
			for i := range out { // carrier shows once the link is up
				for _, u := range f.up {
					if u == out[i].Name {
						out[i].Carrier = true
					}
				}
			}
			return out
		},
		linkUp: func(name string) error {
			f.mu.Lock()
			defer f.mu.Unlock()
			f.up = append(f.up, name)
			return nil
		},
		dhcp: func(ctx context.Context, l Link) (*Lease, error) {
			if !f.dhcpOK[l.Name] {
				<-ctx.Done() // nobody answers
				return nil, ctx.Err()
			}
			return &Lease{Interface: l.Name, MAC: l.MAC, Addr: net.IPNet{IP: net.IPv4(10, 0, 0, 5), Mask: net.CIDRMask(24, 32)}}, nil
		},
		configure: func(l *Lease) error {
			f.mu.Lock()
			defer f.mu.Unlock()
			f.configured = l
			return nil
		},
		lldp: func(ctx context.Context, ifaces []string, wait time.Duration) map[string]*proto.LLDP {
			out := map[string]*proto.LLDP{}
			for _, i := range ifaces {
				out[i] = &proto.LLDP{ChassisID: "sw", PortID: "p-" + i}
			}
			return out
		},
		collect: func(ctx context.Context, o Options) (*proto.Inventory, error) {
			f.mu.Lock()
			defer f.mu.Unlock()
			f.collected = o
			return &proto.Inventory{Version: 1, PXEMAC: o.PXEMAC, CPUs: proto.CPUs{Count: 2}}, nil
		},
		report: func(ctx context.Context, callback, mac, token, step string, body any) error {
			f.mu.Lock()
			defer f.mu.Unlock()
			f.reports = append(f.reports, fakeReport{callback, mac, token, step})
			return f.reportErr
		},
		powerOff: func() error { f.actions = append(f.actions, "poweroff"); return nil },
		reboot:   func() error { f.actions = append(f.actions, "reboot"); return nil },
		sleep: func(ctx context.Context, d time.Duration) {
			select { // a millisecond stands for any wait
			case <-ctx.Done():
			case <-time.After(time.Millisecond):
			}
		},
		out: &f.out,
		log: slog.New(slog.NewTextHandler(testWriter{t}, nil)),
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}

const (
	macA = "52:54:00:00:00:0a"
	macB = "52:54:00:00:00:0b"
)

func twoNICs() []Link { return []Link{{Name: "eth0", MAC: macA}, {Name: "eth1", MAC: macB}} }

func TestRunInit(t *testing.T) {
	for _, tc := range []struct {
		name          string
		m             *fakeMachine
		wantErr       string
		wantIface     string // the interface configured
		wantReports   []fakeReport
		wantActions   []string
		wantPrinted   bool
		wantLLDPIface string
	}{
		{
			name: "discovery: lease on the BOOTIF NIC, report, power off",
			m: &fakeMachine{all: twoNICs(), visibleAfter: 3, dhcpOK: map[string]bool{"eth0": true, "eth1": true},
				cmdline: "BOOTIF=01-52-54-00-00-00-0b metalfleet.callback=http://10.0.0.1:8080/v1/callback"},
			wantIface:   "eth1",
			wantReports: []fakeReport{{"http://10.0.0.1:8080/v1/callback", macB, "", "inventory"}},
			wantActions: []string{"poweroff"},
		},
		{
			name: "no MAC given: the first lease names the machine; the token is passed; LLDP and print",
			m: &fakeMachine{all: twoNICs(), dhcpOK: map[string]bool{"eth1": true},
				cmdline: "metalfleet.callback=http://a/v1/callback metalfleet.token=tk metalfleet.task=discovery metalfleet.print=true metalfleet.lldp=5s"},
			wantIface:     "eth1",
			wantReports:   []fakeReport{{"http://a/v1/callback", macB, "tk", "inventory"}},
			wantActions:   []string{"poweroff"},
			wantPrinted:   true,
			wantLLDPIface: "eth1",
		},
		{
			name:        "no callback: collect, print, power off",
			m:           &fakeMachine{all: twoNICs(), dhcpOK: map[string]bool{"eth0": true}, cmdline: "metalfleet.print=true"},
			wantIface:   "eth0",
			wantActions: []string{"poweroff"},
			wantPrinted: true,
		},
		{
			name: "no DHCP answer: no report, reboot (the default on error)",
			m: &fakeMachine{all: twoNICs(), dhcpOK: map[string]bool{},
				cmdline: "metalfleet.mac=52:54:00:00:00:0a metalfleet.callback=http://a/v1/callback metalfleet.dhcp_timeout=0.05"},
			wantErr:     "no network to report on",
			wantActions: []string{"reboot"},
		},
		{
			name: "callback refused: power off on error when asked",
			m: &fakeMachine{all: twoNICs(), dhcpOK: map[string]bool{"eth0": true}, reportErr: errors.New("403 forbidden"),
				cmdline: "metalfleet.mac=52:54:00:00:00:0a metalfleet.callback=http://a/v1/callback metalfleet.onerror=poweroff"},
			wantErr:     "403 forbidden",
			wantIface:   "eth0",
			wantReports: []fakeReport{{"http://a/v1/callback", macA, "", "inventory"}},
			wantActions: []string{"poweroff"},
		},
		{
			name: "the boot MAC never shows: DHCP on what is there",
			m: &fakeMachine{all: twoNICs()[:1], dhcpOK: map[string]bool{"eth0": true},
				cmdline: "metalfleet.mac=52:54:00:00:00:0b metalfleet.callback=http://a/v1/callback"},
			wantIface:   "eth0",
			wantReports: []fakeReport{{"http://a/v1/callback", macB, "", "inventory"}},
			wantActions: []string{"poweroff"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sys := tc.m.system(t)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			p, err := runInit(ctx, sys)
			if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Errorf("runInit = %v, want error %q", err, tc.wantErr)
			}
			if err := finish(ctx, sys, p, err); err != nil {
				t.Errorf("finish = %v", err)
			}
			m := tc.m
			if got := ""; m.configured != nil {
				got = m.configured.Interface
				if got != tc.wantIface {
					t.Errorf("configured %s, want %s", got, tc.wantIface)
				}
			} else if tc.wantIface != "" {
				t.Errorf("nothing configured, want %s", tc.wantIface)
			}
			if !reflect.DeepEqual(m.reports, tc.wantReports) {
				t.Errorf("reports = %+v, want %+v", m.reports, tc.wantReports)
			}
			if !reflect.DeepEqual(m.actions, tc.wantActions) {
				t.Errorf("actions = %v, want %v", m.actions, tc.wantActions)
			}
			if printed := strings.Contains(m.out.String(), `"version": 1`); printed != tc.wantPrinted {
				t.Errorf("printed the inventory: %t, want %t (console: %q)", printed, tc.wantPrinted, m.out.String())
			}
			if len(m.up) != len(m.all) {
				t.Errorf("links brought up: %v, want all of %v", m.up, m.all)
			}
			if tc.wantLLDPIface != "" {
				if l := m.collected.LLDP[tc.wantLLDPIface]; l == nil || l.PortID != "p-"+tc.wantLLDPIface {
					t.Errorf("collect got LLDP %v, want the neighbour of %s", m.collected.LLDP, tc.wantLLDPIface)
				}
			}
			if !m.collected.Live || m.collected.Root != "/" {
				t.Errorf("collect options = %+v, want the live root", m.collected)
			}
		})
	}
}

func TestFinishStaysUp(t *testing.T) {
	m := &fakeMachine{}
	sys := m.system(t)
	for _, tc := range []struct {
		p   BootParams
		err error
	}{
		{BootParams{PowerOff: false}, nil},
		{BootParams{OnError: OnErrorStay, PowerOff: true}, errors.New("boom")},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
		err := finish(ctx, sys, tc.p, tc.err)
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) || len(m.actions) != 0 {
			t.Errorf("finish(%+v, %v) = %v with actions %v, want to stay until the context ends", tc.p, tc.err, err, m.actions)
		}
	}
}

func TestChooseInterfaces(t *testing.T) {
	a := Link{Name: "eno1", MAC: macA, Carrier: true}
	b := Link{Name: "eno2", MAC: macB}
	c := Link{Name: "ens1f0", MAC: "52:54:00:00:00:0c", Carrier: true}
	for _, tc := range []struct {
		links []Link
		mac   string
		want  []Link
	}{
		{[]Link{a, b, c}, macB, []Link{b}},  // the boot MAC, carrier or not
		{[]Link{a, b, c}, "", []Link{a, c}}, // every one with carrier
		{[]Link{a, b, c}, "02:00:00:00:00:99", []Link{a, c}},
		{[]Link{b}, "", []Link{b}}, // none with carrier: try them all
		{nil, macA, nil},
	} {
		if got := ChooseInterfaces(tc.links, tc.mac); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("ChooseInterfaces(%v, %q) = %v, want %v", tc.links, tc.mac, got, tc.want)
		}
	}
}

func TestDHCPFirstCancelsTheOthers(t *testing.T) {
	var cancelled sync.WaitGroup
	cancelled.Add(1)
	sys := &initSystem{dhcp: func(ctx context.Context, l Link) (*Lease, error) {
		if l.Name == "slow" {
			<-ctx.Done()
			cancelled.Done()
			return nil, ctx.Err()
		}
		return &Lease{Interface: l.Name}, nil
	}}
	lease, err := dhcpFirst(context.Background(), sys, []Link{{Name: "slow"}, {Name: "fast"}}, time.Minute)
	if err != nil || lease.Interface != "fast" {
		t.Fatalf("dhcpFirst = %v, %v; want the fast one", lease, err)
	}
	cancelled.Wait() // returns only if the slow one was cancelled

	sys.dhcp = func(ctx context.Context, l Link) (*Lease, error) { return nil, fmt.Errorf("no offer") }
	if _, err := dhcpFirst(context.Background(), sys, []Link{{Name: "a"}, {Name: "b"}}, time.Minute); err == nil || !strings.Contains(err.Error(), "a: no offer") || !strings.Contains(err.Error(), "b: no offer") {
		t.Errorf("dhcpFirst(all fail) = %v, want both failures", err)
	}
	if _, err := dhcpFirst(context.Background(), sys, nil, time.Minute); err == nil {
		t.Error("dhcpFirst(no interfaces) = nil error")
	}
}

func TestListLinks(t *testing.T) {
	fs := sysfs{root: loadFixture(t, "host-firecracker")}
	got := listLinks(fs)
	want := []Link{{Name: "eth0", MAC: "02:fc:00:00:00:01", Carrier: true}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("listLinks(host) = %+v, want %+v", got, want)
	}
}
