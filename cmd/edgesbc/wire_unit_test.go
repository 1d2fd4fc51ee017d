package main_test

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/edgesbc/edgesbc/internal/testenv"
)

func udpPacket(src, dst string, payload string) testenv.Packet {
	return testenv.Packet{
		Proto:   testenv.ProtoUDP,
		Src:     netip.MustParseAddrPort(src),
		Dst:     netip.MustParseAddrPort(dst),
		Payload: []byte(payload),
	}
}

func sipText(lines ...string) string { return strings.Join(lines, "\r\n") }

func TestParseSIP(t *testing.T) {
	invite := sipText(
		"INVITE sip:15551234567@203.0.113.2:5060 SIP/2.0",
		"Via: SIP/2.0/UDP 203.0.113.1:5060;rport;branch=z9hG4bK.abc, SIP/2.0/UDP 192.0.2.9;branch=z9hG4bK.second",
		"v: SIP/2.0/UDP 192.0.2.10;branch=z9hG4bK.third",
		"i: 5b1f@edgesbc",
		"CSeq: 7 INVITE",
		"Content-Type: application/sdp",
		"",
		"v=0\r\nc=IN IP4 203.0.113.1\r\n")
	m, ok := parseSIP(udpPacket("203.0.113.1:5060", "203.0.113.2:5060", invite))
	if !ok {
		t.Fatal("INVITE not parsed")
	}
	if m.Method != "INVITE" || m.RequestURI != "sip:15551234567@203.0.113.2:5060" || m.Status != 0 ||
		m.CallID != "5b1f@edgesbc" || m.CSeqMethod != "INVITE" || m.Branch != "z9hG4bK.abc" ||
		len(m.Headers["via"]) != 2 || m.Body != "v=0\r\nc=IN IP4 203.0.113.1\r\n" {
		t.Errorf("parsed INVITE: %+v", m)
	}

	resp := sipText("SIP/2.0 487 Request Terminated", "Via: SIP/2.0/UDP 203.0.113.1;branch=z9hG4bK.abc", "Call-ID: x", "CSeq: 7 INVITE", "", "")
	m, ok = parseSIP(udpPacket("203.0.113.2:5060", "203.0.113.1:5060", resp))
	if !ok || m.Status != 487 || m.Method != "" || m.CSeqMethod != "INVITE" || m.Branch != "z9hG4bK.abc" {
		t.Errorf("parsed response: %+v, ok=%v", m, ok)
	}

	for _, junk := range []string{"", "\x80\x08\x00\x01rtp", "SIP/2.0 abc OK\r\n\r\n", "HELLO\r\n\r\n", "\r\n\r\n"} {
		if m, ok := parseSIP(udpPacket("203.0.113.2:6000", "203.0.113.1:20000", junk)); ok {
			t.Errorf("parseSIP(%q) = %+v, want not SIP", junk, m)
		}
	}
}

func TestFindLeaks(t *testing.T) {
	inside := netip.MustParsePrefix("10.91.1.0/24")
	forbidden := []string{"10.91.1.", "pbx01.corp.internal", "CorpPBX"}
	clean := []testenv.Packet{
		udpPacket("203.0.113.1:5060", "203.0.113.2:5060", "INVITE sip:1@203.0.113.2 SIP/2.0\r\nContact: <sip:203.0.113.1>\r\n\r\n"),
		udpPacket("203.0.113.1:20000", "203.0.113.2:6000", "\x80\x08rtp"),
		{Proto: testenv.ProtoICMP, Src: netip.MustParseAddrPort("203.0.113.2:0"), Dst: netip.MustParseAddrPort("203.0.113.1:0"), Payload: []byte{3, 3}},
	}
	if leaks := findLeaks(clean, inside, forbidden); len(leaks) != 0 {
		t.Errorf("clean capture reported: %q", leaks)
	}
	for _, tt := range []struct {
		name string
		pkt  testenv.Packet
		want string
	}{
		{"source address", udpPacket("10.91.1.2:6000", "203.0.113.2:6000", "x"), "address in 10.91.1.0/24"},
		{"destination address", udpPacket("203.0.113.2:5060", "10.91.1.2:5060", "x"), "address in 10.91.1.0/24"},
		{"sdp", udpPacket("203.0.113.1:5060", "203.0.113.2:5060", "v=0\r\nc=IN IP4 10.91.1.2\r\n"), `"10.91.1."`},
		{"contact host", udpPacket("203.0.113.1:5060", "203.0.113.2:5060", "Contact: <sip:1@pbx01.corp.internal>"), `"pbx01.corp.internal"`},
		{"user agent", udpPacket("203.0.113.1:5060", "203.0.113.2:5060", "User-Agent: CorpPBX 4.2"), `"CorpPBX"`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			leaks := findLeaks(append(slices.Clone(clean), tt.pkt), inside, forbidden)
			if len(leaks) == 0 || !strings.Contains(strings.Join(leaks, "\n"), tt.want) {
				t.Errorf("leaks = %q, want one mentioning %s", leaks, tt.want)
			}
		})
	}
}

