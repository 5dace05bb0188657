package bmc

// Get Channel Cipher Suites before a session (IPMI v2.0 22.15), sent
// session-less in IPMI v1.5 framing: OpenIPMI's ipmi_sim (and other BMCs)
// answer pre-session commands only in that framing, the way ipmitool
// sends Get Channel Authentication Capabilities, while go-ipmi's client
// would send it RMCP+-framed and get no answer.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"time"

	"github.com/bougou/go-ipmi/pkg/command/app"
	"github.com/bougou/go-ipmi/pkg/types"
)

const (
	ipmiNetFnApp              = 0x06
	ipmiCmdGetChannelCiphers  = 0x54
	ipmiChannelThis           = 0x0e
	ipmiBMCAddr               = 0x20
	ipmiRemoteConsoleSWID     = 0x81
	ipmiCompletionOK          = 0x00
	ipmiCipherListByAlgorithm = 0x80 // list index byte: list algorithms by cipher suite
)

// errCipherCC is a completion code answering Get Channel Cipher Suites.
type errCipherCC uint8

func (e errCipherCC) Error() string {
	return fmt.Sprintf("get channel cipher suites: completion code %#02x", uint8(e))
}

func ipmiChecksum(b []byte) byte {
	var s byte
	for _, c := range b {
		s += c
	}
	return -s
}

// cipherRequest is a session-less v1.5 Get Channel Cipher Suites request
// for list index i.
func cipherRequest(i uint8) []byte {
	hdr := []byte{ipmiBMCAddr, ipmiNetFnApp << 2}
	body := []byte{ipmiRemoteConsoleSWID, (i + 1) << 2, ipmiCmdGetChannelCiphers, ipmiChannelThis, 0x00 /* IPMI payload */, ipmiCipherListByAlgorithm | i}
	msg := append(append(hdr, ipmiChecksum(hdr)), append(body, ipmiChecksum(body))...)
	pkt := []byte{0x06, 0x00, 0xff, 0x07, // RMCP v1.0, no ack, class IPMI
		0x00,       // auth type none
		0, 0, 0, 0, // session sequence
		0, 0, 0, 0, // session id
		byte(len(msg))}
	return append(pkt, msg...)
}

// cipherAnswer returns the record bytes of an answer to cipherRequest(i),
// ok false when the datagram answers something else.
func cipherAnswer(b []byte, i uint8) (data []byte, ok bool, err error) {
	if len(b) < 14 || b[3]&0x1f != 0x07 || b[4] != 0x00 {
		return nil, false, nil
	}
	msg := b[14:]
	if int(b[13]) < len(msg) {
		msg = msg[:b[13]]
	}
	// rqAddr, netFn/lun, checksum, rsAddr, rqSeq/lun, cmd, cc, data..., checksum
	if len(msg) < 8 || msg[1]>>2 != ipmiNetFnApp+1 || msg[4]>>2 != i+1 || msg[5] != ipmiCmdGetChannelCiphers {
		return nil, false, nil
	}
	if cc := msg[6]; cc != ipmiCompletionOK {
		return nil, true, errCipherCC(cc)
	}
	if len(msg) < 9 {
		return nil, true, errors.New("get channel cipher suites: short answer")
	}
	return msg[8 : len(msg)-1], true, nil // after the channel number, before the checksum
}

// channelCipherSuites asks the BMC at addr which cipher suites it offers.
func channelCipherSuites(ctx context.Context, host string, port int) ([]types.CipherSuiteID, error) {
	var dl net.Dialer
	conn, err := dl.DialContext(ctx, "udp", net.JoinHostPort(host, strconv.Itoa(port)))
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Now()) })
	defer stop()

	var all []byte
	buf := make([]byte, 512)
	for i := uint8(0); i < app.MaxCipherSuiteListIndex; i++ {
		var data []byte
		for attempt := 0; ; attempt++ {
			if _, err := conn.Write(cipherRequest(i)); err != nil {
				return nil, err
			}
			deadline := time.Now().Add(ipmiAttemptTimeout)
			if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
				deadline = d
			}
			_ = conn.SetReadDeadline(deadline)
			var got bool
			for !got {
				n, err := conn.Read(buf)
				if err != nil {
					if ctx.Err() != nil {
						return nil, ctx.Err()
					}
					if ne, ok := err.(net.Error); ok && ne.Timeout() {
						break
					}
					return nil, err
				}
				data, got, err = cipherAnswer(buf[:n], i)
				if err != nil {
					return nil, err
				}
			}
			if got {
				break
			}
			if attempt == ipmiRetries {
				return nil, fmt.Errorf("get channel cipher suites: no answer after %d attempt(s): %w", attempt+1, os.ErrDeadlineExceeded)
			}
		}
		all = append(all, data...)
		if len(data) < 16 {
			break
		}
	}
	records, err := app.ParseCipherSuitesData(all)
	if err != nil {
		return nil, err
	}
	ids := make([]types.CipherSuiteID, 0, len(records))
	for _, r := range records {
		ids = append(ids, r.CipherSuitID)
	}
	return ids, nil
}
