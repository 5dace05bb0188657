//go:build !linux

package nodeagent

import (
	"context"
	"errors"
)

// BMCAddress is only implemented on Linux.
func BMCAddress(ctx context.Context, dev string) (string, error) {
	return "", errors.New("ipmi: not supported on this system")
}
