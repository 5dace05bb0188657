package nodeagent

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/metalfleet/metalfleet/proto"
)

// A rescue task's one step (proto.StepNameRescue) brings the rescue
// ramdisk up: a shell on the serial console, respawned when it exits
// (TaskEnv.RescueShell: busybox sh in the ramdisk), and, when the task's
// params let user rescue in (a salted password hash, an authorized_keys
// line), an SSH server (TaskEnv.RescueSSH, :22 in the ramdisk) with a
// host key made at start. Once both run the step passes with
// {"serial_shell", "ssh": "ADDR:22" or ""}, and RunTask stays up until
// its context ends: the ramdisk never powers off by itself. A rescue
// ramdisk that boots again (the node was reset) finds the step passed in
// its plan: it starts the shell and the SSH server again and reports
// nothing.

// RescueUser is the only user the rescue SSH server lets in.
const RescueUser = "rescue"

// RescueMaxSessions bounds the rescue SSH server's connections at once;
// RescueMaxChannels bounds the sessions of one connection.
const (
	RescueMaxSessions = 8
	RescueMaxChannels = 4
)

// RescuePrompt is the prompt of the rescue shells (console and SSH).
const RescuePrompt = "metalfleet-rescue# "

// DefaultRescueShell is the shell of the rescue ramdisk (busybox).
const DefaultRescueShell = "/bin/sh"

// rescueHandshakeTimeout bounds an SSH connection's handshake and login.
const rescueHandshakeTimeout = 30 * time.Second

// rescueResult is the rescue step's result.
type rescueResult struct {
	SerialShell bool   `json:"serial_shell"`
	SSH         string `json:"ssh"`
	// HostKey is the SSH host key's SHA-256 fingerprint.
	HostKey string `json:"ssh_host_key,omitempty"`
}

// rescueStep is the rescue step: start everything, report.
func (r *taskRunner) rescueStep(ctx context.Context, sc *stepCtx) stepResult {
	res, err := r.startRescue(ctx, sc.logf)
	return stepResult{result: res, err: err}
}

// startRescue starts the console shell and the SSH server (once per
// runner; they run until ctx ends).
func (r *taskRunner) startRescue(ctx context.Context, logf func(string, ...any)) (rescueResult, error) {
	if r.rescue != nil {
		return *r.rescue, nil
	}
	var res rescueResult
	p := r.params.Rescue
	if p == nil {
		return res, errors.New("no rescue params")
	}
	srv, err := newRescueSSH(p.Auth, r.env.RescueShellProgram, r.log)
	if err != nil {
		return res, err
	}
	if r.env.RescueShell != nil {
		if err := r.env.RescueShell(ctx); err != nil {
			return res, fmt.Errorf("starting the console shell: %w", err)
		}
		res.SerialShell = true
		logf("a shell runs on the serial console (prompt %q)", RescuePrompt)
	} else {
		logf("this machine has no console shell to start")
	}
	switch {
	case srv == nil:
		logf("no password or SSH key given: no SSH server (the serial console shell only)")
	case r.env.RescueSSH == "":
		logf("a password or SSH key was given, but this machine runs no SSH server")
	default:
		ln, err := net.Listen("tcp", r.env.RescueSSH)
		if err != nil {
			return res, fmt.Errorf("SSH server: %w", err)
		}
		go srv.serve(ctx, ln)
		res.SSH = r.sshAddr(ln.Addr())
		res.HostKey = ssh.FingerprintSHA256(srv.hostKey.PublicKey())
		logf("SSH server on %s for user %s (%s), host key %s", res.SSH, RescueUser, srv.methods(), res.HostKey)
		r.log.Info("rescue SSH server", "addr", res.SSH, "user", RescueUser, "auth", srv.methods(), "host_key", res.HostKey)
	}
	r.rescue = &res
	return res, nil
}

// sshAddr is the address users reach the SSH server at: the listener's,
// or, when it listens on every address, this machine's address toward
// the agent, with the listener's port.
func (r *taskRunner) sshAddr(a net.Addr) string {
	ta, ok := a.(*net.TCPAddr)
	if !ok {
		return a.String()
	}
	if !ta.IP.IsUnspecified() {
		return ta.String()
	}
	host := ""
	if u, err := url.Parse(r.base); err == nil {
		port := u.Port()
		if port == "" {
			port = "80"
		}
		if c, err := net.Dial("udp", net.JoinHostPort(u.Hostname(), port)); err == nil {
			host = c.LocalAddr().(*net.UDPAddr).IP.String()
			c.Close()
		}
	}
	return net.JoinHostPort(host, fmt.Sprint(ta.Port))
}

