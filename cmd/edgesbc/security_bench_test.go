//go:build linux

package main_test

import (
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/edgesbc/edgesbc/internal/testenv"
)

// benchEnv turns the flood benchmark on; it loads both cores for a minute,
// so make test leaves it out (make bench-security runs it).
const benchEnv = "EDGESBC_SECURITY_BENCH"

// daemonCPU is the daemon's user+system CPU time so far.
func (l *secLab) daemonCPU(t *testing.T) time.Duration {
	t.Helper()
	pids, err := l.topo.SBC.Pids()
	if err != nil {
		t.Fatal(err)
	}
	for _, pid := range pids {
		if exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); err != nil || exe != l.daemon.Bin {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			t.Fatal(err)
		}
		// fields after the command name, which is in parentheses
		f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
		utime, _ := strconv.ParseInt(f[11], 10, 64)
		stime, _ := strconv.ParseInt(f[12], 10, 64)
		return time.Duration(utime+stime) * time.Second / 100 // USER_HZ
	}
	t.Fatal("daemon process not found")
	return 0
}

type benchPhase struct {
	ok, failed int
	wall, cpu  time.Duration
}

func (p benchPhase) cpuPercent() float64 { return 100 * p.cpu.Seconds() / p.wall.Seconds() }

func (l *secLab) benchCalls(t *testing.T, n, rate int) benchPhase {
	t.Helper()
	cpu0, t0 := l.daemonCPU(t), time.Now()
	ok, failed := l.callsAt(t, n, rate)
	return benchPhase{ok: ok, failed: failed, wall: time.Since(t0), cpu: l.daemonCPU(t) - cpu0}
}

// TestIntegrationSecurityFloodBench measures what a flood costs the calls:
// pbx→carrier calls at a fixed rate, first alone, then while 50 attacker
// addresses send 20,000 INVITEs/s in total at the public SIP port. It
// reports completed and failed calls, the ratio, and the daemon's CPU in
// both phases.
func TestIntegrationSecurityFloodBench(t *testing.T) {
	if os.Getenv(benchEnv) == "" {
		t.Skipf("benchmark: set %s=1 (make bench-security)", benchEnv)
	}
	l := newSecLabWith(t, func(c string) string {
		// room for the calls in progress at the benchmark's rate (the
		// integration config keeps 50 port pairs), and no per-call logging
		c = strings.Replace(c, `port_range = "20000-20099"`, `port_range = "20000-29999"`, 1)
		return strings.Replace(c, `level = "debug"`, `level = "info"`, 1)
	})
	const sources, perSource = 50, 400 // 20,000 packets/s
	rate, _ := strconv.Atoi(os.Getenv("EDGESBC_SECURITY_BENCH_RATE"))
	if rate <= 0 {
		rate = 100
	}
	n := rate * 10
	var addrs []string
	for i := range sources {
		a := fmt.Sprintf("198.51.100.%d", 100+i)
		if out, err := exec.Command("ip", "-n", l.attacker.Name, "addr", "add", a+"/24", "dev", "eth-sbc").CombinedOutput(); err != nil {
			t.Fatalf("add %s: %v %s", a, err, out)
		}
		addrs = append(addrs, a)
	}

	base := l.benchCalls(t, n, rate)
	t.Logf("without flood: %d calls at %d/s: %d completed, %d failed, daemon CPU %.1f%%", n, rate, base.ok, base.failed, base.cpuPercent())

	floodFor := 12*time.Second + time.Duration(n/rate)*time.Second
	drops0 := l.banDrops(t)
	var floods []*testenv.SIPp
	for _, a := range addrs {
		floods = append(floods, testenv.StartSIPp(t, l.attacker, attackDir(t), "-sf", "invite_flood.xml", "-i", a, "-p", "5070",
			"-s", "100", "-m", fmt.Sprint(perSource*int(floodFor/time.Second)), "-r", fmt.Sprint(perSource),
			"-timeout", fmt.Sprintf("%ds", int(floodFor/time.Second)+10), "203.0.113.1:5060"))
	}
	time.Sleep(3 * time.Second) // every source banned, the flood at full rate
	t1, d1 := time.Now(), l.banDrops(t)
	under := l.benchCalls(t, n, rate)
	pps := float64(l.banDrops(t)-d1) / time.Since(t1).Seconds()
	for _, f := range floods {
		_, _ = f.Wait()
	}
	list, _, _ := l.bans(t, "list")
	t.Logf("with flood from %d sources (%.0f packets/s dropped in the kernel during the calls, %d in all, %d sources banned): %d completed, %d failed, daemon CPU %.1f%%",
		sources, pps, l.banDrops(t)-drops0, len(list), under.ok, under.failed, under.cpuPercent())
	ratio := float64(under.ok) / float64(max(base.ok, 1))
	t.Logf("ratio of completed calls with/without flood: %.2f; daemon CPU +%.1f points", ratio, under.cpuPercent()-base.cpuPercent())
	if base.failed != 0 || under.failed != 0 || ratio < 0.9 {
		t.Errorf("calls failed or fell short under flood: baseline %+v, flood %+v", base, under)
	}
	if len(list) != sources {
		t.Errorf("%d of %d flooding sources banned", len(list), sources)
	}
}
