//go:build linux

package firewall

import (
	"bytes"
	"encoding/hex"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"

	"github.com/edgesbc/edgesbc/media"
)

var update = flag.Bool("update", false, "rewrite the golden files")

// recordConn returns a Conn that encodes without a kernel and the list of
// messages flushed through it.
func recordConn(t *testing.T) (*nftables.Conn, *[][]byte) {
	t.Helper()
	var msgs [][]byte
	c, err := nftables.New(nftables.WithTestDial(func(req []netlink.Message) ([]netlink.Message, error) {
		for _, m := range req {
			b, err := m.MarshalBinary()
			if err != nil {
				return nil, err
			}
			// Strip the header's sequence number and port: they vary.
			msgs = append(msgs, b[16:])
		}
		return req, nil
	}))
	if err != nil {
		t.Fatal(err)
	}
	return c, &msgs
}

// TestMediaRulesGolden pins the netlink encoding of every media rule. Each
// golden entry carries the nft command it stands for;
// TestIntegrationMediaRuleset checks the kernel reads them back as exactly
// that.
func TestMediaRulesGolden(t *testing.T) {
	table := &nftables.Table{Family: nftables.TableFamilyINet, Name: TableName}
	o := newMediaObjects(table)
	const lo, hi = 20000, 29999
	cases := []struct {
		nft   string
		chain *nftables.Chain
		exprs []expr.Any
	}{
		{"add rule inet edgesbc media_notrack_in meta nfproto ipv4 meta l4proto udp ip daddr @media_local4 udp dport 20000-29999 ip saddr . udp sport . ip daddr . udp dport != @media_dnat4 notrack",
			o.notrackIn, o.notrackInRule(lo, hi)},
		{"add rule inet edgesbc media_notrack_out meta nfproto ipv4 meta l4proto udp ip saddr @media_local4 udp sport 20000-29999 notrack",
			o.notrackOut, o.notrackOutRule(lo, hi)},
		{"add rule inet edgesbc media_dnat meta nfproto ipv4 meta l4proto udp dnat ip to ip saddr . udp sport . ip daddr . udp dport map @media_dnat4",
			o.dnatChain, natRule(o.dnat, expr.NATTypeDestNAT)},
		{"add rule inet edgesbc media_count meta nfproto ipv4 meta l4proto udp ip saddr . udp sport . ip daddr . udp dport @media_count4",
			o.countC, o.countRule()},
		{"add rule inet edgesbc media_snat meta nfproto ipv4 meta l4proto udp snat ip to ip saddr . udp sport . ip daddr . udp dport map @media_snat4",
			o.snatChain, natRule(o.snat, expr.NATTypeSourceNAT)},
	}
	var got strings.Builder
	for _, c := range cases {
		conn, msgs := recordConn(t)
		conn.AddRule(&nftables.Rule{Table: table, Chain: c.chain, Exprs: c.exprs})
		if err := conn.Flush(); err != nil {
			t.Fatalf("%s: %v", c.nft, err)
		}
		fmt.Fprintf(&got, "# %s\n", c.nft)
		for _, m := range *msgs {
			fmt.Fprintf(&got, "%s\n", hex.EncodeToString(m))
		}
	}

	// The elements of one flow.
	f := media.Flow{
		Src:   netip.MustParseAddrPort("10.91.1.2:4000"),
		Local: netip.MustParseAddrPort("10.91.1.1:20000"),
		Out:   netip.MustParseAddrPort("203.0.113.1:20002"),
		Dst:   netip.MustParseAddrPort("203.0.113.2:5000"),
	}
	dnat, snat, count := flowElements(f)
	conn, msgs := recordConn(t)
	for _, x := range []struct {
		s *nftables.Set
		e []nftables.SetElement
	}{{o.dnat, dnat}, {o.snat, snat}, {o.count, count}} {
		if err := conn.SetAddElements(x.s, x.e); err != nil {
			t.Fatal(err)
		}
	}
	if err := conn.Flush(); err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(&got, "# add element inet edgesbc media_dnat4 { 10.91.1.2 . 4000 . 10.91.1.1 . 20000 : 203.0.113.2 . 5000, 203.0.113.2 . 5000 . 203.0.113.1 . 20002 : 10.91.1.2 . 4000 }\n")
	fmt.Fprintf(&got, "# add element inet edgesbc media_snat4 { 10.91.1.2 . 4000 . 203.0.113.2 . 5000 : 203.0.113.1 . 20002, 203.0.113.2 . 5000 . 10.91.1.2 . 4000 : 10.91.1.1 . 20000 }\n")
	fmt.Fprintf(&got, "# add element inet edgesbc media_count4 { 10.91.1.2 . 4000 . 203.0.113.2 . 5000, 203.0.113.2 . 5000 . 10.91.1.2 . 4000 }\n")
	for _, m := range *msgs {
		fmt.Fprintf(&got, "%s\n", hex.EncodeToString(m))
	}

	golden := filepath.Join("testdata", "media_rules.golden")
	if *update {
		if err := os.WriteFile(golden, []byte(got.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if !bytes.Equal(want, []byte(got.String())) {
		t.Errorf("netlink encoding differs from %s (rerun with -update after checking the change):\n%s", golden, got.String())
	}
}

func TestFlowElements(t *testing.T) {
	f := media.Flow{
		Src:   netip.MustParseAddrPort("10.91.1.2:4000"),
		Local: netip.MustParseAddrPort("10.91.1.1:20000"),
		Out:   netip.MustParseAddrPort("203.0.113.1:20002"),
		Dst:   netip.MustParseAddrPort("203.0.113.2:5000"),
	}
	dnat, snat, count := flowElements(f)
	type kv struct{ src, dst, to string }
	decode := func(es []nftables.SetElement) []kv {
		var out []kv
		for _, e := range es {
			s, d, ok := parseTupleKey(e.Key)
			if !ok {
				t.Fatalf("key %x does not decode", e.Key)
			}
			to := ""
			if e.Val != nil {
				to = netip.AddrPortFrom(netip.AddrFrom4([4]byte(e.Val[:4])), uint16(e.Val[4])<<8|uint16(e.Val[5])).String()
			}
			out = append(out, kv{s.String(), d.String(), to})
		}
		return out
	}
	check := func(name string, got, want []kv) {
		t.Helper()
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("%s: %v, want %v", name, got, want)
		}
	}
	// A packet from the caller to the relay goes to the callee; the
	// callee's packet to the relay's other port goes to the caller.
	check("dnat", decode(dnat), []kv{{"10.91.1.2:4000", "10.91.1.1:20000", "203.0.113.2:5000"}, {"203.0.113.2:5000", "203.0.113.1:20002", "10.91.1.2:4000"}})
	// After DNAT, each leaves from the relay port facing its destination.
	check("snat", decode(snat), []kv{{"10.91.1.2:4000", "203.0.113.2:5000", "203.0.113.1:20002"}, {"203.0.113.2:5000", "10.91.1.2:4000", "10.91.1.1:20000"}})
	check("count", decode(count), []kv{{"10.91.1.2:4000", "203.0.113.2:5000", ""}, {"203.0.113.2:5000", "10.91.1.2:4000", ""}})

	if _, _, ok := parseTupleKey([]byte{1, 2, 3}); ok {
		t.Error("parseTupleKey accepted a short key")
	}
	if got := localElements([]netip.Addr{netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("::ffff:10.0.0.1"), netip.MustParseAddr("2001:db8::1")}); len(got) != 1 {
		t.Errorf("localElements: %d elements, want 1 (IPv4, deduplicated, mapped form folded)", len(got))
	}
}
