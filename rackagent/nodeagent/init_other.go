//go:build !linux

package nodeagent

import (
	"context"
	"errors"
)

// RunInit is only implemented on Linux.
func RunInit(ctx context.Context) error {
	return errors.New("RunInit: only on Linux")
}

func unameMachine() string { return "" }
func unameRelease() string { return "" }
