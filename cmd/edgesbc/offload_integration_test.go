//go:build linux

package main_test

import (
	"context"
	"encoding/json"
	"net/netip"
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
	l := newLabWith(t, func(topo *testenv.Topology) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if out, err := topo.SBC.Command(ctx, "sysctl", "-qw", "net.ipv4.ip_forward=1").CombinedOutput(); err != nil {
			t.Fatalf("enable forwarding: %v: %s", err, out)
		}
	})
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
	for _, side := range []struct {
		name      string
		pkts      []testenv.Packet
		sbc, peer netip.Addr
	}{
		{"pbx", pbxPkts, l.sbcPrivate.Addr(), l.pbx.addr},
		{"carrier", carrierPkts, l.sbcPublic.Addr(), l.carrier.addr},
	} {
		r := checkRTP(side.pkts, side.sbc, side.peer, l.media, sipPort)
		if r.ToPeer < minRTP || r.FromPeer < minRTP {
			t.Errorf("%s link: %d RTP packets from the SBC's media ports, %d back; want at least %d each way",
				side.name, r.ToPeer, r.FromPeer, minRTP)
		}
		for _, s := range r.Strays {
			t.Errorf("%s link: media not from the SBC's ports: %s", side.name, s)
		}
	}
}

// nftCount counts the elements of a set or map of table inet edgesbc in ns.
func nftCount(t *testing.T, ns *testenv.Netns, kind, name string) int {
	t.Helper()
	var n int
	nftWalk(t, ns, kind, name, func(elem map[string]any) { n++ })
	return n
}

// nftCounted sums the packet counters of media_count4 in ns.
func nftCounted(t *testing.T, ns *testenv.Netns) uint64 {
	t.Helper()
	var sum uint64
	nftWalk(t, ns, "set", "media_count4", func(elem map[string]any) {
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
			m, _ := e.(map[string]any)
			if inner, ok := m["elem"].(map[string]any); ok {
				m = inner
			}
			fn(m)
		}
	}
}
