package nodeagent

import (
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestSplitCmdline(t *testing.T) {
	for in, want := range map[string][]string{
		"console=ttyS0 quiet\n":               {"console=ttyS0", "quiet"},
		`a="b c" "d=e f"  g`:                  {"a=b c", "d=e f", "g"},
		"  \t ":                               nil,
		`x=""`:                                {"x="},
		"BOOTIF=01-52-54-00-12-34-56\tinitrd": {"BOOTIF=01-52-54-00-12-34-56", "initrd"},
	} {
		if got := SplitCmdline(in); !reflect.DeepEqual(got, want) {
			t.Errorf("SplitCmdline(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestParseCmdline(t *testing.T) {
	def := func(p BootParams) BootParams {
		if p.DHCPTimeout == 0 {
			p.DHCPTimeout = DefaultDHCPTimeout
		}
		if p.OnError == "" {
			p.OnError = OnErrorReboot
		}
		return p
	}
	for _, tc := range []struct {
		name    string
		cmdline string
		want    BootParams
		wantErr string
	}{
		{
			name: "discovery as rackagent/httpboot renders it",
			cmdline: "BOOT_IMAGE=vmlinuz console=ttyS0 BOOTIF=01-52-54-00-12-34-56 " +
				"metalfleet.callback=http://10.99.0.1:8080/v1/callback metalfleet.mac=52:54:00:12:34:56\n",
			want: def(BootParams{Callback: "http://10.99.0.1:8080/v1/callback", MAC: "52:54:00:12:34:56", PowerOff: true}),
		},
		{
			name:    "a task with a token keeps running by default",
			cmdline: "metalfleet.callback=http://a:1/v1/callback metalfleet.mac=52:54:00:AA:BB:CC metalfleet.token=t0k metalfleet.task=burnin",
			want:    def(BootParams{Callback: "http://a:1/v1/callback", MAC: "52:54:00:aa:bb:cc", Token: "t0k", Task: "burnin"}),
		},
		{
			name:    "inspection powers off",
			cmdline: "metalfleet.task=inspect metalfleet.token=x",
			want:    def(BootParams{Task: "inspect", Token: "x", PowerOff: true}),
		},
		{
			name:    "BOOTIF alone names the MAC",
			cmdline: "BOOTIF=01-52-54-00-12-34-56",
			want:    def(BootParams{MAC: "52:54:00:12:34:56", PowerOff: true}),
		},
		{
			name:    "metalfleet.mac wins over BOOTIF",
			cmdline: "metalfleet.mac=52:54:00:00:00:02 BOOTIF=01-52-54-00-00-00-01",
			want:    def(BootParams{MAC: "52:54:00:00:00:02", PowerOff: true}),
		},
		{
			name:    "operator switches",
			cmdline: "metalfleet.poweroff=false metalfleet.print metalfleet.lldp=35s metalfleet.dhcp_timeout=5 metalfleet.onerror=stay",
			want:    def(BootParams{Print: true, LLDPWait: 35 * time.Second, DHCPTimeout: 5 * time.Second, OnError: OnErrorStay}),
		},
		{
			name:    "the last repeat wins",
			cmdline: "metalfleet.poweroff=0 metalfleet.poweroff=1 metalfleet.lldp=1.5",
			want:    def(BootParams{PowerOff: true, LLDPWait: 1500 * time.Millisecond}),
		},
		{
			name:    "bad values are reported, good ones kept",
			cmdline: "metalfleet.callback=ftp://x BOOTIF=zz metalfleet.poweroff=maybe metalfleet.lldp=-1s metalfleet.onerror=panic metalfleet.dhcp_timeout=0 metalfleet.task=burnin metalfleet.mac=nope",
			want:    def(BootParams{Task: "burnin"}),
			wantErr: "metalfleet.callback",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseCmdline(tc.cmdline)
			if got != tc.want {
				t.Errorf("ParseCmdline(%q) =\n %+v\nwant\n %+v", tc.cmdline, got, tc.want)
			}
			if (err != nil) != (tc.wantErr != "") || err != nil && !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("ParseCmdline(%q) error = %v, want one mentioning %q", tc.cmdline, err, tc.wantErr)
			}
		})
	}
}

func TestParseCmdlineReportsEveryBadValue(t *testing.T) {
	_, err := ParseCmdline("BOOTIF=zz metalfleet.poweroff=maybe metalfleet.print=perhaps metalfleet.lldp=x metalfleet.onerror=panic metalfleet.dhcp_timeout=0 metalfleet.mac=nope")
	for _, p := range []string{"BOOTIF", "metalfleet.poweroff", "metalfleet.print", "metalfleet.lldp", "metalfleet.onerror", "metalfleet.dhcp_timeout", "metalfleet.mac"} {
		if err == nil || !strings.Contains(err.Error(), p+"=") {
			t.Errorf("ParseCmdline error = %v, want it to name %s", err, p)
		}
	}
}

func TestBootParamsStringHidesToken(t *testing.T) {
	p, _ := ParseCmdline("metalfleet.token=very-secret metalfleet.callback=http://a/v1/callback")
	if s := p.String(); strings.Contains(s, "very-secret") || !strings.Contains(s, "token=set") {
		t.Errorf("BootParams.String() = %q, want the token hidden", s)
	}
}
