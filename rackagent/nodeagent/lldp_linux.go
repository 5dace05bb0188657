package nodeagent

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/metalfleet/metalfleet/proto"
)

// ListenLLDP listens on each of ifaces with a raw AF_PACKET socket for up
// to wait and returns the first LLDP neighbour heard on each, by
// interface name. It returns early when every interface has heard one.
// Interfaces it cannot listen on (no CAP_NET_RAW, gone) are logged and
// left out.
func ListenLLDP(ctx context.Context, ifaces []string, wait time.Duration, log *slog.Logger) map[string]*proto.LLDP {
	out := map[string]*proto.LLDP{}
	if wait <= 0 || len(ifaces) == 0 {
		return out
	}
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	var (
		mu sync.Mutex
		wg sync.WaitGroup
	)
	for _, name := range ifaces {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l, err := listenLLDP(ctx, name)
			if err != nil {
				if log != nil && !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled) {
					log.Info("lldp", "iface", name, "err", err)
				}
				return
			}
			mu.Lock()
			out[name] = l
			mu.Unlock()
		}()
	}
	wg.Wait()
	return out
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// listenLLDP waits on one interface for a frame that parses as LLDP.
func listenLLDP(ctx context.Context, name string) (*proto.LLDP, error) {
	ifc, err := net.InterfaceByName(name)
	if err != nil {
		return nil, err
	}
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(EtherTypeLLDP)))
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(EtherTypeLLDP), Ifindex: ifc.Index}); err != nil {
		return nil, err
	}
	// The NIC drops multicast it was not asked for; LLDP goes to
	// link-local groups. A failure only means fewer frames get through.
	for _, g := range lldpGroups {
		mreq := unix.PacketMreq{Ifindex: int32(ifc.Index), Type: unix.PACKET_MR_MULTICAST, Alen: 6}
		copy(mreq.Address[:], g[:])
		_ = unix.SetsockoptPacketMreq(fd, unix.SOL_PACKET, unix.PACKET_ADD_MEMBERSHIP, &mreq)
	}
	buf := make([]byte, 9216)
	for {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, 100)
		if errors.Is(err, unix.EINTR) || n == 0 {
			continue
		}
		if err != nil {
			return nil, err
		}
		m, _, err := unix.Recvfrom(fd, buf, unix.MSG_DONTWAIT)
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return nil, err
		}
		if l, err := parseLLDPFrame(buf[:m]); err == nil {
			return l, nil
		}
	}
}
