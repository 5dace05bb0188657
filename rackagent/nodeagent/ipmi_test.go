package nodeagent

import (
	"context"
	"errors"
	"testing"
)

// fakeBMC answers Get LAN Configuration Parameters from a table of
// channel -> response.
type fakeBMC struct {
	lan  map[byte][]byte
	err  error
	asks []byte
}

func (f *fakeBMC) Do(ctx context.Context, netfn, cmd byte, data []byte) ([]byte, error) {
	if f.err != nil {
		return nil, f.err
	}
	if netfn != ipmiNetFnTransport || cmd != ipmiCmdGetLANConfig || len(data) != 4 || data[1] != lanParamIP {
		return []byte{0xC1}, nil // invalid command
	}
	f.asks = append(f.asks, data[0])
	if r, ok := f.lan[data[0]]; ok {
		return r, nil
	}
	return []byte{0xCC}, nil // invalid data field: not a LAN channel
}

func TestBMCAddress(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name     string
		bmc      *fakeBMC
		want     string
		wantErr  error
		wantAsks int
	}{
		{name: "channel 1", bmc: &fakeBMC{lan: map[byte][]byte{1: {0, 0x11, 10, 99, 0, 21}}}, want: "10.99.0.21", wantAsks: 1},
		{name: "channel 1 unset, channel 2 set (some HPE)", bmc: &fakeBMC{lan: map[byte][]byte{1: {0, 0x11, 0, 0, 0, 0}, 2: {0, 0x11, 192, 168, 5, 9}}}, want: "192.168.5.9", wantAsks: 2},
		{name: "channel 8", bmc: &fakeBMC{lan: map[byte][]byte{8: {0, 0x11, 172, 16, 0, 3}}}, want: "172.16.0.3", wantAsks: 8},
		{name: "no address anywhere", bmc: &fakeBMC{lan: map[byte][]byte{1: {0, 0x11, 0, 0, 0, 0}}}, wantErr: errNoBMCAddress, wantAsks: 8},
		{name: "short answer", bmc: &fakeBMC{lan: map[byte][]byte{1: {0, 0x11, 10}}}, wantErr: errNoBMCAddress, wantAsks: 8},
		{name: "no answer", bmc: &fakeBMC{err: context.DeadlineExceeded}, wantErr: context.DeadlineExceeded},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := bmcAddressVia(ctx, tc.bmc)
			if got != tc.want || !errors.Is(err, tc.wantErr) {
				t.Errorf("bmcAddressVia = %q, %v; want %q, %v", got, err, tc.want, tc.wantErr)
			}
			if len(tc.bmc.asks) != tc.wantAsks {
				t.Errorf("asked channels %v, want %d asks", tc.bmc.asks, tc.wantAsks)
			}
		})
	}
}
