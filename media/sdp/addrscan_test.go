package sdp

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"strings"
	"testing"
)

func TestForeignAddrs(t *testing.T) {
	all := func(netip.Addr) bool { return true }
	addrs := func(ss ...string) []netip.Addr {
		var out []netip.Addr
		for _, s := range ss {
			out = append(out, netip.MustParseAddr(s))
		}
		return out
	}
	tests := []struct {
		name string
		body string
		want []netip.Addr
	}{
		{"none", "v=0\r\ns=-\r\nt=0 0\r\n", nil},
		{"c= IPv4", "c=IN IP4 192.0.2.1\r\n", addrs("192.0.2.1")},
		{"c= IPv6", "c=IN IP6 2001:db8::20\r\n", addrs("2001:db8::20")},
		{"hold addresses", "c=IN IP4 0.0.0.0\r\nc=IN IP6 ::\r\n", addrs("0.0.0.0", "::")},
		{"IPv4-mapped", "c=IN IP6 ::ffff:192.0.2.2\r\n", addrs("::ffff:192.0.2.2")},
		{"duplicates reported once, in order", "o=- 1 1 IN IP4 10.0.0.2\nc=IN IP4 10.0.0.1\na=rtcp:5001 IN IP4 10.0.0.2\n", addrs("10.0.0.2", "10.0.0.1")},
		{"attribute separator", "a=x-foo:10.0.0.5\r\n", addrs("10.0.0.5")},
		{"IPv6 after attribute name", "a=x-addr:2001:db8::7\r\n", addrs("2001:db8::7")},
		{"hex attribute name glued to IPv6", "a=x-bad:fe80::1\r\n", addrs("bad:fe80::1", "fe80::1")},
		{"bracketed IPv6 with port", "a=x-sip:[2001:db8::9]:5060\r\n", addrs("2001:db8::9")},
		{"IPv4 with port", "a=x-hostport:10.0.0.5:5060\r\n", addrs("10.0.0.5")},
		{"leading zeros", "a=x-octal:010.000.000.005\r\n", addrs("10.0.0.5")},
		{"version string with five parts", "a=tool:gw 1.2.3.4.5\r\n", addrs("1.2.3.4", "2.3.4.5")},
		{"sentence punctuation", "i=media from 192.0.2.77.\r\n", addrs("192.0.2.77")},
		{"candidate", "a=candidate:1 1 UDP 2130706431 10.0.0.5 16384 typ srflx raddr 192.168.0.9 rport 5000\r\n", addrs("10.0.0.5", "192.168.0.9")},
		{"host name with an address inside", "o=- 1 1 IN IP4 10-0-0-5.x.192.168.7.7.nip.io\r\n", addrs("192.168.7.7")},
		{"bare CR is a line break", "a=label:x\rc=IN IP4 10.9.9.9\r\n", addrs("10.9.9.9")},
		{"hex letters before IPv4", "a=x:abc10.1.2.3\r\n", addrs("10.1.2.3")},
		{"fingerprint is not an address", "a=fingerprint:sha-256 4A:AD:B9:B1:3F:82:18:3B:54:02:12:DF:3E:5D:49:6B:19:E5:7C:AB:3B:FD:E6:5F:C1:6A:8E:35:8F:C9:8B:E0\r\n", nil},
		{"sha-1 fingerprint", "a=fingerprint:sha-1 4A:AD:B9:B1:3F:82:18:3B:54:02:12:DF:3E:5D:49:6B:19:E5:7C:AB\r\n", nil},
		{"MAC address is not an address", "a=x-mac:00:11:22:33:44:55\r\n", nil},
		{"crypto key", "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR|2^20|1:32\r\n", nil},
		{"codec attributes", "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=rtpmap:107 H263-1998/90000\r\na=fmtp:96 profile-level-id=42e01f;packetization-mode=1\r\n", nil},
		{"times", "t=3338481189 3370017201\r\nz=2882844526 -1h 2898848070 0\r\nr=604800 3600 0 90000\r\n", nil},
		{"extmap urn", "a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level\r\n", nil},
		{"three parts only", "a=x:1.2.3\r\n", nil},
		{"octet over 255", "a=x:256.1.1.1\r\n", nil},
		{"four-digit field", "a=x:1000.1.1.1\r\n", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := ForeignAddrs([]byte(tt.body), all)
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("ForeignAddrs(%q) = %v, want %v", tt.body, got, tt.want)
			}
			// hasAddrLiteral must agree with ForeignAddrs, or Rewrite
			// could keep a line the final guard rejects.
			if has := hasAddrLiteral(tt.body); has != (len(tt.want) > 0) {
				t.Errorf("hasAddrLiteral(%q) = %v, want %v", tt.body, has, len(tt.want) > 0)
			}
		})
	}
}

func TestForeignAddrsPredicate(t *testing.T) {
	inside := netip.MustParsePrefix("10.0.0.0/8")
	isInside := func(a netip.Addr) bool { return inside.Contains(a) }
	body := []byte("c=IN IP4 203.0.113.10\r\na=x:::ffff:10.1.2.3\r\na=y:10.4.5.6\r\na=z:192.0.2.1\r\n")
	got := ForeignAddrs(body, isInside)
	want := []netip.Addr{netip.MustParseAddr("::ffff:10.1.2.3"), netip.MustParseAddr("10.4.5.6")}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("ForeignAddrs = %v, want %v (mapped addresses are tested unmapped too)", got, want)
	}
	anchor := netip.MustParseAddr("203.0.113.10")
	if got := ForeignAddrs([]byte("c=IN IP4 203.0.113.10\r\nc=IN IP4 0.0.0.0\r\n"), notAnchor(anchor)); got != nil {
		t.Errorf("anchor-only body: ForeignAddrs = %v, want nil", got)
	}
}

