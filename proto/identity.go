package proto

import "strings"

// placeholderIDs are the values firmware ships in SMBIOS uuid and serial
// fields when the vendor never set them. Thousands of machines share
// each one, so none of them identifies a machine. Compared after trimming
// and case-folding; the one list of them, used wherever an identity is
// derived.
var placeholderIDs = []string{
	"",
	"00000000-0000-0000-0000-000000000000",
	"ffffffff-ffff-ffff-ffff-ffffffffffff",
	"03000200-0400-0500-0006-000700080009",
	"default string",
	"to be filled by o.e.m.",
	"system serial number",
	"chassis serial number",
	"base board serial number",
	"not specified",
	"not applicable",
	"not available",
	"none",
	"n/a",
	"na",
	"unknown",
	"0123456789",
	"123456789",
	"0",
	"00000000",
	"xxxxxxxxxx",
}

// IsPlaceholderID reports whether s is a value firmware ships in place of
// a real uuid or serial (blank, all zeros, all F, or a known filler).
func IsPlaceholderID(s string) bool {
	v := strings.ToLower(strings.TrimSpace(s))
	for _, p := range placeholderIDs {
		if v == p {
			return true
		}
	}
	// All one repeated character (000..., fff..., ***) whatever its
	// length, ignoring dashes: no vendor numbers machines that way.
	v = strings.ReplaceAll(v, "-", "")
	return len(v) > 0 && strings.Count(v, v[:1]) == len(v)
}

// SystemIdentity is a machine's identity for discovery: "uuid:" and its
// SMBIOS system uuid, else "serial:" and its vendor, product and serial
// (serials are unique per vendor and product line, not across them), else
// "" when firmware gave only placeholders. Two inventories with the same
// non-empty identity claim to be of the same machine; an identity is no
// secret (PXE sends the uuid in DHCP option 97), so discovery never trusts
// it alone.
func SystemIdentity(s System) string {
	switch {
	case !IsPlaceholderID(s.UUID):
		return "uuid:" + strings.ToLower(strings.TrimSpace(s.UUID))
	case !IsPlaceholderID(s.Serial):
		return "serial:" + strings.ToLower(strings.TrimSpace(s.Vendor)) + "/" + strings.ToLower(strings.TrimSpace(s.Product)) +
			"/" + strings.TrimSpace(s.Serial)
	}
	return ""
}
