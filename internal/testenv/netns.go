package testenv

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Bounds for the ip(8) calls that build and remove namespaces. They are far
// above what the kernel needs, so hitting one means the machine is wedged.
const (
	ipCommandTimeout  = 10 * time.Second
	netnsDrainTimeout = 5 * time.Second
	pollInterval      = 50 * time.Millisecond
)

// maxIfName is the longest interface name the kernel accepts (IFNAMSIZ - 1).
const maxIfName = 15

// Netns is a named network namespace created for one test. Programs run in
// it through Command; it is deleted, with every process still inside it, in
// the test's cleanup.
type Netns struct {
	// Name is the namespace's name under /run/netns, as ip-netns(8) uses it.
	Name string
}

// NewNetns creates a namespace named prefix plus a random suffix, so tests
// running at the same time (several packages under go test ./...) never
// collide, and brings its loopback up. Interface names are chosen by the
// caller of Link and are not derived from the namespace name.
func NewNetns(t testing.TB, prefix string) *Netns {
	t.Helper()
	var (
		name string
		err  error
	)
	// A clash with a leftover namespace is possible but unlikely; retry a
	// few times with fresh suffixes.
	for range 5 {
		name = prefix + "-" + randomSuffix()
		if err = ipRun("netns", "add", name); err == nil {
			break
		}
	}
	if err != nil {
		t.Fatalf("create netns %s: %v", name, err)
	}
	ns := &Netns{Name: name}
	t.Cleanup(func() {
		if err := ns.remove(); err != nil {
			t.Errorf("remove netns %s: %v", name, err)
		}
	})
	if err := ipRun("-n", name, "link", "set", "lo", "up"); err != nil {
		t.Fatalf("netns %s: bring lo up: %v", name, err)
	}
	return ns
}

// Command returns a command that runs name inside the namespace. ip netns
// exec replaces itself with the program, so the returned command's process
// is the program itself: signals sent to it reach the program directly.
func (n *Netns) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", n.Name, name}, args...)...)
}

// String returns the namespace name.
func (n *Netns) String() string { return n.Name }

// WaitUDPPort waits until some socket in the namespace is bound to UDP port
// port, on any address, or ctx ends. It lets a test start a server and be
// sure the server listens before the client sends its first datagram.
func (n *Netns) WaitUDPPort(ctx context.Context, port uint16) error {
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	for {
		out, err := n.Command(ctx, "cat", "/proc/net/udp", "/proc/net/udp6").Output()
		if err == nil && udpPortBound(string(out), port) {
			return nil
		}
		select {
		case <-ctx.Done():
			if err != nil {
				return fmt.Errorf("netns %s: wait for udp port %d: %w (last read: %v)", n.Name, port, ctx.Err(), err)
			}
			return fmt.Errorf("netns %s: wait for udp port %d: %w", n.Name, port, ctx.Err())
		case <-tick.C:
		}
	}
}

// WaitTCPPort waits until some socket in the namespace listens on TCP port
// port, on any address, or ctx ends.
func (n *Netns) WaitTCPPort(ctx context.Context, port uint16) error {
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	for {
		out, err := n.Command(ctx, "cat", "/proc/net/tcp", "/proc/net/tcp6").Output()
		if err == nil && tcpPortListening(string(out), port) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("netns %s: wait for tcp port %d: %w", n.Name, port, ctx.Err())
		case <-tick.C:
		}
	}
}

// Pids returns the processes running inside the namespace.
func (n *Netns) Pids() ([]int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), ipCommandTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ip", "netns", "pids", n.Name).Output()
	if err != nil {
		return nil, fmt.Errorf("list pids of netns %s: %w", n.Name, commandError(err))
	}
	var pids []int
	for _, f := range strings.Fields(string(out)) {
		pid, err := strconv.Atoi(f)
		if err != nil {
			return nil, fmt.Errorf("list pids of netns %s: parse %q: %w", n.Name, f, err)
		}
		pids = append(pids, pid)
	}
	return pids, nil
}

// remove kills whatever still runs inside the namespace, waits for those
// processes to be gone (a live process keeps the namespace and its veth
// pairs alive after the name is deleted), and deletes the namespace.
func (n *Netns) remove() error {
	deadline := time.Now().Add(netnsDrainTimeout)
	for {
		pids, err := n.Pids()
		if err != nil {
			return err
		}
		if len(pids) == 0 {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("processes %v still running after SIGKILL", pids)
		}
		for _, pid := range pids {
			// ESRCH: it exited on its own meanwhile.
			if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
				return fmt.Errorf("kill pid %d: %w", pid, err)
			}
		}
		time.Sleep(pollInterval)
	}
	return ipRun("netns", "del", n.Name)
}

