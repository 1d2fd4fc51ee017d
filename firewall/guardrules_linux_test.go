//go:build linux

package firewall

import (
	"encoding/binary"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

var update = flag.Bool("update", false, "rewrite the golden files")

// renderGuard prints a ruleset in nft syntax, reading the expressions back
// (not the config), so the golden shows what the kernel will be told.
func renderGuard(rs *guardRuleset) string {
	var b strings.Builder
	fmt.Fprintf(&b, "table inet %s {\n", rs.table.Name)
	for _, s := range rs.sets {
		fmt.Fprintf(&b, "\tset %s {\n\t\ttype %s\n", s.set.Name, s.set.KeyType.Name)
		var flags []string
		if s.set.Interval {
			flags = append(flags, "interval")
		}
		if s.set.Dynamic {
			flags = append(flags, "dynamic")
		}
		if s.set.HasTimeout {
			flags = append(flags, "timeout")
		}
		if len(flags) > 0 {
			fmt.Fprintf(&b, "\t\tflags %s\n", strings.Join(flags, ","))
		}
		if s.set.Timeout > 0 {
			fmt.Fprintf(&b, "\t\ttimeout %ds\n", int(s.set.Timeout.Seconds()))
		}
		if s.set.Size > 0 {
			fmt.Fprintf(&b, "\t\tsize %d\n", s.set.Size)
		}
		if len(s.elems) > 0 {
			fmt.Fprintf(&b, "\t\telements = { %s }\n", renderIntervals(s.elems))
		}
		b.WriteString("\t}\n")
	}
	fmt.Fprintf(&b, "\tchain %s {\n\t\ttype filter hook prerouting priority %d; policy accept;\n", rs.chain.Name, *rs.chain.Priority)
	for _, r := range rs.rules {
		fmt.Fprintf(&b, "\t\t%s\n", renderRule(r))
	}
	b.WriteString("\t}\n}\n")
	return b.String()
}

func renderIntervals(els []nftables.SetElement) string {
	var parts []string
	for i := 0; i < len(els); i++ {
		from, _ := netip.AddrFromSlice(els[i].Key)
		last := netip.AddrFrom16([16]byte{0: 0xff, 1: 0xff, 2: 0xff, 3: 0xff, 4: 0xff, 5: 0xff, 6: 0xff, 7: 0xff, 8: 0xff, 9: 0xff, 10: 0xff, 11: 0xff, 12: 0xff, 13: 0xff, 14: 0xff, 15: 0xff}) // no end element: up to the top
		if from.Is4() {
			last = netip.AddrFrom4([4]byte{255, 255, 255, 255})
		}
		if i+1 < len(els) && els[i+1].IntervalEnd {
			end, _ := netip.AddrFromSlice(els[i+1].Key)
			last = end.Prev()
			i++
		}
		if last == from {
			parts = append(parts, from.String())
		} else {
			parts = append(parts, fmt.Sprintf("%v-%v", from, last))
		}
	}
	return strings.Join(parts, ", ")
}

func renderRule(r []expr.Any) string {
	var out []string
	field := ""
	for _, e := range r {
		switch e := e.(type) {
		case *expr.Meta:
			switch e.Key {
			case expr.MetaKeyNFPROTO:
				field = "meta nfproto"
			case expr.MetaKeyL4PROTO:
				field = "meta l4proto"
			default:
				field = fmt.Sprintf("meta key %d", e.Key)
			}
		case *expr.Payload:
			field = payloadName(e)
		case *expr.Cmp:
			out = append(out, field+" "+cmpValue(field, e.Data))
		case *expr.Lookup:
			out = append(out, field+" @"+e.SetName)
		case *expr.Dynset:
			op := map[uint32]string{unix.NFT_DYNSET_OP_ADD: "add", unix.NFT_DYNSET_OP_UPDATE: "update"}[e.Operation]
			var inner []string
			for _, x := range e.Exprs {
				if l, ok := x.(*expr.Limit); ok {
					over := ""
					if l.Over {
						over = "over "
					}
					unit := map[expr.LimitTime]string{expr.LimitTimeSecond: "second", expr.LimitTimeMinute: "minute", expr.LimitTimeHour: "hour"}[l.Unit]
					inner = append(inner, fmt.Sprintf("limit rate %s%d/%s burst %d packets", over, l.Rate, unit, l.Burst))
				}
			}
			out = append(out, fmt.Sprintf("%s @%s { %s %s }", op, e.SetName, field, strings.Join(inner, " ")))
		case *expr.Bitwise:
			m, _ := netip.AddrFromSlice(e.Mask)
			field += " & " + m.String()
		case *expr.Counter:
			out = append(out, "counter")
		case *expr.Verdict:
			out = append(out, map[expr.VerdictKind]string{expr.VerdictAccept: "accept", expr.VerdictDrop: "drop"}[e.Kind])
		default:
			out = append(out, fmt.Sprintf("<%T>", e))
		}
	}
	return strings.Join(out, " ")
}

func payloadName(p *expr.Payload) string {
	switch {
	case p.Base == expr.PayloadBaseNetworkHeader && p.Len == 4 && p.Offset == 12:
		return "ip saddr"
	case p.Base == expr.PayloadBaseNetworkHeader && p.Len == 4 && p.Offset == 16:
		return "ip daddr"
	case p.Base == expr.PayloadBaseNetworkHeader && p.Len == 16 && p.Offset == 8:
		return "ip6 saddr"
	case p.Base == expr.PayloadBaseNetworkHeader && p.Len == 16 && p.Offset == 24:
		return "ip6 daddr"
	case p.Base == expr.PayloadBaseTransportHeader && p.Len == 2 && p.Offset == 2:
		return "th dport"
	}
	return fmt.Sprintf("payload base %d offset %d len %d", p.Base, p.Offset, p.Len)
}

func cmpValue(field string, d []byte) string {
	switch field {
	case "meta nfproto":
		return map[byte]string{unix.NFPROTO_IPV4: "ipv4", unix.NFPROTO_IPV6: "ipv6"}[d[0]]
	case "meta l4proto":
		return map[byte]string{unix.IPPROTO_UDP: "udp", unix.IPPROTO_TCP: "tcp"}[d[0]]
	case "th dport":
		return fmt.Sprint(binary.BigEndian.Uint16(d))
	}
	if a, ok := netip.AddrFromSlice(d); ok {
		return a.String()
	}
	return fmt.Sprintf("%x", d)
}

func TestGuardRulesGolden(t *testing.T) {
	tests := []struct {
		name string
		cfg  GuardConfig
	}{
		{name: "empty", cfg: GuardConfig{}},
		{name: "two-zones", cfg: GuardConfig{
			Allow: []netip.Prefix{
				netip.MustParsePrefix("203.0.113.0/28"),
				netip.MustParsePrefix("203.0.113.2/32"),  // inside the /28: merged
				netip.MustParsePrefix("203.0.113.16/28"), // adjacent: merged
				netip.MustParsePrefix("10.91.1.2/32"),
				netip.MustParsePrefix("::ffff:192.0.2.1/128"), // mapped: an IPv4 host
				netip.MustParsePrefix("2001:db8::/64"),
				netip.MustParsePrefix("::/0"), // reaches the top: no end element
			},
			RateLimits: []RateLimit{
				{Name: "sip-public", Dest: netip.MustParseAddrPort("203.0.113.1:5060"), Rate: 30, Per: time.Second, Burst: 60},
				{Name: "sip_v6", Dest: netip.MustParseAddrPort("[2001:db8::2]:5060"), Rate: 1, Per: time.Hour, Burst: 1},
				{Name: "sip-v6", Dest: netip.MustParseAddrPort("[2001:db8::1]:5070"), Rate: 600, Per: time.Minute, Burst: 100},
			},
		}},
		{name: "ipv6-per-address", cfg: GuardConfig{IPv6Prefix: 128, RateLimits: []RateLimit{
			{Name: "v6", Dest: netip.MustParseAddrPort("[2001:db8::1]:5060"), Rate: 10, Per: time.Second, Burst: 20},
		}}},
		{name: "ipv6-prefix-48", cfg: GuardConfig{IPv6Prefix: 48, RateLimits: []RateLimit{
			{Name: "v6", Dest: netip.MustParseAddrPort("[2001:db8::1]:5060"), Rate: 10, Per: time.Second, Burst: 20},
		}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rs, err := buildGuard(tt.cfg)
			if err != nil {
				t.Fatal(err)
			}
			got := "# nft -f testdata/guard-" + tt.name + ".nft (rendered from the netlink expressions)\n" + renderGuard(rs)
			path := filepath.Join("testdata", "guard-"+tt.name+".nft")
			if *update {
				if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run with -update to create it)", err)
			}
			if got != string(want) {
				t.Errorf("ruleset differs from %s:\n%s", path, got)
			}
		})
	}
}

