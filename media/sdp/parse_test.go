package sdp

import (
	"errors"
	"net/netip"
	"reflect"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	addr := netip.MustParseAddr
	ap := netip.MustParseAddrPort
	tests := []struct {
		name       string
		body       string
		wantOrigin Origin
		want       []Media
	}{
		{
			name: "g711 offer CRLF",
			body: crlf(`v=0
o=pbx 123456 654321 IN IP4 10.0.0.5
s=Asterisk PBX 18.1
c=IN IP4 10.0.0.5
t=0 0
m=audio 10000 RTP/AVP 0 8 101
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-16
a=ptime:20
a=sendrecv
`),
			wantOrigin: Origin{Username: "pbx", SessionID: 123456, Version: 654321},
			want: []Media{{
				Kind: "audio", Port: 10000, NumPorts: 1, Proto: "RTP/AVP", Formats: []string{"0", "8", "101"},
				Addr: addr("10.0.0.5"), Direction: "sendrecv",
			}},
		},
		{
			name:       "LF only, trailing whitespace, blank lines, no final newline",
			body:       "v=0 \no=- 1 2 IN IP4 192.0.2.1\t\n\ns=-\nc=IN IP4 192.0.2.1  \r\nt=0 0\nm=audio 4000 RTP/AVP 0 \n\n\na=ptime:20",
			wantOrigin: Origin{Username: "-", SessionID: 1, Version: 2},
			want: []Media{{
				Kind: "audio", Port: 4000, NumPorts: 1, Proto: "RTP/AVP", Formats: []string{"0"},
				Addr: addr("192.0.2.1"), Direction: "sendrecv",
			}},
		},
		{
			name: "IPv6 session c=",
			body: crlf(`v=0
o=assistant 971731711378798081 0 IN IP6 2001:db8::20
s=Live video
c=IN IP6 2001:db8::20
t=3338481189 3370017201
m=audio 6000 RTP/AVP 2
m=video 6024 RTP/AVP 107
`),
			wantOrigin: Origin{Username: "assistant", SessionID: 971731711378798081, Version: 0},
			want: []Media{
				{Index: 0, Kind: "audio", Port: 6000, NumPorts: 1, Proto: "RTP/AVP", Formats: []string{"2"}, Addr: addr("2001:db8::20"), Direction: "sendrecv"},
				{Index: 1, Kind: "video", Port: 6024, NumPorts: 1, Proto: "RTP/AVP", Formats: []string{"107"}, Addr: addr("2001:db8::20"), Direction: "sendrecv"},
			},
		},
		{
			name: "media-level c= overrides session-level, first one wins",
			body: crlf(`v=0
o=- 1 1 IN IP4 host.example.com
s=-
c=IN IP4 192.0.2.1
t=0 0
m=audio 5000 RTP/AVP 0
c=IN IP6 2001:db8::1
c=IN IP4 192.0.2.99
m=video 5002 RTP/AVP 31
`),
			wantOrigin: Origin{Username: "-", SessionID: 1, Version: 1},
			want: []Media{
				{Index: 0, Kind: "audio", Port: 5000, NumPorts: 1, Proto: "RTP/AVP", Formats: []string{"0"}, Addr: addr("2001:db8::1"), Direction: "sendrecv"},
				{Index: 1, Kind: "video", Port: 5002, NumPorts: 1, Proto: "RTP/AVP", Formats: []string{"31"}, Addr: addr("192.0.2.1"), Direction: "sendrecv"},
			},
		},
		{
			name: "no c= anywhere, host name c=, multicast suffix",
			body: crlf(`v=0
o=- 1 1 IN IP4 192.0.2.1
s=-
t=0 0
m=audio 5000 RTP/AVP 0
m=audio 5002 RTP/AVP 0
c=IN IP4 media.example.com
m=audio 5004 RTP/AVP 0
c=IN IP4 233.252.0.1/127/2
`),
			wantOrigin: Origin{Username: "-", SessionID: 1, Version: 1},
			want: []Media{
				{Index: 0, Kind: "audio", Port: 5000, NumPorts: 1, Proto: "RTP/AVP", Formats: []string{"0"}, Direction: "sendrecv"},
				{Index: 1, Kind: "audio", Port: 5002, NumPorts: 1, Proto: "RTP/AVP", Formats: []string{"0"}, Direction: "sendrecv"},
				{Index: 2, Kind: "audio", Port: 5004, NumPorts: 1, Proto: "RTP/AVP", Formats: []string{"0"}, Addr: addr("233.252.0.1"), Direction: "sendrecv"},
			},
		},
		{
			name: "a=rtcp port only and with address, rtcp-mux",
			body: crlf(`v=0
o=- 1 1 IN IP4 192.0.2.1
s=-
c=IN IP4 192.0.2.1
t=0 0
m=audio 5000 RTP/AVP 0
a=rtcp:5011
m=audio 5002 RTP/SAVP 0
a=rtcp:6001 IN IP4 198.51.100.7
a=rtcp-mux
m=audio 5004 RTP/AVP 0
c=IN IP6 2001:db8::5
a=rtcp:5005 IN IP6 2001:db8::6
m=audio 5006 RTP/AVP 0
a=rtcp:not-a-port
m=audio 5008 RTP/AVP 0
a=rtcp:5009 IN IP4 rtcp.example.com
`),
			wantOrigin: Origin{Username: "-", SessionID: 1, Version: 1},
			want: []Media{
				{Index: 0, Kind: "audio", Port: 5000, NumPorts: 1, Proto: "RTP/AVP", Formats: []string{"0"}, Addr: addr("192.0.2.1"), RTCP: ap("192.0.2.1:5011"), Direction: "sendrecv"},
				{Index: 1, Kind: "audio", Port: 5002, NumPorts: 1, Proto: "RTP/SAVP", Formats: []string{"0"}, Addr: addr("192.0.2.1"), RTCP: ap("198.51.100.7:6001"), RTCPMux: true, Direction: "sendrecv"},
				{Index: 2, Kind: "audio", Port: 5004, NumPorts: 1, Proto: "RTP/AVP", Formats: []string{"0"}, Addr: addr("2001:db8::5"), RTCP: ap("[2001:db8::6]:5005"), Direction: "sendrecv"},
				{Index: 3, Kind: "audio", Port: 5006, NumPorts: 1, Proto: "RTP/AVP", Formats: []string{"0"}, Addr: addr("192.0.2.1"), Direction: "sendrecv"},
				{Index: 4, Kind: "audio", Port: 5008, NumPorts: 1, Proto: "RTP/AVP", Formats: []string{"0"}, Addr: addr("192.0.2.1"), Direction: "sendrecv"},
			},
		},
		{
			name: "a=rtcp before media-level c= still defaults to it",
			body: crlf(`v=0
o=- 1 1 IN IP4 192.0.2.1
s=-
c=IN IP4 192.0.2.1
t=0 0
m=audio 5000 RTP/AVP 0
a=rtcp:5001
c=IN IP4 192.0.2.50
`),
			wantOrigin: Origin{Username: "-", SessionID: 1, Version: 1},
			want: []Media{
				{Kind: "audio", Port: 5000, NumPorts: 1, Proto: "RTP/AVP", Formats: []string{"0"}, Addr: addr("192.0.2.50"), RTCP: ap("192.0.2.50:5001"), Direction: "sendrecv"},
			},
		},
		{
			name: "RFC 2543 hold keeps 0.0.0.0 and ::",
			body: crlf(`v=0
o=- 1 2 IN IP4 192.0.2.1
s=-
c=IN IP4 0.0.0.0
t=0 0
m=audio 5000 RTP/AVP 0
m=audio 5002 RTP/AVP 0
c=IN IP6 ::
`),
			wantOrigin: Origin{Username: "-", SessionID: 1, Version: 2},
			want: []Media{
				{Index: 0, Kind: "audio", Port: 5000, NumPorts: 1, Proto: "RTP/AVP", Formats: []string{"0"}, Addr: addr("0.0.0.0"), Direction: "sendrecv"},
				{Index: 1, Kind: "audio", Port: 5002, NumPorts: 1, Proto: "RTP/AVP", Formats: []string{"0"}, Addr: addr("::"), Direction: "sendrecv"},
			},
		},
		{
			name: "direction inherited from session level, overridden per media",
			body: crlf(`v=0
o=- 1 1 IN IP4 192.0.2.1
s=-
c=IN IP4 192.0.2.1
t=0 0
a=sendonly
m=audio 5000 RTP/AVP 0
m=video 5002 RTP/AVP 31
a=inactive
m=audio 5004 RTP/AVP 0
a=recvonly
m=audio 5006 RTP/AVP 0
a=sendrecv
`),
			wantOrigin: Origin{Username: "-", SessionID: 1, Version: 1},
			want: []Media{
				{Index: 0, Kind: "audio", Port: 5000, NumPorts: 1, Proto: "RTP/AVP", Formats: []string{"0"}, Addr: addr("192.0.2.1"), Direction: "sendonly"},
				{Index: 1, Kind: "video", Port: 5002, NumPorts: 1, Proto: "RTP/AVP", Formats: []string{"31"}, Addr: addr("192.0.2.1"), Direction: "inactive"},
				{Index: 2, Kind: "audio", Port: 5004, NumPorts: 1, Proto: "RTP/AVP", Formats: []string{"0"}, Addr: addr("192.0.2.1"), Direction: "recvonly"},
				{Index: 3, Kind: "audio", Port: 5006, NumPorts: 1, Proto: "RTP/AVP", Formats: []string{"0"}, Addr: addr("192.0.2.1"), Direction: "sendrecv"},
			},
		},
		{
			name: "port count, rejected stream without formats, T.38, unknown lines",
			body: crlf(`v=0
o=- 1 1 IN IP4 192.0.2.1
s=-
x=unknown type
not a line
c=IN IP4 192.0.2.1
t=0 0
m=video 49170/2 RTP/AVP 31
m=video 0 RTP/AVP
m=image 6000 udptl t38
a=T38FaxVersion:0
`),
			wantOrigin: Origin{Username: "-", SessionID: 1, Version: 1},
			want: []Media{
				{Index: 0, Kind: "video", Port: 49170, NumPorts: 2, Proto: "RTP/AVP", Formats: []string{"31"}, Addr: addr("192.0.2.1"), Direction: "sendrecv"},
				{Index: 1, Kind: "video", Port: 0, NumPorts: 1, Proto: "RTP/AVP", Formats: []string{}, Addr: addr("192.0.2.1"), Direction: "sendrecv"},
				{Index: 2, Kind: "image", Port: 6000, NumPorts: 1, Proto: "udptl", Formats: []string{"t38"}, Addr: addr("192.0.2.1"), Direction: "sendrecv"},
			},
		},
		{
			name:       "no media at all",
			body:       "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nt=0 0\r\n",
			wantOrigin: Origin{Username: "-", SessionID: 1, Version: 1},
			want:       []Media{},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, err := Parse([]byte(tt.body))
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if got := d.Origin(); got != tt.wantOrigin {
				t.Errorf("Origin() = %+v, want %+v", got, tt.wantOrigin)
			}
			got := d.Media()
			if len(got) != len(tt.want) {
				t.Fatalf("Media() has %d entries, want %d: %+v", len(got), len(tt.want), got)
			}
			for i := range got {
				if !reflect.DeepEqual(got[i], tt.want[i]) {
					t.Errorf("Media()[%d]\n got %+v\nwant %+v", i, got[i], tt.want[i])
				}
			}
		})
	}
}

