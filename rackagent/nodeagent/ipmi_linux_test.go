package nodeagent

import (
	"runtime"
	"testing"
)

// TestIPMIIoctlNumbers checks the ioctl numbers against
// include/uapi/linux/ipmi.h as compiled for x86_64.
func TestIPMIIoctlNumbers(t *testing.T) {
	if runtime.GOARCH != "amd64" && runtime.GOARCH != "arm64" {
		t.Skip("numbers known for 64-bit x86 and arm")
	}
	if ipmictlSendCommand != 0x8028690d || ipmictlReceiveMsgTrunc != 0xc030690b {
		t.Errorf("IPMICTL_SEND_COMMAND = %#x, IPMICTL_RECEIVE_MSG_TRUNC = %#x; want 0x8028690d, 0xc030690b", ipmictlSendCommand, ipmictlReceiveMsgTrunc)
	}
}

func TestBMCAddressWithoutDevice(t *testing.T) {
	if _, err := BMCAddress(t.Context(), "/nonexistent/ipmi0"); err == nil {
		t.Error("BMCAddress(missing device) = nil error, want one")
	}
}
