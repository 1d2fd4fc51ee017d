//go:build linux

package firewall

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"

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
	g, err := newGuard(nil, nftables.WithNetNSFd(int(nsf.Fd())))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = g.Close() })

	cfg := GuardConfig{
		Allow:      []netip.Prefix{netip.MustParsePrefix("192.0.2.3/32"), netip.MustParsePrefix("2001:db8::/64")},
		RateLimits: []RateLimit{{Name: "sip-public", Dest: netip.MustParseAddrPort("192.0.2.1:5060"), Rate: 10, Per: time.Second, Burst: 5}},
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

	// IPv6 bans go to ban6.
	if err := g.Ban(netip.MustParseAddr("2001:db8:1::9"), time.Minute); err != nil {
		t.Fatal(err)
	}
	if els := l.setElements(ban6Set); len(els) != 1 || !strings.Contains(els[0], "2001:db8:1::9") {
		t.Fatalf("ban6: %v", els)
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
