package bmc_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/metalfleet/metalfleet/proto"
	"github.com/metalfleet/metalfleet/rackagent/bmc"
	"github.com/metalfleet/metalfleet/rackagent/bmc/redfishsim"
)

// The redfish driver against redfishsim over real HTTP(S) on loopback.

func rfStart(t *testing.T, opts redfishsim.Options) *redfishsim.Server {
	t.Helper()
	s := redfishsim.New(opts)
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func rfConfig(s *redfishsim.Server) bmc.Config {
	return bmc.Config{Driver: proto.DriverRedfish, Address: s.URL(), Username: "admin", Password: "password"}
}

func rfOpen(t *testing.T, cfg bmc.Config) bmc.Driver {
	t.Helper()
	d, err := bmc.Open(cfg)
	if err != nil {
		t.Fatalf("Open(%q): %v", cfg.Address, err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

func rfCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// rfWantKind fails unless err is an *bmc.Error of kind k whose text holds
// every one of texts.
func rfWantKind(t *testing.T, err error, k proto.BMCErrorKind, texts ...string) {
	t.Helper()
	var be *bmc.Error
	if !errors.As(err, &be) {
		t.Fatalf("error = %v (%T), want a *bmc.Error of kind %s", err, err, k)
	}
	if be.Kind != k {
		t.Fatalf("error kind = %s (%v), want %s", be.Kind, err, k)
	}
	for _, s := range texts {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q does not say %q", err, s)
		}
	}
}

func TestRedfishSessionDeletedOnClose(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	s := redfishsim.New(redfishsim.Options{})
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	d, err := bmc.Open(rfConfig(s))
	if err != nil {
		t.Fatal(err)
	}
	ctx := rfCtx(t)
	if p, err := d.PowerState(ctx); err != nil || p != proto.PowerOff {
		t.Fatalf("PowerState = %s, %v; want off", p, err)
	}
	info, err := d.Identify(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := proto.BMCInfo{Vendor: "Metalfleet", Model: "redfishsim (BMC redfishsim BMC)", FirmwareVersion: "1.0.0", Protocol: "redfish"}
	if info != want {
		t.Errorf("Identify = %+v, want %+v", info, want)
	}
	st := s.Stats()
	if st.SessionsCreated != 1 || st.SessionsLive != 1 || st.BasicAuth != 0 || st.Unauthorized != 0 {
		t.Errorf("before Close: %+v, want one live session, no basic auth, no 401", st)
	}
	if err := d.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if st := s.Stats(); st.SessionsDeleted != 1 || st.SessionsLive != 0 {
		t.Errorf("after Close: %d sessions deleted, %d live; want 1 and 0", st.SessionsDeleted, st.SessionsLive)
	}
	s.Close()
	goleak.VerifyNone(t, ignore)
}

func TestRedfishBasicAuthFallback(t *testing.T) {
	s := rfStart(t, redfishsim.Options{NoSessionService: true})
	d := rfOpen(t, rfConfig(s))
	ctx := rfCtx(t)
	if err := d.Power(ctx, bmc.PowerOn); err != nil {
		t.Fatal(err)
	}
	if p, err := d.PowerState(ctx); err != nil || p != proto.PowerOn {
		t.Fatalf("PowerState = %s, %v; want on", p, err)
	}
	st := s.Stats()
	if st.SessionsCreated != 0 || st.BasicAuth < 3 || st.Unauthorized != 0 {
		t.Errorf("stats %+v: want no session, every call (>= 3) with basic auth, no 401", st)
	}
	if err := d.Close(); err != nil {
		t.Errorf("Close without a session: %v", err)
	}
}

func TestRedfishWrongPassword(t *testing.T) {
	for _, noSessions := range []bool{false, true} {
		s := rfStart(t, redfishsim.Options{NoSessionService: noSessions})
		cfg := rfConfig(s)
		cfg.Password = "wrong"
		d := rfOpen(t, cfg)
		_, err := d.PowerState(rfCtx(t))
		rfWantKind(t, err, proto.BMCErrAuth, "401")
		if strings.Contains(err.Error(), "wrong") {
			t.Errorf("error %q shows the password", err)
		}
		if st := s.Stats(); st.SessionsCreated != 0 || st.Unauthorized == 0 {
			t.Errorf("no session service %v: stats %+v, want no session and a 401", noSessions, st)
		}
	}
}

func TestRedfishReloginAfterSessionExpired(t *testing.T) {
	s := rfStart(t, redfishsim.Options{})
	d := rfOpen(t, rfConfig(s))
	ctx := rfCtx(t)
	if _, err := d.PowerState(ctx); err != nil {
		t.Fatal(err)
	}
	s.ExpireSessions()
	if _, err := d.PowerState(ctx); err != nil {
		t.Fatalf("PowerState after the session expired: %v", err)
	}
	if st := s.Stats(); st.SessionsCreated != 2 || st.Unauthorized != 1 || st.SessionsLive != 1 {
		t.Errorf("stats %+v: want 2 sessions created, one 401, one live", st)
	}
}

func TestRedfishPowerActions(t *testing.T) {
	variants := map[string]redfishsim.Options{
		"sync":        {},
		"async":       {AsyncReset: true, AsyncPolls: 2},
		"action-info": {ResetActionInfo: true},
		"https":       {TLS: true},
	}
	steps := []struct {
		action    bmc.PowerAction
		resetType string
		after     proto.PowerState
	}{
		{bmc.PowerOn, "On", proto.PowerOn},
		{bmc.PowerReset, "ForceRestart", proto.PowerOn},
		{bmc.PowerSoftOff, "GracefulShutdown", proto.PowerOff},
		{bmc.PowerCycle, "PowerCycle", proto.PowerOn},
		{bmc.PowerOff, "ForceOff", proto.PowerOff},
	}
	for name, opts := range variants {
		t.Run(name, func(t *testing.T) {
			s := rfStart(t, opts)
			cfg := rfConfig(s)
			cfg.CACert = string(s.CertPEM())
			d := rfOpen(t, cfg)
			ctx := rfCtx(t)
			for i, st := range steps {
				if err := d.Power(ctx, st.action); err != nil {
					t.Fatalf("Power(%s): %v", st.action, err)
				}
				// Power returns once the BMC has acted (for an asynchronous
				// reset: its task has ended), so the state is there now.
				if got := s.Backend().PowerState(); got != st.after {
					t.Fatalf("after Power(%s) the machine is %s, want %s", st.action, got, st.after)
				}
				if p, err := d.PowerState(ctx); err != nil || p != st.after {
					t.Fatalf("PowerState after %s = %s, %v; want %s", st.action, p, err, st.after)
				}
				if n := s.Stats().Resets[st.resetType]; n != 1 {
					t.Fatalf("step %d: %d resets %s, want 1", i, n, st.resetType)
				}
			}
			if polls := s.Stats().TaskPolls; opts.AsyncReset && polls < 2*len(steps) {
				t.Errorf("%d task monitor polls for %d asynchronous resets of 2 polls each", polls, len(steps))
			}
		})
	}
}

func TestRedfishAsyncResetTaskMonitor(t *testing.T) {
	s := rfStart(t, redfishsim.Options{AsyncReset: true, AsyncPolls: 4})
	d := rfOpen(t, rfConfig(s))
	ctx := rfCtx(t)
	if err := d.Power(ctx, bmc.PowerOn); err != nil {
		t.Fatal(err)
	}
	if st := s.Stats(); st.TaskPolls != 4 || st.Resets["On"] != 1 {
		t.Errorf("stats %+v: want the monitor polled 4 times and one reset On", st)
	}

	// A task that fails is an error with its message.
	f := rfStart(t, redfishsim.Options{AsyncReset: true, AsyncFail: "the power supply did not answer"})
	fd := rfOpen(t, rfConfig(f))
	err := fd.Power(ctx, bmc.PowerOn)
	rfWantKind(t, err, proto.BMCErrRefused, "the power supply did not answer")
	if got := f.Backend().PowerState(); got != proto.PowerOff {
		t.Errorf("after a failed task the machine is %s, want off", got)
	}

	// A task that outlasts the context is a timeout.
	l := rfStart(t, redfishsim.Options{AsyncReset: true, AsyncPolls: 1000})
	ld := rfOpen(t, rfConfig(l))
	short, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	rfWantKind(t, ld.Power(short, bmc.PowerOn), proto.BMCErrTimeout, "task")
}

func TestRedfishDisallowedResetType(t *testing.T) {
	for _, info := range []bool{false, true} {
		s := rfStart(t, redfishsim.Options{ResetAllowed: []string{"On", "ForceOff"}, ResetActionInfo: info})
		d := rfOpen(t, rfConfig(s))
		ctx := rfCtx(t)
		err := d.Power(ctx, bmc.PowerCycle)
		rfWantKind(t, err, proto.BMCErrUnsupported, "PowerCycle", "On, ForceOff")
		if err := d.Power(ctx, bmc.PowerOn); err != nil {
			t.Errorf("ActionInfo %v: Power(on): %v", info, err)
		}
		if r := s.Stats().Resets; len(r) != 1 || r["On"] != 1 {
			t.Errorf("ActionInfo %v: resets %v, want only On", info, r)
		}
	}
}

func TestRedfishRefusedCarriesRedfishMessage(t *testing.T) {
	s := rfStart(t, redfishsim.Options{})
	d := rfOpen(t, rfConfig(s))
	// The machine is off: the in-memory backend refuses ForceRestart.
	err := d.Power(rfCtx(t), bmc.PowerReset)
	rfWantKind(t, err, proto.BMCErrRefused, "409", "powered off", "Base.1.15.GeneralError")
}

func TestRedfishBootOverride(t *testing.T) {
	s := rfStart(t, redfishsim.Options{RequireIfMatch: true})
	d := rfOpen(t, rfConfig(s))
	ctx := rfCtx(t)
	steps := []struct {
		spec proto.BootDeviceSpec
		want redfishsim.BootOverride
	}{
		{proto.BootDeviceSpec{Device: proto.BootDevicePXE, Mode: proto.BootModeUEFI}, redfishsim.BootOverride{Target: "Pxe", Enabled: "Once", Mode: "UEFI"}},
		{proto.BootDeviceSpec{Device: proto.BootDeviceDisk, Persistent: true, Mode: proto.BootModeLegacy}, redfishsim.BootOverride{Target: "Hdd", Enabled: "Continuous", Mode: "Legacy"}},
		{proto.BootDeviceSpec{Device: proto.BootDevicePXE}, redfishsim.BootOverride{Target: "Pxe", Enabled: "Once", Mode: "Legacy"}},
	}
	for _, st := range steps {
		if err := d.SetBootDevice(ctx, st.spec); err != nil {
			t.Fatalf("SetBootDevice(%+v): %v", st.spec, err)
		}
		if got := s.Boot(); got != st.want {
			t.Errorf("after SetBootDevice(%+v) the system has %+v, want %+v", st.spec, got, st.want)
		}
	}
	if st := s.Stats(); st.Patches != len(steps) || st.PatchesIfMatch != len(steps) {
		t.Errorf("%d patches, %d with If-Match; want %d of each", st.Patches, st.PatchesIfMatch, len(steps))
	}
	// A Once override is used by the next boot.
	if err := d.Power(ctx, bmc.PowerOn); err != nil {
		t.Fatal(err)
	}
	if got := s.Boot(); got.Enabled != "Disabled" {
		t.Errorf("after booting, the Once override is %+v, want Disabled", got)
	}
	rfWantKind(t, d.SetBootDevice(ctx, proto.BootDeviceSpec{Device: "floppy"}), proto.BMCErrRefused, "floppy")
}

func TestRedfishTLS(t *testing.T) {
	s := rfStart(t, redfishsim.Options{TLS: true})
	other := rfStart(t, redfishsim.Options{TLS: true})
	if !strings.HasPrefix(s.URL(), "https://") {
		t.Fatalf("URL %s is not https", s.URL())
	}
	ctx := rfCtx(t)

	_, err := rfOpen(t, rfConfig(s)).PowerState(ctx)
	rfWantKind(t, err, proto.BMCErrUnreachable, "certificate")

	wrongCA := rfConfig(s)
	wrongCA.CACert = string(other.CertPEM())
	_, err = rfOpen(t, wrongCA).PowerState(ctx)
	rfWantKind(t, err, proto.BMCErrUnreachable, "certificate")

	withCA := rfConfig(s)
	withCA.CACert = string(s.CertPEM())
	if _, err := rfOpen(t, withCA).PowerState(ctx); err != nil {
		t.Errorf("with the BMC's certificate as ca_cert: %v", err)
	}

	insecure := rfConfig(s)
	insecure.Insecure = true
	if _, err := rfOpen(t, insecure).PowerState(ctx); err != nil {
		t.Errorf("insecure: %v", err)
	}

	plain := rfConfig(s)
	plain.Address = strings.Replace(s.URL(), "https://", "http://", 1)
	_, err = rfOpen(t, plain).PowerState(ctx)
	rfWantKind(t, err, proto.BMCErrRefused, "400")

	tlsToPlain := rfConfig(rfStart(t, redfishsim.Options{}))
	tlsToPlain.Address = strings.Replace(tlsToPlain.Address, "http://", "https://", 1)
	_, err = rfOpen(t, tlsToPlain).PowerState(ctx)
	rfWantKind(t, err, proto.BMCErrUnreachable, "TLS")
}

func TestRedfishSystemDiscovery(t *testing.T) {
	s := rfStart(t, redfishsim.Options{SystemID: "node-7"})
	for _, addr := range []string{s.URL(), s.URL() + "/", s.URL() + "/redfish/v1/", s.URL() + "/redfish/v1/Systems"} {
		cfg := rfConfig(s)
		cfg.Address = addr
		d := rfOpen(t, cfg)
		if err := d.Power(rfCtx(t), bmc.PowerOn); err != nil {
			t.Errorf("address %s: Power(on): %v", addr, err)
		}
	}
	if n := s.Stats().Resets["On"]; n != 4 {
		t.Errorf("system node-7 got %d resets On, want 4", n)
	}

	two := rfStart(t, redfishsim.Options{ExtraSystems: 1})
	_, err := rfOpen(t, rfConfig(two)).PowerState(rfCtx(t))
	rfWantKind(t, err, proto.BMCErrRefused, "2 systems", "/redfish/v1/Systems/ID")

	named := rfConfig(two)
	named.Address = two.URL() + "/redfish/v1/Systems/1-2"
	d := rfOpen(t, named)
	if err := d.Power(rfCtx(t), bmc.PowerOn); err != nil {
		t.Fatalf("the named second system: %v", err)
	}
	if p, err := d.PowerState(rfCtx(t)); err != nil || p != proto.PowerOn {
		t.Errorf("the named system 1-2 is %s (%v), want on", p, err)
	}
	if p := two.Backend().PowerState(); p != proto.PowerOff {
		t.Errorf("powering on system 1-2 left system 1 %s, want off", p)
	}

	missing := rfConfig(two)
	missing.Address = two.URL() + "/redfish/v1/Systems/9"
	_, err = rfOpen(t, missing).PowerState(rfCtx(t))
	rfWantKind(t, err, proto.BMCErrRefused, "404", "/redfish/v1/Systems/9")
}

func TestRedfishNoManager(t *testing.T) {
	s := rfStart(t, redfishsim.Options{NoManager: true, Model: "R1"})
	info, err := rfOpen(t, rfConfig(s)).Identify(rfCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	want := proto.BMCInfo{Vendor: "Metalfleet", Model: "R1", Protocol: "redfish"}
	if info != want {
		t.Errorf("Identify = %+v, want %+v", info, want)
	}
}

func TestRedfishSlowServerTimesOut(t *testing.T) {
	s := rfStart(t, redfishsim.Options{Slow: 5 * time.Second})
	d := rfOpen(t, rfConfig(s))
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := d.PowerState(ctx)
	rfWantKind(t, err, proto.BMCErrTimeout)
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("PowerState took %s with a 200ms deadline", took)
	}
}

func TestRedfishUnreachable(t *testing.T) {
	s := redfishsim.New(redfishsim.Options{})
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	cfg := rfConfig(s)
	s.Close() // nothing listens on its port now
	_, err := rfOpen(t, cfg).PowerState(rfCtx(t))
	rfWantKind(t, err, proto.BMCErrUnreachable, "refused")
}

func TestRedfishBadConfig(t *testing.T) {
	for _, c := range []struct {
		cfg  bmc.Config
		says string
	}{
		{bmc.Config{Address: "ftp://bmc/redfish/v1"}, `scheme "ftp"`},
		{bmc.Config{Address: "bmc.example:443"}, "https://host"},
		{bmc.Config{Address: ""}, "not a URL"},
		{bmc.Config{Address: "https://"}, "no host"},
		{bmc.Config{Address: "https://root:secret@bmc"}, "credentials"},
		{bmc.Config{Address: "https://bmc/redfish/v1/Managers/1"}, "is not a system"},
		{bmc.Config{Address: "https://bmc", CACert: "not PEM"}, "ca_cert"},
	} {
		c.cfg.Driver = proto.DriverRedfish
		_, err := bmc.Open(c.cfg)
		rfWantKind(t, err, proto.BMCErrUnsupported, c.says)
		if strings.Contains(err.Error(), "secret") {
			t.Errorf("error %q shows the password", err)
		}
	}
}

// TestRedfishBoundsResponses: a BMC that answers without end is cut off
// at 1 MiB, and a non-Redfish error body is quoted, briefly.
func TestRedfishBoundsResponses(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/redfish/v1/" {
			w.Write([]byte(`{"@odata.id": "/redfish/v1/", "Links": {}}`)) // no sessions: basic auth
			return
		}
		if strings.HasSuffix(r.URL.Path, "/big") {
			chunk := []byte(strings.Repeat("x", 64<<10))
			for range 32 { // 2 MiB
				if _, err := w.Write(chunk); err != nil {
					return
				}
			}
			return
		}
		http.Error(w, "proxy says no", http.StatusBadGateway)
	}))
	t.Cleanup(srv.Close)
	big := rfOpen(t, bmc.Config{Driver: proto.DriverRedfish, Address: srv.URL + "/redfish/v1/Systems/big"})
	_, err := big.PowerState(rfCtx(t))
	rfWantKind(t, err, proto.BMCErrRefused, "larger than 1048576 bytes")
	bad := rfOpen(t, bmc.Config{Driver: proto.DriverRedfish, Address: srv.URL + "/redfish/v1/Systems/x"})
	_, err = bad.PowerState(rfCtx(t))
	rfWantKind(t, err, proto.BMCErrRefused, "HTTP 502", "proxy says no")
}

