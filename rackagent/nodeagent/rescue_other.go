//go:build !linux

package nodeagent

import (
	"errors"
	"os/exec"

	"golang.org/x/crypto/ssh"
)

// startInPTY needs Linux's /dev/ptmx.
func startInPTY(*exec.Cmd, ssh.Channel, uint32, uint32) (*ptyPair, error) {
	return nil, errors.New("a pseudo-terminal is only implemented on Linux")
}

func (p *ptyPair) resize(rows, cols uint32) {}
