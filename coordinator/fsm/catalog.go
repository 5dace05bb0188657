package fsm

import (
	"net/netip"
	"slices"
	"strings"

	"github.com/metalfleet/metalfleet/coordinator/state"
	"github.com/metalfleet/metalfleet/proto"
)

// The catalog: racks, flavors, images and the fleet settings.

func applyRackPut(tx *state.Tx, c *RackPut) (any, error) {
	r := c.Rack
	r.DNS = slices.Clone(r.DNS)
	if err := r.Check(); err != nil {
		return nil, err
	}
	if err := checkPut("rack", r.Name, c.Create, tx.Rack(r.Name) != nil); err != nil {
		return nil, err
	}
	// Nodes keep their reserved addresses: a new subnet or pool must
	// still leave every one of them usable.
	var bad []string
	ra := r.Addrs()
	tx.EachNodeInRack(r.Name, func(n *proto.Node) {
		if n.IP == "" {
			return
		}
		if r.Subnet == "" {
			bad = append(bad, nodeRef(n)+" ("+n.IP+": no subnet)")
		} else if why := reservedUnusable(ra, netip.MustParseAddr(n.IP)); why != "" {
			bad = append(bad, nodeRef(n)+" ("+n.IP+": "+why+")")
		}
	})
	if len(bad) > 0 {
		slices.Sort(bad)
		return nil, proto.Errorf(proto.CodeConflict, "rack %s: the change leaves node addresses unusable: %s", r.Name, strings.Join(bad, ", "))
	}
	tx.PutRack(&r)
	c2 := r
	return &c2, nil
}

// checkPut refuses a create of an existing object and a replace of a
// missing one.
func checkPut(kind, name string, create, exists bool) error {
	if create && exists {
		return proto.Errorf(proto.CodeConflict, "%s %q exists", kind, name)
	}
	if !create && !exists {
		return proto.Errorf(proto.CodeNotFound, "%s %q not found", kind, name)
	}
	return nil
}

func applyRackDelete(tx *state.Tx, c *RackDelete) (any, error) {
	if tx.Rack(c.Name) == nil {
		return nil, proto.Errorf(proto.CodeNotFound, "rack %q not found", c.Name)
	}
	if k := tx.CountNodesInRack(c.Name); k > 0 {
		return nil, proto.Errorf(proto.CodeConflict, "rack %q is in use by %d node(s)", c.Name, k)
	}
	var users []string
	tx.EachFlavor(func(f *proto.Flavor) {
		if f.Rack == c.Name {
			users = append(users, f.Name)
		}
	})
	if err := inUse(users, "rack %q is in use by flavor(s) %v", c.Name); err != nil {
		return nil, err
	}
	tx.EachToken(func(t *proto.Token) {
		if t.Rack == c.Name {
			users = append(users, t.ID)
		}
	})
	if err := inUse(users, "rack %q is in use by agent token(s) %v; revoke them first", c.Name); err != nil {
		return nil, err
	}
	tx.DeleteRack(c.Name)
	return nil, nil
}

func applyFlavorPut(tx *state.Tx, c *FlavorPut) (any, error) {
	f := c.Flavor
	f.RequiredTraits = slices.Clone(f.RequiredTraits)
	if err := f.Check(); err != nil {
		return nil, err
	}
	if f.Rack != "" && tx.Rack(f.Rack) == nil {
		return nil, proto.Errorf(proto.CodeInvalid, "rack %q does not exist", f.Rack)
	}
	if f.RescueImage != "" && tx.Image(f.RescueImage) == nil {
		return nil, proto.Errorf(proto.CodeInvalid, "rescue_image %q does not exist", f.RescueImage)
	}
	if err := checkPut("flavor", f.Name, c.Create, tx.Flavor(f.Name) != nil); err != nil {
		return nil, err
	}
	tx.PutFlavor(&f)
	c2 := f
	return &c2, nil
}

func applyFlavorDelete(tx *state.Tx, c *FlavorDelete) (any, error) {
	if tx.Flavor(c.Name) == nil {
		return nil, proto.Errorf(proto.CodeNotFound, "flavor %q not found", c.Name)
	}
	var users []string
	tx.EachInstance(func(in *proto.Instance) {
		if in.Flavor == c.Name {
			users = append(users, in.Name)
		}
	})
	if err := inUse(users, "flavor %q is in use by instance(s) %v", c.Name); err != nil {
		return nil, err
	}
	tx.DeleteFlavor(c.Name)
	return nil, nil
}

func applyImagePut(tx *state.Tx, c *ImagePut) (any, error) {
	im := c.Image
	if err := im.Check(); err != nil {
		return nil, err
	}
	old := tx.Image(im.Name)
	if err := checkPut("image", im.Name, c.Create, old != nil); err != nil {
		return nil, err
	}
	if old != nil && old.Kind != im.Kind {
		if users := imageUsers(tx, im.Name); len(users) > 0 {
			return nil, proto.Errorf(proto.CodeConflict, "cannot change the kind of image %q: it is used by %v", im.Name, users)
		}
	}
	tx.PutImage(&im)
	c2 := im
	return &c2, nil
}

