package sbc

import (
	"maps"
	"net/netip"
	"strings"
	"testing"

	"github.com/emiago/sipgo/sip"
)

func TestScanAddrs(t *testing.T) {
	private := netip.MustParsePrefix("10.91.1.0/24")
	isPrivate := func(a netip.Addr) bool { return private.Contains(a.Unmap()) }
	cases := []struct {
		in   string
		want bool
	}{
		{"<sip:alice@10.91.1.2:5060>", true},
		{"SIP/2.0/UDP 10.91.1.2;branch=z9hG4bK1", true},
		{"received=10.91.1.77", true},
		{"10.91.1.5", true},
		{"[::ffff:10.91.1.9]:5060", true},
		{"<sip:alice@203.0.113.1:5060>", false},
		{"CSeq: 10911 INVITE", false},
		{"version 10.91.1", false},
		{"deadbeef cafe", false},
		{"", false},
	}
	for _, tc := range cases {
		if got := scanAddrs(tc.in, isPrivate); got != tc.want {
			t.Errorf("scanAddrs(%q) = %v, want %v", tc.in, got, tc.want)
		}
	}
	v6 := netip.MustParsePrefix("2001:db8:1::/48")
	if !scanAddrs("<sip:x@[2001:db8:1::5]:5060>", func(a netip.Addr) bool { return v6.Contains(a) }) {
		t.Error("bracketed IPv6 not found")
	}
}

func TestLearnAndScrub(t *testing.T) {
	in, err := sip.ParseMessage([]byte("INVITE sip:bob@10.91.1.1 SIP/2.0\r\n" +
		"Via: SIP/2.0/UDP pbx01.corp.internal:5060;branch=z9hG4bK1\r\n" +
		"From: \"Alice\" <sip:alice@corp.internal>;tag=1\r\n" +
		"To: <sip:bob@10.91.1.1>\r\nCall-ID: 77@pbx01.corp.internal\r\nCSeq: 1 INVITE\r\n" +
		"Contact: <sip:alice@192.168.7.7:5060>\r\nContent-Length: 0\r\n\r\n"))
	if err != nil {
		t.Fatal(err)
	}
	var learned foreignSet
	learned.learnFrom(in, func(h string) bool { return h == "10.91.1.1" })
	if len(learned.hosts) != 2 || len(learned.addrs) != 1 {
		t.Fatalf("learned hosts %v addrs %v", learned.hosts, learned.addrs)
	}
	f := &foreignSet{networks: []netip.Prefix{netip.MustParsePrefix("10.91.1.0/24")}, hosts: learned.hosts, addrs: learned.addrs}

	out := sip.NewRequest(sip.INVITE, sip.Uri{Scheme: "sip", User: "bob", Host: "203.0.113.2"})
	out.AppendHeader(&sip.ViaHeader{ProtocolName: "SIP", ProtocolVersion: "2.0", Transport: "UDP", Host: "203.0.113.1", Port: 5060, Params: sip.NewParams()})
	out.AppendHeader(&sip.FromHeader{DisplayName: "pbx01.corp.internal", Address: sip.Uri{Scheme: "sip", User: "alice", Host: "203.0.113.1"}, Params: sip.NewParams()})
	out.AppendHeader(&sip.ToHeader{Address: sip.Uri{Scheme: "sip", User: "bob", Host: "203.0.113.2"}, Params: sip.NewParams()})
	out.AppendHeader(sip.NewHeader("X-Clean", "ok"))
	out.AppendHeader(sip.NewHeader("P-Leak", "10.91.1.44"))
	out.AppendHeader(sip.NewHeader("X-Leak2", "node=pbx01.corp.internal"))
	out.AppendHeader(sip.NewHeader("Content-Type", "application/sdp"))
	out.SetBody([]byte("v=0\r\no=- 1 1 IN IP4 203.0.113.1\r\ns=-\r\nc=IN IP4 203.0.113.1\r\na=x:192.168.7.7\r\n"))

	var g leakGuard
	touched := g.scrub(out, f)
	if g.fired.Load() != 1 {
		t.Fatalf("guard fired %d times, want 1", g.fired.Load())
	}
	s := out.String()
	for _, bad := range []string{"10.91.1.44", "pbx01.corp.internal", "192.168.7.7"} {
		if strings.Contains(s, bad) {
			t.Errorf("%q survived the scrub: %v\n%s", bad, touched, s)
		}
	}
	for _, good := range []string{"X-Clean: ok", "From: <sip:alice@203.0.113.1>", "c=IN IP4 203.0.113.1"} {
		if !strings.Contains(s, good) {
			t.Errorf("%q lost in scrub\n%s", good, s)
		}
	}

	clean := sip.NewRequest(sip.BYE, sip.Uri{Scheme: "sip", Host: "203.0.113.2"})
	clean.AppendHeader(sip.NewHeader("X-Clean", "ok"))
	if touched, size := g.scrubSized(clean, f); len(touched) != 0 || size != messageSize(clean) {
		t.Errorf("clean message touched %v, or size %d is not its wire size %d", touched, size, messageSize(clean))
	}
	again := sip.NewRequest(sip.BYE, sip.Uri{Scheme: "sip", Host: "203.0.113.2"})
	again.AppendHeader(sip.NewHeader("P-Leak", "10.91.1.44"))
	if touched, size := g.scrubSized(again, f); len(touched) == 0 || size != -1 {
		t.Errorf("scrubbed message: touched %v, size %d; the size of a changed message is unknown (-1)", touched, size)
	}
}

