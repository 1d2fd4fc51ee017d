//go:build linux

package main_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edgesbc/edgesbc/internal/testenv"
)

// TestIntegrationKernelOffload runs a call with RTP both ways through a
// daemon whose namespace forwards IPv4, so kernel offload is on: the
// stream must be handed to the kernel during the call, the kernel's
// counters must count it, both parties must still get every packet from
// the SBC's own media ports, and after the call no element is left.
func TestIntegrationKernelOffload(t *testing.T) {
	testenv.RequireTool(t, "nft")
	l := newLabWith(t, integrationConfig, forwarding)
	base := l.daemon.Status(t)
	if !base.KernelOffload {
		t.Fatalf("status %+v: kernel offload is off although the namespace forwards", base)
	}

	done := make(chan struct{})
	go func() {
		defer close(done)
		l.call(t, sbcCases[0]) // pbx_to_carrier_rtp: 100 packets played, echoed back
	}()
	var maxOffloaded int
	var maxKernelPackets uint64
	for polling := true; polling; {
		select {
		case <-done:
			polling = false
		case <-time.After(100 * time.Millisecond):
		}
		if st, err := l.daemon.QueryStatus(); err == nil {
			maxOffloaded = max(maxOffloaded, st.Offloaded)
		}
		maxKernelPackets = max(maxKernelPackets, nftCounted(t, l.topo.SBC))
	}
	if maxOffloaded == 0 {
		t.Error("the daemon never reported an offloaded stream during the call")
	}
	if maxKernelPackets < minRTP {
		t.Errorf("the kernel counted at most %d packets of the call, want at least %d", maxKernelPackets, minRTP)
	}
	t.Logf("offloaded streams: %d at most; kernel-forwarded packets: %d", maxOffloaded, maxKernelPackets)

	l.assertIdle(t, base)
	for _, name := range []string{"media_dnat4", "media_snat4"} {
		if n := nftCount(t, l.topo.SBC, "map", name); n != 0 {
			t.Errorf("after the call, map %s holds %d elements", name, n)
		}
	}
	carrierPkts, pbxPkts := l.stopCaptures(t)
	l.checkRelayedRTP(t, carrierPkts, pbxPkts)
}

// forwarding turns IPv4 forwarding on in the SBC namespace, which kernel
// offload needs (the topology starts with it off).
func forwarding(t testing.TB, topo *testenv.Topology) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if out, err := topo.SBC.Command(ctx, "sysctl", "-qw", "net.ipv4.ip_forward=1").CombinedOutput(); err != nil {
		t.Fatalf("enable forwarding in %s: %v: %s", topo.SBC, err, out)
	}
}

// nftCount counts the elements of a set or map of table inet edgesbc in ns.
func nftCount(t *testing.T, ns *testenv.Netns, kind, name string) int {
	t.Helper()
	var n int
	nftWalk(t, ns, kind, name, func(elem map[string]any) { n++ })
	return n
}

// nftCounted sums the packet counters of media_dnat4 in ns.
func nftCounted(t *testing.T, ns *testenv.Netns) uint64 {
	t.Helper()
	var sum uint64
	nftWalk(t, ns, "map", "media_dnat4", func(elem map[string]any) {
		if c, ok := elem["counter"].(map[string]any); ok {
			if p, ok := c["packets"].(float64); ok {
				sum += uint64(p)
			}
		}
	})
	return sum
}

// nftWalk calls fn for every element of the set or map, as nft -j lists it.
func nftWalk(t *testing.T, ns *testenv.Netns, kind, name string, fn func(map[string]any)) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := ns.Command(ctx, "nft", "-j", "list", kind, "inet", "edgesbc", name).Output()
	if err != nil {
		t.Fatalf("nft list %s %s: %v", kind, name, err)
	}
	var doc struct {
		Nftables []map[string]struct {
			Elem []any `json:"elem"`
		} `json:"nftables"`
	}
	if err := json.Unmarshal(out, &doc); err != nil {
		t.Fatalf("parse nft output: %v", err)
	}
	for _, o := range doc.Nftables {
		for _, e := range o[kind].Elem {
			if pair, ok := e.([]any); ok && len(pair) == 2 {
				e = pair[0] // a map's key and value
			}
			m, _ := e.(map[string]any)
			if inner, ok := m["elem"].(map[string]any); ok {
				m = inner
			}
			fn(m)
		}
	}
}

