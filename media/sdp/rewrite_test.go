package sdp

import (
	"bytes"
	"errors"
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// rewriteCase is one input body and the whole body Rewrite must produce.
type rewriteCase struct {
	name   string
	in     string
	anchor Anchor
	want   string
}

// rewriteCases is shared by TestRewrite, the leak property test and the
// fuzz seeds.
var rewriteCases = []rewriteCase{
	{
		name: "G.711 offer from a PBX with ICE and identity lines",
		in: crlf(`v=0
o=FreeSWITCH 1700000000 1700000001 IN IP4 10.0.0.5
s=FreeSWITCH pbx01.corp.example
i=Call from pbx01.corp.example
u=http://pbx01.corp.example/
e=admin@corp.example
p=+1 555 0100
c=IN IP4 10.0.0.5
b=AS:80
t=0 0
a=msid-semantic: WMS
m=audio 16384 RTP/AVP 0 8 101
i=main audio on 10.0.0.5
c=IN IP4 10.0.0.5
b=TIAS:64000
a=rtpmap:0 PCMU/8000
a=rtpmap:8 PCMA/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-16
a=ptime:20
a=rtcp:16385 IN IP4 10.0.0.5
a=ice-ufrag:abcd
a=ice-pwd:0123456789abcdef0123456789
a=candidate:1 1 UDP 2130706431 10.0.0.5 16384 typ host
a=candidate:2 1 UDP 1694498815 198.51.100.20 40000 typ srflx raddr 10.0.0.5 rport 16384
a=end-of-candidates
a=x-pbx-origin:10.0.0.5
a=sendrecv
`),
		anchor: testAnchor(anchor4, 1),
		want: crlf(`v=0
o=edgesbc 4242 7 IN IP4 203.0.113.10
s=-
c=IN IP4 203.0.113.10
b=AS:80
t=0 0
a=msid-semantic: WMS
m=audio 30000 RTP/AVP 0 8 101
b=TIAS:64000
a=rtpmap:0 PCMU/8000
a=rtpmap:8 PCMA/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-16
a=ptime:20
a=rtcp:30001 IN IP4 203.0.113.10
a=sendrecv
`),
	},
	{
		name: "SRTP audio and video, IPv4 body to IPv6 anchor, LF only",
		in: `v=0
o=- 3 4 IN IP4 192.168.1.20
s=SomePhone 2.1
c=IN IP4 192.168.1.20
t=0 0
m=audio 5004 RTP/SAVP 9 0 101
a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR|2^20|1:32
a=rtpmap:9 G722/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-16
a=rtcp:5005
a=rtcp-mux
m=video 5006 RTP/SAVP 96
c=IN IP4 192.168.1.21
a=rtpmap:96 H264/90000
a=fmtp:96 profile-level-id=42e01f;packetization-mode=1
a=fingerprint:sha-256 4A:AD:B9:B1:3F:82:18:3B:54:02:12:DF:3E:5D:49:6B:19:E5:7C:AB:3B:FD:E6:5F:C1:6A:8E:35:8F:C9:8B:E0
a=setup:actpass
`,
		anchor: testAnchor(anchor6, 2),
		want: crlf(`v=0
o=edgesbc 4242 7 IN IP6 2001:db8:ffff::10
s=-
c=IN IP6 2001:db8:ffff::10
t=0 0
m=audio 30000 RTP/SAVP 9 0 101
a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR|2^20|1:32
a=rtpmap:9 G722/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-16
a=rtcp:30001
a=rtcp-mux
m=video 30002 RTP/SAVP 96
a=rtpmap:96 H264/90000
a=fmtp:96 profile-level-id=42e01f;packetization-mode=1
a=fingerprint:sha-256 4A:AD:B9:B1:3F:82:18:3B:54:02:12:DF:3E:5D:49:6B:19:E5:7C:AB:3B:FD:E6:5F:C1:6A:8E:35:8F:C9:8B:E0
a=setup:actpass
`),
	},
	{
		name: "RFC 2543 hold at session level keeps media-level hold",
		in: crlf(`v=0
o=- 1 2 IN IP4 10.1.1.1
s=-
c=IN IP4 0.0.0.0
t=0 0
m=audio 5000 RTP/AVP 0
a=rtcp:5001 IN IP4 0.0.0.0
a=sendonly
m=video 5002 RTP/AVP 31
c=IN IP4 10.1.1.1
`),
		anchor: testAnchor(anchor4, 2),
		want: crlf(`v=0
o=edgesbc 4242 7 IN IP4 203.0.113.10
s=-
c=IN IP4 203.0.113.10
t=0 0
m=audio 30000 RTP/AVP 0
c=IN IP4 0.0.0.0
a=rtcp:30001 IN IP4 203.0.113.10
a=sendonly
m=video 30002 RTP/AVP 31
`),
	},
	{
		name: "hold in either family becomes :: for an IPv6 anchor",
		in: crlf(`v=0
o=- 1 2 IN IP4 192.0.2.1
s=-
c=IN IP4 192.0.2.1
t=0 0
m=audio 5000 RTP/AVP 0
c=IN IP6 ::
m=audio 5002 RTP/AVP 0
c=IN IP4 0.0.0.0
m=audio 5004 RTP/AVP 0
`),
		anchor: testAnchor(anchor6, 3),
		want: crlf(`v=0
o=edgesbc 4242 7 IN IP6 2001:db8:ffff::10
s=-
c=IN IP6 2001:db8:ffff::10
t=0 0
m=audio 30000 RTP/AVP 0
c=IN IP6 ::
m=audio 30002 RTP/AVP 0
c=IN IP6 ::
m=audio 30004 RTP/AVP 0
`),
	},
	{
		name: "rejected streams, port count, missing s= and t=, session a=rtcp",
		in: crlf(`v=0
o=- 1 1 IN IP4 192.0.2.1
b=CT:128
c=IN IP4 192.0.2.1
b=AS:64
a=rtcp:9
a=recvonly
m=audio 4000/2 RTP/AVP 0
m=video 0 RTP/AVP 31
a=rtcp:1
a=rtpmap:31 H261/90000
m=image 6000 udptl t38
a=T38FaxVersion:0
a=T38FaxRateManagement:transferredTCF
m=video 7000 RTP/AVP 96
a=rtcp:7001
a=rtpmap:96 VP8/90000
`),
		// The last stream is rejected by the anchor (port 0).
		anchor: Anchor{Addr: anchor4, Ports: []int{30000, 31000, 30004, 0}, Origin: Origin{Username: "edgesbc", SessionID: 4242, Version: 7}},
		want: crlf(`v=0
o=edgesbc 4242 7 IN IP4 203.0.113.10
s=-
c=IN IP4 203.0.113.10
b=CT:128
b=AS:64
t=0 0
a=recvonly
m=audio 30000/2 RTP/AVP 0
m=video 0 RTP/AVP 31
a=rtpmap:31 H261/90000
m=image 30004 udptl t38
a=T38FaxVersion:0
a=T38FaxRateManagement:transferredTCF
m=video 0 RTP/AVP 96
a=rtpmap:96 VP8/90000
`),
	},
	{
		name: "every line that names an address goes, the rest stays",
		in: "v=0\r\n" +
			"o=alice 1 1 IN IP4 pc33.corp.example\r\n" +
			"s=-\r\n" +
			"c=IN IP4 10.0.0.7\r\n" +
			"t=0 0\r\n" +
			"r=604800 3600 0 90000\r\n" +
			"z=2882844526 -1h 2898848070 0\r\n" +
			"k=uri:http://10.0.0.9/key\r\n" +
			"x=unknown line type\r\n" +
			"a=group:BUNDLE audio\r\n" +
			"a=tool:gateway 1.2.3.4.5\r\n" +
			"m=audio 5000 RTP/AVP 0\r\n" +
			"t=0 0\r\n" +
			"a=mid:audio\r\n" +
			"a=maxptime:40\r\n" +
			"a=ssrc:1 cname:user@192.168.0.1\r\n" +
			"a=x-sip:[fe80::1]:5060\r\n" +
			"a=x-mapped:::ffff:10.0.0.5\r\n" +
			"a=x-hostport:10.0.0.5:5060\r\n" +
			"a=x-octal:010.000.000.005\r\n" +
			"a=x-bad:fe80::1\r\n" +
			"a=label:1\rc=IN IP4 10.9.9.9\r\n" +
			"a=remote-candidates:1 10.0.0.5 5000\r\n" +
			"a=ice-options:trickle\r\n" +
			"a=ice-lite\r\n" +
			"a=ice-mismatch\r\n" +
			"a=ICE-PWD:secret\r\n" +
			"a=ice-pacing:50\r\n" +
			"a=rtcp-fb:0 nack\r\n" +
			"a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level\r\n",
		anchor: testAnchor(anchor4, 1),
		want: crlf(`v=0
o=edgesbc 4242 7 IN IP4 203.0.113.10
s=-
c=IN IP4 203.0.113.10
t=0 0
r=604800 3600 0 90000
z=2882844526 -1h 2898848070 0
a=group:BUNDLE audio
m=audio 30000 RTP/AVP 0
a=mid:audio
a=maxptime:40
a=rtcp-fb:0 nack
a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level
`),
	},
	{
		name:   "default username, IPv4-mapped body, no media",
		in:     "v=0\no=assistant 971731711378798081 0 IN IP6 ::ffff:192.0.2.2\ns=Call me soon, please!\nc=IN IP6 ::ffff:192.0.2.2\nt=3338481189 3370017201\n",
		anchor: Anchor{Addr: anchor4, Origin: Origin{SessionID: 18446744073709551615, Version: 0}},
		want: crlf(`v=0
o=- 18446744073709551615 0 IN IP4 203.0.113.10
s=-
c=IN IP4 203.0.113.10
t=3338481189 3370017201
`),
	},
}

func TestRewrite(t *testing.T) {
	for _, tt := range rewriteCases {
		t.Run(tt.name, func(t *testing.T) {
			d, err := Parse([]byte(tt.in))
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			got, err := d.Rewrite(tt.anchor)
			if err != nil {
				t.Fatalf("Rewrite: %v", err)
			}
			if string(got) != tt.want {
				t.Errorf("Rewrite mismatch\n got:\n%s\nwant:\n%s", show(got), show([]byte(tt.want)))
			}
		})
	}
}

// TestRewriteCorpus compares the rewritten RFC 4475 and RFC 5118 bodies
// with testdata/rfc4475/<name>.out.sdp; refresh with go test -update.
func TestRewriteCorpus(t *testing.T) {
	for _, name := range corpusFiles {
		t.Run(name, func(t *testing.T) {
			d, err := Parse(corpusBody(t, name))
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			got, err := d.Rewrite(corpusAnchor(name, len(d.Media())))
			if err != nil {
				t.Fatalf("Rewrite: %v", err)
			}
			golden := filepath.Join("testdata", "rfc4475", strings.TrimSuffix(name, ".sip")+".out.sdp")
			if *update {
				if err := os.WriteFile(golden, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test -update to create it)", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("Rewrite differs from %s\n got:\n%s\nwant:\n%s", golden, show(got), show(want))
			}
		})
	}
}

// corpusAnchor rewrites the RFC 5118 (IPv6) bodies to an IPv6 anchor and
// the RFC 4475 ones to an IPv4 anchor.
func corpusAnchor(name string, n int) Anchor {
	switch name {
	case "ipv6-in-sdp.sip", "mult-ip-in-sdp.sip", "ipv4-mapped-ipv6.sip":
		return testAnchor(anchor6, n)
	}
	return testAnchor(anchor4, n)
}

// TestRewriteProperties checks, for every test body and both anchor
// families, what must hold whatever the body: no foreign address survives,
// the result parses again, streams keep their kind, proto and formats and
// get the anchor's ports and address, and rewriting is idempotent.
func TestRewriteProperties(t *testing.T) {
	bodies := map[string][]byte{"benchmark offer": []byte(benchOffer)}
	for _, tt := range rewriteCases {
		bodies[tt.name] = []byte(tt.in)
	}
	for _, name := range corpusFiles {
		bodies[name] = corpusBody(t, name)
	}
	for name, body := range bodies {
		for _, addr := range []netip.Addr{anchor4, anchor6} {
			t.Run(name+"/"+addr.String(), func(t *testing.T) {
				d, err := Parse(body)
				if err != nil {
					t.Fatalf("Parse: %v", err)
				}
				in := d.Media()
				a := testAnchor(addr, len(in))
				out, err := d.Rewrite(a)
				if err != nil {
					t.Fatalf("Rewrite: %v", err)
				}
				if leaks := ForeignAddrs(out, notAnchor(addr)); len(leaks) != 0 {
					t.Errorf("rewritten body still names %v:\n%s", leaks, show(out))
				}
				checkWellFormed(t, out)

				d2, err := Parse(out)
				if err != nil {
					t.Fatalf("Parse(Rewrite(body)): %v\n%s", err, show(out))
				}
				if d2.Origin() != a.Origin {
					t.Errorf("origin %+v, want %+v", d2.Origin(), a.Origin)
				}
				got := d2.Media()
				if len(got) != len(in) {
					t.Fatalf("%d m= lines after rewrite, want %d", len(got), len(in))
				}
				for i, m := range got {
					wantPort, wantAddr := a.Ports[i], addr
					if in[i].Port == 0 {
						wantPort = 0
					}
					if in[i].Addr.IsUnspecified() {
						wantAddr = netip.IPv4Unspecified()
						if addr.Is6() {
							wantAddr = netip.IPv6Unspecified()
						}
					}
					switch {
					case m.Port != wantPort:
						t.Errorf("m-line %d: port %d, want %d", i, m.Port, wantPort)
					case m.Addr != wantAddr:
						t.Errorf("m-line %d: addr %v, want %v", i, m.Addr, wantAddr)
					case m.Kind != in[i].Kind || m.Proto != in[i].Proto || m.NumPorts != in[i].NumPorts ||
						strings.Join(m.Formats, " ") != strings.Join(in[i].Formats, " "):
						t.Errorf("m-line %d changed: %+v, was %+v", i, m, in[i])
					case m.Direction != in[i].Direction || m.RTCPMux != in[i].RTCPMux:
						t.Errorf("m-line %d: direction %q mux %v, was %q %v", i, m.Direction, m.RTCPMux, in[i].Direction, in[i].RTCPMux)
					case in[i].RTCP.IsValid() && wantPort != 0 && m.RTCP.Port() != uint16(wantPort+1):
						t.Errorf("m-line %d: RTCP %v, want port %d", i, m.RTCP, wantPort+1)
					}
				}

				again, err := d2.Rewrite(a)
				if err != nil {
					t.Fatalf("second Rewrite: %v", err)
				}
				if !bytes.Equal(again, out) {
					t.Errorf("Rewrite is not idempotent\nfirst:\n%s\nsecond:\n%s", show(out), show(again))
				}
			})
		}
	}
}

// checkWellFormed asserts the output framing: CRLF everywhere, a final
// CRLF, no blank lines, and the RFC 8866 §5 session header order.
func checkWellFormed(t *testing.T, out []byte) {
	t.Helper()
	if !bytes.HasSuffix(out, []byte("\r\n")) {
		t.Errorf("output does not end with CRLF")
	}
	lines := strings.Split(strings.TrimSuffix(string(out), "\r\n"), "\r\n")
	for i, l := range lines {
		if l == "" || strings.ContainsAny(l, "\r\n") {
			t.Errorf("line %d %q is blank or has a stray line break", i+1, l)
		}
	}
	if len(lines) < 5 || lines[0] != "v=0" || !strings.HasPrefix(lines[1], "o=") || lines[2] != "s=-" || !strings.HasPrefix(lines[3], "c=IN IP") {
		t.Errorf("session header is not v= o= s=- c=:\n%s", show(out))
	}
	if n := strings.Count(string(out), "\r\nt="); n == 0 {
		t.Errorf("no t= line")
	}
}

func TestRewriteErrors(t *testing.T) {
	const body = "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\nm=audio 5000 RTP/AVP 0\r\nm=audio 0 RTP/AVP 0\r\n"
	good := func() Anchor { return testAnchor(anchor4, 2) }
	tests := []struct {
		name   string
		body   string
		anchor func() Anchor
		want   error
	}{
		{"zero anchor", body, func() Anchor { return Anchor{} }, ErrInvalidAnchor},
		{"too few ports", body, func() Anchor { a := good(); a.Ports = a.Ports[:1]; return a }, ErrInvalidAnchor},
		{"too many ports", body, func() Anchor { a := good(); a.Ports = append(a.Ports, 1); return a }, ErrInvalidAnchor},
		{"nil ports", body, func() Anchor { a := good(); a.Ports = nil; return a }, ErrInvalidAnchor},
		{"unspecified anchor", body, func() Anchor { a := good(); a.Addr = netip.IPv4Unspecified(); return a }, ErrInvalidAnchor},
		{"multicast anchor", body, func() Anchor { a := good(); a.Addr = netip.MustParseAddr("233.252.0.1"); return a }, ErrInvalidAnchor},
		{"zoned anchor", body, func() Anchor { a := good(); a.Addr = netip.MustParseAddr("fe80::1%eth0"); return a }, ErrInvalidAnchor},
		{"negative port", body, func() Anchor { a := good(); a.Ports[0] = -2; return a }, ErrInvalidAnchor},
		{"port leaves no room for RTCP", body, func() Anchor { a := good(); a.Ports[0] = 65535; return a }, ErrInvalidAnchor},
		{"username with space", body, func() Anchor { a := good(); a.Origin.Username = "edge sbc"; return a }, ErrInvalidAnchor},
		{"username with CRLF", body, func() Anchor { a := good(); a.Origin.Username = "x\r\nc=IN"; return a }, ErrInvalidAnchor},
		{"username with an address", body, func() Anchor { a := good(); a.Origin.Username = "10.0.0.1"; return a }, ErrInvalidAnchor},
		{"address literal in formats", "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\nm=audio 5000 RTP/AVP 0 10.0.0.5\r\n", func() Anchor { return testAnchor(anchor4, 1) }, ErrLeak},
		{"address literal in proto", "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\nm=audio 5000 fe80::1 0\r\n", func() Anchor { return testAnchor(anchor4, 1) }, ErrLeak},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, err := Parse([]byte(tt.body))
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			out, err := d.Rewrite(tt.anchor())
			if !errors.Is(err, tt.want) {
				t.Fatalf("Rewrite = %q, %v; want %v", out, err, tt.want)
			}
			if out != nil {
				t.Errorf("Rewrite returned a body with an error")
			}
		})
	}
	// Results that would not parse again are refused: an m= line that
	// grows past MaxLineLength with the longer anchor port, and a body
	// that grows past MaxBodySize with the hold c= lines.
	longM := "m=audio 1 RTP/AVP" + strings.Repeat(" 0", (MaxLineLength-len("m=audio 1 RTP/AVP"))/2)
	bigHead := "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nt=0 0\r\n"
	bigMedia := strings.Repeat("m=audio 1 RTP/AVP 0\r\nc=IN IP4 0.0.0.0\r\n", MaxMediaLines)
	bigFill := strings.Repeat("a=x\r\n", (MaxBodySize-len(bigHead)-len(bigMedia))/5)
	for name, tt := range map[string]struct {
		body string
		n    int
	}{
		"m= line too long after rewrite": {"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\n" + longM + "\r\n", 1},
		"body too large after rewrite":   {bigHead + bigFill + bigMedia, MaxMediaLines},
	} {
		d, err := Parse([]byte(tt.body))
		if err != nil {
			t.Fatalf("%s: Parse: %v", name, err)
		}
		if out, err := d.Rewrite(testAnchor(anchor4, tt.n)); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: Rewrite = %d bytes, %v; want ErrMalformed", name, len(out), err)
		} else {
			t.Logf("%s: %v", name, err)
		}
	}

	// The port of an already rejected stream is never looked at.
	d, err := Parse([]byte(body))
	if err != nil {
		t.Fatal(err)
	}
	a := good()
	a.Ports[1] = -1
	if _, err := d.Rewrite(a); err != nil {
		t.Errorf("Rewrite with a bogus port for a rejected stream: %v", err)
	}
	var nilDesc *Description
	if _, err := nilDesc.Rewrite(good()); !errors.Is(err, ErrInvalidAnchor) {
		t.Errorf("nil Description: %v", err)
	}
}

