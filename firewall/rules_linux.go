//go:build linux

package firewall

import (
	"encoding/binary"
	"fmt"
	"net/netip"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/edgesbc/edgesbc/media"
)

// mediaPrefix marks every object media offload owns.
const mediaPrefix = "media_"

// Object names of media offload inside the edgesbc table. Sets and maps
// exist per address family (suffix 4 or 6); chains serve both.
const (
	chainNotrackIn  = "media_notrack_in"
	chainNotrackOut = "media_notrack_out"
	chainDNAT       = "media_dnat"
	chainSNAT       = "media_snat"
	chainCount      = "media_count"
	chainPin        = "media_pin"
)

// Registers. A concatenated key is loaded into consecutive 32-bit registers
// from register 8 on, each field padded to a multiple of 4 bytes; a map's
// data (address . port) comes back in the 128-bit register 1, which
// overlaps 32-bit registers 8 to 11: an IPv4 address lands in register 8
// and its port in 9, an IPv6 address fills 8 to 11 and its port is in 12.
const (
	reg1     = unix.NFT_REG_1
	reg32_00 = unix.NFT_REG32_00
)

// family is what differs between IPv4 and IPv6 media offload.
type family struct {
	suffix   string // of set names: "4" or "6"
	nfproto  byte   // meta nfproto
	addrType nftables.SetDatatype
	addrLen  uint32 // bytes of an address
	saddrOff uint32 // offset of the source address in the network header
	daddrOff uint32
}

var (
	inet4 = family{suffix: "4", nfproto: unix.NFPROTO_IPV4, addrType: nftables.TypeIPAddr, addrLen: 4, saddrOff: 12, daddrOff: 16}
	inet6 = family{suffix: "6", nfproto: unix.NFPROTO_IPV6, addrType: nftables.TypeIP6Addr, addrLen: 16, saddrOff: 8, daddrOff: 24}
)

// regs returns the 32-bit registers of the key fields: source address,
// source port, destination address, destination port.
func (fam family) regs() (saddr, sport, daddr, dport uint32) {
	words := fam.addrLen / 4
	saddr = reg32_00
	sport = saddr + words
	daddr = sport + 1
	dport = daddr + words
	return
}

// portReg is where the port of a map's data lands (see the registers).
func (fam family) portReg() uint32 { return reg32_00 + fam.addrLen/4 }

// flowMapSize is the size of each per-flow map: the most directions of
// flows one family can have in the kernel (a relay port receives one
// direction, so a full port range of one address fits). With a size the
// kernel chooses a hash table of fixed buckets (about 1 MB of them here)
// rather than one that grows while thousands of flows are added, which
// makes adding elements cheaper. It is fixed, not derived from the port
// range, so that a restart with another range can still keep the maps.
const flowMapSize = 65536

// famObjects are the sets of one address family.
type famObjects struct {
	fam               family
	local, dnat, snat *nftables.Set
	// closed holds the relay addresses whose media ports only pinholes
	// open; pin holds the pinholes (relay address . port . remote IP).
	closed, pin *nftables.Set
}

// mediaObjects are the sets and chains of media offload, built for table t.
type mediaObjects struct {
	table                        *nftables.Table
	v4, v6                       famObjects
	notrackIn, notrackOut        *nftables.Chain
	countC, dnatChain, snatChain *nftables.Chain
	pinChain                     *nftables.Chain
}

func newFamObjects(t *nftables.Table, fam family) famObjects {
	tuple := nftables.MustConcatSetType(fam.addrType, nftables.TypeInetService, fam.addrType, nftables.TypeInetService)
	target := nftables.MustConcatSetType(fam.addrType, nftables.TypeInetService)
	return famObjects{
		fam:   fam,
		local: &nftables.Set{Table: t, Name: "media_local" + fam.suffix, KeyType: fam.addrType},
		// Each element of the DNAT map counts its direction's packets.
		dnat: &nftables.Set{Table: t, Name: "media_dnat" + fam.suffix, IsMap: true, Concatenation: true,
			Counter: true, KeyType: tuple, DataType: target, Size: flowMapSize},
		snat: &nftables.Set{Table: t, Name: "media_snat" + fam.suffix, IsMap: true, Concatenation: true,
			KeyType: tuple, DataType: target, Size: flowMapSize},
		closed: &nftables.Set{Table: t, Name: "media_closed" + fam.suffix, KeyType: fam.addrType},
		pin: &nftables.Set{Table: t, Name: "media_pin" + fam.suffix, Concatenation: true,
			KeyType: nftables.MustConcatSetType(fam.addrType, nftables.TypeInetService, fam.addrType)},
	}
}