func TestRedfishConsoleUnsupported(t *testing.T) {
	s := rfStart(t, redfishsim.Options{})
	_, err := rfOpen(t, rfConfig(s)).Console(rfCtx(t))
	rfWantKind(t, err, proto.BMCErrUnsupported, "ipmi driver for SOL")
}

// BenchmarkRedfishPowerState: power-status polls over one reused session
// and keep-alive connection, HTTP and HTTPS, against redfishsim on
// loopback (client and service in one process).
func BenchmarkRedfishPowerState(b *testing.B) {
	for _, tls := range []bool{false, true} {
		name := "http"
		if tls {
			name = "https"
		}
		b.Run(name, func(b *testing.B) {
			s := redfishsim.New(redfishsim.Options{TLS: tls})
			if err := s.Start(); err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			d, err := bmc.Open(bmc.Config{Driver: proto.DriverRedfish, Address: s.SystemURL(), Username: "admin", Password: "password", CACert: string(s.CertPEM())})
			if err != nil {
				b.Fatal(err)
			}
			defer d.Close()
			ctx := context.Background()
			b.ReportAllocs()
			for b.Loop() {
				if _, err := d.PowerState(ctx); err != nil {
					b.Fatal(err)
				}
			}
			if st := s.Stats(); st.SessionsCreated != 1 {
				b.Errorf("%d sessions for one driver", st.SessionsCreated)
			}
		})
	}
}
