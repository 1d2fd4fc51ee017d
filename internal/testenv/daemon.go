package testenv

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

const (
	// ReadyLine is what the daemon logs once every SIP listener is up.
	ReadyLine = "edgesbc ready"

	buildTimeout       = 3 * time.Minute
	daemonReadyTimeout = 10 * time.Second
	// daemonStopTimeout bounds a graceful stop: long enough for the BYE
	// transactions of calls in progress, short enough to keep a hung
	// daemon from stalling the run.
	daemonStopTimeout = 15 * time.Second
	statusTimeout     = 5 * time.Second
	// daemonLogMax bounds how much of the daemon's log a failed test prints.
	daemonLogMax = 256 << 10
	// daemonLogKeep is how much of the log is kept in memory, at least.
	daemonLogKeep = 4 << 20
)

var build struct {
	once sync.Once
	dir  string
	path string
	err  error
}

// BuildBinary builds ./cmd/edgesbc of this module once per test process and
// returns the path of the binary. When the tests run with -race, so does
// the binary, and a data race in the daemon makes it exit with status 66,
// which Daemon.Stop reports.
//
// The binary lives in a temporary directory removed by Main; a package that
// calls BuildBinary should run its tests through Main.
func BuildBinary(t testing.TB) string {
	t.Helper()
	build.once.Do(func() {
		build.path, build.err = buildBinary()
	})
	if build.err != nil {
		t.Fatalf("build edgesbc: %v", build.err)
	}
	return build.path
}

func buildBinary() (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
	defer cancel()
	goTool, err := exec.LookPath("go")
	if err != nil {
		return "", fmt.Errorf("find go tool: %w", err)
	}
	out, err := exec.CommandContext(ctx, goTool, "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", commandError(err))
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", errors.New("not inside the edgesbc module")
	}
	dir, err := os.MkdirTemp("", "edgesbc-test-bin-")
	if err != nil {
		return "", fmt.Errorf("create build directory: %w", err)
	}
	build.dir = dir
	bin := filepath.Join(dir, "edgesbc")
	args := []string{"build", "-o", bin}
	if raceEnabled {
		args = append(args, "-race")
	}
	args = append(args, "./cmd/edgesbc")
	cmd := exec.CommandContext(ctx, goTool, args...)
	cmd.Dir = filepath.Dir(gomod)
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return bin, nil
}

// Main runs the tests of m and then removes what BuildBinary built. Use it
// as the body of TestMain:
//
//	func TestMain(m *testing.M) { os.Exit(testenv.Main(m)) }
func Main(m *testing.M) int {
	code := m.Run()
	if build.dir != "" {
		_ = os.RemoveAll(build.dir)
	}
	return code
}

// Status is the daemon's status as printed by edgesbc status.
type Status struct {
	Calls      int `json:"calls"`        // calls in progress
	Sessions   int `json:"sessions"`     // media sessions open
	PortsInUse int `json:"ports_in_use"` // media port pairs allocated or quarantined
	Goroutines int `json:"goroutines"`
	Dialogs    int `json:"dialogs"` // SIP dialogs tracked
	// KernelOffload is whether latched media goes to the kernel, and
	// Offloaded how many stream components the kernel forwards now.
	KernelOffload bool `json:"kernel_offload"`
	Offloaded     int  `json:"offloaded"`
}

// statusKeys are the keys Status needs; a reply lacking one is an error
// rather than a silent zero.
var statusKeys = []string{"calls", "sessions", "ports_in_use", "goroutines", "dialogs"}

// Daemon is an edgesbc process running inside a Netns.
type Daemon struct {
	// Bin is the edgesbc binary, Config the config file and Admin the admin
	// socket path. The socket lives in the file system, so it is reachable
	// from any network namespace.
	Bin, Config, Admin string

	t      testing.TB
	label  string
	cmd    *exec.Cmd
	cancel context.CancelFunc
	done   chan struct{}
	runErr error // valid once done is closed
	ready  chan struct{}

	mu       sync.Mutex // guards the fields below
	log      []byte
	readySet bool
	stopped  bool
	stopErr  error
}

// StartDaemon writes config to a file, runs `edgesbc run -config FILE -admin
// SOCK` inside ns and waits until the daemon logs ReadyLine. In t's cleanup
// the daemon is stopped with SIGTERM (see Stop) and, if t failed, its log is
// printed.
func StartDaemon(t testing.TB, ns *Netns, config string) *Daemon {
	t.Helper()
	bin := BuildBinary(t)
	cfg := filepath.Join(t.TempDir(), "edgesbc.hcl")
	if err := os.WriteFile(cfg, []byte(config), 0o600); err != nil {
		t.Fatalf("write config: %v", err)
	}
	// A unix socket path is limited to 107 bytes; test temp dirs carry the
	// test name and can be longer.
	sockDir, err := os.MkdirTemp("", "esbc")
	if err != nil {
		t.Fatalf("create admin socket directory: %v", err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(sockDir) })

	d := &Daemon{
		Bin:    bin,
		Config: cfg,
		Admin:  filepath.Join(sockDir, "admin.sock"),
		t:      t,
		label:  "edgesbc in " + ns.Name,
		done:   make(chan struct{}),
		ready:  make(chan struct{}),
	}
	// The context only backs up Stop: it kills a daemon that outlives the
	// test binary's own deadline handling.
	ctx, cancel := context.WithCancel(context.Background())
	d.cancel = cancel
	d.cmd = ns.Command(ctx, bin, "run", "-config", cfg, "-admin", d.Admin)
	d.cmd.Stdout = (*daemonLog)(d)
	d.cmd.Stderr = (*daemonLog)(d)
	d.cmd.WaitDelay = 2 * time.Second
	if err := d.cmd.Start(); err != nil {
		cancel()
		t.Fatalf("%s: start: %v", d.label, err)
	}
	go func() {
		d.runErr = d.cmd.Wait()
		close(d.done)
	}()
	t.Cleanup(func() {
		if err := d.Stop(); err != nil {
			t.Errorf("%s: %v", d.label, err)
		}
		if t.Failed() {
			t.Logf("%s: log:\n%s", d.label, d.Log())
		}
	})

	select {
	case <-d.ready:
		return d
	case <-d.done:
		t.Fatalf("%s: exited before %q: %v", d.label, ReadyLine, d.runErr)
	case <-time.After(daemonReadyTimeout):
		t.Fatalf("%s: no %q after %v", d.label, ReadyLine, daemonReadyTimeout)
	}
	return nil
}