// stayRescued keeps a rescue task up until ctx ends, starting its shell
// and SSH server when the plan had the step passed already (a rescue
// ramdisk that booted again).
func (r *taskRunner) stayRescued(ctx context.Context) error {
	if r.rescue == nil {
		log := r.log.With("task", r.plan.ID)
		res, err := r.startRescue(ctx, func(f string, a ...any) { log.Info(fmt.Sprintf(f, a...)) })
		if err != nil {
			return fmt.Errorf("rescue (its step passed before this boot): %w", err)
		}
		log.Info("rescue: up again", "serial_shell", res.SerialShell, "ssh", res.SSH)
	}
	r.log.Info("rescue: staying up; the coordinator ends the rescue")
	// A timer, not a bare ctx.Done(): PID 1 with a background context
	// must not look deadlocked to the Go runtime.
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
			t.Reset(time.Hour)
		}
	}
}

// rescueSSH is the rescue ramdisk's SSH server.
type rescueSSH struct {
	salt, pwHash []byte // pwHash: SHA-256(salt + password)
	keys         []ssh.PublicKey
	shell        string
	log          *slog.Logger
	hostKey      ssh.Signer
	sem          chan struct{}
}

// newRescueSSH checks the auth params and makes the server, or returns
// nil when they let nobody in (no SSH server then).
func newRescueSSH(auth proto.RescueAuth, shell string, log *slog.Logger) (*rescueSSH, error) {
	s := &rescueSSH{shell: shell, log: log, sem: make(chan struct{}, RescueMaxSessions)}
	if s.shell == "" {
		s.shell = DefaultRescueShell
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	switch {
	case auth.PasswordSHA256 != "" && auth.PasswordSalt == "", auth.PasswordSHA256 == "" && auth.PasswordSalt != "":
		return nil, errors.New("params password_salt and password_sha256: give both or neither")
	case auth.PasswordSHA256 != "":
		h, err := hex.DecodeString(auth.PasswordSHA256)
		if err != nil || len(h) != sha256.Size {
			return nil, errors.New("param password_sha256: want 64 hex digits (SHA-256 of salt and password)")
		}
		s.salt, s.pwHash = []byte(auth.PasswordSalt), h
	}
	for i, line := range strings.Split(auth.SSHKey, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, _, options, _, err := ssh.ParseAuthorizedKey([]byte(line))
		if err != nil {
			return nil, fmt.Errorf("param ssh_key: line %d is not an authorized_keys line: %v", i+1, err)
		}
		if len(options) > 0 {
			// from=, command=, restrict, no-pty ... are not enforced here:
			// a key limited so must not get a full shell from anywhere.
			return nil, fmt.Errorf("param ssh_key: line %d has options (%s): not supported; give the bare key", i+1, strings.Join(options, ","))
		}
		s.keys = append(s.keys, k)
	}
	if s.pwHash == nil && len(s.keys) == 0 {
		if strings.TrimSpace(auth.SSHKey) != "" {
			return nil, errors.New("param ssh_key: no key in it")
		}
		return nil, nil
	}
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	if s.hostKey, err = ssh.NewSignerFromKey(priv); err != nil {
		return nil, err
	}
	return s, nil
}

// methods names the login methods offered.
func (s *rescueSSH) methods() string {
	var m []string
	if s.pwHash != nil {
		m = append(m, "password")
	}
	if len(s.keys) > 0 {
		m = append(m, fmt.Sprintf("%d public keys", len(s.keys)))
	}
	return strings.Join(m, ", ")
}

var errRefused = errors.New("refused")

func (s *rescueSSH) config() *ssh.ServerConfig {
	c := &ssh.ServerConfig{MaxAuthTries: 6, ServerVersion: "SSH-2.0-metalfleet-rescue"}
	if s.pwHash != nil {
		c.PasswordCallback = func(meta ssh.ConnMetadata, pw []byte) (*ssh.Permissions, error) {
			h := sha256.New()
			h.Write(s.salt)
			h.Write(pw)
			ok := subtle.ConstantTimeCompare(h.Sum(nil), s.pwHash) == 1 && meta.User() == RescueUser
			s.logAuth(meta, "password", ok)
			if !ok {
				return nil, errRefused
			}
			return &ssh.Permissions{}, nil
		}
	}
	if len(s.keys) > 0 {
		c.PublicKeyCallback = func(meta ssh.ConnMetadata, key ssh.PublicKey) (*ssh.Permissions, error) {
			ok := false
			for _, k := range s.keys {
				if subtle.ConstantTimeCompare(k.Marshal(), key.Marshal()) == 1 {
					ok = true
				}
			}
			ok = ok && meta.User() == RescueUser
			s.logAuth(meta, "publickey "+ssh.FingerprintSHA256(key), ok)
			if !ok {
				return nil, errRefused
			}
			return &ssh.Permissions{}, nil
		}
	}
	c.AddHostKey(s.hostKey)
	return c
}

func (s *rescueSSH) logAuth(meta ssh.ConnMetadata, method string, ok bool) {
	s.log.Info("rescue SSH login", "user", meta.User(), "from", meta.RemoteAddr().String(), "method", method, "accepted", ok)
}

// serve accepts connections until ctx ends.
func (s *rescueSSH) serve(ctx context.Context, ln net.Listener) {
	go func() {
		<-ctx.Done()
		ln.Close()
	}()
	cfg := s.config()
	// serve returns once its connections have (they end with ctx).
	var conns sync.WaitGroup
	defer conns.Wait()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() == nil {
				s.log.Error("rescue SSH server stopped", "err", err)
			}
			return
		}
		select {
		case s.sem <- struct{}{}:
		default:
			s.log.Warn("rescue SSH: too many connections; closing one", "from", c.RemoteAddr().String(), "max", RescueMaxSessions)
			c.Close()
			continue
		}
		conns.Add(1)
		go func() {
			defer conns.Done()
			defer func() { <-s.sem }()
			s.conn(ctx, c, cfg)
		}()
	}
}