func TestParseCorpus(t *testing.T) {
	addr := netip.MustParseAddr
	// What RFC 5118 and RFC 4475 say each body describes.
	tests := map[string]struct {
		kinds []string
		addrs []netip.Addr
	}{
		"sdp01.sip":            {[]string{"audio", "video"}, []netip.Addr{addr("192.0.2.5"), addr("192.0.2.5")}},
		"wsinv.sip":            {[]string{"audio", "video"}, []netip.Addr{addr("192.0.2.4"), addr("192.0.2.4")}},
		"mismatch02.sip":       {[]string{"audio", "video"}, []netip.Addr{addr("192.0.2.1"), addr("192.0.2.1")}},
		"ipv6-in-sdp.sip":      {[]string{"audio", "video"}, []netip.Addr{addr("2001:db8::20"), addr("2001:db8::20")}},
		"mult-ip-in-sdp.sip":   {[]string{"audio", "video"}, []netip.Addr{addr("192.0.2.1"), addr("2001:db8::1")}},
		"ipv4-mapped-ipv6.sip": {[]string{"audio", "video"}, []netip.Addr{addr("::ffff:192.0.2.2"), addr("::ffff:192.0.2.2")}},
	}
	for _, name := range corpusFiles {
		t.Run(name, func(t *testing.T) {
			want, ok := tests[name]
			if !ok {
				t.Fatalf("no expectation for %s", name)
			}
			d, err := Parse(corpusBody(t, name))
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			media := d.Media()
			if len(media) != len(want.kinds) {
				t.Fatalf("%d m= lines, want %d", len(media), len(want.kinds))
			}
			for i, m := range media {
				if m.Kind != want.kinds[i] || m.Addr != want.addrs[i] {
					t.Errorf("m-line %d: kind %q addr %v, want %q %v", i, m.Kind, m.Addr, want.kinds[i], want.addrs[i])
				}
			}
		})
	}
}

