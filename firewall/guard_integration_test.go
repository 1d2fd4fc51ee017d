//go:build linux

package firewall

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/hashicorp/go-hclog"

	"github.com/edgesbc/edgesbc/internal/testenv"
)

// The integration test runs this test binary inside the namespaces as a
// small UDP sender or receiver (helperEnv selects the role), so that no
// thread of the test itself ever changes namespace.
const helperEnv = "EDGESBC_FIREWALL_HELPER"

func TestMain(m *testing.M) {
	switch os.Getenv(helperEnv) {
	case "recv":
		os.Exit(helperRecv(os.Args[len(os.Args)-1]))
	case "send":
		os.Exit(helperSend(os.Args[len(os.Args)-4:]))
	case "dial":
		os.Exit(helperDial(os.Args[len(os.Args)-4:]))
	}
	os.Exit(testenv.Main(m))
}

// helperRecv counts datagrams per source address on addr until its stdin
// closes (20 seconds at most) and prints them as JSON.
func helperRecv(addr string) int {
	c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.MustParseAddrPort(addr)))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Println("ready")
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		_ = c.SetReadDeadline(time.Now())
	}()
	counts := map[string]int{}
	deadline := time.Now().Add(20 * time.Second)
	buf := make([]byte, 2048)
	_ = c.SetReadDeadline(deadline)
	for {
		_, from, err := c.ReadFromUDPAddrPort(buf)
		if err != nil {
			break
		}
		counts[from.Addr().Unmap().String()]++
	}
	_ = json.NewEncoder(os.Stdout).Encode(counts)
	return 0
}

// helperSend sends count datagrams from src to dst, spread over dur.
func helperSend(args []string) int {
	src, dst := netip.MustParseAddr(args[0]), netip.MustParseAddrPort(args[1])
	n, _ := strconv.Atoi(args[2])
	d, _ := time.ParseDuration(args[3])
	c, err := net.DialUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(src, 0)), net.UDPAddrFromAddrPort(dst))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	gap := d / time.Duration(max(n, 1))
	for i := range n {
		_, _ = c.Write([]byte("OPTIONS sip:probe SIP/2.0\r\n\r\n"))
		if gap > 0 && i < n-1 {
			time.Sleep(gap)
		}
	}
	return 0
}

// helperDial opens count TCP connections from src to dst, one after the
// other, each given timeout to be answered, and prints how many were
// answered (accepted or refused: either way the SYN reached dst).
func helperDial(args []string) int {
	src, dst := netip.MustParseAddr(args[0]), netip.MustParseAddrPort(args[1])
	n, _ := strconv.Atoi(args[2])
	timeout, _ := time.ParseDuration(args[3])
	d := net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(src, 0)), Timeout: timeout}
	answered := 0
	for range n {
		c, err := d.Dial("tcp", dst.String())
		switch {
		case err == nil:
			answered++
			_ = c.Close()
		case errors.Is(err, syscall.ECONNREFUSED):
			answered++
		}
	}
	fmt.Println(answered)
	return 0
}

type fwLab struct {
	t       *testing.T
	fw, src *testenv.Netns
}

