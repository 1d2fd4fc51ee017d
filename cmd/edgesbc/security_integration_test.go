//go:build linux

package main_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
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

// The security lab adds an attacker namespace on the public side of the
// usual topology:
//
//	PBX 10.91.1.2 ── 10.91.1.1 [ SBC ] 203.0.113.1 ── 203.0.113.2 carrier
//	                                  198.51.100.1 ── 198.51.100.66 attacker (svmap)
//	                                                  198.51.100.77 (allow-listed)
//	                                  198.51.101.1 ── 198.51.101.67 second attacker (svwar)
//
// The attackers reach the SBC's public SIP address 203.0.113.1 through
// their own link, as hosts on the internet would. svwar gets a namespace of
// its own because it ignores -b and sends from the primary address.
var (
	attackerScan  = netip.MustParseAddr("198.51.100.66") // svmap
	attackerWar   = netip.MustParseAddr("198.51.101.67") // svwar
	attackerAllow = netip.MustParseAddr("198.51.100.77") // allow-listed flood
)

func securityConfig(t *testing.T, stateDir string) string {
	t.Helper()
	base, err := os.ReadFile(integrationConfig)
	if err != nil {
		t.Fatal(err)
	}
	return string(base) + fmt.Sprintf(`
allow {
  addresses = ["%s"]
}
rate_limit "sip-public" {
  zone       = "public"
  per_source = "50/second"
  burst      = 100
}
ban_policy "scanners" {
  match_user_agent = ["friendly-scanner", "sipvicious", "sipcli"]
  ban_for          = "24h"
}
ban_policy "auth-failures" {
  failed_auth       = 5
  within            = "60s"
  ban_for           = "1h"
  repeat_multiplier = 4
  max_ban           = "7d"
}
ban_policy "unsolicited" {
  unknown_source_requests = 20
  within                  = "60s"
  ban_for                 = "1h"
}
ban_policy "enumeration" {
  distinct_unknown_users = 10
  within                 = "60s"
  ban_for                = "6h"
}
state_dir = "%s"
`, attackerAllow, stateDir)
}

// attackDir holds the one-sided sipp scenarios of the attackers (floods
// that expect no answer), kept apart from the caller/callee pairs of
// testdata/sipp.
func attackDir(t *testing.T) string {
	t.Helper()
	dir, err := filepath.Abs("testdata/attack")
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

type secLab struct {
	topo     *testenv.Topology
	attacker *testenv.Netns
	war      *testenv.Netns
	daemon   *testenv.Daemon
	stateDir string
	home     string // HOME for sipvicious, which saves its sessions there
}

func newSecLab(t *testing.T) *secLab {
	t.Helper()
	return newSecLabWith(t, nil)
}

// newSecLabWith is newSecLab with the configuration passed through edit.
func newSecLabWith(t *testing.T, edit func(string) string) *secLab {
	t.Helper()
	return newSecLabSetup(t, nil, edit)
}

// newSecLabSetup is newSecLabWith with setup run on the namespaces before
// the daemon starts.
func newSecLabSetup(t *testing.T, setup func(*secLab), edit func(string) string) *secLab {
	t.Helper()
	testenv.Integration(t)
	for _, tool := range []string{"sipp", "nft", "svmap", "svwar"} {
		testenv.RequireTool(t, tool)
	}
	l := &secLab{topo: testenv.NewTopology(t), attacker: testenv.NewNetns(t, "esbc-att"), war: testenv.NewNetns(t, "esbc-war"),
		stateDir: t.TempDir(), home: t.TempDir()}
	testenv.Link(t, l.topo.SBC, "eth-att", netip.MustParsePrefix("198.51.100.1/24"), l.attacker, "eth-sbc", netip.MustParsePrefix(attackerScan.String()+"/24"))
	testenv.Link(t, l.topo.SBC, "eth-war", netip.MustParsePrefix("198.51.101.1/24"), l.war, "eth-sbc", netip.MustParsePrefix(attackerWar.String()+"/24"))
	for _, args := range [][]string{
		{"-n", l.attacker.Name, "addr", "add", attackerAllow.String() + "/24", "dev", "eth-sbc"},
		{"-n", l.attacker.Name, "route", "add", "203.0.113.0/24", "via", "198.51.100.1"},
		{"-n", l.war.Name, "route", "add", "203.0.113.0/24", "via", "198.51.101.1"},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v %s", args, err, out)
		}
	}
	if setup != nil {
		setup(l)
	}
	cfg := securityConfig(t, l.stateDir)
	if edit != nil {
		cfg = edit(cfg)
	}
	l.daemon = testenv.StartDaemon(t, l.topo.SBC, cfg)
	return l
}

// banView is the part of a ban the tests read from edgesbc bans --json.
type banView struct {
	Addr      string         `json:"addr"`
	Prefix    string         `json:"prefix"`
	Policy    string         `json:"policy"`
	Reason    string         `json:"reason"`
	Counters  map[string]int `json:"counters"`
	First     struct{ Request string }
	Remaining int64 `json:"remaining_seconds"`
}

