// Package testenv is the shared harness of the integration tests: network
// namespaces joined by veth pairs, SIPp and tcpdump running inside them, a
// small pcap reader, and the edgesbc daemon built from source and run in a
// namespace of its own.
//
// It owns only test fixtures. Everything it creates (namespaces, processes,
// temporary files) is removed in t.Cleanup, nothing is created in the host's
// own network namespace, and traffic only flows between namespaces the test
// created. The pure parts (pcap, SIPp statistics, /proc/net/udp) are unit
// tested without root; the rest needs root and skips cleanly without it.
//
// Programs enter a namespace through ip netns exec rather than setns(2) in
// the test process: no OS thread of the test ever changes namespace, and
// each program's whole process tree stays inside.
//
// A call through the SBC, in short:
//
//	func TestMain(m *testing.M) { os.Exit(testenv.Main(m)) }
//
//	func TestIntegrationCall(t *testing.T) {
//		testenv.Integration(t)
//		topo := testenv.NewTopology(t)
//		capture := testenv.StartCapture(t, topo.Carrier, topo.CarrierIf, "udp")
//		testenv.StartDaemon(t, topo.SBC, config)
//		callee := testenv.StartSIPp(t, topo.Carrier, "testdata/sipp", "-sf", "uas.xml", "-i", "203.0.113.2", "-p", "5060")
//		res, err := testenv.RunSIPp(t, topo.PBX, "testdata/sipp", "-sf", "uac.xml", "-i", "10.91.1.2", "-p", "5060", "10.91.1.1:5060")
//		...
//		pkts, err := testenv.ReadUDP(capture.Stop())
//	}
package testenv

import (
	"os"
	"os/exec"
	"runtime"
	"testing"
)

// Integration skips t unless it may use the real kernel: not in -short mode,
// on Linux, as root (network namespaces, veth pairs and nftables all need
// CAP_NET_ADMIN and CAP_SYS_ADMIN).
func Integration(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("integration test: skipped in -short mode")
	}
	if runtime.GOOS != "linux" {
		t.Skipf("integration test: needs Linux network namespaces, running on %s", runtime.GOOS)
	}
	if os.Geteuid() != 0 {
		t.Skip("integration test: needs root for netns and nftables; run: sudo make test")
	}
}

// RequireTool skips t when the program name is not in PATH, so a machine
// without sipp or tcpdump reports a skip rather than a failure.
func RequireTool(t testing.TB, name string) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		t.Skipf("integration test: %s not found in PATH", name)
	}
}
