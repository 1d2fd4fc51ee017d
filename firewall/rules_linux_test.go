//go:build linux

package firewall

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
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
	type rule struct {
		nft   string
		chain *nftables.Chain
		exprs []expr.Any
		// encoded is the rule as elemConn.rule sends it, for rules the
		// client library cannot encode.
		encoded [][]byte
	}
	var cases []rule
	for _, fo := range o.families() {
		v, ip := fo.fam.suffix, "ip"
		if v == "6" {
			ip = "ip6"
		}
		cases = append(cases,
			rule{fmt.Sprintf("add rule inet edgesbc media_notrack_in meta nfproto ipv%s meta l4proto udp %s saddr . udp sport . %s daddr . udp dport map @media_snat%s return", v, ip, ip, v),
				o.notrackIn, fo.offloadedReturn(), nil},
			rule{fmt.Sprintf("add rule inet edgesbc media_notrack_in meta nfproto ipv%s meta l4proto udp %s daddr @media_local%s udp dport 20000-29999 notrack", v, ip, v),
				o.notrackIn, fo.notrackInRule(lo, hi), nil},
			rule{fmt.Sprintf("add rule inet edgesbc media_notrack_out meta nfproto ipv%s meta l4proto udp %s saddr @media_local%s udp sport 20000-29999 notrack", v, ip, v),
				o.notrackOut, fo.notrackOutRule(lo, hi), nil},
			rule{fmt.Sprintf("add rule inet edgesbc media_count meta nfproto ipv%s meta l4proto udp ct status confirmed %s saddr . udp sport . %s daddr . udp dport map @media_dnat%s", v, ip, ip, v),
				o.countC, fo.countRule(), nil},
			rule{fmt.Sprintf("add rule inet edgesbc media_dnat meta nfproto ipv%s meta l4proto udp dnat %s to %s saddr . udp sport . %s daddr . udp dport map @media_dnat%s", v, ip, ip, ip, v),
				o.dnatChain, fo.dnatRule(), nil},
			rule{fmt.Sprintf("add rule inet edgesbc media_snat meta nfproto ipv%s meta l4proto udp snat %s to ct original %s saddr . ct original proto-src . ct original %s daddr . ct original proto-dst map @media_snat%s", v, ip, ip, ip, v),
				o.snatChain, nil, snatRule(t, fo)},
			rule{fmt.Sprintf("add rule inet edgesbc media_pin meta nfproto ipv%s meta l4proto udp %s daddr @media_closed%s udp dport 20000-29999 %s daddr . udp dport . %s saddr != @media_pin%s counter drop", v, ip, v, ip, ip, v),
				o.pinChain, fo.pinRule(lo, hi), nil},
		)
	}
	var got strings.Builder
	for _, c := range cases {
		if c.encoded != nil {
			e := &elemConn{table: TableName}
			e.begin()
			off := len(e.out)
			e.rule(c.chain.Name, c.encoded)
			if err := e.seal(); err != nil {
				t.Fatalf("%s: %v", c.nft, err)
			}
			// The rule message without its header, as recordConn keeps
			// them, between the batch's begin and end.
			n := int(binary.NativeEndian.Uint32(e.out[off:]))
			fmt.Fprintf(&got, "# %s\n", c.nft)
			fmt.Fprintf(&got, "0000000a\n%s\n0000000a\n", hex.EncodeToString(e.out[off+16:off+n]))
			continue
		}
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
	dnat, snat := flowElements(f)
	conn, msgs := recordConn(t)
	for _, x := range []struct {
		s *nftables.Set
		e []nftables.SetElement
	}{{o.v4.dnat, dnat}, {o.v4.snat, snat}} {
		if err := conn.SetAddElements(x.s, x.e); err != nil {
			t.Fatal(err)
		}
	}
	if err := conn.Flush(); err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(&got, "# add element inet edgesbc media_dnat4 { 10.91.1.2 . 4000 . 10.91.1.1 . 20000 : 203.0.113.2 . 5000, 203.0.113.2 . 5000 . 203.0.113.1 . 20002 : 10.91.1.2 . 4000 }\n")
	fmt.Fprintf(&got, "# add element inet edgesbc media_snat4 { 10.91.1.2 . 4000 . 10.91.1.1 . 20000 : 203.0.113.1 . 20002, 203.0.113.2 . 5000 . 203.0.113.1 . 20002 : 10.91.1.1 . 20000 }\n")
	for _, m := range *msgs {
		fmt.Fprintf(&got, "%s\n", hex.EncodeToString(m))
	}

	// Pinholes of both families.
	conn, msgs = recordConn(t)
	if err := conn.SetAddElements(o.v4.pin, []nftables.SetElement{{Key: pinKey(netip.MustParseAddrPort("203.0.113.1:20002"), netip.MustParseAddr("203.0.113.2"))}}); err != nil {
		t.Fatal(err)
	}
	if err := conn.SetAddElements(o.v6.pin, []nftables.SetElement{{Key: pinKey(netip.MustParseAddrPort("[2001:db8:2::1]:20003"), netip.MustParseAddr("2001:db8:2::2"))}}); err != nil {
		t.Fatal(err)
	}
	if err := conn.Flush(); err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(&got, "# add element inet edgesbc media_pin4 { 203.0.113.1 . 20002 . 203.0.113.2 }\n")
	fmt.Fprintf(&got, "# add element inet edgesbc media_pin6 { 2001:db8:2::1 . 20003 . 2001:db8:2::2 }\n")
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

func snatRule(t *testing.T, fo *famObjects) [][]byte {
	t.Helper()
	b, err := fo.snatRule()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestFlowElements(t *testing.T) {
	f := media.Flow{
		Src:   netip.MustParseAddrPort("10.91.1.2:4000"),
		Local: netip.MustParseAddrPort("10.91.1.1:20000"),
		Out:   netip.MustParseAddrPort("203.0.113.1:20002"),
		Dst:   netip.MustParseAddrPort("203.0.113.2:5000"),
	}
	dnat, snat := flowElements(f)
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
	// Each leaves from the relay port facing its destination, chosen by
	// the tuple it arrived with (the conntrack entry's original one).
	check("snat", decode(snat), []kv{{"10.91.1.2:4000", "10.91.1.1:20000", "203.0.113.1:20002"}, {"203.0.113.2:5000", "203.0.113.1:20002", "10.91.1.1:20000"}})

	if _, _, ok := parseTupleKey([]byte{1, 2, 3}); ok {
		t.Error("parseTupleKey accepted a short key")
	}
	addrs := []netip.Addr{netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("::ffff:10.0.0.1"), netip.MustParseAddr("2001:db8::1")}
	if got := localElements(addrs, true); len(got) != 1 {
		t.Errorf("localElements(IPv4): %d elements, want 1 (deduplicated, mapped form folded)", len(got))
	}
	if got := localElements(addrs, false); len(got) != 1 || len(got[0].Key) != 16 {
		t.Errorf("localElements(IPv6): %v, want one 16-byte address", got)
	}

	// IPv6: 40-byte keys, 20-byte targets, the same algebra.
	f6 := media.Flow{
		Src:   netip.MustParseAddrPort("[2001:db8:1::2]:4000"),
		Local: netip.MustParseAddrPort("[2001:db8:1::1]:20000"),
		Out:   netip.MustParseAddrPort("[2001:db8:2::1]:20002"),
		Dst:   netip.MustParseAddrPort("[2001:db8:2::2]:5000"),
	}
	d6, _ := flowElements(f6)
	if len(d6[0].Key) != 40 || len(d6[0].Val) != 20 {
		t.Fatalf("IPv6 dnat element: key %d bytes, value %d; want 40 and 20", len(d6[0].Key), len(d6[0].Val))
	}
	if src, dst, ok := parseTupleKey(d6[1].Key); !ok || src != f6.Dst || dst != f6.Out {
		t.Errorf("IPv6 reverse dnat key decodes to %v . %v, want %v . %v", src, dst, f6.Dst, f6.Out)
	}
	if k := pinKey(netip.MustParseAddrPort("[2001:db8:2::1]:20003"), netip.MustParseAddr("2001:db8:2::2")); len(k) != 36 || k[16] != 0x4e || k[17] != 0x23 {
		t.Errorf("IPv6 pinhole key %x: want 36 bytes with the port at 16", k)
	}
	if k := pinKey(netip.MustParseAddrPort("203.0.113.1:20002"), netip.MustParseAddr("203.0.113.2")); len(k) != 12 || k[4] != 0x4e || k[5] != 0x22 || k[8] != 203 {
		t.Errorf("IPv4 pinhole key %x: want address, padded port, address in 12 bytes", k)
	}
	if !oneFamily(f) || !oneFamily(f6) {
		t.Error("oneFamily refused a single-family flow")
	}
	if mixed := (media.Flow{Src: f.Src, Local: f.Local, Out: f6.Out, Dst: f6.Dst}); oneFamily(mixed) {
		t.Errorf("oneFamily accepted %v", mixed)
	}
}