// conn serves one connection.
func (s *rescueSSH) conn(ctx context.Context, c net.Conn, cfg *ssh.ServerConfig) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(rescueHandshakeTimeout))
	sc, chans, reqs, err := ssh.NewServerConn(c, cfg)
	if err != nil {
		s.log.Info("rescue SSH: handshake", "from", c.RemoteAddr().String(), "err", err)
		return
	}
	c.SetDeadline(time.Time{})
	defer sc.Close()
	go ssh.DiscardRequests(reqs)
	stop := context.AfterFunc(ctx, func() { sc.Close() })
	defer stop()
	open := make(chan struct{}, RescueMaxChannels)
	var wg sync.WaitGroup
	defer wg.Wait()
	for nc := range chans {
		if nc.ChannelType() != "session" {
			nc.Reject(ssh.UnknownChannelType, "only session channels")
			continue
		}
		select {
		case open <- struct{}{}:
		default:
			nc.Reject(ssh.ResourceShortage, fmt.Sprintf("at most %d sessions per connection", RescueMaxChannels))
			continue
		}
		ch, creqs, err := nc.Accept()
		if err != nil {
			<-open
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-open }()
			s.session(ctx, ch, creqs)
		}()
	}
}

// ptyReq is an SSH pty-req's payload (RFC 4254 6.2).
type ptyReq struct {
	Term                      string
	Cols, Rows, Width, Height uint32
	Modes                     string
}

// winChange is a window-change's payload (RFC 4254 6.7).
type winChange struct {
	Cols, Rows, Width, Height uint32
}

