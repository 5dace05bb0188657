//go:build !linux

package nodeagent

import (
	"context"
	"log/slog"
	"time"

	"github.com/metalfleet/metalfleet/proto"
)

// ListenLLDP needs Linux's AF_PACKET sockets; elsewhere it hears nothing.
func ListenLLDP(ctx context.Context, ifaces []string, wait time.Duration, log *slog.Logger) map[string]*proto.LLDP {
	return map[string]*proto.LLDP{}
}
