//go:build linux

package firewall

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// Names of the guard's objects in the table.
const (
	guardChain = "guard_prerouting"
	allow4Set  = "allow4"
	allow6Set  = "allow6"
	ban4Set    = "ban4"
	ban6Set    = "ban6"
	meterPref  = "rl_"
)

// guardRuleset is everything the guard puts into the table, built without
// touching the kernel so it can be tested anywhere (see the goldens).
type guardRuleset struct {
	table *nftables.Table
	chain *nftables.Chain
	// sets in creation order, with their initial elements. The ban sets
	// come without elements: bans are added one by one.
	sets  []guardSet
	rules [][]expr.Any
}

type guardSet struct {
	set   *nftables.Set
	elems []nftables.SetElement
	// flush empties the set before the elements go in (allow lists are
	// replaced whole; ban sets keep what they hold).
	flush bool
}

func edgesbcTable() *nftables.Table {
	return &nftables.Table{Family: nftables.TableFamilyINet, Name: TableName}
}

// buildGuard builds the guard's sets and rules for cfg:
//
//	ip saddr @allow4 accept
//	ip6 saddr @allow6 accept
//	ip saddr @ban4 counter drop
//	ip6 saddr & MASK @ban6 counter drop
//	ip daddr D udp dport P update @rl_NAME { ip saddr limit rate over R/U burst B packets } counter drop
//	ip daddr D tcp dport P update @rl_NAME { ip saddr limit rate over R/U burst B packets } counter drop
//
// in a filter chain on prerouting at priority raw, so that neither
// conntrack nor the daemon spends anything on a banned or flooding source.
// IPv6 sources are masked to cfg.IPv6Prefix before the ban lookup and the
// meter update (MASK, unless it is 128), so one element stands for the
// whole prefix: an attacker cannot escape a ban or a meter by moving
// through the addresses of its /64.
func buildGuard(cfg GuardConfig) (*guardRuleset, error) {
	t := edgesbcTable()
	policy := nftables.ChainPolicyAccept
	rs := &guardRuleset{
		table: t,
		chain: &nftables.Chain{
			Name: guardChain, Table: t, Type: nftables.ChainTypeFilter,
			Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityRaw, Policy: &policy,
		},
	}
	var allow4, allow6 []netip.Prefix
	for _, p := range cfg.Allow {
		p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-unmapBits(p)).Masked()
		if p.Addr().Is4() {
			allow4 = append(allow4, p)
		} else {
			allow6 = append(allow6, p)
		}
	}
	a4 := &nftables.Set{Table: t, Name: allow4Set, KeyType: nftables.TypeIPAddr, Interval: true}
	a6 := &nftables.Set{Table: t, Name: allow6Set, KeyType: nftables.TypeIP6Addr, Interval: true}
	b4 := &nftables.Set{Table: t, Name: ban4Set, KeyType: nftables.TypeIPAddr, HasTimeout: true}
	b6 := &nftables.Set{Table: t, Name: ban6Set, KeyType: nftables.TypeIP6Addr, HasTimeout: true}
	rs.sets = append(rs.sets,
		guardSet{set: a4, elems: intervalElements(allow4), flush: true},
		guardSet{set: a6, elems: intervalElements(allow6), flush: true},
		guardSet{set: b4}, guardSet{set: b6})
	bits := cfg.ipv6Bits()
	rs.rules = append(rs.rules,
		saddrRule(false, a4, expr.VerdictAccept, false, 0),
		saddrRule(true, a6, expr.VerdictAccept, false, 128),
		saddrRule(false, b4, expr.VerdictDrop, true, 0),
		saddrRule(true, b6, expr.VerdictDrop, true, bits))
	names := map[string]bool{}
	for _, rl := range cfg.RateLimits {
		r, err := meterRule(t, rl, meterName(rl.Name, names), bits)
		if err != nil {
			return nil, err
		}
		rs.sets = append(rs.sets, guardSet{set: r.set})
		rs.rules = append(rs.rules, r.rules...)
	}
	return rs, nil
}

// unmapBits is the 96 bits an IPv4-mapped IPv6 prefix loses when unmapped.
func unmapBits(p netip.Prefix) int {
	if p.Addr().Is4In6() {
		return 96
	}
	return 0
}

// matchFamily loads the packet's network protocol and compares it: in an
// inet table every address match must first pick IPv4 or IPv6.
func matchFamily(v6 bool) []expr.Any {
	fam := byte(unix.NFPROTO_IPV4)
	if v6 {
		fam = unix.NFPROTO_IPV6
	}
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{fam}},
	}
}

// loadAddr loads the source or destination address into register 1.
func loadAddr(v6, dst bool) expr.Any {
	off, n := uint32(12), uint32(4) // IPv4 saddr
	switch {
	case v6 && dst:
		off, n = 24, 16
	case v6:
		off, n = 8, 16
	case dst:
		off = 16
	}
	return &expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: n}
}

// maskSource masks the IPv6 source address in register 1 to its first
// bits bits; nothing for IPv4 or a full-length prefix.
func maskSource(v6 bool, bits int) []expr.Any {
	if !v6 || bits <= 0 || bits >= 128 {
		return nil
	}
	mask := make([]byte, 16)
	for i := range bits {
		mask[i/8] |= 0x80 >> (i % 8)
	}
	return []expr.Any{&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 16, Mask: mask, Xor: make([]byte, 16)}}
}

