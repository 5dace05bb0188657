package nodeagent

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/metalfleet/metalfleet/ops/testkit"
	"github.com/metalfleet/metalfleet/proto"
)

const (
	rescueSalt     = "s4lt"
	rescuePassword = "correct horse"
)

func rescuePasswordHash(salt, pw string) string {
	h := sha256.Sum256([]byte(salt + pw))
	return hex.EncodeToString(h[:])
}

// clientKey makes an SSH key pair for a client.
func clientKey(t *testing.T) (ssh.Signer, string) {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	p, _ := ssh.NewPublicKey(pub)
	return s, strings.TrimSpace(string(ssh.MarshalAuthorizedKey(p))) + " admin@example"
}

// startRescueSSH serves a rescue SSH server on loopback until the test
// ends.
func startRescueSSH(t *testing.T, auth proto.RescueAuth) (addr string, srv *rescueSSH) {
	t.Helper()
	srv, err := newRescueSSH(auth, "/bin/sh", slog.New(slog.NewTextHandler(testWriter{t}, nil)))
	if err != nil || srv == nil {
		t.Fatalf("newRescueSSH = %v, %v", srv, err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { srv.serve(ctx, ln); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return ln.Addr().String(), srv
}

func dialRescue(addr, user string, auth ...ssh.AuthMethod) (*ssh.Client, error) {
	return ssh.Dial("tcp", addr, &ssh.ClientConfig{User: user, Auth: auth,
		HostKeyCallback: ssh.InsecureIgnoreHostKey(), Timeout: 10 * time.Second})
}

// run runs a command in a new session (a pty first if asked).
func run(t *testing.T, c *ssh.Client, cmd string, pty bool) (string, error) {
	t.Helper()
	s, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if pty {
		if err := s.RequestPty("xterm", 24, 80, ssh.TerminalModes{}); err != nil {
			t.Fatal(err)
		}
	}
	out, err := s.CombinedOutput(cmd)
	return string(out), err
}

func TestRescueSSHLogins(t *testing.T) {
	signer, authorized := clientKey(t)
	other, _ := clientKey(t)
	addr, _ := startRescueSSH(t, proto.RescueAuth{PasswordSalt: rescueSalt,
		PasswordSHA256: rescuePasswordHash(rescueSalt, rescuePassword), SSHKey: "# the admin's key\n" + authorized + "\n"})

	for _, tc := range []struct {
		name string
		user string
		auth ssh.AuthMethod
		ok   bool
	}{
		{"password", RescueUser, ssh.Password(rescuePassword), true},
		{"key", RescueUser, ssh.PublicKeys(signer), true},
		{"wrong password", RescueUser, ssh.Password("hunter2"), false},
		{"right password, other user", "root", ssh.Password(rescuePassword), false},
		{"right key, other user", "root", ssh.PublicKeys(signer), false},
		{"another key", RescueUser, ssh.PublicKeys(other), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := dialRescue(addr, tc.user, tc.auth)
			if !tc.ok {
				if err == nil {
					c.Close()
					t.Fatal("logged in")
				}
				if !strings.Contains(err.Error(), "unable to authenticate") {
					t.Errorf("login error %v, want unable to authenticate", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("login: %v", err)
			}
			defer c.Close()
			if out, err := run(t, c, "echo hello $((6*7))", false); err != nil || out != "hello 42\n" {
				t.Errorf("exec = %q, %v, want hello 42", out, err)
			}
			var ee *ssh.ExitError
			if _, err := run(t, c, "exit 3", false); !errors.As(err, &ee) || ee.ExitStatus() != 3 {
				t.Errorf("exec exit 3 = %v, want exit status 3", err)
			}
			if out, err := run(t, c, "tty", true); err != nil || !strings.HasPrefix(out, "/dev/pts/") {
				t.Errorf("tty in a pty = %q, %v, want /dev/pts/N", out, err)
			}
		})
	}
}

// TestRescueSSHShell: an interactive shell on a pty, as a person types.
func TestRescueSSHShell(t *testing.T) {
	addr, _ := startRescueSSH(t, proto.RescueAuth{PasswordSalt: rescueSalt, PasswordSHA256: rescuePasswordHash(rescueSalt, rescuePassword)})
	c, err := dialRescue(addr, RescueUser, ssh.Password(rescuePassword))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.RequestPty("vt100", 24, 80, ssh.TerminalModes{ssh.ECHO: 0}); err != nil {
		t.Fatal(err)
	}
	in, _ := s.StdinPipe()
	out, _ := s.StdoutPipe()
	if err := s.Shell(); err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(out)
	readUntil := func(want string) {
		t.Helper()
		var got strings.Builder
		for !strings.Contains(got.String(), want) {
			b, err := r.ReadByte()
			if err != nil {
				t.Fatalf("reading the shell: %v after %q, want %q", err, got.String(), want)
			}
			got.WriteByte(b)
		}
	}
	readUntil(RescuePrompt)
	io.WriteString(in, "echo pty$((20+22))\n")
	readUntil("pty42")
	io.WriteString(in, "exit 7\n")
	var ee *ssh.ExitError
	if err := s.Wait(); !errors.As(err, &ee) || ee.ExitStatus() != 7 {
		t.Errorf("shell ended with %v, want exit status 7", err)
	}
}

// TestRescueSSHBounded: at most RescueMaxSessions connections at once;
// one more is closed, and gets in once one leaves.
func TestRescueSSHBounded(t *testing.T) {
	addr, _ := startRescueSSH(t, proto.RescueAuth{PasswordSalt: rescueSalt, PasswordSHA256: rescuePasswordHash(rescueSalt, rescuePassword)})
	var clients []*ssh.Client
	defer func() {
		for _, c := range clients {
			c.Close()
		}
	}()
	for i := 0; i < RescueMaxSessions; i++ {
		c, err := dialRescue(addr, RescueUser, ssh.Password(rescuePassword))
		if err != nil {
			t.Fatalf("connection %d: %v", i+1, err)
		}
		clients = append(clients, c)
	}
	if c, err := dialRescue(addr, RescueUser, ssh.Password(rescuePassword)); err == nil {
		c.Close()
		t.Fatalf("connection %d got in", RescueMaxSessions+1)
	}
	clients[0].Close()
	clients = clients[1:]
	testkit.Eventually(t, 10*time.Second, "a connection once one left", func() bool {
		c, err := dialRescue(addr, RescueUser, ssh.Password(rescuePassword))
		if err != nil {
			return false
		}
		clients = append(clients, c)
		return true
	})
}

func TestNewRescueSSHRefusesBadParams(t *testing.T) {
	for _, tc := range []struct {
		auth proto.RescueAuth
		want string
	}{
		{proto.RescueAuth{PasswordSalt: "x"}, "password_salt and password_sha256: give both"},
		{proto.RescueAuth{PasswordSalt: "x", PasswordSHA256: "abc"}, "password_sha256: want 64 hex digits"},
		{proto.RescueAuth{SSHKey: "ssh-ed25519 notbase64!"}, "param ssh_key: line 1 is not an authorized_keys line"},
		{proto.RescueAuth{SSHKey: `from="10.0.0.0/8",no-pty ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGdBvuq2NBZyaQ5PG4pBb3r2V0cT7iqJm6ZBNzSxGu8W k@x`}, "has options"},
		{proto.RescueAuth{SSHKey: "# only a comment"}, "param ssh_key: no key in it"},
	} {
		if s, err := newRescueSSH(tc.auth, "", nil); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("newRescueSSH(%+v) = %v, %v, want error %q", tc.auth, s, err, tc.want)
		}
	}
	if s, err := newRescueSSH(proto.RescueAuth{}, "", nil); s != nil || err != nil {
		t.Errorf("newRescueSSH(no auth) = %v, %v, want no server", s, err)
	}
}

// rescueRun is a rescue task running against a test agent.
type rescueRun struct {
	cancel context.CancelFunc
	done   chan error
	shells atomic.Int32
}

func startRescueTask(t *testing.T, a *testAgent, sshAddr string) *rescueRun {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	rr := &rescueRun{cancel: cancel, done: make(chan error, 1)}
	clk := newTickClock()
	go func() {
		rr.done <- RunTask(ctx, TaskEnv{
			CallbackURL: a.URL + proto.CallbackPrefix, MAC: taskMAC, Token: taskToken, Machine: newTestMachine(t),
			Log: slog.New(slog.NewTextHandler(testWriter{t}, nil)), HTTP: a.Client(), Clock: clk,
			Reporter: &Reporter{Client: a.Client(), Clock: clk}, TempDir: t.TempDir(),
			RescueShell:        func(context.Context) error { rr.shells.Add(1); return nil },
			RescueSSH:          sshAddr,
			RescueShellProgram: "/bin/sh",
		})
	}()
	t.Cleanup(func() { rr.stop(t) })
	return rr
}

// stop ends the task: RunTask returns only then, with ctx's error.
func (rr *rescueRun) stop(t *testing.T) {
	rr.cancel()
	if err, ok := <-rr.done; ok && !errors.Is(err, context.Canceled) {
		t.Errorf("RunTask of a rescue = %v, want it to end only with its context", err)
	}
	close(rr.done)
}

func TestRunTaskRescue(t *testing.T) {
	params := map[string]string{"password_salt": rescueSalt, "password_sha256": rescuePasswordHash(rescueSalt, rescuePassword)}
	a := newTestAgent(t, planOf(proto.TaskRescue, params))
	rr := startRescueTask(t, a, "127.0.0.1:0")
	var res rescueResult
	testkit.Eventually(t, 20*time.Second, "the rescue step's result", func() bool {
		r, ok := a.results()["rescue"]
		if ok {
			res = decode[rescueResult](t, r.Result)
			if !r.Passed {
				t.Fatalf("rescue: %+v, want passed", r)
			}
		}
		return ok
	})
	if !res.SerialShell || !strings.HasPrefix(res.SSH, "127.0.0.1:") || !strings.HasPrefix(res.HostKey, "SHA256:") || rr.shells.Load() != 1 {
		t.Fatalf("result %+v (shells started %d), want the serial shell and SSH on loopback", res, rr.shells.Load())
	}
	c, err := dialRescue(res.SSH, RescueUser, ssh.Password(rescuePassword))
	if err != nil {
		t.Fatalf("SSH login at the reported address: %v", err)
	}
	defer c.Close()
	if out, err := run(t, c, "echo rescued", false); err != nil || out != "rescued\n" {
		t.Errorf("exec = %q, %v", out, err)
	}
	select {
	case err := <-rr.done:
		t.Fatalf("RunTask returned %v while the rescue is up", err)
	default:
	}
	if ev := a.events(); strings.Join(ev, " ") != "rescue:start rescue:result" {
		t.Errorf("reports %v, want start and result", ev)
	}
}

// TestRunTaskRescueBootsAgain: the plan says the step passed (a rescue
// ramdisk that was reset): the shell and SSH start again, nothing is
// reported.
func TestRunTaskRescueBootsAgain(t *testing.T) {
	_, authorized := clientKey(t)
	plan := planOf(proto.TaskRescue, map[string]string{"ssh_key": authorized})
	plan.Steps[0].State = proto.StepPassed
	a := newTestAgent(t, plan)
	// A fixed port, to find the server by: take a free one.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	rr := startRescueTask(t, a, addr)
	testkit.Eventually(t, 20*time.Second, "the console shell and the SSH server", func() bool {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
		}
		return err == nil && rr.shells.Load() == 1
	})
	if ev := a.events(); len(ev) != 0 {
		t.Errorf("reports %v, want none (the step passed before)", ev)
	}
}

func TestRunTaskRescueWithoutAuth(t *testing.T) {
	a := newTestAgent(t, planOf(proto.TaskRescue, nil))
	rr := startRescueTask(t, a, "127.0.0.1:0")
	testkit.Eventually(t, 20*time.Second, "the rescue step's result", func() bool { _, ok := a.results()["rescue"]; return ok })
	r := a.results()["rescue"]
	if res := decode[rescueResult](t, r.Result); !r.Passed || !res.SerialShell || res.SSH != "" || rr.shells.Load() != 1 {
		t.Errorf("rescue %+v %+v, want passed with the serial shell and no SSH", r, res)
	}
}

func TestRunTaskRescueBadKey(t *testing.T) {
	a := newTestAgent(t, planOf(proto.TaskRescue, map[string]string{"ssh_key": "ssh-rsa AAAA-not-a-key"}))
	err := runTestTask(t, a, newTestMachine(t))
	if !errors.Is(err, ErrStepFailed) {
		t.Fatalf("RunTask = %v, want the step failed", err)
	}
	if r := a.results()["rescue"]; r.Passed || !strings.Contains(r.Error, "param ssh_key") {
		t.Errorf("rescue %+v, want failed naming param ssh_key", r)
	}
}

// TestConsoleShell: the console shell runs on a terminal (a pty here),
// prints its banner and prompt, runs what is typed, and starts again
// when it exits.
func TestConsoleShell(t *testing.T) {
	master, slave, err := openPTY(24, 80)
	if err != nil {
		t.Skipf("no pseudo-terminal here: %v", err)
	}
	defer master.Close()
	tty := slave.Name()
	slave.Close()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() { cancel(); master.Close(); wg.Wait() }()
	var mu sync.Mutex
	var seen strings.Builder
	wg.Add(1)
	go func() {
		defer wg.Done()
		buf := make([]byte, 4096)
		for {
			n, err := master.Read(buf)
			mu.Lock()
			seen.Write(buf[:n])
			mu.Unlock()
			if err != nil {
				// EIO while no shell has the terminal open (between
				// two shells): poll again until the test ends.
				select {
				case <-ctx.Done():
					return
				case <-time.After(5 * time.Millisecond):
				}
			}
		}
	}()
	output := func() string { mu.Lock(); defer mu.Unlock(); return seen.String() }
	cs := &ConsoleShell{Program: "/bin/sh", TTY: tty, Respawn: 10 * time.Millisecond, Log: slog.New(slog.NewTextHandler(testWriter{t}, nil))}
	if err := cs.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer func() { cancel(); <-cs.Done() }()
	banner := "metalfleet rescue: shell on " + tty + " (it starts again when it exits)"
	testkit.Eventually(t, 10*time.Second, "the banner and the prompt", func() bool {
		return strings.Contains(output(), banner) && strings.Contains(output(), RescuePrompt)
	})
	io.WriteString(master, "echo console$((40+2))\n")
	testkit.Eventually(t, 10*time.Second, "the command's output", func() bool { return strings.Contains(output(), "console42") })
	io.WriteString(master, "exit\n")
	testkit.Eventually(t, 10*time.Second, "the shell started again", func() bool { return strings.Count(output(), banner) >= 2 })
}

func TestRunInitRescueStaysUp(t *testing.T) {
	m := &fakeMachine{all: twoNICs(), dhcpOK: map[string]bool{"eth0": true},
		cmdline: "BOOTIF=01-52-54-00-00-00-0a metalfleet.callback=http://10.0.0.1:8080/v1/callback metalfleet.task=rescue metalfleet.token=tk metalfleet.poweroff=true"}
	sys := m.system(t)
	sys.runTask = func(ctx context.Context, env TaskEnv) error { <-ctx.Done(); return ctx.Err() }
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	p, _ := runInit(ctx, sys)
	if p.PowerOff {
		t.Error("a rescue ramdisk would power off")
	}
}

// TestRescueSSHClientLeaves: a command still running when its client
// goes is killed.
func TestRescueSSHClientLeaves(t *testing.T) {
	addr, _ := startRescueSSH(t, proto.RescueAuth{PasswordSalt: rescueSalt, PasswordSHA256: rescuePasswordHash(rescueSalt, rescuePassword)})
	c, err := dialRescue(addr, RescueUser, ssh.Password(rescuePassword))
	if err != nil {
		t.Fatal(err)
	}
	s, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	out, _ := s.StdoutPipe()
	if err := s.Start("echo $$; exec sleep 60"); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	pid := strings.TrimSpace(line)
	if _, err := os.Stat("/proc/" + pid); err != nil {
		t.Fatalf("the command (pid %q) is not running: %v", pid, err)
	}
	c.Close()
	testkit.Eventually(t, 10*time.Second, "the command killed", func() bool {
		_, err := os.Stat("/proc/" + pid)
		return os.IsNotExist(err)
	})
}
