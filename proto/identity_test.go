package proto

import "testing"

func TestSystemIdentityIgnoresPlaceholders(t *testing.T) {
	for _, tc := range []struct {
		sys  System
		want string
	}{
		{System{UUID: "4C4C4544-0035-3010-8050-B4C04F565432", Serial: "B4VV5432"}, "uuid:4c4c4544-0035-3010-8050-b4c04f565432"},
		{System{UUID: "00000000-0000-0000-0000-000000000000", Vendor: "Dell Inc.", Product: "PowerEdge R640", Serial: "B4VV5432"},
			"serial:dell inc./poweredge r640/B4VV5432"},
		{System{UUID: "FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF", Serial: " B4VV5432 "}, "serial://B4VV5432"},
		{System{UUID: "03000200-0400-0500-0006-000700080009", Serial: "Default string"}, ""},
		{System{UUID: "", Serial: "To Be Filled By O.E.M."}, ""},
		{System{Serial: "System Serial Number"}, ""},
		{System{Serial: "Not Specified"}, ""},
		{System{Serial: "0123456789"}, ""},
		{System{Serial: "   "}, ""},
		{System{Serial: "000000000000"}, ""},
		{System{}, ""},
		{System{Vendor: "Supermicro", Serial: "SN-1"}, "serial:supermicro//SN-1"},
	} {
		if got := SystemIdentity(tc.sys); got != tc.want {
			t.Errorf("SystemIdentity(%+v) = %q, want %q", tc.sys, got, tc.want)
		}
	}
}