// TestParseCorpusRejects checks the corpus bodies that must not parse.
func TestParseCorpusRejects(t *testing.T) {
	// RFC 4475 §3.1.1.8: the second message of the datagram has "m =video";
	// tolerating it would move a=rtpmap:31 to the audio stream.
	if d, err := Parse(corpusBody(t, "dblreq.sip")); !errors.Is(err, ErrMalformed) {
		t.Errorf("Parse(dblreq body) = %v, %v; want ErrMalformed", d, err)
	}
}

func TestParseErrors(t *testing.T) {
	const head = "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n"
	tests := []struct {
		name string
		body string
	}{
		{"empty", ""},
		{"only whitespace", " \r\n\n\t\r\n"},
		{"no v= line", "o=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\n"},
		{"v=1", "v=1\r\no=- 1 1 IN IP4 192.0.2.1\r\n"},
		{"v=0 not first", "s=-\r\nv=0\r\no=- 1 1 IN IP4 192.0.2.1\r\n"},
		{"missing o=", "v=0\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\nm=audio 5000 RTP/AVP 0\r\n"},
		{"o= only in media section", "v=0\r\ns=-\r\nm=audio 5000 RTP/AVP 0\r\no=- 1 1 IN IP4 192.0.2.1\r\n"},
		{"repeated o=", "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\no=- 1 1 IN IP4 192.0.2.1\r\n"},
		{"o= five fields", "v=0\r\no=- 1 1 IN IP4\r\n"},
		{"o= seven fields", "v=0\r\no=- 1 1 IN IP4 192.0.2.1 x\r\n"},
		{"o= session id not numeric", "v=0\r\no=- abc 1 IN IP4 192.0.2.1\r\n"},
		{"o= session id negative", "v=0\r\no=- -1 1 IN IP4 192.0.2.1\r\n"},
		{"o= session id over 64 bits", "v=0\r\no=- 18446744073709551616 1 IN IP4 192.0.2.1\r\n"},
		{"o= version not numeric", "v=0\r\no=- 1 +1 IN IP4 192.0.2.1\r\n"},
		{"o= network type", "v=0\r\no=- 1 1 TN IP4 192.0.2.1\r\n"},
		{"o= address type", "v=0\r\no=- 1 1 IN IPX 192.0.2.1\r\n"},
		{"c= two fields", head + "c=IN IP4\r\n"},
		{"c= four fields", head + "c=IN IP4 192.0.2.1 x\r\n"},
		{"c= IP4 with IPv6 literal", head + "c=IN IP4 2001:db8::1\r\n"},
		{"c= IP6 with IPv4 literal", head + "c=IN IP6 192.0.2.1\r\n"},
		{"c= bad IPv4", head + "c=IN IP4 999.0.2.1\r\n"},
		{"c= bad IPv6", head + "c=IN IP6 2001:db8:::1:zz\r\n"},
		{"c= zone", head + "c=IN IP6 fe80::1%eth0\r\n"},
		{"c= bad multicast suffix", head + "c=IN IP4 233.252.0.1/ttl\r\n"},
		{"media c= malformed", head + "m=audio 5000 RTP/AVP 0\r\nc=IN IP4 a:b\r\n"},
		{"m= port not numeric", head + "m=audio abc RTP/AVP 0\r\n"},
		{"m= port signed", head + "m=audio +5000 RTP/AVP 0\r\n"},
		{"m= port too large", head + "m=audio 65536 RTP/AVP 0\r\n"},
		{"m= port count zero", head + "m=audio 5000/0 RTP/AVP 0\r\n"},
		{"m= port count empty", head + "m=audio 5000/ RTP/AVP 0\r\n"},
		{"m= two fields", head + "m=audio 5000\r\n"},
		{"m= no formats on live stream", head + "m=audio 5000 RTP/AVP\r\n"},
		{"m= control character", head + "m=audio 5000 RTP/AVP 0\x01\r\n"},
		{"whitespace before = (RFC 4475 dblreq)", head + "m =video 3227 RTP/AVP 31\r\n"},
		{"tab before =", head + "c\t=IN IP4 192.0.2.1\r\n"},
		{"NUL byte", head + "a=x\x00y\r\n"},
		{"line too long", head + "a=x-long:" + strings.Repeat("a", MaxLineLength) + "\r\n"},
		{"body too large", head + strings.Repeat("a=ptime:20\r\n", MaxBodySize/12+1)},
		{"too many m= lines", head + strings.Repeat("m=audio 5000 RTP/AVP 0\r\n", MaxMediaLines+1)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, err := Parse([]byte(tt.body))
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("Parse = %v, %v; want ErrMalformed", d, err)
			}
			if d != nil {
				t.Errorf("Parse returned a Description with an error")
			}
		})
	}
}