// TestRewriteDoesNotModify checks that a Description can be rewritten for
// several legs: the second result must not depend on the first.
func TestRewriteDoesNotModify(t *testing.T) {
	d, err := Parse([]byte(benchOffer))
	if err != nil {
		t.Fatal(err)
	}
	before := d.Media()
	first, err := d.Rewrite(testAnchor(anchor6, 1))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.Rewrite(Anchor{Addr: anchor4, Ports: []int{40000}}); err != nil {
		t.Fatal(err)
	}
	again, err := d.Rewrite(testAnchor(anchor6, 1))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(first, again) {
		t.Errorf("second Rewrite differs:\n%s\n%s", show(first), show(again))
	}
	if after := d.Media(); after[0].Port != before[0].Port || after[0].Addr != before[0].Addr {
		t.Errorf("Rewrite modified the Description: %+v, was %+v", after[0], before[0])
	}
}

// benchOffer is a typical 12-line G.711 audio offer from an IP-PBX.
const benchOffer = "v=0\r\n" +
	"o=pbx 1700000000 1700000000 IN IP4 10.0.0.5\r\n" +
	"s=pbx\r\n" +
	"c=IN IP4 10.0.0.5\r\n" +
	"t=0 0\r\n" +
	"m=audio 16384 RTP/AVP 0 8 101\r\n" +
	"a=rtpmap:0 PCMU/8000\r\n" +
	"a=rtpmap:8 PCMA/8000\r\n" +
	"a=rtpmap:101 telephone-event/8000\r\n" +
	"a=fmtp:101 0-16\r\n" +
	"a=ptime:20\r\n" +
	"a=sendrecv\r\n"

func BenchmarkRewrite(b *testing.B) {
	d, err := Parse([]byte(benchOffer))
	if err != nil {
		b.Fatal(err)
	}
	a := testAnchor(anchor4, 1)
	b.ReportAllocs()
	b.SetBytes(int64(len(benchOffer)))
	for b.Loop() {
		if _, err := d.Rewrite(a); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkParse(b *testing.B) {
	body := []byte(benchOffer)
	b.ReportAllocs()
	b.SetBytes(int64(len(body)))
	for b.Loop() {
		if _, err := Parse(body); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkParseRewrite(b *testing.B) {
	body := []byte(benchOffer)
	a := testAnchor(anchor4, 1)
	b.ReportAllocs()
	b.SetBytes(int64(len(body)))
	for b.Loop() {
		d, err := Parse(body)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := d.Rewrite(a); err != nil {
			b.Fatal(err)
		}
	}
}

// show makes line endings visible in failure output.
func show(b []byte) string {
	return strings.ReplaceAll(strings.ReplaceAll(string(b), "\r", `\r`), "\n", "\\n\n")
}
