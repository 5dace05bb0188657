package decide

import (
	"time"

	"github.com/metalfleet/metalfleet/proto"
)

// Instances: what a rescue boots, and when a busy instance has timed out.
// The scheduler and admission are in schedule.go.

// RescueBoot is the boot config of a rescue into image name: the task
// boot (kernel, command line) with the rescue image as its initrd, and
// the image's own kernel when it names one.
func RescueBoot(task proto.BootConfig, images map[string]*proto.Image, name string) (proto.BootConfig, error) {
	im := images[name]
	if im == nil {
		return task, proto.Errorf(proto.CodeInvalid, "rescue image %q does not exist", name)
	}
	if im.Kind != proto.ImageRamdisk {
		return task, proto.Errorf(proto.CodeInvalid, "rescue image %q is a %s image, want a ramdisk image", name, im.Kind)
	}
	b := task
	b.Initrd = Artifact(im)
	if im.Kernel != "" {
		k := images[im.Kernel]
		if k == nil || k.Kind != proto.ImageKernel {
			return task, proto.Errorf(proto.CodeInvalid, "rescue image %q names kernel %q, which is not a kernel image", name, im.Kernel)
		}
		b.Kernel = Artifact(k)
	}
	return b, nil
}

// InstanceTimedOut says whether a busy instance has been in its state
// longer than proto.InstanceTimeouts allows at now.
func InstanceTimedOut(in *proto.Instance, now time.Time) bool {
	d, ok := proto.InstanceTimeouts[in.State]
	return ok && !in.StateSince.IsZero() && now.Sub(in.StateSince) > d
}