// bans runs the real edgesbc bans command against the daemon.
func (l *secLab) bans(t *testing.T, args ...string) ([]banView, string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, l.daemon.Bin, append(append([]string{"bans"}, args...), "--json", "-admin", l.daemon.Admin)...)
	out, err := cmd.Output()
	var reply struct {
		Error string    `json:"error"`
		Bans  []banView `json:"bans"`
	}
	if jerr := json.Unmarshal(out, &reply); jerr != nil {
		t.Fatalf("edgesbc bans %v: %v, output %q", args, jerr, out)
	}
	return reply.Bans, reply.Error, err
}

func (l *secLab) banned(t *testing.T, a netip.Addr) (banView, bool) {
	t.Helper()
	b, _, err := l.bans(t, "show", a.String())
	if err != nil || len(b) != 1 {
		return banView{}, false
	}
	return b[0], true
}

func (l *secLab) waitBanned(t *testing.T, a netip.Addr) banView {
	t.Helper()
	for range 100 {
		if b, ok := l.banned(t, a); ok {
			return b
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%v not banned within 5s\n%s", a, l.daemon.Log())
	return banView{}
}

// attack runs a sipvicious tool in an attacker namespace, bounded in time.
func (l *secLab) attack(t *testing.T, ns *testenv.Netns, bound time.Duration, tool string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), bound)
	defer cancel()
	cmd := ns.Command(ctx, tool, args...)
	cmd.Env = append(os.Environ(), "HOME="+l.home)
	cmd.WaitDelay = 2 * time.Second
	out, _ := cmd.CombinedOutput() // exits non-zero when it finds nothing
	return string(out)
}