func newMediaObjects(t *nftables.Table) *mediaObjects {
	return &mediaObjects{
		table: t,
		v4:    newFamObjects(t, inet4),
		v6:    newFamObjects(t, inet6),
		notrackIn: &nftables.Chain{Table: t, Name: chainNotrackIn, Type: nftables.ChainTypeFilter,
			Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityRaw},
		notrackOut: &nftables.Chain{Table: t, Name: chainNotrackOut, Type: nftables.ChainTypeFilter,
			Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityRaw},
		// Between conntrack (which has found or made the packet's entry)
		// and DNAT (which has not yet rewritten it).
		countC: &nftables.Chain{Table: t, Name: chainCount, Type: nftables.ChainTypeFilter,
			Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityMangle},
		dnatChain: &nftables.Chain{Table: t, Name: chainDNAT, Type: nftables.ChainTypeNAT,
			Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityNATDest},
		snatChain: &nftables.Chain{Table: t, Name: chainSNAT, Type: nftables.ChainTypeNAT,
			Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource},
		// Input, not prerouting: an offloaded flow is DNATed in prerouting
		// and forwarded, so it never meets this chain, whatever the pinhole
		// set holds; only packets for the relay's own sockets do, tracked
		// or not (the chain matches the packet itself, not conntrack).
		pinChain: &nftables.Chain{Table: t, Name: chainPin, Type: nftables.ChainTypeFilter,
			Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter},
	}
}

// families returns the per-family objects, IPv4 first.
func (o *mediaObjects) families() []*famObjects { return []*famObjects{&o.v4, &o.v6} }

// sets returns every set and map, locals first.
func (o *mediaObjects) sets() []*nftables.Set {
	return []*nftables.Set{o.v4.local, o.v4.dnat, o.v4.snat, o.v6.local, o.v6.dnat, o.v6.snat}
}

// pinSets returns the sets of media pinholes.
func (o *mediaObjects) pinSets() []*nftables.Set {
	return []*nftables.Set{o.v4.closed, o.v4.pin, o.v6.closed, o.v6.pin}
}

// chains returns every chain.
func (o *mediaObjects) chains() []*nftables.Chain {
	return []*nftables.Chain{o.notrackIn, o.notrackOut, o.countC, o.dnatChain, o.snatChain, o.pinChain}
}

// ofAddr returns the objects of a's family.
func (o *mediaObjects) ofAddr(a netip.Addr) *famObjects {
	if a.Is4() {
		return &o.v4
	}
	return &o.v6
}

// of returns the objects of f's family.
func (o *mediaObjects) of(f media.Flow) *famObjects {
	if f.Src.Addr().Is4() {
		return &o.v4
	}
	return &o.v6
}

// matchUDP matches packets of the family carrying UDP:
// meta nfproto ipv4|ipv6 meta l4proto udp.
func (fam family) matchUDP() []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: reg1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{fam.nfproto}},
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{unix.IPPROTO_UDP}},
	}
}

