//go:build linux

package main_test

import (
	"context"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/edgesbc/edgesbc/internal/testenv"
)

// notifySocket listens where a service manager would ($NOTIFY_SOCKET) and
// hands each datagram to the test.
func notifySocket(t *testing.T) (string, <-chan string) {
	t.Helper()
	dir, err := os.MkdirTemp("", "esbc-notify")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	path := filepath.Join(dir, "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	ch := make(chan string, 16)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				close(ch)
				return
			}
			ch <- string(buf[:n])
		}
	}()
	return path, ch
}

func waitNotify(t *testing.T, ch <-chan string, prefix string) string {
	t.Helper()
	timeout := time.After(15 * time.Second)
	for {
		select {
		case msg, ok := <-ch:
			if !ok {
				t.Fatalf("notify socket closed before %q", prefix)
			}
			if strings.HasPrefix(msg, prefix) {
				return msg
			}
		case <-timeout:
			t.Fatalf("no %q on the notify socket within 15s", prefix)
		}
	}
}

// udpSockets returns the UDP sockets bound inside ns, one line each.
func udpSockets(t *testing.T, ns *testenv.Netns) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := ns.Command(ctx, "cat", "/proc/net/udp", "/proc/net/udp6").Output()
	if err != nil {
		t.Fatal(err)
	}
	var socks []string
	for _, l := range strings.Split(string(out), "\n") {
		if f := strings.Fields(l); len(f) > 2 && f[0] != "sl" {
			socks = append(socks, f[1])
		}
	}
	return socks
}

// startRun runs edgesbc run with NOTIFY_SOCKET set, inside ns.
func startRun(t *testing.T, ns *testenv.Netns, config, notify string) (*exec.Cmd, string, *lockedLog) {
	t.Helper()
	bin := testenv.BuildBinary(t)
	sockDir, err := os.MkdirTemp("", "esbc")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(sockDir) })
	admin := filepath.Join(sockDir, "admin.sock")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	cmd := ns.Command(ctx, bin, "run", "-config", config, "-admin", admin)
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+notify)
	log := &lockedLog{}
	cmd.Stderr = log
	cmd.WaitDelay = 2 * time.Second
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("edgesbc log:\n%s", log.String())
		}
	})
	return cmd, admin, log
}

// lockedLog collects a process's output; the copying goroutine of exec and
// the test read and write it concurrently.
type lockedLog struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// stopRun sends SIGTERM and expects STOPPING=1 and a clean exit.
func stopRun(t *testing.T, cmd *exec.Cmd, ch <-chan string) {
	t.Helper()
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	waitNotify(t, ch, "STOPPING=1")
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("edgesbc exit after SIGTERM: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Error("edgesbc still running 30s after SIGTERM")
	}
}

// TestIntegrationSafeMode runs the daemon without a configuration file, as
// on an appliance's first boot: it must report ready to the service manager,
// answer on the admin socket in safe mode, say how to configure it, and
// never open a SIP (or any UDP) socket.
func TestIntegrationSafeMode(t *testing.T) {
	testenv.Integration(t)
	ns := testenv.NewNetns(t, "esbc-safe")
	notify, ch := notifySocket(t)
	missing := filepath.Join(t.TempDir(), "edgesbc.hcl")
	cmd, admin, log := startRun(t, ns, missing, notify)

	ready := waitNotify(t, ch, "READY=1")
	if !strings.Contains(ready, "STATUS=safe mode") {
		t.Errorf("ready notification %q does not say safe mode", ready)
	}
	out, err := exec.Command(testenv.BuildBinary(t), "status", "-admin", admin).Output()
	if err != nil {
		t.Fatalf("edgesbc status: %v", err)
	}
	var st struct {
		Mode string `json:"mode"`
	}
	if err := json.Unmarshal(out, &st); err != nil || st.Mode != "safe" {
		t.Errorf("status = %s (%v), want mode safe", out, err)
	}
	if socks := udpSockets(t, ns); len(socks) != 0 {
		t.Errorf("safe mode bound UDP sockets %v, want none", socks)
	}
	for _, want := range []string{"safe mode, SIP is not served", "edgesbc check -config " + missing} {
		if !strings.Contains(log.String(), want) {
			t.Errorf("log lacks %q", want)
		}
	}
	stopRun(t, cmd, ch)
}

// TestIntegrationNotifyReady checks that with a configuration the daemon
// reports READY=1 only once SIP listens, and STOPPING=1 on SIGTERM.
func TestIntegrationNotifyReady(t *testing.T) {
	testenv.Integration(t)
	topo := testenv.NewTopology(t)
	notify, ch := notifySocket(t)
	cfg, err := filepath.Abs(integrationConfig)
	if err != nil {
		t.Fatal(err)
	}
	cmd, _, _ := startRun(t, topo.SBC, cfg, notify)
	ready := waitNotify(t, ch, "READY=1")
	if !strings.Contains(ready, "STATUS=serving SIP") {
		t.Errorf("ready notification %q does not say serving SIP", ready)
	}
	// 5060 is 13C4 in /proc/net/udp.
	listening := 0
	for _, s := range udpSockets(t, topo.SBC) {
		if strings.HasSuffix(s, ":13C4") {
			listening++
		}
	}
	if listening != 2 {
		t.Errorf("%d SIP sockets on port 5060 at READY=1, want 2 (one per zone)", listening)
	}
	stopRun(t, cmd, ch)
}