// nftJSON lists an object of the SBC namespace's ruleset as JSON.
func (l *secLab) nftJSON(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := l.topo.SBC.Command(ctx, "nft", append([]string{"-j"}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("nft -j %v: %v %s", args, err, out)
	}
	return string(out)
}

// banDrops is the packet counter of the kernel rule dropping banned IPv4
// sources.
func (l *secLab) banDrops(t *testing.T) int {
	t.Helper()
	return l.ruleCounter(t, "@ban4")
}

// ruleCounter is the packet counter of the guard rule whose expressions
// mention what.
func (l *secLab) ruleCounter(t *testing.T, what string) int {
	t.Helper()
	var doc struct {
		Nftables []struct {
			Rule *struct {
				Expr []map[string]json.RawMessage `json:"expr"`
			} `json:"rule"`
		} `json:"nftables"`
	}
	if err := json.Unmarshal([]byte(l.nftJSON(t, "list", "chain", "inet", "edgesbc", "guard_prerouting")), &doc); err != nil {
		t.Fatal(err)
	}
	for _, n := range doc.Nftables {
		if n.Rule == nil {
			continue
		}
		b, _ := json.Marshal(n.Rule.Expr)
		if !strings.Contains(string(b), what) {
			continue
		}
		for _, e := range n.Rule.Expr {
			if c, ok := e["counter"]; ok {
				var v struct{ Packets int }
				_ = json.Unmarshal(c, &v)
				return v.Packets
			}
		}
	}
	t.Fatalf("no counted rule mentioning %s in guard_prerouting", what)
	return 0
}

// calls runs n calls from the pbx to the carrier, five a second, and
// returns how many completed on both sides and how many failed.
func (l *secLab) calls(t *testing.T, n int) (ok, failed int) {
	t.Helper()
	return l.callsAt(t, n, 5)
}

// callsAt runs n calls from the pbx to the carrier at rate calls/s.
func (l *secLab) callsAt(t *testing.T, n, rate int) (ok, failed int) {
	t.Helper()
	callee := testenv.StartSIPp(t, l.topo.Carrier, scenarioDir(t), "-sf", "uas_bye.xml", "-i", l.topo.CarrierAddr.Addr().String(),
		"-p", "5060", "-m", fmt.Sprint(n), "-timeout", "40s")
	res, err := testenv.RunSIPp(t, l.topo.PBX, scenarioDir(t), "-sf", "uac_expect_bye.xml", "-i", l.topo.PBXAddr.Addr().String(),
		"-p", "5060", "-s", "15551234567", "-m", fmt.Sprint(n), "-r", fmt.Sprint(rate), "-l", fmt.Sprint(n), "-timeout", "35s", "10.91.1.1:5060")
	if err != nil {
		t.Errorf("caller: %v", err)
	}
	cres, cerr := callee.Wait()
	if cerr != nil {
		t.Errorf("callee: %v", cerr)
	}
	return min(res.Successful, cres.Successful), res.Failed + cres.Failed
}

func TestIntegrationSecurityScanners(t *testing.T) {
	l := newSecLab(t)

	// Calls between the pbx and the carrier run while the attacks go on.
	type result struct{ ok, failed int }
	callsDone := make(chan result, 1)
	go func() {
		ok, failed := l.calls(t, 10)
		callsDone <- result{ok, failed}
	}()

	// svmap: an OPTIONS sweep with User-Agent friendly-scanner, sent
	// several times over. Its first request bans it; the kernel drops
	// the rest.
	out := l.attack(t, l.attacker, 30*time.Second, "svmap", "-b", attackerScan.String(), "-p", "5060", "-t", "0.05", "203.0.113.1", "203.0.113.1", "203.0.113.1", "203.0.113.1")
	b := l.waitBanned(t, attackerScan)
	if b.Policy != "scanners" || !strings.Contains(b.Reason, "friendly-scanner") || !strings.Contains(b.First.Request, "OPTIONS") {
		t.Errorf("svmap ban: %+v", b)
	}
	if strings.Contains(out, "203.0.113.1:5060") && strings.Contains(out, "|") && strings.Contains(out, "edgesbc") {
		t.Errorf("svmap fingerprinted the SBC:\n%s", out)
	}

	drops := l.banDrops(t)
	if drops == 0 {
		t.Errorf("the kernel dropped none of svmap's requests after the ban")
	}
	t.Logf("svmap: banned on its first request, %d later packets dropped in the kernel", drops)

	// svwar: extension enumeration by REGISTER. It probes once with a
	// random extension and gives up when nothing answers: the SBC never
	// answers strangers, and that one probe bans it.
	out = l.attack(t, l.war, 30*time.Second, "svwar", "-p", "5060", "--force", "-t", "0.02", "-e", "100-199", "203.0.113.1")
	b = l.waitBanned(t, attackerWar)
	if b.Policy != "scanners" || !strings.Contains(b.First.Request, "REGISTER") {
		t.Errorf("svwar ban: %+v\n%s", b, out)
	}
	// run again: now every request is dropped in the kernel
	before := l.banDrops(t)
	l.attack(t, l.war, 30*time.Second, "svwar", "-p", "5060", "--force", "-t", "0.02", "-e", "100-199", "203.0.113.1")
	if after := l.banDrops(t); after <= before {
		t.Errorf("banned svwar's probe was not dropped in the kernel (counter %d -> %d)", before, after)
	}
	st := l.daemon.Status(t)
	t.Logf("daemon status after the scans: %+v", st)

	// An allow-listed source flooding with a scanner's User-Agent is never
	// banned nor rate limited.
	flood, err := testenv.RunSIPp(t, l.attacker, attackDir(t), "-sf", "options_flood.xml", "-i", attackerAllow.String(), "-p", "5070",
		"-s", "100", "-m", "1000", "-r", "500", "-timeout", "20s", "203.0.113.1:5060")
	if err != nil || flood.Successful != 1000 {
		t.Errorf("allow-listed flood: %+v %v", flood, err)
	}
	if b, ok := l.banned(t, attackerAllow); ok {
		t.Errorf("allow-listed source banned: %+v", b)
	}

	r := <-callsDone
	if r.ok != 10 || r.failed != 0 {
		t.Errorf("calls during the attacks: %d completed, %d failed; want 10 and 0", r.ok, r.failed)
	}
	t.Logf("calls during the attacks: %d completed, %d failed", r.ok, r.failed)

	list, _, err := l.bans(t, "list")
	if err != nil || len(list) != 2 {
		t.Errorf("bans list: %+v %v", list, err)
	}
}

func TestIntegrationSecurityRestartAndRemove(t *testing.T) {
	l := newSecLab(t)
	l.attack(t, l.attacker, 20*time.Second, "svmap", "-b", attackerScan.String(), "-p", "5060", "-t", "0.05", "203.0.113.1")
	l.waitBanned(t, attackerScan)
	// a manual ban, IPv6, through the CLI
	if _, msg, err := l.bans(t, "add", "2001:db8::66", "--for", "2h", "--reason", "test"); err != nil || msg != "" {
		t.Fatalf("bans add: %v %s", err, msg)
	}
	if _, msg, err := l.bans(t, "add", "203.0.113.2", "--for", "1h"); err == nil || !strings.Contains(msg, "allow-listed") {
		t.Errorf("banning the carrier: err %v, message %q; want a refusal", err, msg)
	}

	// Restart: the bans come back from the store, with their remaining time.
	if err := l.daemon.Stop(); err != nil {
		t.Fatal(err)
	}
	if out := l.nftJSON(t, "list", "ruleset"); strings.Contains(out, "guard_prerouting") {
		t.Errorf("guard chain left in the kernel after stop: %s", out)
	}
	l.daemon = testenv.StartDaemon(t, l.topo.SBC, securityConfig(t, l.stateDir))
	b, ok := l.banned(t, attackerScan)
	if !ok || b.Policy != "scanners" || b.Remaining < 23*3600 {
		t.Fatalf("ban after restart: %+v %v\n%s", b, ok, l.daemon.Log())
	}
	if b6, ok := l.banned(t, netip.MustParseAddr("2001:db8::66")); !ok || b6.Policy != "manual" {
		t.Errorf("manual IPv6 ban after restart: %+v %v", b6, ok)
	}
	if set := l.nftJSON(t, "list", "set", "inet", "edgesbc", "ban4"); !strings.Contains(set, attackerScan.String()) {
		t.Fatalf("restored ban not in the kernel set: %s", set)
	}

	// Remove: lifted at once, in the kernel too.
	if _, msg, err := l.bans(t, "remove", attackerScan.String()); err != nil || msg != "" {
		t.Fatalf("bans remove: %v %s", err, msg)
	}
	if set := l.nftJSON(t, "list", "set", "inet", "edgesbc", "ban4"); strings.Contains(set, attackerScan.String()) {
		t.Fatalf("ban still in the kernel set after remove: %s", set)
	}
	if _, ok := l.banned(t, attackerScan); ok {
		t.Fatal("still banned after remove")
	}
	// A request from the lifted source reaches the daemon again: the
	// probe carries a scanner's User-Agent, so the source is banned anew,
	// which it could only be if the request got through.
	if _, err := testenv.RunSIPp(t, l.attacker, attackDir(t), "-sf", "options_flood.xml", "-i", attackerScan.String(), "-p", "5070",
		"-s", "100", "-m", "1", "-timeout", "5s", "203.0.113.1:5060"); err != nil {
		t.Fatalf("probe: %v", err)
	}
	l.waitBanned(t, attackerScan)
}

// TestIntegrationSecurityFlood floods the public SIP port with INVITEs at
// 2,000/s from one attacker. The kernel meter cuts it to the rate limit, the
// unsolicited-request policy bans the source from the few requests that get
// through, and from then on the kernel drops everything; calls between the
// pbx and the carrier complete meanwhile.
func TestIntegrationSecurityFlood(t *testing.T) {
	l := newSecLab(t)
	type result struct{ ok, failed int }
	callsDone := make(chan result, 1)
	go func() {
		ok, failed := l.calls(t, 15)
		callsDone <- result{ok, failed}
	}()
	const sent = 6000
	res, err := testenv.RunSIPp(t, l.attacker, attackDir(t), "-sf", "invite_flood.xml", "-i", attackerScan.String(), "-p", "5070",
		"-s", "100", "-m", fmt.Sprint(sent), "-r", "2000", "-timeout", "20s", "203.0.113.1:5060")
	if err != nil || res.Successful != sent {
		t.Errorf("flood: %+v %v", res, err)
	}
	b := l.waitBanned(t, attackerScan)
	if b.Policy != "unsolicited" || b.Counters["unknown_source_requests"] != 20 {
		t.Errorf("flood ban: %+v", b)
	}
	limited, banned := l.ruleCounter(t, "@rl_sip_public"), l.banDrops(t)
	reached := sent - limited - banned
	t.Logf("flood of %d INVITEs at 2000/s: %d dropped by the rate limit, %d by the ban, %d reached the daemon", sent, limited, banned, reached)
	if reached > 200 || reached < 20 {
		t.Errorf("%d of %d flood packets reached the daemon; want the 20 that trip the policy plus what was in flight", reached, sent)
	}
	r := <-callsDone
	t.Logf("calls during the flood: %d completed, %d failed", r.ok, r.failed)
	if r.ok != 15 || r.failed != 0 {
		t.Errorf("calls during the flood: %d completed, %d failed; want 15 and 0", r.ok, r.failed)
	}
}

// hangup sends SIGHUP to the daemon: the only process in the SBC
// namespace whose executable is the edgesbc binary.
func (l *secLab) hangup(t *testing.T) {
	t.Helper()
	pids, err := l.topo.SBC.Pids()
	if err != nil {
		t.Fatal(err)
	}
	for _, pid := range pids {
		if exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); err == nil && exe == l.daemon.Bin {
			if err := syscall.Kill(pid, syscall.SIGHUP); err != nil {
				t.Fatal(err)
			}
			return
		}
	}
	t.Fatalf("no edgesbc process among %v in %s", pids, l.topo.SBC)
}