// loadTuple loads saddr . sport . daddr . dport into the key registers.
func (fam family) loadTuple() []expr.Any {
	sa, sp, da, dp := fam.regs()
	return []expr.Any{
		&expr.Payload{DestRegister: sa, Base: expr.PayloadBaseNetworkHeader, Offset: fam.saddrOff, Len: fam.addrLen},
		&expr.Payload{DestRegister: sp, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 2},
		&expr.Payload{DestRegister: da, Base: expr.PayloadBaseNetworkHeader, Offset: fam.daddrOff, Len: fam.addrLen},
		&expr.Payload{DestRegister: dp, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
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

// offloadedReturn: meta nfproto ipvX meta l4proto udp
// ipX saddr . udp sport . ipX daddr . udp dport map @media_snatX return
//
// A packet of an offloaded flow leaves the chain before notrackInRule: it
// must be tracked, since its conntrack entry carries the NAT. Before DNAT
// the packet of either direction still carries the relay port it was sent
// to, so the key names one direction of one stream even when several
// streams join the same two far ends. The map is looked up with a
// destination register, as the NAT rule does; a lookup of a map as a set
// (no destination) is refused by older kernels (6.1).
func (o *famObjects) offloadedReturn() []expr.Any {
	return cat(o.fam.matchUDP(), o.fam.loadTuple(), []expr.Any{
		&expr.Lookup{SourceRegister: reg32_00, DestRegister: reg1, IsDestRegSet: true, SetName: o.snat.Name, SetID: o.snat.ID},
		&expr.Verdict{Kind: expr.VerdictReturn},
	})
}

// countRule: meta nfproto ipvX meta l4proto udp ct status confirmed
// ipX saddr . udp sport . ipX daddr . udp dport map @media_dnatX
//
// Each element of media_dnatX counts the packets its lookups match, and
// every packet of an offloaded flow matches once: the first packet of a
// conntrack entry (not yet confirmed) in the DNAT rule, which never sees
// the later ones, and every later packet of both directions here, each
// under the key it arrived with (DNAT comes after this chain).
func (o *famObjects) countRule() []expr.Any {
	return cat(o.fam.matchUDP(), []expr.Any{
		&expr.Ct{Register: reg1, Key: expr.CtKeySTATUS},
		&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4,
			Mask: binary.NativeEndian.AppendUint32(nil, ipsConfirmed), Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: reg1, Data: make([]byte, 4)},
	}, o.fam.loadTuple(), []expr.Any{
		&expr.Lookup{SourceRegister: reg32_00, DestRegister: reg1, IsDestRegSet: true, SetName: o.dnat.Name, SetID: o.dnat.ID},
	})
}

// ipsConfirmed is IPS_CONFIRMED of a conntrack entry's status: the entry
// is in the table, so the packet is not its first.
const ipsConfirmed = 1 << 3

// notrackInRule: meta nfproto ipvX meta l4proto udp ipX daddr @media_localX
// udp dport LO-HI notrack
//
// Packets to the relay's ports that no offloaded flow claims (those
// returned before this rule) go to the relay socket untracked.
func (o *famObjects) notrackInRule(lo, hi int) []expr.Any {
	return cat(o.fam.matchUDP(),
		[]expr.Any{
			&expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseNetworkHeader, Offset: o.fam.daddrOff, Len: o.fam.addrLen},
			&expr.Lookup{SourceRegister: reg1, SetName: o.local.Name, SetID: o.local.ID},
		},
		portRange(2, lo, hi),
		[]expr.Any{&expr.Notrack{}})
}

// notrackOutRule: meta nfproto ipvX meta l4proto udp ipX saddr @media_localX
// udp sport LO-HI notrack
//
// What the relay sockets send creates no conntrack entry either, so it can
// never hold a tuple an offloaded flow needs.
func (o *famObjects) notrackOutRule(lo, hi int) []expr.Any {
	return cat(o.fam.matchUDP(),
		[]expr.Any{
			&expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseNetworkHeader, Offset: o.fam.saddrOff, Len: o.fam.addrLen},
			&expr.Lookup{SourceRegister: reg1, SetName: o.local.Name, SetID: o.local.ID},
		},
		portRange(0, lo, hi),
		[]expr.Any{&expr.Notrack{}})
}

// dnatRule: meta nfproto ipvX meta l4proto udp
// dnat ipX to ipX saddr . udp sport . ipX daddr . udp dport map @media_dnatX
func (o *famObjects) dnatRule() []expr.Any {
	return cat(o.fam.matchUDP(), o.fam.loadTuple(), o.natTo(o.dnat, expr.NATTypeDestNAT))
}

// snatRule: meta nfproto ipvX meta l4proto udp snat ipX to
// ct original ipX saddr . ct original proto-src . ct original ipX daddr .
// ct original proto-dst map @media_snatX
//
// The key is the tuple the flow's first packet arrived with, before DNAT:
// it holds the relay port that packet was sent to, which the tuple after
// DNAT (the two far ends) lacks. The rule comes encoded, ready for
// elemConn.rule: the client library cannot send the direction of the
// address keys of ct.
func (o *famObjects) snatRule() ([][]byte, error) {
	var out [][]byte
	for _, e := range o.fam.matchUDP() {
		b, err := expr.Marshal(byte(nftables.TableFamilyINet), e)
		if err != nil {
			return nil, fmt.Errorf("encode %s rule: %w", chainSNAT, err)
		}
		out = append(out, b)
	}
	out = append(out, o.fam.loadOrigTuple()...)
	for _, e := range o.natTo(o.snat, expr.NATTypeSourceNAT) {
		b, err := expr.Marshal(byte(nftables.TableFamilyINet), e)
		if err != nil {
			return nil, fmt.Errorf("encode %s rule: %w", chainSNAT, err)
		}
		out = append(out, b)
	}
	return out, nil
}

