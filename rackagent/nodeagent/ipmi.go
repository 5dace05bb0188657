package nodeagent

import (
	"context"
	"errors"
	"fmt"
	"net"
)

// IPMI network functions and commands (IPMI v2.0 appendix G).
const (
	ipmiNetFnTransport  = 0x0C
	ipmiCmdGetLANConfig = 0x02
	// lanParamIP is the LAN configuration parameter "IP Address" (23.2).
	lanParamIP = 3
)

// ipmiTransport sends one request to the local BMC and returns the
// response's data, completion code first. The Linux one goes through
// /dev/ipmi0; tests use a fake.
type ipmiTransport interface {
	Do(ctx context.Context, netfn, cmd byte, data []byte) ([]byte, error)
}

// errNoBMCAddress: the BMC answered but no LAN channel has an address.
var errNoBMCAddress = errors.New("ipmi: no LAN channel has an IP address")

// bmcAddressVia asks the BMC for the IP address of its LAN channel: Get
// LAN Configuration Parameters, parameter 3, on channel 1 (where most
// BMCs put their LAN port) and then channels 2 to 8 (some put it
// elsewhere, e.g. channel 2 or 8), stopping at the first channel with a
// non-zero address. A transport error (no answer) ends the search.
func bmcAddressVia(ctx context.Context, t ipmiTransport) (string, error) {
	for ch := byte(1); ch <= 8; ch++ {
		// Byte 1: channel in bits 3:0, bit 7 clear = get the value
		// (not just the revision); then selector, set and block.
		resp, err := t.Do(ctx, ipmiNetFnTransport, ipmiCmdGetLANConfig, []byte{ch & 0x0F, lanParamIP, 0, 0})
		if err != nil {
			return "", fmt.Errorf("ipmi: get LAN configuration of channel %d: %w", ch, err)
		}
		if ip, ok := parseLANIP(resp); ok {
			return ip, nil
		}
	}
	return "", errNoBMCAddress
}

// parseLANIP parses the response to Get LAN Configuration Parameters for
// parameter 3: completion code, parameter revision, then the four bytes
// of the address. It refuses an error completion code and 0.0.0.0 (a
// channel with no address).
func parseLANIP(resp []byte) (string, bool) {
	if len(resp) < 6 || resp[0] != 0 {
		return "", false
	}
	ip := net.IPv4(resp[2], resp[3], resp[4], resp[5])
	if ip.IsUnspecified() {
		return "", false
	}
	return ip.String(), true
}