func (l *secLab) waitLog(t *testing.T, what string) {
	t.Helper()
	for range 100 {
		if strings.Contains(l.daemon.Log(), what) {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("daemon never logged %q\n%s", what, l.daemon.Log())
}

// TestIntegrationSecurityReload changes the ban policies of a running
// daemon with SIGHUP: a file with an error is rejected with its position
// and changes nothing; a valid one takes effect, and the bans stay.
func TestIntegrationSecurityReload(t *testing.T) {
	l := newSecLab(t)
	l.attack(t, l.attacker, 20*time.Second, "svmap", "-p", "5060", "-t", "0.05", "203.0.113.1")
	l.waitBanned(t, attackerScan)

	good := securityConfig(t, l.stateDir)
	bad := strings.Replace(good, `ban_for          = "24h"`, `ban_for          = "24h"
  mode             = "dry-run"`, 1)
	line := strings.Count(bad[:strings.Index(bad, `"dry-run"`)], "\n") + 1
	if err := os.WriteFile(l.daemon.Config, []byte(bad), 0o600); err != nil {
		t.Fatal(err)
	}
	l.hangup(t)
	l.waitLog(t, "configuration reload rejected")
	if want := fmt.Sprintf("%s:%d:22: error: Invalid mode", l.daemon.Config, line); !strings.Contains(l.daemon.Log(), want) {
		t.Errorf("rejection does not point at the error: want %q in\n%s", want, l.daemon.Log())
	}
	// the running policy stays: svwar's probe is banned
	l.attack(t, l.war, 20*time.Second, "svwar", "-p", "5060", "--force", "-t", "0.02", "-e", "100-101", "203.0.113.1")
	l.waitBanned(t, attackerWar)

	// a valid change: the scanner policy goes to log mode, svwar is
	// unbanned by hand and probes again: reported, not banned
	trial := strings.Replace(good, `ban_for          = "24h"`, `ban_for          = "24h"
  mode             = "log"`, 1)
	if err := os.WriteFile(l.daemon.Config, []byte(trial), 0o600); err != nil {
		t.Fatal(err)
	}
	l.hangup(t)
	l.waitLog(t, "ban policies reloaded")
	if _, ok := l.banned(t, attackerScan); !ok {
		t.Fatal("reload dropped the ban of the svmap source")
	}
	if _, msg, err := l.bans(t, "remove", attackerWar.String()); err != nil || msg != "" {
		t.Fatalf("bans remove: %v %s", err, msg)
	}
	l.attack(t, l.war, 20*time.Second, "svwar", "-p", "5060", "--force", "-t", "0.02", "-e", "100-101", "203.0.113.1")
	l.waitLog(t, "ban policy in log mode would ban")
	if b, ok := l.banned(t, attackerWar); ok {
		t.Errorf("log-mode policy banned %v: %+v", attackerWar, b)
	}
}

// TestIntegrationSecurityAuthFailures: a stranger on the private side gets
// 403 for every INVITE; the fifth 403 within a minute bans it by the
// auth-failures policy, and the pbx next to it keeps calling. svcrack on
// the public side finds nothing to crack and is banned.
func TestIntegrationSecurityAuthFailures(t *testing.T) {
	l := newSecLab(t)
	stranger := netip.MustParseAddr("10.91.1.66")
	if out, err := exec.Command("ip", "-n", l.topo.PBX.Name, "addr", "add", stranger.String()+"/24", "dev", l.topo.PBXIf).CombinedOutput(); err != nil {
		t.Fatalf("add stranger address: %v %s", err, out)
	}
	if _, err := testenv.RunSIPp(t, l.topo.PBX, attackDir(t), "-sf", "invite_flood.xml", "-i", stranger.String(), "-p", "5070",
		"-s", "100", "-m", "10", "-r", "5", "-timeout", "10s", "10.91.1.1:5060"); err != nil {
		t.Fatalf("stranger: %v", err)
	}
	b := l.waitBanned(t, stranger)
	if b.Policy != "auth-failures" || b.Counters["failed_auth"] != 5 {
		t.Errorf("stranger ban: %+v", b)
	}
	if ok, failed := l.calls(t, 3); ok != 3 || failed != 0 {
		t.Errorf("pbx calls after the ban of its neighbour: %d completed, %d failed", ok, failed)
	}

	// svcrack from the public side: the SBC issues no challenge to a
	// stranger, so there is nothing to crack, and its first REGISTER bans
	// it.
	out := l.attack(t, l.attacker, 30*time.Second, "svcrack", "-p", "5060", "-u", "100", "-r", "1000-1100", "203.0.113.1")
	b = l.waitBanned(t, attackerScan)
	if b.Policy != "scanners" || !strings.Contains(b.First.Request, "REGISTER") {
		t.Errorf("svcrack ban: %+v\n%s", b, out)
	}
	if strings.Contains(out, "cracked") || strings.Contains(out, "| 100 ") {
		t.Errorf("svcrack reports a result:\n%s", out)
	}
}

// lockedBuffer collects a process's output for polling.
type lockedBuffer struct {
	mu sync.Mutex
	b  []byte
}

func (w *lockedBuffer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.b = append(w.b, p...)
	return len(p), nil
}

func (w *lockedBuffer) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return string(w.b)
}

// userspaceDaemon is the daemon run without CAP_NET_ADMIN (setpriv drops
// it from the bounding set), so nftables is out of reach.
type userspaceDaemon struct {
	bin, admin string
	log        *lockedBuffer
	waitFor    func(what string)
}

// guardStatus is the part of edgesbc status the security tests read.
type guardStatus struct {
	Guard struct {
		Bans        int            `json:"bans"`
		Dropped     int            `json:"dropped"`
		RateLimited map[string]int `json:"rate_limited"`
	} `json:"guard"`
	Kernel bool `json:"bans_in_kernel"`
}

// startUserspaceDaemon starts the daemon in the SBC namespace of topo
// without CAP_NET_ADMIN and waits until it is ready and has said, once,
// that it enforces in userspace only.
func startUserspaceDaemon(t *testing.T, topo *testenv.Topology, cfg string) *userspaceDaemon {
	t.Helper()
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "edgesbc.hcl")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	sockDir, err := os.MkdirTemp("", "esbc")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(sockDir) })
	u := &userspaceDaemon{bin: testenv.BuildBinary(t), admin: filepath.Join(sockDir, "admin.sock"), log: &lockedBuffer{}}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	cmd := topo.SBC.Command(ctx, "setpriv", "--bounding-set", "-net_admin", "--", u.bin, "run", "-config", cfgPath, "-admin", u.admin)
	cmd.Stdout, cmd.Stderr = u.log, u.log
	cmd.WaitDelay = 2 * time.Second
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("daemon log:\n%s", u.log.String())
		}
	})
	u.waitFor = func(what string) {
		t.Helper()
		for range 200 {
			if strings.Contains(u.log.String(), what) {
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
		t.Fatalf("daemon never logged %q", what)
	}
	u.waitFor(testenv.ReadyLine)
	if n := strings.Count(u.log.String(), "enforced in userspace only"); n != 1 {
		t.Fatalf("userspace-only line logged %d times, want once", n)
	}
	return u
}

func (u *userspaceDaemon) status(t *testing.T) guardStatus {
	t.Helper()
	return readGuardStatus(t, u.bin, u.admin)
}

func (l *secLab) guardStatus(t *testing.T) guardStatus {
	t.Helper()
	return readGuardStatus(t, l.daemon.Bin, l.daemon.Admin)
}

// readGuardStatus runs edgesbc status against the daemon at admin.
func readGuardStatus(t *testing.T, bin, admin string) (st guardStatus) {
	t.Helper()
	readStatus(t, bin, admin, &st)
	return st
}

// readStatus runs edgesbc status against the daemon at admin and decodes
// its JSON into v.
func readStatus(t *testing.T, bin, admin string, v any) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "status", "-admin", admin).Output()
	if err != nil {
		t.Fatalf("status: %v", err)
	}
	if err := json.Unmarshal(out, v); err != nil {
		t.Fatal(err)
	}
}