// natTo looks the key registers up in map m and translates to its data.
func (o *famObjects) natTo(m *nftables.Set, typ expr.NATType) []expr.Any {
	return []expr.Any{
		&expr.Lookup{SourceRegister: reg32_00, DestRegister: reg1, IsDestRegSet: true, SetName: m.Name, SetID: m.ID},
		&expr.NAT{Type: typ, Family: uint32(o.fam.nfproto), RegAddrMin: reg1, RegProtoMin: o.fam.portReg(), Specified: true},
	}
}

// loadOrigTuple loads the original-direction tuple of the packet's
// conntrack entry into the key registers, laid out as loadTuple does, as
// encoded expressions.
func (fam family) loadOrigTuple() [][]byte {
	sa, sp, da, dp := fam.regs()
	srcKey, dstKey := uint32(unix.NFT_CT_SRC_IP), uint32(unix.NFT_CT_DST_IP)
	if fam.addrLen == 16 {
		srcKey, dstKey = unix.NFT_CT_SRC_IP6, unix.NFT_CT_DST_IP6
	}
	return [][]byte{
		ctOriginal(srcKey, sa),
		ctOriginal(unix.NFT_CT_PROTO_SRC, sp),
		ctOriginal(dstKey, da),
		ctOriginal(unix.NFT_CT_PROTO_DST, dp),
	}
}

// ctOriginal encodes a ct expression that loads key of the original
// direction into register reg. The address keys of a family
// (NFT_CT_SRC_IP and the like) need the direction, which the client
// library sends only with the family-less ones; those load 16 bytes in an
// inet table whatever the family, and nft cannot print them in a
// concatenation.
func ctOriginal(key, reg uint32) []byte {
	var data []byte
	data = appendAttr(data, unix.NFTA_CT_KEY, binary.BigEndian.AppendUint32(nil, key))
	data = appendAttr(data, unix.NFTA_CT_DREG, binary.BigEndian.AppendUint32(nil, reg))
	data = appendAttr(data, unix.NFTA_CT_DIRECTION, []byte{0}) // IP_CT_DIR_ORIGINAL
	b := appendAttr(nil, unix.NFTA_EXPR_NAME, cstring("ct"))
	return appendAttr(b, unix.NLA_F_NESTED|unix.NFTA_EXPR_DATA, data)
}

// pinRule: meta nfproto ipvX meta l4proto udp ipX daddr @media_closedX
// udp dport LO-HI ipX daddr . udp dport . ipX saddr != @media_pinX counter drop
//
// A datagram to a closed relay address in the media port range passes only
// through a pinhole: the relay port it is sent to expects its source IP.
func (o *famObjects) pinRule(lo, hi int) []expr.Any {
	words := o.fam.addrLen / 4
	return cat(o.fam.matchUDP(),
		[]expr.Any{
			&expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseNetworkHeader, Offset: o.fam.daddrOff, Len: o.fam.addrLen},
			&expr.Lookup{SourceRegister: reg1, SetName: o.closed.Name, SetID: o.closed.ID},
		},
		portRange(2, lo, hi),
		[]expr.Any{
			&expr.Payload{DestRegister: reg32_00, Base: expr.PayloadBaseNetworkHeader, Offset: o.fam.daddrOff, Len: o.fam.addrLen},
			&expr.Payload{DestRegister: reg32_00 + words, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
			&expr.Payload{DestRegister: reg32_00 + words + 1, Base: expr.PayloadBaseNetworkHeader, Offset: o.fam.saddrOff, Len: o.fam.addrLen},
			&expr.Lookup{SourceRegister: reg32_00, SetName: o.pin.Name, SetID: o.pin.ID, Invert: true},
			&expr.Counter{},
			&expr.Verdict{Kind: expr.VerdictDrop},
		})
}

// pinKey encodes a pinhole, relay address . relay port . remote IP, as a
// concatenated key: 12 bytes for IPv4, 36 for IPv6.
func pinKey(local netip.AddrPort, remote netip.Addr) []byte {
	k := make([]byte, 0, 36)
	k = append(k, addrBytes(local.Addr())...)
	k = binary.BigEndian.AppendUint16(k, local.Port())
	k = append(k, 0, 0)
	return append(k, addrBytes(remote)...)
}