func BenchmarkForeignAddrs(b *testing.B) {
	body := []byte(benchOffer)
	isForeign := notAnchor(anchor4)
	b.ReportAllocs()
	b.SetBytes(int64(len(body)))
	for b.Loop() {
		ForeignAddrs(body, isForeign)
	}
}

// TestForeignAddrsManyDuplicates covers the switch from a slice to a set
// once a body names more than a handful of addresses.
func TestForeignAddrsManyDuplicates(t *testing.T) {
	var body []byte
	var want []netip.Addr
	for round := 0; round < 3; round++ {
		for i := 1; i <= 40; i++ {
			a := netip.AddrFrom4([4]byte{10, 0, 0, byte(i)})
			body = fmt.Appendf(body, "a=candidate:%d 1 UDP 1 %v 5000 typ host\r\n", i, a)
			if round == 0 {
				want = append(want, a)
			}
		}
	}
	got := ForeignAddrs(body, func(netip.Addr) bool { return true })
	if !reflect.DeepEqual(got, want) {
		t.Errorf("ForeignAddrs returned %d addresses, want the %d distinct ones in order: %v", len(got), len(want), got)
	}
}

// TestParseAddrTextMatchesNetip checks the allocation-free parser against
// netip.ParseAddr on edge cases and on many generated address-like strings.
func TestParseAddrTextMatchesNetip(t *testing.T) {
	inputs := []string{
		"", ".", ":", "::", ":::", "::1", "1::", "1:2:3:4:5:6:7:8", "1:2:3:4:5:6:7:8:9", "1:2:3:4:5:6:7::",
		"::1:2:3:4:5:6:7", "1:2:3:4:5:6:7::8", "1::2::3", "12345::1", "ffff::", "FFFF::fFfF", ":1::", "1:",
		"::ffff:1.2.3.4", "1:2:3:4:5:6:1.2.3.4", "1:2:3:4:5:1.2.3.4", "1:2:3:4:5:6:7:1.2.3.4", "::1.2.3.4.5",
		"::01.2.3.4", "::a1.2.3.4", "1.2.3.4", "01.2.3.4", "0.0.0.0", "255.255.255.255", "256.1.1.1", "1.2.3",
		"1.2.3.4.", ".1.2.3", "1..2.3", "1.2.3.4:5", "1.2::3", "0::", "00000::1", "0000::1", "::0:0:0:0:0:0:0",
	}
	rnd := rand.New(rand.NewPCG(1, 2))
	const alphabet = "0123456789abcdefABCDEF:..:"
	for range 50000 {
		n := rnd.IntN(24)
		b := make([]byte, n)
		for i := range b {
			b[i] = alphabet[rnd.IntN(len(alphabet))]
		}
		inputs = append(inputs, string(b))
	}
	// Structured candidates: hex groups joined by ":" or "::", sometimes
	// ending in a dotted quad, so that many of them are valid.
	const hex = "0123456789abcdefABCDEF"
	for range 50000 {
		var b []byte
		for g := range 1 + rnd.IntN(9) {
			if g > 0 {
				b = append(b, ':')
				if rnd.IntN(6) == 0 {
					b = append(b, ':')
				}
			}
			for range rnd.IntN(6) {
				b = append(b, hex[rnd.IntN(len(hex))])
			}
		}
		if rnd.IntN(4) == 0 {
			b = fmt.Appendf(b, ":%d.%d.%d.%d", rnd.IntN(300), rnd.IntN(300), rnd.IntN(300), rnd.IntN(300))
		}
		inputs = append(inputs, string(b))
	}
	valid := 0
	for _, s := range inputs {
		want, err := netip.ParseAddr(s)
		if err == nil {
			valid++
		}
		got, ok := parseAddrText(s)
		if ok != (err == nil) || got != want {
			t.Fatalf("parseAddrText(%q) = %v, %v; netip.ParseAddr = %v, %v", s, got, ok, want, err)
		}
		if gotB, okB := parseAddrText([]byte(s)); gotB != got || okB != ok {
			t.Fatalf("parseAddrText differs between string and []byte for %q", s)
		}
	}
	if valid < 1000 {
		t.Errorf("only %d of %d inputs are valid addresses; the generator does not exercise the accepting paths", valid, len(inputs))
	}
	t.Logf("%d inputs, %d valid", len(inputs), valid)
}

func FuzzAddrText(f *testing.F) {
	for _, s := range []string{"::", "::ffff:1.2.3.4", "1.2.3.4", "2001:db8::1", "1:2:3:4:5:6:7:8"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if strings.IndexByte(s, '%') >= 0 {
			return // zones are never part of a scanned run
		}
		want, err := netip.ParseAddr(s)
		got, ok := parseAddrText(s)
		if ok != (err == nil) || got != want {
			t.Fatalf("parseAddrText(%q) = %v, %v; netip.ParseAddr = %v, %v", s, got, ok, want, err)
		}
	})
}
