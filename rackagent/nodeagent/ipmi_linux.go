package nodeagent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// BMCAddress asks the BMC behind dev (/dev/ipmi0, from the ipmi_si and
// ipmi_devintf modules) for the IP address of its LAN channel. It gives
// up after 10 s.
func BMCAddress(ctx context.Context, dev string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	f, err := os.OpenFile(dev, os.O_RDWR, 0)
	if err != nil {
		return "", err
	}
	defer f.Close()
	return bmcAddressVia(ctx, &ipmiDev{f: f})
}

// The Linux IPMI device interface (include/uapi/linux/ipmi.h).
const (
	ipmiSystemInterfaceAddrType = 0x0C
	ipmiBMCChannel              = 0x0F
	ipmiResponseRecvType        = 1
)

// ipmiMsg, ipmiReq and ipmiRecv mirror struct ipmi_msg, ipmi_req and
// ipmi_recv: Go lays them out as C does (C long is Go int on Linux).
type ipmiMsg struct {
	NetFn   byte
	Cmd     byte
	DataLen uint16
	Data    unsafe.Pointer
}

type ipmiReq struct {
	Addr    unsafe.Pointer
	AddrLen uint32
	MsgID   int
	Msg     ipmiMsg
}

type ipmiRecv struct {
	RecvType int32
	Addr     unsafe.Pointer
	AddrLen  uint32
	MsgID    int
	Msg      ipmiMsg
}

type ipmiSystemInterfaceAddr struct {
	AddrType int32
	Channel  int16
	LUN      byte
}

func ioc(dir, nr, size uintptr) uintptr { return dir<<30 | size<<16 | 'i'<<8 | nr }

var (
	ipmictlSendCommand     = ioc(2 /* read */, 13, unsafe.Sizeof(ipmiReq{}))
	ipmictlReceiveMsgTrunc = ioc(3 /* read|write */, 11, unsafe.Sizeof(ipmiRecv{}))
)

type ipmiDev struct {
	f   *os.File
	seq atomic.Int64
}

func (d *ipmiDev) Do(ctx context.Context, netfn, cmd byte, data []byte) ([]byte, error) {
	fd := int(d.f.Fd())
	id := int(d.seq.Add(1))

	addr := &ipmiSystemInterfaceAddr{AddrType: ipmiSystemInterfaceAddrType, Channel: ipmiBMCChannel}
	buf := make([]byte, max(len(data), 1))
	copy(buf, data)
	req := &ipmiReq{
		Addr: unsafe.Pointer(addr), AddrLen: uint32(unsafe.Sizeof(*addr)), MsgID: id,
		Msg: ipmiMsg{NetFn: netfn, Cmd: cmd, DataLen: uint16(len(data)), Data: unsafe.Pointer(&buf[0])},
	}
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), ipmictlSendCommand, uintptr(unsafe.Pointer(req)))
	runtime.KeepAlive(addr)
	runtime.KeepAlive(buf)
	if errno != 0 {
		return nil, fmt.Errorf("IPMICTL_SEND_COMMAND: %w", errno)
	}

	for {
		deadline, ok := ctx.Deadline()
		wait := 5 * time.Second
		if ok {
			wait = time.Until(deadline)
		}
		if wait <= 0 {
			return nil, context.DeadlineExceeded
		}
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, int(min(wait, 5*time.Second)/time.Millisecond)+1)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("poll: %w", err)
		}
		if n == 0 {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			return nil, errors.New("the BMC did not answer within 5s")
		}
		raddr := &ipmiSystemInterfaceAddr{}
		rbuf := make([]byte, 1024)
		recv := &ipmiRecv{
			Addr: unsafe.Pointer(raddr), AddrLen: uint32(unsafe.Sizeof(*raddr)),
			Msg: ipmiMsg{DataLen: uint16(len(rbuf)), Data: unsafe.Pointer(&rbuf[0])},
		}
		_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), ipmictlReceiveMsgTrunc, uintptr(unsafe.Pointer(recv)))
		runtime.KeepAlive(raddr)
		runtime.KeepAlive(rbuf)
		if errno != 0 && errno != unix.EMSGSIZE {
			return nil, fmt.Errorf("IPMICTL_RECEIVE_MSG_TRUNC: %w", errno)
		}
		if recv.RecvType != ipmiResponseRecvType || recv.MsgID != id {
			continue // an event or a late answer to an earlier request
		}
		return rbuf[:min(int(recv.Msg.DataLen), len(rbuf))], nil
	}
}
