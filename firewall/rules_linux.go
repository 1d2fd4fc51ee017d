//go:build linux

package firewall

import (
	"encoding/binary"
	"net/netip"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/edgesbc/edgesbc/media"
)

// Object names of media offload inside the edgesbc table.
const (
	setLocal4       = "media_local4"
	mapDNAT4        = "media_dnat4"
	mapSNAT4        = "media_snat4"
	setCount4       = "media_count4"
	chainNotrackIn  = "media_notrack_in"
	chainNotrackOut = "media_notrack_out"
	chainDNAT       = "media_dnat"
	chainSNAT       = "media_snat"
	chainCount      = "media_count"
)

// mediaPrefix marks every object media offload owns.
const mediaPrefix = "media_"

// Registers. A concatenated key is loaded into consecutive 32-bit registers,
// each field padded to 4 bytes; a map's data (address . port) comes back in
// the 128-bit register 1, which overlaps 32-bit registers 8 to 11: the
// address lands in register 8 and the port in register 9.
const (
	reg1     = unix.NFT_REG_1
	reg32_00 = unix.NFT_REG32_00
	reg32_01 = unix.NFT_REG32_01
	reg32_02 = unix.NFT_REG32_02
	reg32_03 = unix.NFT_REG32_03
)

var (
	tupleType = nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeInetService,
		nftables.TypeIPAddr, nftables.TypeInetService)
	targetType = nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeInetService)
)

// mediaObjects are the sets and chains of media offload, built for table t.
type mediaObjects struct {
	table                        *nftables.Table
	local, dnat, snat, count     *nftables.Set
	notrackIn, notrackOut        *nftables.Chain
	dnatChain, snatChain, countC *nftables.Chain
}

func newMediaObjects(t *nftables.Table) *mediaObjects {
	return &mediaObjects{
		table: t,
		local: &nftables.Set{Table: t, Name: setLocal4, KeyType: nftables.TypeIPAddr},
		dnat: &nftables.Set{Table: t, Name: mapDNAT4, IsMap: true, Concatenation: true,
			KeyType: tupleType, DataType: targetType},
		snat: &nftables.Set{Table: t, Name: mapSNAT4, IsMap: true, Concatenation: true,
			KeyType: tupleType, DataType: targetType},
		count: &nftables.Set{Table: t, Name: setCount4, Concatenation: true, Counter: true,
			KeyType: tupleType},
		notrackIn: &nftables.Chain{Table: t, Name: chainNotrackIn, Type: nftables.ChainTypeFilter,
			Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityRaw},
		notrackOut: &nftables.Chain{Table: t, Name: chainNotrackOut, Type: nftables.ChainTypeFilter,
			Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityRaw},
		dnatChain: &nftables.Chain{Table: t, Name: chainDNAT, Type: nftables.ChainTypeNAT,
			Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityNATDest},
		countC: &nftables.Chain{Table: t, Name: chainCount, Type: nftables.ChainTypeFilter,
			Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter},
		snatChain: &nftables.Chain{Table: t, Name: chainSNAT, Type: nftables.ChainTypeNAT,
			Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource},
	}
}

// ipv4UDP matches IPv4 UDP packets: meta nfproto ipv4 meta l4proto udp.
func ipv4UDP() []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: reg1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{unix.NFPROTO_IPV4}},
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{unix.IPPROTO_UDP}},
	}
}

// loadTuple loads ip saddr . udp sport . ip daddr . udp dport into 32-bit
// registers 8 to 11.
func loadTuple() []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: reg32_00, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
		&expr.Payload{DestRegister: reg32_01, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 2},
		&expr.Payload{DestRegister: reg32_02, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
		&expr.Payload{DestRegister: reg32_03, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
	}
}

func be16(v int) []byte { return binary.BigEndian.AppendUint16(nil, uint16(v)) }

// portRange matches the port at transport offset off in [lo, hi].
func portRange(off uint32, lo, hi int) []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseTransportHeader, Offset: off, Len: 2},
		&expr.Range{Op: expr.CmpOpEq, Register: reg1, FromData: be16(lo), ToData: be16(hi)},
	}
}