func (l *fwLab) helper(ns *testenv.Netns, role string, args ...string) *exec.Cmd {
	bin, err := os.Executable()
	if err != nil {
		l.t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	l.t.Cleanup(cancel)
	cmd := ns.Command(ctx, bin, append([]string{"-test.run=^$"}, args...)...)
	cmd.Env = append(os.Environ(), helperEnv+"="+role)
	return cmd
}

// deliver sends count datagrams from each source to dst over dur and
// returns what arrived, per source.
func (l *fwLab) deliver(dst string, count int, dur time.Duration, srcs ...string) map[string]int {
	l.t.Helper()
	recv := l.helper(l.fw, "recv", dst)
	out, err := recv.StdoutPipe()
	if err != nil {
		l.t.Fatal(err)
	}
	stop, err := recv.StdinPipe()
	if err != nil {
		l.t.Fatal(err)
	}
	recv.Stderr = os.Stderr
	if err := recv.Start(); err != nil {
		l.t.Fatal(err)
	}
	ready := make([]byte, 6)
	if _, err := out.Read(ready); err != nil || string(ready) != "ready\n" {
		l.t.Fatalf("receiver on %s not ready: %q %v", dst, ready, err)
	}
	for _, s := range srcs {
		send := l.helper(l.src, "send", s, dst, strconv.Itoa(count), dur.String())
		if b, err := send.CombinedOutput(); err != nil {
			l.t.Fatalf("send from %s: %v %s", s, err, b)
		}
	}
	time.Sleep(200 * time.Millisecond) // the last datagrams are on their way
	_ = stop.Close()
	var counts map[string]int
	if err := json.NewDecoder(out).Decode(&counts); err != nil {
		l.t.Fatalf("receiver result: %v", err)
	}
	_ = recv.Wait()
	return counts
}

func (l *fwLab) nftJSON(args ...string) string {
	l.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	b, err := l.fw.Command(ctx, "nft", append([]string{"-j"}, args...)...).CombinedOutput()
	if err != nil {
		l.t.Fatalf("nft -j %s: %v %s", strings.Join(args, " "), err, b)
	}
	return string(b)
}

func (l *fwLab) nft(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	b, err := l.fw.Command(ctx, "nft", args...).CombinedOutput()
	return string(b), err
}

// setElements lists the elements of a set, read back with nft -j.
func (l *fwLab) setElements(name string) []string {
	l.t.Helper()
	var doc struct {
		Nftables []struct {
			Set *struct {
				Elem []json.RawMessage `json:"elem"`
			} `json:"set"`
		} `json:"nftables"`
	}
	if err := json.Unmarshal([]byte(l.nftJSON("list", "set", "inet", TableName, name)), &doc); err != nil {
		l.t.Fatal(err)
	}
	var out []string
	for _, n := range doc.Nftables {
		if n.Set != nil {
			for _, e := range n.Set.Elem {
				out = append(out, string(e))
			}
		}
	}
	return out
}

func TestIntegrationGuardKernel(t *testing.T) {
	testenv.Integration(t)
	testenv.RequireTool(t, "nft")
	l := &fwLab{t: t, fw: testenv.NewNetns(t, "esbc-fw"), src: testenv.NewNetns(t, "esbc-fwsrc")}
	testenv.Link(t, l.fw, "eth-src", netip.MustParsePrefix("192.0.2.1/24"), l.src, "eth-fw", netip.MustParsePrefix("192.0.2.2/24"))
	for _, cmd := range [][]string{
		{"-n", l.src.Name, "addr", "add", "192.0.2.3/24", "dev", "eth-fw"},
		{"-n", l.src.Name, "addr", "add", "192.0.2.4/24", "dev", "eth-fw"},
		{"-n", l.src.Name, "addr", "add", "192.0.2.5/24", "dev", "eth-fw"},
		{"-n", l.fw.Name, "addr", "add", "2001:db8:5::1/64", "dev", "eth-src", "nodad"},
		{"-n", l.fw.Name, "addr", "add", "2001:db8:6::1/64", "dev", "eth-src", "nodad"},
		{"-n", l.src.Name, "addr", "add", "2001:db8:5::2/64", "dev", "eth-fw", "nodad"},
		{"-n", l.src.Name, "addr", "add", "2001:db8:5::3/64", "dev", "eth-fw", "nodad"},
		{"-n", l.src.Name, "addr", "add", "2001:db8:6::4/64", "dev", "eth-fw", "nodad"},
		{"-n", l.src.Name, "addr", "add", "2001:db8:6::5/64", "dev", "eth-fw", "nodad"},
	} {
		if b, err := exec.Command("ip", cmd...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v %s", cmd, err, b)
		}
	}
	// Another subsystem's object in the shared table must survive
	// everything the guard does.
	if out, err := l.nft("add table inet edgesbc; add set inet edgesbc media_flows { type ipv4_addr; }"); err != nil {
		t.Fatalf("create foreign set: %v %s", err, out)
	}

	nsf, err := os.Open("/run/netns/" + l.fw.Name)
	if err != nil {
		t.Fatal(err)
	}
	defer nsf.Close()
	g, err := newGuard(nil, guardCheckEvery, nftables.WithNetNSFd(int(nsf.Fd())))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = g.Close() })

	cfg := GuardConfig{
		Allow: []netip.Prefix{netip.MustParsePrefix("192.0.2.3/32"), netip.MustParsePrefix("2001:db8::/64")},
		RateLimits: []RateLimit{
			{Name: "sip-public", Dest: netip.MustParseAddrPort("192.0.2.1:5060"), Rate: 10, Per: time.Second, Burst: 5},
			{Name: "sip-v6", Dest: netip.MustParseAddrPort("[2001:db8:5::1]:5060"), Rate: 1, Per: time.Minute, Burst: 5},
		},
	}
	if err := g.Apply(cfg); err != nil {
		t.Fatal(err)
	}
	// Applying twice is what a reload does: it must succeed and keep bans.
	if err := g.Ban(netip.MustParseAddr("192.0.2.2"), time.Hour); err != nil {
		t.Fatal(err)
	}
	if err := g.Apply(cfg); err != nil {
		t.Fatalf("second apply: %v", err)
	}

	ruleset := l.nftJSON("list", "table", "inet", TableName)
	for _, want := range []string{
		`"name": "guard_prerouting"`, `"hook": "prerouting"`, `"prio": -300`,
		`"name": "ban4"`, `"name": "ban6"`, `"name": "allow4"`, `"name": "rl_sip_public"`, `"name": "media_flows"`,
		`"rate": 10`, `"burst": 5`, `"inv": true`, `"op": "update"`,
	} {
		if !strings.Contains(ruleset, want) {
			t.Errorf("nft -j list table lacks %s:\n%s", want, ruleset)
		}
	}
	if els := l.setElements(ban4Set); len(els) != 1 || !strings.Contains(els[0], "192.0.2.2") || !strings.Contains(els[0], `"timeout"`) {
		t.Fatalf("ban4 after reload: %v", els)
	}

	// The banned source is dropped; the allow-listed one passes even
	// when banned; an unlisted one passes.
	if err := g.Ban(netip.MustParseAddr("192.0.2.3"), time.Hour); err != nil {
		t.Fatal(err)
	}
	got := l.deliver("192.0.2.1:5070", 20, 200*time.Millisecond, "192.0.2.2", "192.0.2.3", "192.0.2.4")
	if got["192.0.2.2"] != 0 || got["192.0.2.3"] != 20 || got["192.0.2.4"] != 20 {
		t.Fatalf("with bans: received %v, want 0 from .2, 20 from .3 and .4", got)
	}
	if chain := l.nftJSON("list", "chain", "inet", TableName, guardChain); !strings.Contains(chain, `"packets": 20`) {
		t.Errorf("ban counter did not count the 20 dropped packets:\n%s", chain)
	}

	// Lifting the ban takes effect at once; lifting it twice is fine.
	if err := g.Unban(netip.MustParseAddr("192.0.2.2")); err != nil {
		t.Fatal(err)
	}
	if err := g.Unban(netip.MustParseAddr("192.0.2.2")); err != nil {
		t.Fatalf("second unban: %v", err)
	}
	got = l.deliver("192.0.2.1:5070", 20, 200*time.Millisecond, "192.0.2.2")
	if got["192.0.2.2"] != 20 {
		t.Fatalf("after unban: received %v, want 20 from .2", got)
	}

	// The rate limit: 200 packets in 0.4s from one source is far above
	// 10/s with a burst of 5; the allow-listed source is not limited.
	got = l.deliver("192.0.2.1:5060", 200, 400*time.Millisecond, "192.0.2.4", "192.0.2.3")
	if n := got["192.0.2.4"]; n < 5 || n > 20 {
		t.Errorf("rate limited source: %d of 200 arrived, want about 5 + 10/s × 0.4s", n)
	}
	if got["192.0.2.3"] != 200 {
		t.Errorf("allow-listed source: %d of 200 arrived, want all", got["192.0.2.3"])
	}
	t.Logf("rate limit 10/s burst 5: %d of 200 packets in 0.4s passed", got["192.0.2.4"])

	// TCP to the SIP port counts against the same meter: of 40 connection
	// attempts from a fresh source (nothing listens, so a SYN that gets
	// through is refused at once, one that is dropped times out after
	// 20 ms), about the burst and one per 100 ms get through; the
	// allow-listed source is not limited.
	dial := func(src string) int {
		t.Helper()
		b, err := l.helper(l.src, "dial", src, "192.0.2.1:5060", "40", "20ms").Output()
		if err != nil {
			t.Fatalf("dial from %s: %v", src, err)
		}
		n, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil {
			t.Fatalf("dial from %s: %q", src, b)
		}
		return n
	}
	if n := dial("192.0.2.5"); n < 5 || n > 25 {
		t.Errorf("TCP from a rate limited source: %d of 40 SYNs answered, want the burst of 5 and about one per 100 ms", n)
	} else {
		t.Logf("rate limit 10/s burst 5 on TCP: %d of 40 SYNs answered", n)
	}
	if n := dial("192.0.2.3"); n != 40 {
		t.Errorf("TCP from the allow-listed source: %d of 40 SYNs answered, want all", n)
	}

	// Per-element timeouts: the kernel ends a ban by itself.
	if err := g.Ban(netip.MustParseAddr("192.0.2.4"), 2*time.Second); err != nil {
		t.Fatal(err)
	}
	if els := l.setElements(ban4Set); len(els) != 2 {
		t.Fatalf("ban4 with a short ban: %v", els)
	}
	time.Sleep(2500 * time.Millisecond)
	for _, e := range l.setElements(ban4Set) {
		if strings.Contains(e, "192.0.2.4") {
			t.Fatalf("ban of 192.0.2.4 still in the set after its timeout: %s", e)
		}
	}

	// An IPv6 meter counts the source's /64: two addresses of one /64
	// share one burst of 5 (1/minute refills nothing meanwhile).
	got = l.deliver("[2001:db8:5::1]:5060", 20, 200*time.Millisecond, "2001:db8:6::4", "2001:db8:6::5")
	if n := got["2001:db8:6::4"] + got["2001:db8:6::5"]; n != 5 {
		t.Errorf("two addresses of one /64 against a burst of 5: received %v, want 5 in all", got)
	}

	// IPv6 bans go to ban6, one element for the source's /64: every
	// address of it is dropped, the next /64 passes.
	if err := g.Ban(netip.MustParseAddr("2001:db8:5::2"), time.Minute); err != nil {
		t.Fatal(err)
	}
	if els := l.setElements(ban6Set); len(els) != 1 || !strings.Contains(els[0], `"2001:db8:5::"`) {
		t.Fatalf("ban6: %v", els)
	}
	// (the unbanned source sends first: the banned ones' neighbour
	// solicitations are dropped too, so they could not resolve the
	// SBC's link-layer address themselves)
	got = l.deliver("[2001:db8:5::1]:5070", 20, 200*time.Millisecond, "2001:db8:6::4", "2001:db8:5::2", "2001:db8:5::3")
	if got["2001:db8:5::2"] != 0 || got["2001:db8:5::3"] != 0 || got["2001:db8:6::4"] != 20 {
		t.Fatalf("with a /64 banned: received %v, want nothing from 2001:db8:5::/64 and 20 from 2001:db8:6::4", got)
	}

	// The golden rendering is valid nft syntax.
	if out, err := l.nft("-c", "-f", "testdata/guard-two-zones.nft"); err != nil {
		t.Errorf("nft -c -f testdata/guard-two-zones.nft: %v\n%s", err, out)
	}

	// Close removes the guard's objects and nothing else.
	if err := g.Close(); err != nil {
		t.Fatal(err)
	}
	after := l.nftJSON("list", "table", "inet", TableName)
	if strings.Contains(after, "guard_prerouting") || strings.Contains(after, `"ban4"`) || strings.Contains(after, "rl_sip_public") {
		t.Errorf("guard objects left after Close:\n%s", after)
	}
	if !strings.Contains(after, "media_flows") {
		t.Errorf("Close removed another subsystem's set:\n%s", after)
	}
}

