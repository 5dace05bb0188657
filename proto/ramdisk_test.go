package proto

import (
	"errors"
	"strings"
	"testing"
)

func TestCheckCmdline(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		ok       bool
	}{
		{"empty", "", true},
		{"console", "console=ttyS0,115200n8 metalfleet.poweroff=false", true},
		{"punctuation", "a=b.c/d:e-f_g+h@i%j*k!l?m(n)o[p]q{r}s~t^u", true},
		{"max", strings.Repeat("a", MaxCmdline), true},
		{"too long", strings.Repeat("a", MaxCmdline+1), false},
		{"newline", "a\nkernel http://evil", false},
		{"tab", "a\tb", false},
		{"nul", "a\x00b", false},
		{"del", "a\x7fb", false},
		{"C1 NEL", "a\u0085b", false},
		{"C1 CSI", "a\u009bb", false},
		{"C1 first", "\u0080", false},
		{"latin1 printable", "caf\u00e9", false},
		{"invalid utf8", "a\xffb", false},
		{"ipxe setting", "x=${net0/ip}", false},
		{"double quote", `x="a b"`, false},
		{"single quote", `x='a'`, false},
		{"backslash", `a\b`, false},
		{"or", "a || shell", false},
		{"and", "a && shell", false},
		{"semicolon", "a ; shell", false},
		{"hash", "a #b", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := CheckCmdline("discovery_cmdline", tc.in)
			if (err == nil) != tc.ok {
				t.Fatalf("CheckCmdline(%q) = %v, want ok=%t", tc.in, err, tc.ok)
			}
			if err == nil {
				return
			}
			var pe *Error
			if !errors.As(err, &pe) || pe.Code != CodeInvalid {
				t.Fatalf("CheckCmdline(%q) = %v, want a CodeInvalid *Error", tc.in, err)
			}
			if !strings.HasPrefix(err.Error(), "discovery_cmdline: ") && !strings.Contains(err.Error(), "discovery_cmdline") {
				t.Fatalf("CheckCmdline(%q) = %q, want the field named", tc.in, err)
			}
		})
	}
}