func TestCheckRTP(t *testing.T) {
	sbc, peer := netip.MustParseAddr("203.0.113.1"), netip.MustParseAddr("203.0.113.2")
	media := portRange{20000, 20099}
	pkts := []testenv.Packet{
		udpPacket("203.0.113.1:5060", "203.0.113.2:5060", "INVITE"),  // SIP: not counted
		udpPacket("203.0.113.1:20000", "203.0.113.2:6000", "rtp"),    // to peer
		udpPacket("203.0.113.1:20001", "203.0.113.2:6001", "rtcp"),   // to peer
		udpPacket("203.0.113.2:6000", "203.0.113.1:20000", "rtp"),    // from peer
		udpPacket("203.0.113.1:30000", "203.0.113.2:6000", "rtp"),    // stray: outside range
		udpPacket("198.51.100.7:20000", "203.0.113.2:6000", "rtp"),   // stray: not the SBC
		udpPacket("203.0.113.2:6000", "198.51.100.7:20000", "other"), // neither
	}
	r := checkRTP(pkts, sbc, peer, media, 5060)
	if r.ToPeer != 2 || r.FromPeer != 1 || len(r.Strays) != 2 {
		t.Errorf("report %+v, want 2 to peer, 1 from peer, 2 strays", r)
	}
}

func TestCheckSDP(t *testing.T) {
	sbc, peer := netip.MustParseAddr("10.91.1.1"), netip.MustParseAddr("10.91.1.2")
	ok := sipMessage{Method: "INVITE", Dst: netip.MustParseAddrPort("10.91.1.2:5060"), Body: "v=0\r\nc=IN IP4 10.91.1.1\r\nm=audio 20000 RTP/AVP 8\r\n"}
	bad := sipMessage{Status: 200, Dst: netip.MustParseAddrPort("10.91.1.2:5060"), Body: "v=0\r\nc=IN IP4 203.0.113.2\r\n"}
	other := sipMessage{Status: 200, Dst: netip.MustParseAddrPort("10.91.1.1:5060"), Body: "v=0\r\nc=IN IP4 10.91.1.2\r\n"}
	if p := checkSDP([]sipMessage{ok, other}, sbc, peer); len(p) != 0 {
		t.Errorf("good SDP reported: %q", p)
	}
	if p := checkSDP([]sipMessage{ok, bad}, sbc, peer); len(p) != 1 || !strings.Contains(p[0], "203.0.113.2") {
		t.Errorf("problems = %q, want the one c= pointing past the SBC", p)
	}
}