// TestIntegrationSecurityUserspaceOnly runs the daemon without
// CAP_NET_ADMIN (setpriv drops it from the bounding set), so nftables is
// out of reach: the log says so once, nothing is written to the kernel, and
// the scanner is still banned and its later requests dropped before
// parsing.
func TestIntegrationSecurityUserspaceOnly(t *testing.T) {
	testenv.Integration(t)
	for _, tool := range []string{"setpriv", "nft", "svmap"} {
		testenv.RequireTool(t, tool)
	}
	topo := testenv.NewTopology(t)
	attacker := testenv.NewNetns(t, "esbc-att")
	testenv.Link(t, topo.SBC, "eth-att", netip.MustParsePrefix("198.51.100.1/24"), attacker, "eth-sbc", netip.MustParsePrefix(attackerScan.String()+"/24"))
	if out, err := exec.Command("ip", "-n", attacker.Name, "route", "add", "203.0.113.0/24", "via", "198.51.100.1").CombinedOutput(); err != nil {
		t.Fatalf("route: %v %s", err, out)
	}
	u := startUserspaceDaemon(t, topo, securityConfig(t, t.TempDir()))
	waitFor := u.waitFor
	home := t.TempDir()
	scan := func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		c := attacker.Command(ctx, "svmap", "-p", "5060", "-t", "0.05", "203.0.113.1", "203.0.113.1", "203.0.113.1")
		c.Env = append(os.Environ(), "HOME="+home)
		_ = c.Run()
	}
	scan()
	waitFor("source banned")
	status := func() guardStatus { return u.status(t) }
	before := status()
	if before.Kernel || before.Guard.Bans != 1 {
		t.Fatalf("status after the scan: %+v", before)
	}
	scan()
	after := status()
	if after.Guard.Dropped < before.Guard.Dropped+3 {
		t.Errorf("banned scanner's requests not dropped in userspace: dropped %d -> %d", before.Guard.Dropped, after.Guard.Dropped)
	}
	nctx, ncancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer ncancel()
	if out, err := topo.SBC.Command(nctx, "nft", "list", "ruleset").CombinedOutput(); err != nil || strings.Contains(string(out), "edgesbc") {
		t.Errorf("kernel ruleset touched without CAP_NET_ADMIN: %v\n%s", err, out)
	}
}