// banTimeLeft returns the seconds left of the ban of addr in set, read
// back with nft -j, and false when addr is not there.
func (l *fwLab) banTimeLeft(set, addr string) (int, bool) {
	l.t.Helper()
	if _, err := l.nft("list", "set", "inet", TableName, set); err != nil {
		return 0, false // not there (yet)
	}
	for _, e := range l.setElements(set) {
		if !strings.Contains(e, `"`+addr+`"`) {
			continue
		}
		var el struct {
			Elem struct {
				Timeout int `json:"timeout"`
				Expires int `json:"expires"`
			} `json:"elem"`
		}
		if err := json.Unmarshal([]byte(e), &el); err != nil {
			l.t.Fatalf("parse element %s: %v", e, err)
		}
		return el.Elem.Expires, true
	}
	return 0, false
}

func (l *fwLab) flushRuleset() {
	l.t.Helper()
	if out, err := l.nft("flush", "ruleset"); err != nil {
		l.t.Fatalf("nft flush ruleset: %v %s", err, out)
	}
	if out, err := l.nft("list", "tables"); err != nil || strings.Contains(out, TableName) {
		l.t.Fatalf("table still there after the flush: %v %s", err, out)
	}
}

// TestIntegrationGuardRebuild removes the whole ruleset under a running
// guard, as a host firewall reload does: the guard puts its chain, allow
// list, meters and bans back by itself within its check interval, each ban
// with its remaining time, and the banned source is dropped again. A
// second removal is repaired by the next operation, before it runs.
func TestIntegrationGuardRebuild(t *testing.T) {
	testenv.Integration(t)
	testenv.RequireTool(t, "nft")
	l := &fwLab{t: t, fw: testenv.NewNetns(t, "esbc-fwrb"), src: testenv.NewNetns(t, "esbc-fwrbs")}
	testenv.Link(t, l.fw, "eth-src", netip.MustParsePrefix("192.0.2.1/24"), l.src, "eth-fw", netip.MustParsePrefix("192.0.2.2/24"))
	for _, a := range []string{"192.0.2.3/24", "192.0.2.4/24"} {
		if b, err := exec.Command("ip", "-n", l.src.Name, "addr", "add", a, "dev", "eth-fw").CombinedOutput(); err != nil {
			t.Fatalf("ip addr add %s: %v %s", a, err, b)
		}
	}
	nsf, err := os.Open("/run/netns/" + l.fw.Name)
	if err != nil {
		t.Fatal(err)
	}
	defer nsf.Close()
	const every = 300 * time.Millisecond
	g, err := newGuard(guardLog(t), every, nftables.WithNetNSFd(int(nsf.Fd())))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = g.Close() })
	cfg := GuardConfig{
		Allow:      []netip.Prefix{netip.MustParsePrefix("192.0.2.3/32")},
		RateLimits: []RateLimit{{Name: "sip-public", Dest: netip.MustParseAddrPort("192.0.2.1:5060"), Rate: 10, Per: time.Second, Burst: 5}},
	}
	if err := g.Apply(cfg); err != nil {
		t.Fatal(err)
	}
	if err := g.Ban(netip.MustParseAddr("192.0.2.2"), time.Hour); err != nil {
		t.Fatal(err)
	}
	if err := g.Ban(netip.MustParseAddr("2001:db8::9"), time.Hour); err != nil {
		t.Fatal(err)
	}
	// A ban that ends before the removal is not brought back.
	if err := g.Ban(netip.MustParseAddr("192.0.2.4"), time.Second); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1500 * time.Millisecond)

	l.flushRuleset()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, ok := l.banTimeLeft(ban4Set, "192.0.2.2"); ok {
			break
		}
		if time.Now().After(deadline) {
			out, _ := l.nft("list", "ruleset")
			t.Logf("ruleset now: %s", out)
			t.Fatalf("the guard did not rebuild its objects within 5s (check every %v)", every)
		}
		time.Sleep(50 * time.Millisecond)
	}
	left, _ := l.banTimeLeft(ban4Set, "192.0.2.2")
	if left > 3600 || left < 3500 {
		t.Errorf("rebuilt ban of 192.0.2.2 expires in %ds, want its remaining time (just under 3600s)", left)
	}
	if _, ok := l.banTimeLeft(ban6Set, "2001:db8::"); !ok { // masked to its /64
		t.Errorf("IPv6 ban not rebuilt: %v", l.setElements(ban6Set))
	}
	if _, ok := l.banTimeLeft(ban4Set, "192.0.2.4"); ok {
		t.Errorf("a ban that had ended was brought back: %v", l.setElements(ban4Set))
	}
	ruleset := l.nftJSON("list", "table", "inet", TableName)
	for _, want := range []string{`"name": "guard_prerouting"`, `"name": "allow4"`, `"name": "rl_sip_public"`, `"rate": 10`} {
		if !strings.Contains(ruleset, want) {
			t.Errorf("rebuilt table lacks %s:\n%s", want, ruleset)
		}
	}
	got := l.deliver("192.0.2.1:5070", 10, 100*time.Millisecond, "192.0.2.2", "192.0.2.3")
	if got["192.0.2.2"] != 0 || got["192.0.2.3"] != 10 {
		t.Fatalf("after the rebuild: received %v, want none from the banned source and all 10 from the allowed one", got)
	}

	// Again, but the next operation comes before the check: it repairs
	// first, then bans.
	g2, err := newGuard(guardLog(t), time.Hour, nftables.WithNetNSFd(int(nsf.Fd())))
	if err != nil {
		t.Fatal(err)
	}
	_ = g.Close()
	if err := g2.Apply(cfg); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = g2.Close() })
	if err := g2.Ban(netip.MustParseAddr("192.0.2.2"), time.Hour); err != nil {
		t.Fatal(err)
	}
	l.flushRuleset()
	if err := g2.Ban(netip.MustParseAddr("192.0.2.4"), time.Hour); err != nil {
		t.Fatalf("ban after the ruleset was flushed: %v", err)
	}
	for _, a := range []string{"192.0.2.2", "192.0.2.4"} {
		if _, ok := l.banTimeLeft(ban4Set, a); !ok {
			t.Errorf("after the next ban, %s is not in ban4: %v", a, l.setElements(ban4Set))
		}
	}
	// An unban after a removal repairs too, and the ban it lifts stays
	// lifted.
	l.flushRuleset()
	if err := g2.Unban(netip.MustParseAddr("192.0.2.4")); err != nil {
		t.Fatal(err)
	}
	if _, ok := l.banTimeLeft(ban4Set, "192.0.2.2"); !ok {
		t.Errorf("after an unban, the other ban is missing: %v", l.setElements(ban4Set))
	}
	if _, ok := l.banTimeLeft(ban4Set, "192.0.2.4"); ok {
		t.Errorf("the lifted ban is back: %v", l.setElements(ban4Set))
	}
	// Close on a flushed ruleset is quiet.
	l.flushRuleset()
	if err := g2.Close(); err != nil {
		t.Errorf("Close after the table was removed: %v", err)
	}
}

func guardLog(t *testing.T) hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{Name: t.Name(), Level: hclog.Info, Output: logWriter{t}})
}

type logWriter struct{ t *testing.T }

func (w logWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