// imageUsers names everything that refers to the image, sorted.
func imageUsers(tx *state.Tx, name string) []string {
	var users []string
	s := tx.Settings()
	if s.DiscoveryKernel == name {
		users = append(users, "settings.discovery_kernel")
	}
	if s.DiscoveryRamdisk == name {
		users = append(users, "settings.discovery_ramdisk")
	}
	tx.EachFlavor(func(f *proto.Flavor) {
		if f.RescueImage == name {
			users = append(users, "flavor "+f.Name)
		}
	})
	tx.EachInstance(func(in *proto.Instance) {
		if in.Image == name || in.RescueImage == name {
			users = append(users, "instance "+in.Name)
		}
	})
	slices.Sort(users)
	return users
}

func applyImageDelete(tx *state.Tx, c *ImageDelete) (any, error) {
	if tx.Image(c.Name) == nil {
		return nil, proto.Errorf(proto.CodeNotFound, "image %q not found", c.Name)
	}
	if users := imageUsers(tx, c.Name); len(users) > 0 {
		return nil, proto.Errorf(proto.CodeConflict, "image %q is in use by %v", c.Name, users)
	}
	tx.DeleteImage(c.Name)
	return nil, nil
}

func applySettingsUpdate(tx *state.Tx, c *SettingsUpdate) (any, error) {
	s := tx.Settings()
	p := c.Patch
	setIf(&s.AutoEnroll, p.AutoEnroll)
	setIf(&s.DiscoveryEnabled, p.DiscoveryEnabled)
	setIf(&s.DiscoveryKernel, p.DiscoveryKernel)
	setIf(&s.DiscoveryRamdisk, p.DiscoveryRamdisk)
	setIf(&s.DiscoveryCmdline, p.DiscoveryCmdline)
	setIf(&s.TasksKernel, p.TasksKernel)
	setIf(&s.TasksRamdisk, p.TasksRamdisk)
	setIf(&s.TasksCmdline, p.TasksCmdline)
	setIf(&s.DeployMax, p.DeployMax)
	setIf(&s.DeployMaxPerRack, p.DeployMaxPerRack)
	if s.DeployMax < 0 || s.DeployMaxPerRack < 0 {
		return nil, proto.Errorf(proto.CodeInvalid, "deploy_max %d, deploy_max_per_rack %d: want 0 (the default) or more", s.DeployMax, s.DeployMaxPerRack)
	}
	if p.VendorTools != nil {
		tools := *p.VendorTools
		if len(tools) > proto.MaxVendorTools {
			return nil, proto.Errorf(proto.CodeInvalid, "vendor_tools: %d given; at most %d", len(tools), proto.MaxVendorTools)
		}
		seen := map[string]bool{}
		for i := range tools {
			if err := tools[i].Validate(); err != nil {
				return nil, proto.Errorf(proto.CodeInvalid, "vendor_tools[%d]: %v", i, err)
			}
			if seen[tools[i].Name] {
				return nil, proto.Errorf(proto.CodeInvalid, "vendor_tools[%d]: name %q is used twice", i, tools[i].Name)
			}
			seen[tools[i].Name] = true
		}
		s.VendorTools = slices.Clone(tools)
	}
	// The same check the rack agent's boot-script renderer makes: a
	// command line accepted here always renders.
	if err := proto.CheckCmdline("discovery_cmdline", s.DiscoveryCmdline); err != nil {
		return nil, err
	}
	if err := proto.CheckCmdline("tasks_cmdline", s.TasksCmdline); err != nil {
		return nil, err
	}
	for _, ref := range []struct {
		field, name string
		kind        proto.ImageKind
	}{{"discovery_kernel", s.DiscoveryKernel, proto.ImageKernel}, {"discovery_ramdisk", s.DiscoveryRamdisk, proto.ImageRamdisk},
		{"tasks_kernel", s.TasksKernel, proto.ImageKernel}, {"tasks_ramdisk", s.TasksRamdisk, proto.ImageRamdisk}} {
		if ref.name == "" {
			continue
		}
		im := tx.Image(ref.name)
		if im == nil {
			return nil, proto.Errorf(proto.CodeInvalid, "%s: image %q does not exist", ref.field, ref.name)
		}
		if im.Kind != ref.kind {
			return nil, proto.Errorf(proto.CodeInvalid, "%s: image %q is a %s, want a %s", ref.field, ref.name, im.Kind, ref.kind)
		}
	}
	tx.PutSettings(s)
	return tx.Settings(), nil
}

// inUse refuses a change while users (named in the message, sorted) refer
// to the object; nil if there are none. format takes the object's name,
// then the users.
func inUse(users []string, format, name string) error {
	if len(users) == 0 {
		return nil
	}
	slices.Sort(users)
	return proto.Errorf(proto.CodeConflict, format, name, users)
}