// TestIntegrationSecurityRateLimit floods at 2,000/s with the unsolicited
// policy in log mode, so nothing is banned: the kernel meter alone holds
// the source to the configured 50/s with a burst of 100, and the log
// reports the ban the policy would have made.
func TestIntegrationSecurityRateLimit(t *testing.T) {
	l := newSecLabWith(t, func(c string) string {
		return strings.Replace(c, `  ban_for                 = "1h"
}`, `  ban_for                 = "1h"
  mode                    = "log"
}`, 1)
	})
	const sent, seconds = 6000, 3
	start := time.Now()
	res, err := testenv.RunSIPp(t, l.attacker, attackDir(t), "-sf", "invite_flood.xml", "-i", attackerScan.String(), "-p", "5070",
		"-s", "100", "-m", fmt.Sprint(sent), "-r", fmt.Sprint(sent/seconds), "-timeout", "20s", "203.0.113.1:5060")
	if err != nil || res.Successful != sent {
		t.Errorf("flood: %+v %v", res, err)
	}
	elapsed := time.Since(start).Seconds()
	limited := l.ruleCounter(t, "@rl_sip_public")
	passed := sent - limited
	t.Logf("flood of %d INVITEs in %.1fs: %d dropped by the rate limit, %d passed", sent, elapsed, limited, passed)
	// burst 100, then 50/s over the flood's duration (and a little slack
	// for sipp's own timing)
	if want := 100 + 50*elapsed; float64(passed) > want+50 || float64(passed) < 100 {
		t.Errorf("%d packets passed the rate limit, want about %.0f", passed, want)
	}
	if b, ok := l.banned(t, attackerScan); ok {
		t.Errorf("log-mode policy banned the source: %+v", b)
	}
	l.waitLog(t, "ban policy in log mode would ban")
	if !strings.Contains(l.daemon.Log(), "policy=unsolicited") {
		t.Errorf("would-ban line does not name the policy")
	}
}

