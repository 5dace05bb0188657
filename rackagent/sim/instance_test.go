package sim

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/metalfleet/metalfleet/ops/testkit"
	"github.com/metalfleet/metalfleet/proto"
)

// instancePlan is a plan of kind k with params.
func instancePlan(id string, k proto.TaskKind, params map[string]string) proto.TaskPlan {
	p, err := proto.ParseTaskParams(k, params)
	if err != nil {
		panic(err)
	}
	plan := proto.TaskPlan{ID: id, Kind: k, Params: params}
	for _, s := range proto.TaskSteps(k, p) {
		plan.Steps = append(plan.Steps, proto.PlanStep{Name: s.Name, State: s.State})
	}
	return plan
}

// TestInstanceTasks: a simulated machine deploys a gzip image through a
// real agent's artifact cache to its smallest disk (the image's bytes
// land in the disk's file and stay there after the task), a clean
// erases it (full: the whole 480 GB disk "zeroed" at once), and a
// rescue reports in and stays up until the machine is powered off.
func TestInstanceTasks(t *testing.T) {
	base, b, reps := taskAgent(t)
	img := make([]byte, 5<<20+1234)
	rand.Read(img)
	copy(img[1<<20:], "\x53\xef") // something past the first MiB
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(img)
	zw.Close()
	served := gz.Bytes()
	up := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write(served) })}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go up.Serve(ln)
	defer up.Close()
	sum := sha256.Sum256(served)
	plan := instancePlan("t-deploy", proto.TaskDeploy, map[string]string{"image": "tiny"})
	plan.Artifacts = map[string]proto.Artifact{"tiny": {Name: "tiny", URL: "http://" + ln.Addr().String() + "/tiny.img.gz", SHA256: hex.EncodeToString(sum[:]), Size: int64(len(served))}}
	b.add(taskNode(5, plan))
	m := &Machine{MAC: taskMAC(5), TaskDir: t.TempDir(), Serial: NewSerial()}
	defer m.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cb, mac := base+proto.CallbackPrefix, taskMAC(5).String()
	start := time.Now()
	if err := m.runTask(ctx, Firmware{}.withDefaults(), net.IPv4(127, 0, 0, 1), cb, mac, "token-5", "deploy"); err != nil {
		t.Fatalf("deploy: %v\nconsole:\n%s", err, m.Serial.Log())
	}
	var dep struct {
		Disk, Format, SHA256 string
		Bytes                int64
	}
	if r := reps.results(mac)["write"]; !r.Passed || json.Unmarshal(r.Result, &dep) != nil {
		t.Fatalf("write: %+v, want passed", r)
	}
	isum := sha256.Sum256(img)
	if dep.Disk != "sda" || dep.Format != "gzip" || dep.Bytes != int64(len(img)) || dep.SHA256 != hex.EncodeToString(isum[:]) {
		t.Errorf("deployed %+v, want the image on sda (the smallest disk)", dep)
	}
	file := filepath.Join(m.diskPath, "disk-sda")
	if disk, err := os.ReadFile(file); err != nil || !bytes.HasPrefix(disk, img) {
		t.Fatalf("the disk file does not hold the image after the task (%v)", err)
	}

	t.Logf("deploy: %s", time.Since(start).Round(time.Millisecond))
	start = time.Now()
	b.add(taskNode(5, instancePlan("t-clean", proto.TaskClean, map[string]string{"full": "true"})))
	if err := m.runTask(ctx, Firmware{}.withDefaults(), net.IPv4(127, 0, 0, 1), cb, mac, "token-5", "clean"); err != nil {
		t.Fatalf("clean: %v\nconsole:\n%s", err, m.Serial.Log())
	}
	if r := reps.results(mac)["erase"]; !r.Passed {
		t.Fatalf("erase: %+v, want passed", r)
	}
	if disk, _ := os.ReadFile(file); !bytes.Equal(disk, make([]byte, len(disk))) {
		t.Error("the disk file is not all zeros after a full clean")
	}

	t.Logf("clean: %s", time.Since(start).Round(time.Millisecond))
	start = time.Now()
	b.add(taskNode(5, instancePlan("t-rescue", proto.TaskRescue, map[string]string{"password_salt": "s", "password_sha256": hex.EncodeToString(isum[:])})))
	rctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- m.runTask(rctx, Firmware{}.withDefaults(), net.IPv4(127, 0, 0, 1), cb, mac, "token-5", "rescue")
	}()
	testkit.Eventually(t, 30*time.Second, "the rescue reported in", func() bool { _, ok := reps.results(mac)["rescue"]; return ok })
	t.Logf("rescue reported in: %s", time.Since(start).Round(time.Millisecond))
	var res struct {
		SerialShell bool   `json:"serial_shell"`
		SSH         string `json:"ssh"`
	}
	if r := reps.results(mac)["rescue"]; !r.Passed || json.Unmarshal(r.Result, &res) != nil || res.SerialShell || res.SSH != "" {
		t.Errorf("rescue: %+v, want passed with no shell and no SSH (simulated)", r)
	}
	select {
	case err := <-done:
		t.Fatalf("the rescue ended by itself: %v", err)
	default:
	}
	stop() // powered off
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("rescue ended with %v, want the power-off's cancel", err)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(file); !os.IsNotExist(err) {
		t.Errorf("the disk file outlived Close: %v", err)
	}
}
