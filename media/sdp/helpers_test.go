package sdp

import (
	"bytes"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// corpusFiles are the messages of RFC 4475 and RFC 5118 that carry an SDP
// body, copied into testdata/rfc4475 (see its README).
var corpusFiles = []string{
	"sdp01.sip",            // RFC 4475 §3.3.15: plain IPv4 offer, audio and video
	"wsinv.sip",            // RFC 4475 §3.1.1.1: o= and c= name different hosts
	"mismatch02.sip",       // RFC 4475 §3.1.2.18: no s= and no t=
	"ipv6-in-sdp.sip",      // RFC 5118 §4.6: IN IP6 in o= and c=
	"mult-ip-in-sdp.sip",   // RFC 5118 §4.8: media-level c=, one IP4, one IP6; FQDN in o=
	"ipv4-mapped-ipv6.sip", // RFC 5118 §4.9: ::ffff:192.0.2.2 in o= and c=
}

// corpusBody returns the SDP body of a corpus message: everything after
// the blank line that precedes "v=0". dblreq.sip holds two messages in one
// datagram, so the first blank line is not enough.
func corpusBody(t testing.TB, name string) []byte {
	t.Helper()
	msg, err := os.ReadFile(filepath.Join("testdata", "rfc4475", name))
	if err != nil {
		t.Fatal(err)
	}
	for _, sep := range []string{"\r\n\r\nv=0", "\n\nv=0"} {
		if i := bytes.Index(msg, []byte(sep)); i >= 0 {
			return msg[i+len(sep)-3:]
		}
	}
	t.Fatalf("%s: no SDP body", name)
	return nil
}

var (
	anchor4 = netip.MustParseAddr("203.0.113.10")
	anchor6 = netip.MustParseAddr("2001:db8:ffff::10")
)

// testAnchor returns an anchor at addr with ports 30000, 30002, ... for n
// m= lines.
func testAnchor(addr netip.Addr, n int) Anchor {
	ports := make([]int, n)
	for i := range ports {
		ports[i] = 30000 + 2*i
	}
	return Anchor{Addr: addr, Ports: ports, Origin: Origin{Username: "edgesbc", SessionID: 4242, Version: 7}}
}

// notAnchor is the leak guard predicate for a body rewritten to anchor:
// anything but the anchor itself and the hold addresses is foreign.
func notAnchor(anchor netip.Addr) func(netip.Addr) bool {
	return func(a netip.Addr) bool { return a != anchor && !a.IsUnspecified() }
}

// crlf turns a readable LF test body into the CRLF form Rewrite emits.
func crlf(s string) string {
	return strings.ReplaceAll(s, "\n", "\r\n")
}