// TestIntegrationSecurityUserspaceRateLimit floods the public SIP port at
// 2,000 INVITEs/s from one attacker while the daemon runs without
// CAP_NET_ADMIN, with the unsolicited policy in log mode so nothing is
// banned: the daemon itself holds the source to the configured 50/s with a
// burst of 100, counted in edgesbc status, and calls between the pbx and
// the carrier (exempt as peers) complete meanwhile.
func TestIntegrationSecurityUserspaceRateLimit(t *testing.T) {
	testenv.Integration(t)
	for _, tool := range []string{"setpriv", "sipp"} {
		testenv.RequireTool(t, tool)
	}
	l := &secLab{topo: testenv.NewTopology(t), attacker: testenv.NewNetns(t, "esbc-att")}
	testenv.Link(t, l.topo.SBC, "eth-att", netip.MustParsePrefix("198.51.100.1/24"), l.attacker, "eth-sbc", netip.MustParsePrefix(attackerScan.String()+"/24"))
	if out, err := exec.Command("ip", "-n", l.attacker.Name, "route", "add", "203.0.113.0/24", "via", "198.51.100.1").CombinedOutput(); err != nil {
		t.Fatalf("route: %v %s", err, out)
	}
	cfg := strings.Replace(securityConfig(t, t.TempDir()), `  ban_for                 = "1h"
}`, `  ban_for                 = "1h"
  mode                    = "log"
}`, 1)
	u := startUserspaceDaemon(t, l.topo, cfg)

	type result struct{ ok, failed int }
	callsDone := make(chan result, 1)
	go func() {
		ok, failed := l.calls(t, 10)
		callsDone <- result{ok, failed}
	}()
	const sent, seconds = 6000, 3
	start := time.Now()
	res, err := testenv.RunSIPp(t, l.attacker, attackDir(t), "-sf", "invite_flood.xml", "-i", attackerScan.String(), "-p", "5070",
		"-s", "100", "-m", fmt.Sprint(sent), "-r", fmt.Sprint(sent/seconds), "-timeout", "20s", "203.0.113.1:5060")
	if err != nil || res.Successful != sent {
		t.Errorf("flood: %+v %v", res, err)
	}
	elapsed := time.Since(start).Seconds()
	st := u.status(t)
	limited := st.Guard.RateLimited["sip-public"]
	passed := sent - limited
	t.Logf("flood of %d INVITEs in %.1fs, userspace only: %d dropped by the rate limit, %d passed", sent, elapsed, limited, passed)
	if st.Kernel || st.Guard.Bans != 0 {
		t.Errorf("status: %+v", st)
	}
	if want := 100 + 50*elapsed; float64(passed) > want+50 || float64(passed) < 100 {
		t.Errorf("%d datagrams passed the userspace rate limit, want about %.0f", passed, want)
	}
	u.waitFor("ban policy in log mode would ban")
	r := <-callsDone
	t.Logf("calls during the flood: %d completed, %d failed", r.ok, r.failed)
	if r.ok != 10 || r.failed != 0 {
		t.Errorf("calls during the flood: %d completed, %d failed; want 10 and 0", r.ok, r.failed)
	}
}