// TestIntegrationKernelMediaTimeout ends a call whose RTP stops while the
// kernel forwards it: the relay sees no packet at all then, so only the
// kernel's counters can tell the stream went silent. Both parties must get
// a BYE once media.timeout passes.
func TestIntegrationKernelMediaTimeout(t *testing.T) {
	testenv.RequireTool(t, "nft")
	testenv.Integration(t)
	testenv.RequireTool(t, "sipp")
	testenv.RequireTool(t, "tcpdump")
	cfg, err := os.ReadFile(integrationConfig)
	if err != nil {
		t.Fatal(err)
	}
	short := strings.Replace(string(cfg), `timeout    = "60s"`, `timeout    = "3s"`, 1)
	if short == string(cfg) {
		t.Fatalf("%s: no media timeout line to shorten", integrationConfig)
	}
	topo := testenv.NewTopology(t)
	forwarding(t, topo)
	d := testenv.StartDaemon(t, topo.SBC, short)
	pbx := endpoint{topo.PBX, topo.PBXAddr.Addr()}
	carrier := endpoint{topo.Carrier, topo.CarrierAddr.Addr()}
	pair := scenarioPair{name: "silent_after_audio", uac: "uac_media_expect_bye.xml", uas: "uas.xml",
		service: "15551234567", uasArgs: []string{"-rtp_echo"}, rtp: true}

	done := make(chan struct{})
	go func() {
		defer close(done)
		runCall(t, pbx, carrier, netip.AddrPortFrom(topo.SBCPrivateAddr.Addr(), sipPort), pair)
	}()
	offloaded := 0
	for polling := true; polling; {
		select {
		case <-done:
			polling = false
		case <-time.After(100 * time.Millisecond):
		}
		if st, err := d.QueryStatus(); err == nil {
			offloaded = max(offloaded, st.Offloaded)
		}
	}
	if offloaded == 0 {
		t.Error("the stream was never offloaded: the timeout was not detected from kernel counters")
	}
	if log := d.Log(); !strings.Contains(log, `reason="media timeout"`) || !strings.Contains(log, "rtp_offloaded=") {
		t.Errorf("no CDR with reason \"media timeout\" and kernel counters in the daemon log:\n%s", log)
	}
}

// TestIntegrationKeepOnRestart kills the daemon with SIGKILL in the middle
// of a call with RTP and starts it again (media.keep_on_restart): the audio
// the kernel forwards never stops, the restarted daemon takes the call over
// and relays the caller's BYE, and it ends up idle with no kernel flow left.
func TestIntegrationKeepOnRestart(t *testing.T) {
	testenv.RequireTool(t, "nft")
	cfgText, err := os.ReadFile(integrationConfig)
	if err != nil {
		t.Fatal(err)
	}
	state := t.TempDir()
	kept := strings.Replace(string(cfgText), "media {", "media {\n  keep_on_restart = true", 1)
	kept += fmt.Sprintf("\nstate_dir = %q\n", state)
	if kept == string(cfgText) {
		t.Fatal("no media block to extend")
	}
	path := filepath.Join(t.TempDir(), "keep.hcl")
	if err := os.WriteFile(path, []byte(kept), 0o644); err != nil {
		t.Fatal(err)
	}
	l := newLabWith(t, path, forwarding)
	pair := scenarioPair{name: "call_across_restart", uac: "uac_keep.xml", uas: "uas.xml",
		service: "15551234567", uasArgs: []string{"-rtp_echo"}, rtp: true}

	done := make(chan struct{})
	go func() {
		defer close(done)
		l.call(t, sbcCase{scenarioPair: pair})
	}()
	if _, ok := l.daemon.WaitStatus(5*time.Second, func(s testenv.Status) bool { return s.Offloaded > 0 }); !ok {
		t.Fatal("the call's stream was never offloaded")
	}
	time.Sleep(1500 * time.Millisecond) // the keeper writes the call within a second
	if err := l.daemon.Kill(); err != nil {
		t.Fatal(err)
	}
	l.daemon = testenv.StartDaemon(t, l.topo.SBC, kept)
	st, ok := l.daemon.WaitStatus(5*time.Second, func(s testenv.Status) bool { return s.Calls == 1 })
	if !ok {
		t.Fatalf("restarted daemon: %+v, want the call restored\n%s", st, l.daemon.Log())
	}
	<-done // both SIPp parties finished: the BYE went through the new daemon

	l.assertIdle(t, testenv.Status{Goroutines: st.Goroutines})
	for _, name := range []string{"media_dnat4", "media_snat4"} {
		if n := nftCount(t, l.topo.SBC, "map", name); n != 0 {
			t.Errorf("after the call, map %s holds %d elements", name, n)
		}
	}
	carrierPkts, pbxPkts := l.stopCaptures(t)
	// Every packet the caller played reached the callee and every echo
	// came back, although the daemon was dead for part of the call.
	for _, side := range []struct {
		name      string
		pkts      []testenv.Packet
		sbc, peer netip.Addr
	}{
		{"pbx", pbxPkts, l.sbcPrivate.Addr(), l.pbx.addr},
		{"carrier", carrierPkts, l.sbcPublic.Addr(), l.carrier.addr},
	} {
		r := checkRTP(side.pkts, side.sbc, side.peer, l.media, sipPort)
		if r.ToPeer < rtpPackets || r.FromPeer < rtpPackets {
			t.Errorf("%s link: %d RTP packets to the %s, %d from it; want all %d each way",
				side.name, r.ToPeer, side.name, r.FromPeer, rtpPackets)
		}
	}
	if log := l.daemon.Log(); !strings.Contains(log, "call restored") || !strings.Contains(log, `reason="caller bye"`) {
		t.Errorf("restarted daemon did not restore the call and log its end:\n%s", log)
	}
}
