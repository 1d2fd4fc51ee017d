//go:build linux

package testenv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// helperEnv makes the test binary act as a tiny UDP tool instead of running
// tests, so namespaces can be exercised without netcat or socat installed.
const helperEnv = "TESTENV_UDP_HELPER"

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) == "1" {
		os.Exit(udpHelper(os.Args[1:]))
	}
	os.Exit(Main(m))
}

// udpHelper runs one of:
//
//	send SRC DST PAYLOAD   send one datagram from SRC to DST
//	recv ADDR WAIT         print "SRC PAYLOAD" per datagram received on ADDR until WAIT passes
func udpHelper(args []string) int {
	fail := func(err error) int {
		fmt.Fprintln(os.Stderr, err)
		return 3
	}
	switch {
	case len(args) == 4 && args[0] == "send":
		src, err := net.ResolveUDPAddr("udp", args[1])
		if err != nil {
			return fail(err)
		}
		dst, err := net.ResolveUDPAddr("udp", args[2])
		if err != nil {
			return fail(err)
		}
		conn, err := net.ListenUDP("udp", src)
		if err != nil {
			return fail(err)
		}
		defer conn.Close()
		if _, err := conn.WriteToUDP([]byte(args[3]), dst); err != nil {
			return fail(err)
		}
		return 0
	case len(args) == 3 && args[0] == "recv":
		wait, err := time.ParseDuration(args[2])
		if err != nil {
			return fail(err)
		}
		addr, err := net.ResolveUDPAddr("udp", args[1])
		if err != nil {
			return fail(err)
		}
		conn, err := net.ListenUDP("udp", addr)
		if err != nil {
			return fail(err)
		}
		defer conn.Close()
		_ = conn.SetReadDeadline(time.Now().Add(wait))
		buf := make([]byte, 2048)
		for range 100 {
			n, from, err := conn.ReadFromUDPAddrPort(buf)
			if err != nil {
				if errors.Is(err, os.ErrDeadlineExceeded) {
					return 0
				}
				return fail(err)
			}
			fmt.Printf("%v %s\n", from, buf[:n])
		}
		return 0
	}
	return fail(fmt.Errorf("usage: send SRC DST PAYLOAD | recv ADDR WAIT, got %q", args))
}

// helperCmd returns the test binary run as udpHelper inside ns.
func helperCmd(t *testing.T, ctx context.Context, ns *Netns, args ...string) *exec.Cmd {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := ns.Command(ctx, exe, args...)
	cmd.Env = append(os.Environ(), helperEnv+"=1")
	return cmd
}

// sendUDP sends payload from src to dst inside ns and returns the helper's
// error output if the send failed.
func sendUDP(t *testing.T, ns *Netns, src, dst netip.AddrPort, payload string) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := helperCmd(t, ctx, ns, "send", src.String(), dst.String(), payload).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%w: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}

// receiver listens on addr inside ns for wait and returns what it got.
type receiver struct {
	cmd *exec.Cmd
	out bytes.Buffer
}

func startReceiver(t *testing.T, ns *Netns, addr netip.AddrPort, wait time.Duration) *receiver {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait+10*time.Second)
	t.Cleanup(cancel)
	r := &receiver{cmd: helperCmd(t, ctx, ns, "recv", addr.String(), wait.String())}
	r.cmd.Stdout = &r.out
	r.cmd.Stderr = &r.out
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	readyCtx, readyCancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer readyCancel()
	if err := ns.WaitUDPPort(readyCtx, addr.Port()); err != nil {
		t.Fatal(err)
	}
	return r
}

func (r *receiver) lines(t *testing.T) []string {
	t.Helper()
	if err := r.cmd.Wait(); err != nil {
		t.Fatalf("receiver: %v: %s", err, r.out.String())
	}
	return strings.Fields(strings.ReplaceAll(r.out.String(), "\n", " "))
}

