//go:build !linux

package nodeagent

// oDirect: none outside Linux (the figures then include the page cache).
const oDirect = 0
