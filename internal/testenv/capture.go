package testenv

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os/exec"
	"path/filepath"
	"regexp"
	"sync"
	"syscall"
	"testing"
	"time"
)

const (
	// captureReadyTimeout bounds the wait for tcpdump to report that it
	// listens; packets before that would be missing from the file.
	captureReadyTimeout = 5 * time.Second
	// captureStopTimeout bounds tcpdump's exit after SIGTERM.
	captureStopTimeout = 5 * time.Second
	// captureMaxRun kills a capture its test forgot to stop.
	captureMaxRun = 10 * time.Minute
)

// Capture is a tcpdump process writing one interface's traffic to a pcap
// file, packet by packet (-U), so the file is complete once Stop returns.
type Capture struct {
	t      testing.TB
	label  string
	path   string
	cmd    *exec.Cmd
	cancel context.CancelFunc
	done   chan struct{}
	runErr error // valid once done is closed

	// listening is closed when tcpdump reports that it captures.
	listening chan struct{}

	mu        sync.Mutex // guards the fields below
	stderr    []byte
	signalled bool
	stopped   bool
}

// dropped matches tcpdump's closing report of packets the kernel discarded.
var dropped = regexp.MustCompile(`(\d+) packets? dropped by kernel`)

// StartCapture starts tcpdump on iface inside ns with a BPF filter ("" for
// everything) and returns once tcpdump listens. It runs as root (-Z root),
// since Debian's tcpdump otherwise drops to a user that cannot write into
// the test's temporary directory. The capture is stopped in t's cleanup if
// the test did not call Stop.
func StartCapture(t testing.TB, ns *Netns, iface, filter string) *Capture {
	t.Helper()
	c := &Capture{
		t:         t,
		label:     fmt.Sprintf("tcpdump on %s/%s", ns, iface),
		path:      filepath.Join(t.TempDir(), iface+".pcap"),
		done:      make(chan struct{}),
		listening: make(chan struct{}),
	}
	// --immediate-mode: without it libpcap hands packets over a ring block
	// at a time, and the last block before SIGTERM may never be written.
	args := []string{"-i", iface, "-n", "-U", "--immediate-mode", "-Z", "root", "-w", c.path}
	if filter != "" {
		args = append(args, filter)
	}
	ctx, cancel := context.WithTimeout(context.Background(), captureMaxRun)
	c.cancel = cancel
	c.cmd = ns.Command(ctx, "tcpdump", args...)
	c.cmd.Stdout = io.Discard
	c.cmd.Stderr = (*captureStderr)(c)
	c.cmd.WaitDelay = 2 * time.Second
	if err := c.cmd.Start(); err != nil {
		cancel()
		t.Fatalf("%s: start: %v", c.label, err)
	}
	go func() {
		c.runErr = c.cmd.Wait()
		close(c.done)
	}()
	t.Cleanup(func() { c.Stop() })

	select {
	case <-c.listening:
		return c
	case <-c.done:
		t.Fatalf("%s: exited before listening: %v\n%s", c.label, c.runErr, c.stderrText())
	case <-time.After(captureReadyTimeout):
		c.cancel()
		<-c.done
		t.Fatalf("%s: not listening after %v\n%s", c.label, captureReadyTimeout, c.stderrText())
	}
	return nil
}

// Stop ends the capture and returns the path of the pcap file. Problems
// (tcpdump failing, packets dropped by the kernel) are reported on the test;
// the file is returned anyway, holding what was captured. Stop may be
// called more than once.
func (c *Capture) Stop() string {
	c.t.Helper()
	c.mu.Lock()
	first := !c.stopped
	c.stopped = true
	c.mu.Unlock()
	if !first {
		<-c.done
		return c.path
	}
	// On SIGTERM tcpdump flushes, closes the file and prints its counts.
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
	case <-time.After(captureStopTimeout):
		c.t.Errorf("%s: still running %v after SIGTERM, killing it", c.label, captureStopTimeout)
		c.cancel()
		<-c.done
	}
	c.cancel()
	if c.runErr != nil {
		c.t.Errorf("%s: %v\n%s", c.label, c.runErr, c.stderrText())
	}
	if m := dropped.FindStringSubmatch(c.stderrText()); m != nil && m[1] != "0" {
		// Counts asserted on the file may then be short; say why.
		c.t.Logf("%s: kernel dropped %s packets", c.label, m[1])
	}
	return c.path
}

// captureStderr collects tcpdump's messages and notices its "listening on"
// line. exec copies tcpdump's stderr into it from one goroutine.
type captureStderr Capture

func (w *captureStderr) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.stderr = append(w.stderr, p...)
	if !w.signalled && bytes.Contains(w.stderr, []byte("listening on")) {
		w.signalled = true
		close(w.listening)
	}
	return len(p), nil
}

func (c *Capture) stderrText() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return string(c.stderr)
}