func TestCheckTransactions(t *testing.T) {
	uac := "192.0.2.1:5060"
	uas := "192.0.2.2:5060"
	msg := func(src, dst, start, branch, cseq string) string {
		return sipText(start, "Via: SIP/2.0/UDP "+src+";branch="+branch, "Call-ID: c1", "CSeq: "+cseq, "", "")
	}
	flow := func(lines ...[3]string) []sipMessage {
		var pkts []testenv.Packet
		for _, l := range lines {
			src, dst := uac, uas
			if strings.HasPrefix(l[0], "SIP/2.0") {
				src, dst = uas, uac
			}
			pkts = append(pkts, udpPacket(src, dst, msg(src, dst, l[0], l[1], l[2])))
		}
		return sipMessages(pkts)
	}
	from := netip.MustParseAddr("192.0.2.1")
	good := [][]sipMessage{
		flow([3]string{"INVITE sip:a SIP/2.0", "b1", "1 INVITE"}, [3]string{"SIP/2.0 486 Busy", "b1", "1 INVITE"}, [3]string{"ACK sip:a SIP/2.0", "b1", "1 ACK"}),
		flow([3]string{"INVITE sip:a SIP/2.0", "b1", "1 INVITE"}, [3]string{"SIP/2.0 200 OK", "b1", "1 INVITE"}, [3]string{"ACK sip:a SIP/2.0", "b2", "1 ACK"}),
		flow([3]string{"INVITE sip:a SIP/2.0", "b1", "1 INVITE"}, [3]string{"CANCEL sip:a SIP/2.0", "b1", "1 CANCEL"},
			[3]string{"SIP/2.0 200 OK", "b1", "1 CANCEL"}, [3]string{"SIP/2.0 487 Terminated", "b1", "1 INVITE"}, [3]string{"ACK sip:a SIP/2.0", "b1", "1 ACK"}),
	}
	for i, msgs := range good {
		if p := checkTransactions(msgs, from); len(p) != 0 {
			t.Errorf("good flow %d reported: %q", i, p)
		}
	}
	bad := [][]sipMessage{
		flow([3]string{"INVITE sip:a SIP/2.0", "b1", "1 INVITE"}, [3]string{"SIP/2.0 486 Busy", "b1", "1 INVITE"}, [3]string{"ACK sip:a SIP/2.0", "b9", "1 ACK"}),
		flow([3]string{"INVITE sip:a SIP/2.0", "b1", "1 INVITE"}, [3]string{"SIP/2.0 200 OK", "b1", "1 INVITE"}, [3]string{"ACK sip:a SIP/2.0", "b1", "1 ACK"}),
		flow([3]string{"INVITE sip:a SIP/2.0", "b1", "1 INVITE"}, [3]string{"CANCEL sip:a SIP/2.0", "b9", "1 CANCEL"}),
		flow([3]string{"INVITE sip:a SIP/2.0", "b1", "1 INVITE"}, [3]string{"ACK sip:a SIP/2.0", "b1", "1 ACK"}),
	}
	for i, msgs := range bad {
		if p := checkTransactions(msgs, from); len(p) != 1 {
			t.Errorf("bad flow %d: problems %q, want one", i, p)
		}
	}
}

// TestTCPSIP: messages are cut out of reassembled streams by
// Content-Length, per direction, so a string split across segments is
// found by findLeaks on the result.
func TestTCPSIP(t *testing.T) {
	a, b := netip.MustParseAddrPort("203.0.113.1:40000"), netip.MustParseAddrPort("203.0.113.2:5060")
	seg := func(src, dst netip.AddrPort, s string) testenv.Packet {
		return testenv.Packet{Proto: testenv.ProtoTCP, Src: src, Dst: dst, Payload: []byte(s)}
	}
	inv := "INVITE sip:1@203.0.113.2 SIP/2.0\r\nCall-ID: c1\r\nContact: <sip:x@pbx01.corp.internal>\r\nContent-Length: 4\r\n\r\nbody"
	ok := "SIP/2.0 200 OK\r\nCall-ID: c1\r\nl: 0\r\n\r\n"
	cut := strings.Index(inv, "corp.internal") + 2
	pkts := []testenv.Packet{
		seg(a, b, inv[:cut]),
		seg(b, a, ok),
		seg(a, b, inv[cut:]+"\r\n\r\nBYE sip:1@203.0.113.2 SIP/2.0\r\nCall-ID: c1\r\nContent-Length: 0\r\n\r\n"),
		{Proto: testenv.ProtoUDP, Src: a, Dst: b, Payload: []byte(ok)},
	}
	msgs := sipMessagesOf(tcpSIP(pkts, 5060))
	var got []string
	for _, m := range msgs {
		got = append(got, m.String())
	}
	if len(msgs) != 3 || msgs[0].Method != "INVITE" || msgs[0].Body != "body" || msgs[1].Method != "BYE" || msgs[2].Status != 200 {
		t.Fatalf("messages %q", got)
	}
	if findLeaks(pkts[:3], netip.MustParsePrefix("10.91.1.0/24"), []string{"corp.internal"}) != nil {
		t.Fatal("the split name must not be visible per segment (else this test proves nothing)")
	}
	if leaks := findLeaks(tcpSIP(pkts, 5060), netip.MustParsePrefix("10.91.1.0/24"), []string{"corp.internal"}); len(leaks) != 1 {
		t.Errorf("leaks in reassembled messages: %q, want the Contact", leaks)
	}
}