func cat(parts ...[]expr.Any) []expr.Any {
	var out []expr.Any
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

// notrackInRule: meta nfproto ipv4 meta l4proto udp ip daddr @media_local4
// udp dport LO-HI ip saddr . udp sport . ip daddr . udp dport != @media_dnat4 notrack
//
// Packets to the relay's ports that no offloaded flow claims go to the
// relay socket untracked.
func (o *mediaObjects) notrackInRule(lo, hi int) []expr.Any {
	return cat(ipv4UDP(),
		[]expr.Any{
			&expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
			&expr.Lookup{SourceRegister: reg1, SetName: o.local.Name, SetID: o.local.ID},
		},
		portRange(2, lo, hi),
		loadTuple(),
		[]expr.Any{
			&expr.Lookup{SourceRegister: reg32_00, SetName: o.dnat.Name, SetID: o.dnat.ID, Invert: true},
			&expr.Notrack{},
		})
}

// notrackOutRule: meta nfproto ipv4 meta l4proto udp ip saddr @media_local4
// udp sport LO-HI notrack
//
// What the relay sockets send creates no conntrack entry either, so it can
// never hold a tuple an offloaded flow needs.
func (o *mediaObjects) notrackOutRule(lo, hi int) []expr.Any {
	return cat(ipv4UDP(),
		[]expr.Any{
			&expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
			&expr.Lookup{SourceRegister: reg1, SetName: o.local.Name, SetID: o.local.ID},
		},
		portRange(0, lo, hi),
		[]expr.Any{&expr.Notrack{}})
}

// natRule: meta nfproto ipv4 meta l4proto udp
// (dnat|snat) ip to ip saddr . udp sport . ip daddr . udp dport map @m
func natRule(m *nftables.Set, typ expr.NATType) []expr.Any {
	return cat(ipv4UDP(), loadTuple(), []expr.Any{
		&expr.Lookup{SourceRegister: reg32_00, DestRegister: reg1, IsDestRegSet: true, SetName: m.Name, SetID: m.ID},
		&expr.NAT{Type: typ, Family: unix.NFPROTO_IPV4, RegAddrMin: reg1, RegProtoMin: reg32_01, Specified: true},
	})
}

// countRule: meta nfproto ipv4 meta l4proto udp
// ip saddr . udp sport . ip daddr . udp dport @media_count4
//
// In the forward hook a packet of an offloaded flow carries its DNATed
// destination and its original source, so (src . dst) names the direction;
// the matching element's counter counts it.
func (o *mediaObjects) countRule() []expr.Any {
	return cat(ipv4UDP(), loadTuple(), []expr.Any{
		&expr.Lookup{SourceRegister: reg32_00, SetName: o.count.Name, SetID: o.count.ID},
	})
}

// tupleKey encodes src . dst as a concatenated key: each field padded to 4
// bytes, network byte order.
func tupleKey(src, dst netip.AddrPort) []byte {
	k := make([]byte, 0, 16)
	s4, d4 := src.Addr().As4(), dst.Addr().As4()
	k = append(k, s4[:]...)
	k = binary.BigEndian.AppendUint16(k, src.Port())
	k = append(k, 0, 0)
	k = append(k, d4[:]...)
	k = binary.BigEndian.AppendUint16(k, dst.Port())
	return append(k, 0, 0)
}

// parseTupleKey is the inverse of tupleKey.
func parseTupleKey(k []byte) (src, dst netip.AddrPort, ok bool) {
	if len(k) != 16 {
		return src, dst, false
	}
	src = netip.AddrPortFrom(netip.AddrFrom4([4]byte(k[0:4])), binary.BigEndian.Uint16(k[4:6]))
	dst = netip.AddrPortFrom(netip.AddrFrom4([4]byte(k[8:12])), binary.BigEndian.Uint16(k[12:14]))
	return src, dst, true
}

// target encodes a NAT target address . port as map data.
func target(ap netip.AddrPort) []byte {
	a := ap.Addr().As4()
	v := append(make([]byte, 0, 8), a[:]...)
	v = binary.BigEndian.AppendUint16(v, ap.Port())
	return append(v, 0, 0)
}

// flowElements are the elements that put f and its reverse into the
// kernel:
//
//	media_dnat4:  src . local  : dst     and  dst . out   : src
//	media_snat4:  src . dst    : out     and  dst . src   : local
//	media_count4: src . dst              and  dst . src
//
// Whichever direction sends first creates the conntrack entry; the other
// direction is its reply and needs no lookup, but both are listed so
// either may start.
func flowElements(f media.Flow) (dnat, snat, count []nftables.SetElement) {
	r := f.Reverse()
	dnat = []nftables.SetElement{
		{Key: tupleKey(f.Src, f.Local), Val: target(f.Dst)},
		{Key: tupleKey(r.Src, r.Local), Val: target(r.Dst)},
	}
	snat = []nftables.SetElement{
		{Key: tupleKey(f.Src, f.Dst), Val: target(f.Out)},
		{Key: tupleKey(r.Src, r.Dst), Val: target(r.Out)},
	}
	count = []nftables.SetElement{
		{Key: tupleKey(f.Src, f.Dst)},
		{Key: tupleKey(r.Src, r.Dst)},
	}
	return dnat, snat, count
}

// localElements are the relay's IPv4 bind addresses.
func localElements(addrs []netip.Addr) []nftables.SetElement {
	var out []nftables.SetElement
	seen := map[netip.Addr]bool{}
	for _, a := range addrs {
		a = a.Unmap()
		if !a.Is4() || seen[a] {
			continue
		}
		seen[a] = true
		b := a.As4()
		out = append(out, nftables.SetElement{Key: b[:]})
	}
	return out
}
