package nodeagent

import (
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/metalfleet/metalfleet/proto"
)

func TestReadDisksListsArrays(t *testing.T) {
	root := t.TempDir()
	for p, v := range map[string]string{
		"sys/block/vdb/size":         "2048\n",
		"sys/block/vdb/serial":       "S1\n",
		"sys/block/vdc/size":         "2048\n",
		"sys/block/vdc/serial":       "S2\n",
		"sys/block/md127/size":       "2000\n",
		"sys/block/md127/md/level":   "raid1\n",
		"sys/block/md127/slaves/vdc": "",
		"sys/block/md127/slaves/vdb": "",
		"sys/block/md126/size":       "0\n", // stopped
		"sys/block/md125/size":       "100\n",
	} {
		os.MkdirAll(filepath.Dir(filepath.Join(root, p)), 0o755)
		os.WriteFile(filepath.Join(root, p), []byte(v), 0o644)
	}
	got := readDisks(sysfs{root: root}, slog.New(slog.DiscardHandler))
	want := []proto.Disk{
		{Name: "md127", SizeBytes: 2000 * 512, RAID: "raid1", Members: []string{"vdb", "vdc"}},
		{Name: "vdb", SizeBytes: 2048 * 512, Serial: "S1"},
		{Name: "vdc", SizeBytes: 2048 * 512, Serial: "S2"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("readDisks = %+v\nwant %+v (the array with its level and members; not a stopped one or one without a level)", got, want)
	}
}