// Log returns what the daemon wrote to stdout and stderr so far, or its
// last daemonLogMax bytes.
func (d *Daemon) Log() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.log) > daemonLogMax {
		return "[...]" + string(d.log[len(d.log)-daemonLogMax:])
	}
	return string(d.log)
}

// Stop sends SIGTERM and waits for the daemon to exit, killing it after
// daemonStopTimeout. It returns an error unless the daemon exited with
// status 0 in time, which is the contract of a graceful stop. Calling Stop
// again returns the first result.
func (d *Daemon) Stop() error {
	d.mu.Lock()
	if d.stopped {
		d.mu.Unlock()
		<-d.done
		return d.stopErr
	}
	d.stopped = true
	d.mu.Unlock()

	var err error
	select {
	case <-d.done:
		err = fmt.Errorf("exited before it was stopped: %v", d.runErr)
	default:
		if serr := d.cmd.Process.Signal(syscall.SIGTERM); serr != nil {
			err = fmt.Errorf("send SIGTERM: %w", serr)
		}
		select {
		case <-d.done:
			if err == nil && d.runErr != nil {
				err = fmt.Errorf("exit after SIGTERM: %w", d.runErr)
			}
		case <-time.After(daemonStopTimeout):
			d.cancel()
			<-d.done
			err = fmt.Errorf("still running %v after SIGTERM, killed", daemonStopTimeout)
		}
	}
	d.cancel()
	d.mu.Lock()
	d.stopErr = err
	d.mu.Unlock()
	return err
}

// Done is closed when the daemon process has exited.
func (d *Daemon) Done() <-chan struct{} { return d.done }

// Status runs edgesbc status against the daemon's admin socket and fails
// the test if that does not yield a complete status.
func (d *Daemon) Status(t testing.TB) Status {
	t.Helper()
	st, err := d.QueryStatus()
	if err != nil {
		t.Fatalf("%s: %v", d.label, err)
	}
	return st
}

// QueryStatus is Status returning the error instead of failing the test,
// for callers that poll.
func (d *Daemon) QueryStatus() (Status, error) {
	ctx, cancel := context.WithTimeout(context.Background(), statusTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, d.Bin, "status", "-admin", d.Admin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return Status{}, fmt.Errorf("edgesbc status: %w: %s", err, strings.TrimSpace(stderr.String()))
	}
	return parseStatus(stdout.Bytes())
}

// WaitStatus polls the daemon's status until cond holds, timeout passes or
// the daemon exits, and returns the last status seen and whether cond held.
func (d *Daemon) WaitStatus(timeout time.Duration, cond func(Status) bool) (Status, bool) {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	var last Status
	for {
		st, err := d.QueryStatus()
		if err == nil {
			last = st
			if cond(st) {
				return st, true
			}
		}
		select {
		case <-d.done:
			return last, false
		case <-deadline.C:
			return last, false
		case <-tick.C:
		}
	}
}

// parseStatus decodes the status JSON, requiring every key of Status.
func parseStatus(b []byte) (Status, error) {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(b, &raw); err != nil {
		return Status{}, fmt.Errorf("decode status %q: %w", b, err)
	}
	var missing []string
	for _, k := range statusKeys {
		if _, ok := raw[k]; !ok {
			missing = append(missing, k)
		}
	}
	if len(missing) > 0 {
		return Status{}, fmt.Errorf("status %q lacks %s", b, strings.Join(missing, ", "))
	}
	var st Status
	if err := json.Unmarshal(b, &st); err != nil {
		return Status{}, fmt.Errorf("decode status %q: %w", b, err)
	}
	return st, nil
}

// daemonLog collects the daemon's output and notices ReadyLine. exec
// copies stdout and stderr into it from its own goroutines.
type daemonLog Daemon

func (w *daemonLog) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.log) > daemonLogKeep*2 {
		// Keep memory bounded under a log storm; only the tail is printed.
		w.log = append(w.log[:0], w.log[len(w.log)-daemonLogKeep:]...)
	}
	start := max(len(w.log)-len(ReadyLine), 0)
	w.log = append(w.log, p...)
	if !w.readySet && bytes.Contains(w.log[start:], []byte(ReadyLine)) {
		w.readySet = true
		close(w.ready)
	}
	return len(p), nil
}
