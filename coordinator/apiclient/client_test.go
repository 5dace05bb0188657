package apiclient_test

import (
	"context"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/metalfleet/metalfleet/coordinator/apiclient"
	"github.com/metalfleet/metalfleet/coordinator/coordtest"
	"github.com/metalfleet/metalfleet/proto"
)

// start runs a coordinator and returns an admin client for it, a context
// and its address.
func start(t *testing.T) (*apiclient.Client, context.Context, string) {
	t.Helper()
	s, tok := coordtest.StartSingle(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return apiclient.New(s.HTTPAddr(), tok), ctx, s.HTTPAddr()
}

// wantAPIError checks that err is an *apiclient.Error with status and code.
func wantAPIError(t *testing.T, what string, err error, status int, code proto.Code) {
	t.Helper()
	var ae *apiclient.Error
	if !errors.As(err, &ae) {
		t.Errorf("%s: got error %v (%T), want an *apiclient.Error", what, err, err)
		return
	}
	if ae.Status != status || ae.Code != code {
		t.Errorf("%s: got HTTP %d %s (%q), want HTTP %d %s", what, ae.Status, ae.Code, ae.Message, status, code)
	}
}

func TestRacksFlavorsImages(t *testing.T) {
	c, ctx, _ := start(t)

	r, err := c.CreateRack(ctx, proto.Rack{Name: "r1", Subnet: "10.0.0.7/24", Gateway: "10.0.0.1", LeaseTime: proto.Duration(time.Hour)})
	if err != nil {
		t.Fatalf("CreateRack: %v", err)
	}
	if r.Subnet != "10.0.0.0/24" || r.CreateIndex == 0 {
		t.Errorf("CreateRack: got %+v, want the masked subnet and a create index", r)
	}
	_, err = c.CreateRack(ctx, proto.Rack{Name: "r1"})
	wantAPIError(t, "CreateRack twice", err, 409, proto.CodeConflict)
	if _, err := c.UpdateRack(ctx, proto.Rack{Name: "r1", Subnet: "10.0.0.0/24", DNS: []string{"1.1.1.1"}}); err != nil {
		t.Fatalf("UpdateRack: %v", err)
	}
	_, err = c.UpdateRack(ctx, proto.Rack{Name: "nosuch"})
	wantAPIError(t, "UpdateRack missing", err, 404, proto.CodeNotFound)
	got, err := c.Rack(ctx, "r1")
	if err != nil || !reflect.DeepEqual(got.DNS, []string{"1.1.1.1"}) || got.LeaseTime != 0 {
		t.Errorf("Rack after UpdateRack: got %+v, %v; want the replaced rack (DNS 1.1.1.1, no lease time)", got, err)
	}
	// Names are escaped into the path: a slash reaches the handler.
	_, err = c.Rack(ctx, "a/b")
	wantAPIError(t, "Rack a/b", err, 404, proto.CodeNotFound)
	if err != nil && !strings.Contains(err.Error(), `rack "a/b" not found`) {
		t.Errorf("Rack a/b: got %q, want the rack handler's not found", err)
	}

	sum := strings.Repeat("ab", 32)
	if _, err := c.CreateImage(ctx, proto.Image{Name: "k1", Kind: proto.ImageKernel, URL: "http://x/k1", SHA256: strings.ToUpper(sum)}); err != nil {
		t.Fatalf("CreateImage: %v", err)
	}
	if im, err := c.UpdateImage(ctx, proto.Image{Name: "k1", Kind: proto.ImageKernel, URL: "http://x/k1b", SHA256: sum, Size: 9}); err != nil || im.URL != "http://x/k1b" || im.Size != 9 {
		t.Errorf("UpdateImage: got %+v, %v", im, err)
	}
	if im, err := c.Image(ctx, "k1"); err != nil || im.SHA256 != sum {
		t.Errorf("Image: got %+v, %v; want the lower-case sha256", im, err)
	}

	if _, err := c.CreateFlavor(ctx, proto.Flavor{Name: "f1", CPUs: 2, Rack: "r1", RescueImage: "k1"}); err != nil {
		t.Fatalf("CreateFlavor: %v", err)
	}
	if f, err := c.UpdateFlavor(ctx, proto.Flavor{Name: "f1", CPUs: 4, RequiredTraits: []string{"gpu"}}); err != nil || f.CPUs != 4 || f.Rack != "" {
		t.Errorf("UpdateFlavor: got %+v, %v", f, err)
	}
	if f, err := c.Flavor(ctx, "f1"); err != nil || !reflect.DeepEqual(f.RequiredTraits, []string{"gpu"}) {
		t.Errorf("Flavor: got %+v, %v", f, err)
	}

	racks, err := c.Racks(ctx)
	if err != nil || len(racks) != 1 || racks[0].Name != "r1" {
		t.Errorf("Racks: got %v, %v; want [r1]", racks, err)
	}
	flavors, err := c.Flavors(ctx)
	if err != nil || len(flavors) != 1 || flavors[0].Name != "f1" {
		t.Errorf("Flavors: got %v, %v; want [f1]", flavors, err)
	}
	images, err := c.Images(ctx)
	if err != nil || len(images) != 1 || images[0].Name != "k1" {
		t.Errorf("Images: got %v, %v; want [k1]", images, err)
	}

	for _, del := range []struct {
		what string
		fn   func(context.Context, string) error
		name string
	}{{"DeleteFlavor", c.DeleteFlavor, "f1"}, {"DeleteImage", c.DeleteImage, "k1"}, {"DeleteRack", c.DeleteRack, "r1"}} {
		if err := del.fn(ctx, del.name); err != nil {
			t.Errorf("%s %s: %v", del.what, del.name, err)
		}
		wantAPIError(t, del.what+" again", del.fn(ctx, del.name), 404, proto.CodeNotFound)
	}
	_, err = c.Flavor(ctx, "f1")
	wantAPIError(t, "Flavor after delete", err, 404, proto.CodeNotFound)
}

func TestInstancesSettingsTokensCluster(t *testing.T) {
	c, ctx, addr := start(t)

	if _, err := c.CreateNode(ctx, proto.NodeCreate{Name: "n1", MACs: []string{"52:54:00:00:00:01"}}); err != nil {
		t.Fatal(err)
	}
	ins, err := c.Instances(ctx, "")
	if err != nil || ins == nil || len(ins) != 0 {
		t.Errorf("Instances: got %#v, %v; want an empty list", ins, err)
	}
	if ins, err := c.Instances(ctx, "n1"); err != nil || len(ins) != 0 {
		t.Errorf("Instances n1: got %v, %v; want an empty list", ins, err)
	}
	_, err = c.Instances(ctx, "nosuch")
	wantAPIError(t, "Instances of a missing node", err, 404, proto.CodeNotFound)
	_, err = c.Instance(ctx, "nosuch")
	wantAPIError(t, "Instance", err, 404, proto.CodeNotFound)

	s, err := c.Settings(ctx)
	if err != nil || s.AutoEnroll || s.DiscoveryEnabled {
		t.Errorf("Settings: got %+v, %v; want the defaults", s, err)
	}
	on := true
	if s, err := c.UpdateSettings(ctx, proto.SettingsPatch{AutoEnroll: &on}); err != nil || !s.AutoEnroll || s.DiscoveryEnabled {
		t.Errorf("UpdateSettings: got %+v, %v; want auto_enroll only", s, err)
	}
	missing := "nosuch"
	_, err = c.UpdateSettings(ctx, proto.SettingsPatch{DiscoveryKernel: &missing})
	wantAPIError(t, "UpdateSettings with a missing image", err, 400, proto.CodeInvalid)

	tc, err := c.CreateToken(ctx, proto.TokenCreate{Role: proto.RoleReader, Description: "test"})
	if err != nil || !strings.HasPrefix(tc.Secret, "mf_") || tc.ID == "" || tc.Role != proto.RoleReader {
		t.Fatalf("CreateToken: got %+v, %v", tc, err)
	}
	toks, err := c.Tokens(ctx)
	if err != nil || len(toks) != 2 {
		t.Errorf("Tokens: got %v, %v; want 2", toks, err)
	}
	reader := apiclient.New("http://"+addr+"/", tc.Secret)
	if _, err := reader.Settings(ctx); err != nil {
		t.Errorf("Settings as reader: %v", err)
	}
	_, err = reader.UpdateSettings(ctx, proto.SettingsPatch{AutoEnroll: &on})
	wantAPIError(t, "UpdateSettings as reader", err, 403, proto.CodeForbidden)
	if err := c.RevokeToken(ctx, tc.ID); err != nil {
		t.Errorf("RevokeToken: %v", err)
	}
	_, err = reader.Settings(ctx)
	wantAPIError(t, "Settings with a revoked token", err, 401, proto.CodeUnauthorized)

	wantAPIError(t, "RemovePeer nosuch", c.RemovePeer(ctx, "nosuch"), 404, proto.CodeNotFound)
	wantAPIError(t, "RemovePeer of the leader", c.RemovePeer(ctx, "s1"), 409, proto.CodeConflict)
}