// TestIntegrationSecurityEnumeration sweeps extensions with REGISTER, one
// per extension as svwar does, but with an ordinary User-Agent, so the
// scanner policy does not see it and nothing ever answers it: the tenth
// distinct extension bans the source by the enumeration policy, with the
// counters in the ban, and the kernel drops the rest of the sweep.
func TestIntegrationSecurityEnumeration(t *testing.T) {
	l := newSecLab(t)
	dir := attackDir(t)
	res, err := testenv.RunSIPp(t, l.attacker, dir, "-sf", "register_enum.xml", "-inf", filepath.Join(dir, "extensions.csv"),
		"-i", attackerScan.String(), "-p", "5070", "-m", "30", "-r", "20", "-timeout", "10s", "203.0.113.1:5060")
	if err != nil || res.Successful != 30 {
		t.Errorf("sweep: %+v %v", res, err)
	}
	b := l.waitBanned(t, attackerScan)
	if b.Policy != "enumeration" || b.Counters["distinct_unknown_users"] != 10 || b.Reason != "unknown users" ||
		!strings.Contains(b.First.Request, `REGISTER user="1000"`) || !strings.Contains(b.First.Request, "Softphone") {
		t.Errorf("sweep ban: %+v", b)
	}
	drops := l.banDrops(t)
	if drops < 15 {
		t.Errorf("the kernel dropped %d of the sweep's 20 later REGISTERs", drops)
	}
	t.Logf("sweep of 30 extensions: banned by %s with %v, first %q; %d later REGISTERs dropped in the kernel", b.Policy, b.Counters, b.First.Request, drops)
	if ok, failed := l.calls(t, 3); ok != 3 || failed != 0 {
		t.Errorf("calls after the sweep: %d completed, %d failed", ok, failed)
	}
}

// TestIntegrationSecurityIPv6Prefix gives the SBC a third, IPv6 zone and
// the attacker two addresses of one /64: a scanner's probe from the first
// bans the /64, and a flood from the second address never reaches the
// daemon, dropped by the kernel's masked lookup in ban6.
//
//	[ SBC ] 2001:db8:66::1 ── 2001:db8:77::66, 2001:db8:77::67 attacker
func TestIntegrationSecurityIPv6Prefix(t *testing.T) {
	sbc6 := netip.MustParseAddr("2001:db8:66::1")
	first, second := netip.MustParseAddr("2001:db8:77::66"), netip.MustParseAddr("2001:db8:77::67")
	l := newSecLabSetup(t, func(l *secLab) {
		for _, args := range [][]string{
			{"-n", l.topo.SBC.Name, "addr", "add", sbc6.String() + "/64", "dev", "eth-att", "nodad"},
			{"-n", l.topo.SBC.Name, "-6", "route", "add", "2001:db8:77::/64", "dev", "eth-att"},
			{"-n", l.attacker.Name, "addr", "add", first.String() + "/64", "dev", "eth-sbc", "nodad"},
			{"-n", l.attacker.Name, "addr", "add", second.String() + "/64", "dev", "eth-sbc", "nodad"},
			{"-n", l.attacker.Name, "-6", "route", "add", "2001:db8:66::/64", "dev", "eth-sbc"},
		} {
			if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
				t.Fatalf("ip %v: %v %s", args, err, out)
			}
		}
	}, func(c string) string {
		return c + "zone \"public6\" {\n  address = \"" + sbc6.String() + "\"\n}\n"
	})
	// the scanner's probe from the first address bans its /64
	if _, err := testenv.RunSIPp(t, l.attacker, attackDir(t), "-sf", "options_flood.xml", "-i", first.String(), "-p", "5070",
		"-s", "100", "-m", "1", "-timeout", "5s", "["+sbc6.String()+"]:5060"); err != nil {
		t.Fatalf("probe: %v", err)
	}
	b := l.waitBanned(t, second) // shown by any address of the prefix
	if b.Policy != "scanners" || b.Addr != first.String() || b.Prefix != "2001:db8:77::/64" {
		t.Errorf("ban of the /64: %+v", b)
	}
	if set := l.nftJSON(t, "list", "set", "inet", "edgesbc", "ban6"); !strings.Contains(set, `"2001:db8:77::"`) {
		t.Errorf("ban6 does not hold the /64's element: %s", set)
	}
	before, seen := l.ruleCounter(t, "@ban6"), l.guardStatus(t)
	// a flood with an ordinary User-Agent from the second address
	if _, err := testenv.RunSIPp(t, l.attacker, attackDir(t), "-sf", "invite_flood.xml", "-i", second.String(), "-p", "5070",
		"-s", "100", "-m", "50", "-r", "100", "-timeout", "10s", "["+sbc6.String()+"]:5060"); err != nil {
		t.Errorf("flood: %v", err)
	}
	after := l.ruleCounter(t, "@ban6")
	t.Logf("flood of 50 INVITEs from another address of the banned /64: %d packets dropped by the ban6 rule", after-before)
	if after-before < 50 {
		t.Errorf("the kernel dropped %d of 50 packets from %v", after-before, second)
	}
	if st := l.guardStatus(t); st.Guard.Dropped != seen.Guard.Dropped {
		t.Errorf("packets from the banned /64 reached the daemon: dropped in userspace %d -> %d", seen.Guard.Dropped, st.Guard.Dropped)
	}
}