// FuzzMentionsHost checks the token-wise hostname search against a plain
// case-insensitive substring search over the whole text: for the hostnames
// learnFrom keeps (lower case, a dot, at least four hostname characters)
// both must always agree.
func FuzzMentionsHost(f *testing.F) {
	f.Add("Via: SIP/2.0/UDP PBX01.Corp.Internal:5060;branch=z9hG4bK1", "corp.internal")
	f.Add("o=- 1 1 IN IP4 host.example.com\r\n", "example.com")
	f.Add("sip:alice@a.b-c.d", "b-c.d")
	f.Add("x.corp.internalx", "corp.internal")
	f.Fuzz(func(t *testing.T, text, host string) {
		host = strings.ToLower(host)
		if len(host) < 4 || !strings.Contains(host, ".") {
			return
		}
		for i := 0; i < len(host); i++ {
			if !hostChar[host[i]] {
				return
			}
		}
		fs := &foreignSet{hosts: []string{host}}
		want := strings.Contains(strings.ToLower(asciiOnly(text)), host)
		if got := fs.mentionsHost(asciiOnly(text)); got != want {
			t.Fatalf("mentionsHost(%q, %q) = %v, substring search says %v", text, host, got, want)
		}
	})
}

// asciiOnly replaces non-ASCII bytes, which strings.ToLower would rewrite
// as runes while the guard compares bytes.
func asciiOnly(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c >= 0x80 {
			b[i] = '?'
		}
	}
	return string(b)
}

// scanAddrsAll is scanAddrs with every token of two colons or more given
// to the IPv6 parser: the reference scanAddrs must agree with.
func scanAddrsAll(s string, match func(netip.Addr) bool) bool {
	for i := 0; i < len(s); {
		if !isAddrChar(s[i]) {
			i++
			continue
		}
		j := i
		dots, colons, letters := 0, 0, 0
		for j < len(s) && isAddrChar(s[j]) {
			switch c := s[j]; {
			case c == '.':
				dots++
			case c == ':':
				colons++
			case c > '9':
				letters++
			}
			j++
		}
		tok := s[i:j]
		i = j
		for len(tok) > 0 && (tok[len(tok)-1] == ':' || tok[len(tok)-1] == '.') {
			tok = tok[:len(tok)-1]
		}
		if len(tok) > 1 && tok[0] == ':' && tok[1] != ':' {
			tok = tok[1:]
		}
		switch {
		case colons >= 2:
			if a, err := netip.ParseAddr(tok); err == nil && match(a) {
				return true
			}
			fallthrough
		case dots == 3 && letters == 0:
			if a, ok := trailingIPv4(tok); ok && match(a) {
				return true
			}
		}
	}
	return false
}

func FuzzScanAddrs(f *testing.F) {
	for _, s := range []string{"<sip:10.0.0.1:5060>", "c=IN IP6 ::ffff:10.0.0.1", "a=x:1.2.3.4:", "[2001:db8::5]:5060",
		":1.2.3.4:", "::1", "a:b:c", "sip:x@fe80::1%eth0"} {
		f.Add(s)
	}
	// scanAddrs reports whether any address satisfies match: the two must
	// offer match the same addresses (the reference may offer one twice)
	f.Fuzz(func(t *testing.T, s string) {
		got, want := map[netip.Addr]bool{}, map[netip.Addr]bool{}
		scanAddrs(s, func(a netip.Addr) bool { got[a] = true; return false })
		scanAddrsAll(s, func(a netip.Addr) bool { want[a] = true; return false })
		if !maps.Equal(got, want) {
			t.Fatalf("scanAddrs(%q) saw %v, the reference %v", s, got, want)
		}
	})
}
