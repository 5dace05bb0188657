// Package guard holds tests that keep the architecture honest: every
// package says what it is for, and the layers import only what DESIGN.md
// lets them.
package guard