func TestGuardRulesRejects(t *testing.T) {
	for _, rl := range []RateLimit{
		{Name: "day", Dest: netip.MustParseAddrPort("192.0.2.1:5060"), Rate: 1, Per: 24 * time.Hour},
		{Name: "zero", Dest: netip.MustParseAddrPort("192.0.2.1:5060"), Per: time.Second},
		{Name: "nodest", Rate: 1, Per: time.Second},
	} {
		if _, err := buildGuard(GuardConfig{RateLimits: []RateLimit{rl}}); err == nil {
			t.Errorf("rate limit %+v accepted", rl)
		}
	}
}

func TestBanElement(t *testing.T) {
	set, el := banElement(netip.MustParseAddr("::ffff:198.51.100.7"), 90*time.Minute+123456*time.Nanosecond, 64)
	if set != ban4Set || len(el.Key) != 4 || el.Timeout != 90*time.Minute {
		t.Errorf("mapped v4: %s %+v", set, el)
	}
	set, el = banElement(netip.MustParseAddr("2001:db8::7"), 0, 128)
	if set != ban6Set || len(el.Key) != 16 || el.Timeout != time.Second || netip.AddrFrom16([16]byte(el.Key)) != netip.MustParseAddr("2001:db8::7") {
		t.Errorf("v6 per address with zero duration: %s %+v", set, el)
	}
	// the element of an IPv6 ban is its prefix's first address, the key
	// the rule's masked lookup finds
	set, el = banElement(netip.MustParseAddr("2001:db8:1:2:3:4:5:6"), time.Hour, 64)
	if set != ban6Set || netip.AddrFrom16([16]byte(el.Key)) != netip.MustParseAddr("2001:db8:1:2::") {
		t.Errorf("v6 per /64: %s %x", set, el.Key)
	}
	if _, el = banElement(netip.MustParseAddr("192.0.2.1"), 10*365*24*time.Hour, 64); el.Timeout != maxBanTimeout {
		t.Errorf("ten-year ban: timeout %v", el.Timeout)
	}
}
