package drills

import (
	"testing"

	"github.com/metalfleet/metalfleet/ops/testkit"
)

// TestMain builds the binary to drill at most once and removes it after.
func TestMain(m *testing.M) { testkit.Main(m) }