// Link creates a veth pair with one end, aIf, inside a and the other, bIf,
// inside b, assigns the addresses and brings both ends up. The pair is
// created directly in the two namespaces, so nothing appears in the host's
// namespace even for a moment, and it disappears with either namespace.
func Link(t testing.TB, a *Netns, aIf string, aAddr netip.Prefix, b *Netns, bIf string, bAddr netip.Prefix) {
	t.Helper()
	for _, name := range []string{aIf, bIf} {
		if name == "" || len(name) > maxIfName {
			t.Fatalf("link %s/%s - %s/%s: interface name %q must have 1 to %d characters", a, aIf, b, bIf, name, maxIfName)
		}
	}
	if err := ipRun("link", "add", aIf, "netns", a.Name, "type", "veth", "peer", "name", bIf, "netns", b.Name); err != nil {
		t.Fatalf("link %s/%s - %s/%s: %v", a, aIf, b, bIf, err)
	}
	for _, end := range []struct {
		ns   *Netns
		name string
		addr netip.Prefix
	}{{a, aIf, aAddr}, {b, bIf, bAddr}} {
		if err := ipRun("-n", end.ns.Name, "addr", "add", end.addr.String(), "dev", end.name); err != nil {
			t.Fatalf("link %s/%s: add address %v: %v", end.ns, end.name, end.addr, err)
		}
		if err := ipRun("-n", end.ns.Name, "link", "set", end.name, "up"); err != nil {
			t.Fatalf("link %s/%s: set up: %v", end.ns, end.name, err)
		}
	}
}

// Topology is the three-namespace lab of the SBC integration tests:
//
//	PBX 10.91.1.2 ── 10.91.1.1 [ SBC ] 203.0.113.1 ── 203.0.113.2 Carrier
//
// IP forwarding stays off in the SBC namespace, so the only way between the
// PBX and the carrier is through a program in the SBC namespace that
// terminates and re-originates the traffic: the SBC under test.
type Topology struct {
	PBX, SBC, Carrier *Netns

	// Addresses with their prefix length, as configured on the interfaces.
	PBXAddr        netip.Prefix // on PBXIf in PBX
	SBCPrivateAddr netip.Prefix // on SBCPrivateIf in SBC
	SBCPublicAddr  netip.Prefix // on SBCPublicIf in SBC
	CarrierAddr    netip.Prefix // on CarrierIf in Carrier

	// Interface names, each inside its own namespace.
	PBXIf, SBCPrivateIf, SBCPublicIf, CarrierIf string
}

// NewTopology builds the PBX, SBC and carrier namespaces and the two links
// between them, with the addresses of examples/edgesbc.hcl.
func NewTopology(t testing.TB) *Topology {
	t.Helper()
	topo := &Topology{
		PBX:            NewNetns(t, "esbc-pbx"),
		SBC:            NewNetns(t, "esbc-sbc"),
		Carrier:        NewNetns(t, "esbc-carrier"),
		PBXAddr:        netip.MustParsePrefix("10.91.1.2/24"),
		SBCPrivateAddr: netip.MustParsePrefix("10.91.1.1/24"),
		SBCPublicAddr:  netip.MustParsePrefix("203.0.113.1/24"),
		CarrierAddr:    netip.MustParsePrefix("203.0.113.2/24"),
		PBXIf:          "eth-sbc",
		SBCPrivateIf:   "eth-pbx",
		SBCPublicIf:    "eth-carrier",
		CarrierIf:      "eth-sbc",
	}
	// A new namespace starts with forwarding off unless the host set
	// net.core.devconf_inherit_init_net; make it explicit either way.
	if err := setForwarding(topo.SBC, false); err != nil {
		t.Fatal(err)
	}
	Link(t, topo.PBX, topo.PBXIf, topo.PBXAddr, topo.SBC, topo.SBCPrivateIf, topo.SBCPrivateAddr)
	Link(t, topo.SBC, topo.SBCPublicIf, topo.SBCPublicAddr, topo.Carrier, topo.CarrierIf, topo.CarrierAddr)
	return topo
}

// setForwarding writes net.ipv4.ip_forward inside ns and reads it back.
// /proc/sys/net belongs to the namespace of the process that opens it,
// hence the shell run inside ns.
func setForwarding(ns *Netns, on bool) error {
	v := "0"
	if on {
		v = "1"
	}
	ctx, cancel := context.WithTimeout(context.Background(), ipCommandTimeout)
	defer cancel()
	out, err := ns.Command(ctx, "sh", "-c", "echo "+v+" > /proc/sys/net/ipv4/ip_forward && cat /proc/sys/net/ipv4/ip_forward").Output()
	if err != nil {
		return fmt.Errorf("netns %s: set ip_forward=%s: %w", ns, v, commandError(err))
	}
	if got := strings.TrimSpace(string(out)); got != v {
		return fmt.Errorf("netns %s: ip_forward is %q after writing %s", ns, got, v)
	}
	return nil
}

// ipRun runs ip(8) in the host namespace with a bound on its run time.
func ipRun(args ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), ipCommandTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return nil
}

// commandError adds a failed command's stderr to its error.
func commandError(err error) error {
	var ee *exec.ExitError
	if errors.As(err, &ee) && len(ee.Stderr) > 0 {
		return fmt.Errorf("%w: %s", err, strings.TrimSpace(string(ee.Stderr)))
	}
	return err
}

func randomSuffix() string {
	var b [3]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails on Linux
	return hex.EncodeToString(b[:])
}
