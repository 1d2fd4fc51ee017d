package sbc

import (
	"net/netip"
	"testing"

	"github.com/emiago/sipgo/sip"
)

// BenchmarkLeakGuardClean is the guard's cost on a clean outgoing INVITE,
// the case every call pays.
func BenchmarkLeakGuardClean(b *testing.B) {
	msg, err := sip.ParseMessage([]byte("INVITE sip:+15551234@203.0.113.2 SIP/2.0\r\n" +
		"Via: SIP/2.0/UDP 203.0.113.1:5060;branch=z9hG4bK.abcdefghijklmnop;rport\r\n" +
		"Max-Forwards: 69\r\nFrom: \"Alice Corp\" <sip:2001@203.0.113.1>;tag=abcdefabcdef\r\n" +
		"To: <sip:+15551234@203.0.113.2>\r\nCall-ID: 0123456789abcdef01234567\r\nCSeq: 4711 INVITE\r\n" +
		"Contact: <sip:203.0.113.1:5060>\r\nAllow: INVITE, ACK, CANCEL, BYE, OPTIONS\r\nUser-Agent: edgesbc\r\n" +
		"Content-Type: application/sdp\r\nContent-Length: 180\r\n\r\n" +
		"v=0\r\no=edgesbc 1573775739329732337 1 IN IP4 203.0.113.1\r\ns=-\r\nc=IN IP4 203.0.113.1\r\nt=0 0\r\n" +
		"m=audio 20500 RTP/AVP 8 101\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\n"))
	if err != nil {
		b.Fatal(err)
	}
	f := &foreignSet{
		networks: []netip.Prefix{netip.MustParsePrefix("10.91.1.0/24")},
		addrs:    []netip.Addr{netip.MustParseAddr("192.168.7.7")},
		hosts:    []string{"pbx01.corp.internal", "corp.internal"},
	}
	var g leakGuard
	b.ReportAllocs()
	for b.Loop() {
		if touched := g.scrub(msg, f); touched != nil {
			b.Fatal(touched)
		}
	}
}