// session runs one session channel: a pty if asked, then one shell or
// command, its exit status sent back.
func (s *rescueSSH) session(ctx context.Context, ch ssh.Channel, reqs <-chan *ssh.Request) {
	defer ch.Close()
	var (
		pty    *ptyReq
		tty    *ptyPair
		cmd    *exec.Cmd
		exited bool
		done   = make(chan int, 1)
		env    []string
	)
	defer func() {
		if cmd != nil && !exited {
			_ = cmd.Process.Kill() // the client left: its shell goes too
		}
		if tty != nil {
			tty.Close()
		}
	}()
	for {
		select {
		case code := <-done:
			exited = true
			ch.SendRequest("exit-status", false, ssh.Marshal(struct{ Status uint32 }{uint32(code)}))
			return
		case req, ok := <-reqs:
			if !ok {
				return
			}
			switch req.Type {
			case "pty-req":
				var p ptyReq
				if cmd != nil || ssh.Unmarshal(req.Payload, &p) != nil {
					req.Reply(false, nil)
					continue
				}
				pty = &p
				req.Reply(true, nil)
			case "window-change":
				var w winChange
				if ssh.Unmarshal(req.Payload, &w) == nil && tty != nil {
					tty.resize(w.Rows, w.Cols)
				}
			case "env":
				var kv struct{ Name, Value string }
				if ssh.Unmarshal(req.Payload, &kv) == nil && (kv.Name == "LANG" || strings.HasPrefix(kv.Name, "LC_")) {
					env = append(env, kv.Name+"="+kv.Value)
					req.Reply(true, nil)
					continue
				}
				req.Reply(false, nil)
			case "shell", "exec":
				var cmdline struct{ Command string }
				if cmd != nil || req.Type == "exec" && ssh.Unmarshal(req.Payload, &cmdline) != nil {
					req.Reply(false, nil)
					continue
				}
				args := []string{}
				if req.Type == "exec" {
					args = []string{"-c", cmdline.Command}
				}
				c := exec.CommandContext(ctx, s.shell, args...)
				c.Dir = "/"
				c.Env = append(rescueEnv(), env...)
				var err error
				if pty != nil {
					c.Env = append(c.Env, "TERM="+orDefault(pty.Term, "vt100"))
					tty, err = startInPTY(c, ch, pty.Rows, pty.Cols)
				} else {
					err = startPiped(c, ch)
				}
				if err != nil {
					s.log.Warn("rescue SSH: starting the shell", "err", err)
					req.Reply(false, nil)
					fmt.Fprintf(ch.Stderr(), "metalfleet rescue: cannot start %s: %v\r\n", s.shell, err)
					return
				}
				cmd = c
				req.Reply(true, nil)
				tty := tty
				go func() {
					code := waitCode(c.Wait())
					if tty != nil {
						tty.drain()
					}
					done <- code
				}()
			default:
				req.Reply(false, nil)
			}
		}
	}
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// rescueEnv is the environment of the rescue shells.
func rescueEnv() []string {
	return []string{"PATH=/bin:/sbin:/usr/bin:/usr/sbin", "HOME=/", "USER=root", "LOGNAME=root", "SHELL=" + DefaultRescueShell, "PS1=" + RescuePrompt}
}

// waitCode is a process's exit code from Wait's error.
func waitCode(err error) int {
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ee) && ee.ExitCode() >= 0:
		return ee.ExitCode()
	}
	return 255
}

// startPiped starts cmd with its streams on the channel (no pty).
func startPiped(cmd *exec.Cmd, ch ssh.Channel) error {
	in, err := cmd.StdinPipe()
	if err != nil {
		return err
	}
	cmd.Stdout, cmd.Stderr = ch, ch.Stderr()
	if err := cmd.Start(); err != nil {
		return err
	}
	go func() {
		// Not waited for: the client may never close its side.
		_, _ = copyBuf(in, ch)
		in.Close()
	}()
	return nil
}

// copyBuf is io.Copy without ReaderFrom/WriterTo (an *os.File's would
// splice and hold the channel's reader past the shell's end).
func copyBuf(dst interface{ Write([]byte) (int, error) }, src interface{ Read([]byte) (int, error) }) (int64, error) {
	buf := make([]byte, 32<<10)
	var n int64
	for {
		k, err := src.Read(buf)
		if k > 0 {
			w, werr := dst.Write(buf[:k])
			n += int64(w)
			if werr != nil {
				return n, werr
			}
		}
		if err != nil {
			return n, err
		}
	}
}

// ptyPair is a started process's pseudo-terminal: its master side,
// copied to and from an SSH channel.
type ptyPair struct {
	master *os.File
	out    chan struct{} // closed when the output copy ends
	once   sync.Once
}

// drain waits (a little) for the process's last output to be copied.
func (p *ptyPair) drain() {
	select {
	case <-p.out:
	case <-time.After(2 * time.Second): // a child of the shell holds the terminal
	}
}

func (p *ptyPair) Close() {
	p.once.Do(func() { p.master.Close() })
}