// saddrRule is "ip[6] saddr [& MASK] @set [counter] verdict", the source
// masked to an IPv6 prefix of bits.
func saddrRule(v6 bool, set *nftables.Set, v expr.VerdictKind, counter bool, bits int) []expr.Any {
	e := matchFamily(v6)
	e = append(e, loadAddr(v6, false))
	e = append(e, maskSource(v6, bits)...)
	e = append(e, &expr.Lookup{SourceRegister: 1, SetName: set.Name, SetID: set.ID})
	if counter {
		e = append(e, &expr.Counter{})
	}
	return append(e, &expr.Verdict{Kind: v})
}

type meter struct {
	set   *nftables.Set
	rules [][]expr.Any
}

// meterRule builds the meter set and rules of one rate limit: one rule for
// UDP and one for TCP to the SIP port, updating the same meter, so a
// source's packets count against one budget whichever transport it uses.
// IPv6 sources are metered per prefix of bits.
func meterRule(t *nftables.Table, rl RateLimit, name string, bits int) (meter, error) {
	unit, err := limitUnit(rl.Per)
	if err != nil {
		return meter{}, fmt.Errorf("rate limit %s: %w", rl.Name, err)
	}
	if rl.Rate == 0 || !rl.Dest.IsValid() {
		return meter{}, fmt.Errorf("rate limit %s: no rate or destination", rl.Name)
	}
	dst := rl.Dest.Addr().Unmap()
	v6 := dst.Is6()
	key := nftables.TypeIPAddr
	if v6 {
		key = nftables.TypeIP6Addr
	}
	set := &nftables.Set{Table: t, Name: name, KeyType: key, Dynamic: true,
		HasTimeout: true, Timeout: meterTimeout, Size: meterSize}
	port := make([]byte, 2)
	binary.BigEndian.PutUint16(port, rl.Dest.Port())
	m := meter{set: set}
	for _, proto := range []byte{unix.IPPROTO_UDP, unix.IPPROTO_TCP} {
		e := matchFamily(v6)
		e = append(e,
			loadAddr(v6, true),
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: dst.AsSlice()},
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: port},
			loadAddr(v6, false))
		e = append(e, maskSource(v6, bits)...)
		e = append(e,
			&expr.Dynset{SrcRegKey: 1, SetName: set.Name, SetID: set.ID, Operation: unix.NFT_DYNSET_OP_UPDATE,
				Exprs: []expr.Any{&expr.Limit{Type: expr.LimitTypePkts, Rate: rl.Rate, Over: true, Unit: unit, Burst: rl.Burst}}},
			&expr.Counter{},
			&expr.Verdict{Kind: expr.VerdictDrop},
		)
		m.rules = append(m.rules, e)
	}
	return m, nil
}

// meterName is rl_ and the rate limit's name in nft identifier characters
// (letters, digits, '_'), made unique among taken.
func meterName(name string, taken map[string]bool) string {
	b := []byte(name)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9') {
			b[i] = '_'
		}
	}
	out := meterPref + string(b)
	for i := 2; taken[out]; i++ {
		out = fmt.Sprintf("%s%s_%d", meterPref, b, i)
	}
	taken[out] = true
	return out
}

func limitUnit(d time.Duration) (expr.LimitTime, error) {
	switch d {
	case time.Second:
		return expr.LimitTimeSecond, nil
	case time.Minute:
		return expr.LimitTimeMinute, nil
	case time.Hour:
		return expr.LimitTimeHour, nil
	}
	return 0, fmt.Errorf("rate unit %v is not a second, minute or hour", d)
}

// intervalElements turns prefixes of one family into interval set
// elements. Overlapping and adjacent prefixes are merged first: the kernel
// refuses overlapping intervals.
func intervalElements(ps []netip.Prefix) []nftables.SetElement {
	type span struct{ from, to netip.Addr } // inclusive
	var spans []span
	for _, p := range ps {
		spans = append(spans, span{p.Masked().Addr(), lastAddr(p)})
	}
	slices.SortFunc(spans, func(a, b span) int { return a.from.Compare(b.from) })
	var merged []span
	for _, s := range spans {
		if n := len(merged); n > 0 {
			last := &merged[n-1]
			if next := last.to.Next(); !next.IsValid() || s.from.Compare(next) <= 0 {
				if s.to.Compare(last.to) > 0 {
					last.to = s.to
				}
				continue
			}
		}
		merged = append(merged, s)
	}
	var out []nftables.SetElement
	for _, s := range merged {
		out = append(out, nftables.SetElement{Key: s.from.AsSlice()})
		if end := s.to.Next(); end.IsValid() {
			out = append(out, nftables.SetElement{Key: end.AsSlice(), IntervalEnd: true})
		}
	}
	return out
}

// lastAddr is the highest address in p.
func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

// banElement is the set element of one ban, in the set of its family: an
// IPv6 address is masked to its prefix of bits, as the lookup masks it.
func banElement(a netip.Addr, d time.Duration, bits int) (string, nftables.SetElement) {
	a = MaskSource(a, bits)
	set := ban4Set
	if a.Is6() {
		set = ban6Set
	}
	return set, nftables.SetElement{Key: a.AsSlice(), Timeout: banTimeout(d)}
}

// banTimeout is the element timeout written for a ban of d.
func banTimeout(d time.Duration) time.Duration {
	return min(max(d, time.Second), maxBanTimeout).Truncate(time.Millisecond)
}