func TestIntegrationTopology(t *testing.T) {
	Integration(t)
	RequireTool(t, "ip")
	RequireTool(t, "tcpdump")
	topo := NewTopology(t)

	pbx, sbcPriv := topo.PBXAddr.Addr(), topo.SBCPrivateAddr.Addr()
	sbcPub, carrier := topo.SBCPublicAddr.Addr(), topo.CarrierAddr.Addr()
	pbxCap := StartCapture(t, topo.PBX, topo.PBXIf, "udp")
	carrierCap := StartCapture(t, topo.Carrier, topo.CarrierIf, "udp")

	// Each side reaches the SBC on its own link.
	for _, tc := range []struct {
		from, to *Netns
		src, dst netip.AddrPort
		payload  string
	}{
		{topo.PBX, topo.SBC, netip.AddrPortFrom(pbx, 40001), netip.AddrPortFrom(sbcPriv, 40000), "hello-private"},
		{topo.Carrier, topo.SBC, netip.AddrPortFrom(carrier, 40001), netip.AddrPortFrom(sbcPub, 40000), "hello-public"},
	} {
		r := startReceiver(t, tc.to, tc.dst, time.Second)
		if err := sendUDP(t, tc.from, tc.src, tc.dst, tc.payload); err != nil {
			t.Fatalf("send %v > %v: %v", tc.src, tc.dst, err)
		}
		got := r.lines(t)
		if want := []string{tc.src.String(), tc.payload}; strings.Join(got, " ") != strings.Join(want, " ") {
			t.Errorf("%v received %q, want %q", tc.dst, got, want)
		}
	}

	// The carrier has no route to the private net...
	leak := netip.AddrPortFrom(pbx, 40000)
	err := sendUDP(t, topo.Carrier, netip.AddrPortFrom(carrier, 40002), leak, "leak")
	if err == nil || !strings.Contains(err.Error(), "unreachable") {
		t.Errorf("carrier > pbx without a route: err = %v, want network unreachable", err)
	}
	// ...and with one through the SBC, the SBC does not forward.
	if err := ipRun("-n", topo.Carrier.Name, "route", "add", "10.91.1.0/24", "via", sbcPub.String()); err != nil {
		t.Fatal(err)
	}
	r := startReceiver(t, topo.PBX, leak, time.Second)
	if err := sendUDP(t, topo.Carrier, netip.AddrPortFrom(carrier, 40002), leak, "leak"); err != nil {
		t.Fatalf("carrier > pbx with a route: %v", err)
	}
	if got := r.lines(t); len(got) != 0 {
		t.Errorf("pbx received %q from the carrier: the SBC namespace forwards", got)
	}

	pbxPkts, err := ReadUDP(pbxCap.Stop())
	if err != nil {
		t.Fatal(err)
	}
	carrierPkts, err := ReadUDP(carrierCap.Stop())
	if err != nil {
		t.Fatal(err)
	}
	assertPackets(t, "pbx link", pbxPkts, []string{"10.91.1.2:40001 > 10.91.1.1:40000 hello-private"})
	assertPackets(t, "carrier link", carrierPkts, []string{
		"203.0.113.2:40001 > 203.0.113.1:40000 hello-public",
		"203.0.113.2:40002 > 10.91.1.2:40000 leak",
	})
}

func assertPackets(t *testing.T, where string, pkts []Packet, want []string) {
	t.Helper()
	var got []string
	for _, p := range pkts {
		got = append(got, fmt.Sprintf("%v > %v %s", p.Src, p.Dst, p.Payload))
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("%s captured:\n%s\nwant:\n%s", where, strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// TestIntegrationNetnsCleanup checks that a namespace disappears with its
// test, taking along a process the test left running inside it.
func TestIntegrationNetnsCleanup(t *testing.T) {
	Integration(t)
	var (
		name string
		cmd  *exec.Cmd
		done = make(chan error, 1)
	)
	t.Run("leave a process behind", func(t *testing.T) {
		ns := NewNetns(t, "esbc-test")
		name = ns.Name
		cmd = ns.Command(context.Background(), "sleep", "600")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		go func() { done <- cmd.Wait() }()
		// ip netns exec enters the namespace just after it starts: wait
		// (bounded) until the process is in it.
		var pids []int
		for range 100 {
			var err error
			if pids, err = ns.Pids(); err != nil {
				t.Fatal(err)
			}
			if len(pids) > 0 {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if len(pids) != 1 || pids[0] != cmd.Process.Pid {
			t.Fatalf("pids in %s = %v, want [%d]", name, pids, cmd.Process.Pid)
		}
	})
	select {
	case err := <-done:
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
			t.Errorf("process ended with %v, want killed by SIGKILL", err)
		}
	case <-time.After(5 * time.Second):
		_ = cmd.Process.Kill()
		t.Fatal("process still running after the namespace's cleanup")
	}
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(out), name) {
		t.Errorf("namespace %s still listed after cleanup:\n%s", name, out)
	}
}

// TestIntegrationSIPp runs sipp's built-in scenarios through the harness:
// a call that succeeds, and one that fails because nobody answers.
func TestIntegrationSIPp(t *testing.T) {
	Integration(t)
	RequireTool(t, "sipp")
	a, b := NewNetns(t, "esbc-uac"), NewNetns(t, "esbc-uas")
	Link(t, a, "eth0", netip.MustParsePrefix("192.0.2.1/24"), b, "eth0", netip.MustParsePrefix("192.0.2.2/24"))
	dir := t.TempDir()

	t.Run("call succeeds", func(t *testing.T) {
		uas := StartSIPp(t, b, dir, "-sn", "uas", "-i", "192.0.2.2", "-p", "5060")
		res, err := RunSIPp(t, a, dir, "-sn", "uac", "-i", "192.0.2.1", "-p", "5060", "-s", "100", "-d", "200", "192.0.2.2:5060")
		if err != nil {
			t.Fatal(err)
		}
		if res != (SIPpResult{Exit: 0, Successful: 1}) {
			t.Errorf("uac: %+v, want one successful call", res)
		}
		res, err = uas.Wait()
		if err != nil {
			t.Fatal(err)
		}
		if res != (SIPpResult{Exit: 0, Successful: 1}) {
			t.Errorf("uas: %+v, want one successful call", res)
		}
	})

	t.Run("nobody answers", func(t *testing.T) {
		// One INVITE retransmission, then sipp gives the call up.
		res, err := RunSIPp(t, a, dir, "-sn", "uac", "-i", "192.0.2.1", "-p", "5060", "-s", "100",
			"-max_invite_retrans", "1", "-timeout", "10s", "192.0.2.2:5060")
		if err != nil {
			t.Fatal(err)
		}
		if res != (SIPpResult{Exit: 1, Failed: 1}) {
			t.Errorf("uac: %+v, want exit 1 with one failed call", res)
		}
	})
}