// TestParseLimits checks that each limit is inclusive: a body exactly at
// the limit parses.
func TestParseLimits(t *testing.T) {
	const head = "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n"
	longAttr := "a=x-long:" + strings.Repeat("a", MaxLineLength-len("a=x-long:"))
	fill := strings.Repeat("a=x\r\n", (MaxBodySize-len(head))/5)
	fill += strings.Repeat("b", MaxBodySize-len(head)-len(fill))
	tests := []struct {
		name      string
		body      string
		wantMedia int
	}{
		{"line of MaxLineLength", head + longAttr + "\r\n", 0},
		{"line of MaxLineLength plus CR", head + longAttr + "\r", 0},
		{"MaxMediaLines m= lines", head + strings.Repeat("m=audio 5000 RTP/AVP 0\r\n", MaxMediaLines), MaxMediaLines},
		{"body of MaxBodySize", head + fill, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.name == "body of MaxBodySize" && len(tt.body) != MaxBodySize {
				t.Fatalf("test body is %d bytes", len(tt.body))
			}
			d, err := Parse([]byte(tt.body))
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if n := len(d.Media()); n != tt.wantMedia {
				t.Errorf("%d m= lines, want %d", n, tt.wantMedia)
			}
		})
	}
}

func TestParseKeepsNoReferenceToInput(t *testing.T) {
	body := []byte("v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\nm=audio 5000 RTP/AVP 0 8\r\n")
	d, err := Parse(body)
	if err != nil {
		t.Fatal(err)
	}
	for i := range body {
		body[i] = 'X'
	}
	m := d.Media()
	if m[0].Kind != "audio" || !reflect.DeepEqual(m[0].Formats, []string{"0", "8"}) {
		t.Errorf("Description changed with the caller's buffer: %+v", m[0])
	}
	// Media returns copies: changing them must not reach the Description.
	m[0].Formats[0] = "99"
	m[0].Kind = "video"
	if again := d.Media(); again[0].Formats[0] != "0" || again[0].Kind != "audio" {
		t.Errorf("Media() result aliases the Description: %+v", again[0])
	}
}
