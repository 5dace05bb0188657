package nodeagent

import (
	"reflect"
	"strings"
	"testing"
)

// modulesDep is part of Debian 6.1.0-56-amd64's modules.dep.
const modulesDep = `kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio_pci_legacy_dev.ko:
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio_pci_legacy_dev.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/net/core/failover.ko:
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/net/ethernet/intel/e1000/e1000.ko:
kernel/drivers/char/ipmi/ipmi_msghandler.ko:
kernel/drivers/char/ipmi/ipmi_si.ko: kernel/drivers/char/ipmi/ipmi_msghandler.ko
kernel/drivers/char/ipmi/ipmi_devintf.ko: kernel/drivers/char/ipmi/ipmi_msghandler.ko
kernel/drivers/nvme/host/nvme-core.ko: kernel/block/t10-pi.ko kernel/lib/crc64-rocksoft.ko kernel/lib/crc-t10dif.ko kernel/lib/crc64.ko kernel/crypto/crct10dif_common.ko
kernel/drivers/nvme/host/nvme.ko: kernel/drivers/nvme/host/nvme-core.ko kernel/block/t10-pi.ko kernel/lib/crc64-rocksoft.ko kernel/lib/crc-t10dif.ko kernel/lib/crc64.ko kernel/crypto/crct10dif_common.ko
kernel/block/t10-pi.ko: kernel/lib/crc64-rocksoft.ko kernel/lib/crc-t10dif.ko kernel/lib/crc64.ko kernel/crypto/crct10dif_common.ko
kernel/lib/crc64-rocksoft.ko: kernel/lib/crc64.ko
kernel/lib/crc-t10dif.ko: kernel/crypto/crct10dif_common.ko
kernel/lib/crc64.ko:
kernel/crypto/crct10dif_common.ko:
`

func TestModuleLoadOrder(t *testing.T) {
	md, err := ParseModulesDep(strings.NewReader(modulesDep))
	if err != nil {
		t.Fatal(err)
	}
	names := func(files []string) []string {
		var out []string
		for _, f := range files {
			out = append(out, ModuleName(f))
		}
		return out
	}
	for _, tc := range []struct {
		name        string
		want        []string
		wantBuiltin []string
		builtin     map[string]bool
	}{
		{
			// LAB.md's order for virtio-net (the two virtio_pci
			// helpers in modules.dep's reverse order).
			name: "virtio_pci virtio_net",
			want: []string{"virtio_ring", "virtio", "virtio_pci_legacy_dev", "virtio_pci_modern_dev", "virtio_pci", "failover", "net_failover", "virtio_net"},
		},
		{
			name: "virtio_net virtio-blk virtio_net",
			want: []string{"virtio_ring", "virtio", "failover", "net_failover", "virtio_net", "virtio_blk"},
		},
		{
			name: "ipmi_si ipmi_devintf",
			want: []string{"ipmi_msghandler", "ipmi_si", "ipmi_devintf"},
		},
		{
			name: "nvme",
			want: []string{"crct10dif_common", "crc64", "crc_t10dif", "crc64_rocksoft", "t10_pi", "nvme_core", "nvme"},
		},
		{
			name:        "e1000 af_packet kernel/drivers/net/ethernet/intel/e1000/e1000.ko",
			builtin:     map[string]bool{"af_packet": true},
			want:        []string{"e1000"},
			wantBuiltin: []string{"af_packet"},
		},
	} {
		files, builtin, err := md.LoadOrder(strings.Fields(tc.name), tc.builtin)
		if err != nil {
			t.Errorf("LoadOrder(%s) = %v", tc.name, err)
			continue
		}
		if got := names(files); !reflect.DeepEqual(got, tc.want) || !reflect.DeepEqual(builtin, tc.wantBuiltin) {
			t.Errorf("LoadOrder(%s) = %v, builtin %v; want %v, builtin %v", tc.name, got, builtin, tc.want, tc.wantBuiltin)
		}
	}
}

func TestModuleLoadOrderErrors(t *testing.T) {
	md, err := ParseModulesDep(strings.NewReader("a.ko: b.ko\nb.ko: c.ko\nc.ko: a.ko\nd.ko: missing.ko\n"))
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := md.LoadOrder([]string{"a"}, nil); err == nil || !strings.Contains(err.Error(), "cycle") {
		t.Errorf("LoadOrder(cycle) = %v, want a cycle error", err)
	}
	if _, _, err := md.LoadOrder([]string{"nosuch"}, nil); err == nil {
		t.Error("LoadOrder(unknown) = nil, want an error")
	}
	if _, _, err := md.LoadOrder([]string{"d"}, nil); err == nil {
		t.Error("LoadOrder(dependency missing from modules.dep) = nil, want an error")
	}
	if _, err := ParseModulesDep(strings.NewReader("no colon here\n")); err == nil {
		t.Error("ParseModulesDep(bad line) = nil, want an error")
	}
}

func TestModuleName(t *testing.T) {
	for in, want := range map[string]string{
		"kernel/drivers/net/virtio_net.ko":   "virtio_net",
		"kernel/lib/crc-t10dif.ko.xz":        "crc_t10dif",
		"nvme-core":                          "nvme_core",
		"kernel/fs/efivarfs/efivarfs.ko.zst": "efivarfs",
	} {
		if got := ModuleName(in); got != want {
			t.Errorf("ModuleName(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestParseModuleListAndBuiltin(t *testing.T) {
	got, err := ParseModuleList(strings.NewReader("# written by build.sh\nkernel/a.ko\n\n  kernel/b.ko  # b\n"))
	if err != nil || !reflect.DeepEqual(got, []string{"kernel/a.ko", "kernel/b.ko"}) {
		t.Errorf("ParseModuleList = %q, %v", got, err)
	}
	b, err := ParseModulesBuiltin(strings.NewReader("kernel/net/packet/af_packet.ko\nkernel/drivers/firmware/dmi-sysfs.ko\n"))
	if err != nil || !b["af_packet"] || !b["dmi_sysfs"] || len(b) != 2 {
		t.Errorf("ParseModulesBuiltin = %v, %v", b, err)
	}
}