// addrBytes is the address in the family's byte length.
func addrBytes(a netip.Addr) []byte {
	if a.Is4() {
		b := a.As4()
		return b[:]
	}
	b := a.As16()
	return b[:]
}

// tupleKey encodes src . dst as a concatenated key: each field padded to 4
// bytes, network byte order; 16 bytes for IPv4, 40 for IPv6.
func tupleKey(src, dst netip.AddrPort) []byte {
	return appendTuple(make([]byte, 0, 40), src, dst)
}

// appendTuple appends the key tupleKey encodes to k.
func appendTuple(k []byte, src, dst netip.AddrPort) []byte {
	k = appendAddr(k, src.Addr())
	k = binary.BigEndian.AppendUint16(k, src.Port())
	k = append(k, 0, 0)
	k = appendAddr(k, dst.Addr())
	k = binary.BigEndian.AppendUint16(k, dst.Port())
	return append(k, 0, 0)
}

// appendAddr appends the address in the family's byte length.
func appendAddr(b []byte, a netip.Addr) []byte {
	if a.Is4() {
		a4 := a.As4()
		return append(b, a4[:]...)
	}
	a16 := a.As16()
	return append(b, a16[:]...)
}

// parseTupleKey is the inverse of tupleKey.
func parseTupleKey(k []byte) (src, dst netip.AddrPort, ok bool) {
	var n int
	switch len(k) {
	case 16:
		n = 4
	case 40:
		n = 16
	default:
		return src, dst, false
	}
	sa, _ := netip.AddrFromSlice(k[:n])
	da, _ := netip.AddrFromSlice(k[n+4 : 2*n+4])
	src = netip.AddrPortFrom(sa, binary.BigEndian.Uint16(k[n:n+2]))
	dst = netip.AddrPortFrom(da, binary.BigEndian.Uint16(k[2*n+4:2*n+6]))
	return src, dst, true
}

// target encodes a NAT target address . port as map data.
func target(ap netip.AddrPort) []byte {
	return appendTarget(make([]byte, 0, 20), ap)
}

// appendTarget appends the data target encodes to v.
func appendTarget(v []byte, ap netip.AddrPort) []byte {
	v = appendAddr(v, ap.Addr())
	v = binary.BigEndian.AppendUint16(v, ap.Port())
	return append(v, 0, 0)
}

// flowElements are the elements that put f and its reverse into the
// kernel (in the maps of f's family):
//
//	media_dnatX:  src . local  : dst     and  dst . out   : src    (each with its counter)
//	media_snatX:  src . local  : out     and  dst . out   : local
//
// Every key is the tuple a packet of that direction arrives with, before
// DNAT. Whichever direction sends first creates the conntrack entry; the
// other direction is its reply and needs no NAT lookup, but both are
// listed so either may start, and each direction needs its own counter.
func flowElements(f media.Flow) (dnat, snat []nftables.SetElement) {
	for _, d := range [2]media.Flow{f, f.Reverse()} {
		src, dst, nat := elemOf(setDNAT, d)
		dnat = append(dnat, nftables.SetElement{Key: tupleKey(src, dst), Val: target(nat)})
		src, dst, nat = elemOf(setSNAT, d)
		snat = append(snat, nftables.SetElement{Key: tupleKey(src, dst), Val: target(nat)})
	}
	return dnat, snat
}

// setKind names the per-flow maps of a family.
type setKind int

const (
	setDNAT setKind = iota
	setSNAT
)

// elemOf is the one place that lays out the element of direction d in a
// map of kind: its key src . dst and its NAT target.
func elemOf(kind setKind, d media.Flow) (src, dst, nat netip.AddrPort) {
	if kind == setDNAT {
		return d.Src, d.Local, d.Dst
	}
	return d.Src, d.Local, d.Out
}

// localElements are the relay's bind addresses of one family.
func localElements(addrs []netip.Addr, v4 bool) []nftables.SetElement {
	var out []nftables.SetElement
	seen := map[netip.Addr]bool{}
	for _, a := range addrs {
		a = a.Unmap()
		if a.Is4() != v4 || seen[a] || !a.IsValid() {
			continue
		}
		seen[a] = true
		out = append(out, nftables.SetElement{Key: addrBytes(a)})
	}
	return out
}
