package testenv

import (
	"context"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

const (
	// sippDefaultTimeout is the -timeout given to sipp when the caller sets
	// none: sipp's own global bound, after which it gives up and fails.
	sippDefaultTimeout = 30 * time.Second
	// sippKillMargin is how long past its own -timeout sipp may run before
	// it is killed. sipp normally ends by itself, so this only catches a hang.
	sippKillMargin = 15 * time.Second
	// sippReadyTimeout bounds the wait for sipp to bind its ports.
	sippReadyTimeout = 5 * time.Second
	// sippDefaultMediaPort is sipp's -mp default.
	sippDefaultMediaPort = 6000
	// logTailBytes bounds what a failing run copies into the test log.
	logTailBytes = 8 << 10
)

// SIPp is one sipp process running a scenario inside a Netns. It always
// ends by itself: it runs a bounded number of calls (-m) under a global
// timeout (-timeout), and is killed if it overstays that by sippKillMargin.
type SIPp struct {
	t        testing.TB
	label    string
	dir      string
	cmd      *exec.Cmd
	ctx      context.Context
	cancel   context.CancelFunc
	done     chan struct{}
	runErr   error // from cmd.Wait, valid once done is closed
	waited   bool
	result   SIPpResult
	waitErr  error
	files    sippFiles
	stdout   *os.File
	scenario string
	// load marks a load generator (StartLoadSIPp): no message or screen
	// trace, and no trace tails in the test log.
	load bool
}

// SIPpResult is the outcome of a sipp run.
type SIPpResult struct {
	// Exit is sipp's exit status: 0 when every call succeeded, 1 when at
	// least one failed, 97 or 99 for runs ended without calls, 255 for a
	// fatal error or the global timeout (-timeout_error).
	Exit int
	// Successful and Failed are the cumulative call counts of sipp's final
	// statistics (SuccessfulCall(C) and FailedCall(C) of -trace_stat).
	Successful, Failed int
}

// sippFiles are sipp's trace files, kept in a directory of the test.
type sippFiles struct {
	errors, stats, screen, messages, stdout string
}

// StartSIPp starts sipp inside ns, with dir as its working directory (the
// scenario directory: -sf and play_pcap_audio paths are relative to it).
//
// Unless args already set them, it adds -m 1, -timeout 30s, -timeout_error
// and -nostdin, so the run is bounded and never waits on a terminal. It
// always adds the error, statistics, screen and message traces, written to
// a temporary directory of t. When args bind a SIP port (-p), StartSIPp
// returns only once that port, and with -rtp_echo the media port, is bound
// inside ns, so a caller started next finds its callee listening.
//
// It must be called from the test goroutine; the process is killed, if still
// running, in t's cleanup.
func StartSIPp(t testing.TB, ns *Netns, dir string, args ...string) *SIPp {
	t.Helper()
	return startSIPp(t, ns, dir, false, args)
}

// StartLoadSIPp is StartSIPp for a load generator, such as a benchmark's
// caller at hundreds of calls a second: it keeps the error and statistics
// traces but leaves out the message and screen traces, which would write
// every message to disk and cost sipp more than the calls, and Wait copies
// no trace tails into the test log, since a benchmark step at a rate too
// high is expected to fail.
func StartLoadSIPp(t testing.TB, ns *Netns, dir string, args ...string) *SIPp {
	t.Helper()
	return startSIPp(t, ns, dir, true, args)
}

func startSIPp(t testing.TB, ns *Netns, dir string, load bool, args []string) *SIPp {
	t.Helper()
	s := &SIPp{t: t, dir: t.TempDir(), done: make(chan struct{}), load: load}
	s.files = sippFiles{
		errors:   filepath.Join(s.dir, "errors.log"),
		stats:    filepath.Join(s.dir, "stats.csv"),
		screen:   filepath.Join(s.dir, "screen.log"),
		messages: filepath.Join(s.dir, "messages.log"),
		stdout:   filepath.Join(s.dir, "stdout.log"),
	}
	s.scenario = flagValue(args, "-sf")
	if s.scenario == "" {
		s.scenario = "builtin " + flagValue(args, "-sn")
	}
	s.label = fmt.Sprintf("sipp %s in %s", s.scenario, ns)

	timeout := sippDefaultTimeout
	if v := flagValue(args, "-timeout"); v != "" {
		d, err := parseSIPpDuration(v)
		if err != nil {
			t.Fatalf("%s: %v", s.label, err)
		}
		timeout = d
	}
	full := slices.Clone(args)
	addDefault := func(flag string, value ...string) {
		if !slices.Contains(args, flag) {
			full = append(full, append([]string{flag}, value...)...)
		}
	}
	addDefault("-m", "1")
	addDefault("-timeout", strconv.Itoa(int(timeout.Round(time.Second)/time.Second))+"s")
	addDefault("-timeout_error")
	addDefault("-nostdin")
	full = append(full,
		"-trace_err", "-error_file", s.files.errors,
		"-trace_stat", "-stf", s.files.stats,
	)
	if !load {
		full = append(full,
			"-trace_screen", "-screen_file", s.files.screen,
			"-trace_msg", "-message_file", s.files.messages,
		)
	}

	var err error
	s.stdout, err = os.Create(s.files.stdout)
	if err != nil {
		t.Fatalf("%s: %v", s.label, err)
	}
	s.ctx, s.cancel = context.WithTimeout(context.Background(), timeout+sippKillMargin)
	s.cmd = ns.Command(s.ctx, "sipp", full...)
	s.cmd.Dir = dir
	// sipp redraws its statistics screen on stdout; keep it for the
	// failure report rather than flooding the test log.
	s.cmd.Stdout, s.cmd.Stderr = s.stdout, s.stdout
	s.cmd.WaitDelay = 2 * time.Second
	if err := s.cmd.Start(); err != nil {
		s.cancel()
		s.stdout.Close()
		t.Fatalf("%s: start: %v", s.label, err)
	}
	go func() {
		s.runErr = s.cmd.Wait()
		close(s.done)
	}()
	t.Cleanup(func() {
		s.cancel()
		<-s.done
		s.stdout.Close()
	})

	type boundPort struct {
		port uint16
		tcp  bool
	}
	var ports []boundPort
	if v := flagValue(args, "-p"); v != "" {
		// -t t1 or tn: the SIP port is a TCP listener, and no UDP one
		tcp := strings.HasPrefix(flagValue(args, "-t"), "t")
		ports = append(ports, boundPort{parsePort(t, s.label, "-p", v), tcp})
	}
	if slices.Contains(args, "-rtp_echo") {
		mp := uint16(sippDefaultMediaPort)
		if v := flagValue(args, "-mp"); v != "" {
			mp = parsePort(t, s.label, "-mp", v)
		}
		ports = append(ports, boundPort{mp, false})
	}
	for _, port := range ports {
		if err := s.waitPort(ns, port.port, port.tcp); err != nil {
			s.cancel()
			<-s.done
			s.logTails()
			t.Fatalf("%s: %v", s.label, err)
		}
	}
	return s
}

// RunSIPp starts sipp like StartSIPp and waits for it to end.
func RunSIPp(t testing.TB, ns *Netns, dir string, args ...string) (SIPpResult, error) {
	t.Helper()
	return StartSIPp(t, ns, dir, args...).Wait()
}

// Dir returns the directory holding the run's trace files: errors.log,
// stats.csv, screen.log, messages.log and stdout.log.
func (s *SIPp) Dir() string { return s.dir }

// Wait waits for sipp to end and returns its exit status and call counts.
// The error reports a run that yields no usable result: sipp killed past its
// deadline, or statistics missing. A non-zero exit is not an error; the
// caller asserts on Exit. Whenever the run did not fully succeed, the tails
// of sipp's error and message traces go to the test log. Calling Wait again
// returns the same result.
func (s *SIPp) Wait() (SIPpResult, error) {
	s.t.Helper()
	if s.waited {
		return s.result, s.waitErr
	}
	s.waited = true
	<-s.done
	s.result, s.waitErr = s.collect()
	if !s.load && (s.waitErr != nil || s.result.Exit != 0 || s.result.Failed != 0) {
		s.t.Logf("%s: exit %d, %d successful, %d failed calls, error: %v",
			s.label, s.result.Exit, s.result.Successful, s.result.Failed, s.waitErr)
		s.logTails()
	}
	return s.result, s.waitErr
}

// Stop kills sipp if it still runs, for a peer that would otherwise wait
// for calls that never come, and waits for it to end. Its result is that of
// Wait: an error when sipp had to be killed.
func (s *SIPp) Stop() (SIPpResult, error) {
	s.t.Helper()
	s.cancel()
	return s.Wait()
}

func (s *SIPp) collect() (SIPpResult, error) {
	var res SIPpResult
	var ee *exec.ExitError
	switch {
	case s.runErr == nil:
	case errors.As(s.runErr, &ee) && ee.Exited():
		res.Exit = ee.ExitCode()
	case s.ctx.Err() != nil:
		return SIPpResult{Exit: -1}, fmt.Errorf("%s: killed (%v): %w", s.label, s.runErr, context.Cause(s.ctx))
	default:
		return SIPpResult{Exit: -1}, fmt.Errorf("%s: %w", s.label, s.runErr)
	}
	f, err := os.Open(s.files.stats)
	if err != nil {
		return res, fmt.Errorf("%s: read statistics: %w", s.label, err)
	}
	defer f.Close()
	res.Successful, res.Failed, err = parseSIPpStats(f)
	if err != nil {
		return res, fmt.Errorf("%s: statistics %s: %w", s.label, s.files.stats, err)
	}
	return res, nil
}

// waitPort waits for port to be bound (a TCP port: listened on) in ns,
// giving up early if sipp exits.
func (s *SIPp) waitPort(ns *Netns, port uint16, tcp bool) error {
	ctx, cancel := context.WithTimeout(context.Background(), sippReadyTimeout)
	defer cancel()
	go func() {
		select {
		case <-s.done:
			cancel()
		case <-ctx.Done():
		}
	}()
	wait, proto := ns.WaitUDPPort, "udp"
	if tcp {
		wait, proto = ns.WaitTCPPort, "tcp"
	}
	if err := wait(ctx, port); err != nil {
		select {
		case <-s.done:
			if s.runErr == nil {
				// a short client run can finish (successfully) before
				// its port is seen: nothing is left to wait for
				return nil
			}
			return fmt.Errorf("exited before binding %s port %d: %v", proto, port, s.runErr)
		default:
			return err
		}
	}
	return nil
}

// logTails copies the end of sipp's error trace, message trace and screen
// output into the test log: usually enough to see which message was
// unexpected or missing.
func (s *SIPp) logTails() {
	s.t.Helper()
	for _, f := range []struct {
		what, path string
		max        int64
	}{
		{"error log", s.files.errors, logTailBytes},
		{"message log", s.files.messages, logTailBytes},
		// Mostly redrawn statistics screens; fatal startup errors, such as
		// a scenario that does not parse, end up at its end.
		{"output", s.files.stdout, 1 << 10},
	} {
		if tail := fileTail(f.path, f.max); tail != "" {
			s.t.Logf("%s: %s (%s), tail:\n%s", s.label, f.what, f.path, tail)
		}
	}
}

// parseSIPpStats reads the cumulative successful and failed call counts
// from the last row of a sipp -trace_stat file: semicolon-separated values
// under a header row, one row per dump, the last written when sipp exits.
func parseSIPpStats(r io.Reader) (successful, failed int, err error) {
	cr := csv.NewReader(r)
	cr.Comma = ';'
	cr.FieldsPerRecord = -1
	rows, err := cr.ReadAll()
	if err != nil {
		return 0, 0, fmt.Errorf("parse: %w", err)
	}
	if len(rows) < 2 {
		return 0, 0, errors.New("no statistics rows")
	}
	header, last := rows[0], rows[len(rows)-1]
	column := func(name string) (int, error) {
		i := slices.Index(header, name)
		if i < 0 {
			return 0, fmt.Errorf("no column %s", name)
		}
		if i >= len(last) {
			return 0, fmt.Errorf("last row has no column %s", name)
		}
		n, err := strconv.Atoi(strings.TrimSpace(last[i]))
		if err != nil {
			return 0, fmt.Errorf("column %s: %w", name, err)
		}
		return n, nil
	}
	if successful, err = column("SuccessfulCall(C)"); err != nil {
		return 0, 0, err
	}
	if failed, err = column("FailedCall(C)"); err != nil {
		return 0, 0, err
	}
	return successful, failed, nil
}

// parseSIPpDuration reads a sipp duration option: a number with an optional
// unit (ms, s, m, h); a bare number is in seconds.
func parseSIPpDuration(v string) (time.Duration, error) {
	if n, err := strconv.ParseFloat(v, 64); err == nil {
		return time.Duration(n * float64(time.Second)), nil
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		return 0, fmt.Errorf("parse sipp duration %q: %w", v, err)
	}
	return d, nil
}

// flagValue returns the value following flag in args, or "".
func flagValue(args []string, flag string) string {
	i := slices.Index(args, flag)
	if i < 0 || i+1 >= len(args) {
		return ""
	}
	return args[i+1]
}

func parsePort(t testing.TB, label, flag, v string) uint16 {
	t.Helper()
	p, err := strconv.ParseUint(v, 10, 16)
	if err != nil || p == 0 {
		t.Fatalf("%s: %s %q is not a port", label, flag, v)
	}
	return uint16(p)
}

// fileTail returns at most n bytes from the end of the file at path, or ""
// when it cannot be read.
func fileTail(path string, n int64) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return ""
	}
	off := max(fi.Size()-n, 0)
	b := make([]byte, fi.Size()-off)
	if _, err := f.ReadAt(b, off); err != nil && !errors.Is(err, io.EOF) {
		return ""
	}
	if off > 0 {
		return "[...]" + string(b)
	}
	return string(b)
}
