//go:build linux

package main

import (
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
)

// TestPacketsParseAndDiffer checks that the INVITEs the generator sends are
// valid SIP, shaped like invite_flood.xml's, and that each has its own
// Call-ID, branch and tag.
func TestPacketsParseAndDiffer(t *testing.T) {
	_, err := parseFlags([]string{"-to", "127.0.0.1:9", "-from", "127.0.0.1", "-port", "0"})
	if err == nil {
		t.Fatal("port 0 accepted")
	}
	o, err := parseFlags([]string{"-to", "127.0.0.1:9", "-from", "127.0.0.1", "-port", "5070", "-service", "4930"})
	if err != nil {
		t.Fatal(err)
	}
	// a listening socket on loopback stands for the SBC: no packet
	// leaves the host
	pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	o.to = pc.LocalAddr().(*net.UDPAddr).AddrPort()
	o.port = 0
	s, err := newSource(o, netip.MustParseAddr("127.0.0.1"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.conn.Close()
	const n = 3
	if k, err := s.send(n); err != nil || k != n {
		t.Fatalf("send: %d of %d, %v", k, n, err)
	}
	seen := map[string]bool{}
	buf := make([]byte, 2048)
	for i := range n {
		_ = pc.SetReadDeadline(time.Now().Add(5 * time.Second))
		m, _, err := pc.ReadFromUDPAddrPort(buf)
		if err != nil {
			t.Fatalf("packet %d: %v", i, err)
		}
		msg, err := sip.ParseMessage(buf[:m])
		if err != nil {
			t.Fatalf("packet %d does not parse: %v\n%s", i, err, buf[:m])
		}
		req, ok := msg.(*sip.Request)
		if !ok || req.Method != sip.INVITE || req.Recipient.User != "4930" {
			t.Fatalf("packet %d is not an INVITE to 4930:\n%s", i, buf[:m])
		}
		if ua := req.GetHeader("User-Agent"); ua == nil || ua.Value() != "Softphone 1.0" {
			t.Errorf("packet %d: User-Agent %v", i, ua)
		}
		via := req.Via()
		from := req.From()
		if req.CallID() == nil || via == nil || from == nil {
			t.Fatalf("packet %d lacks Call-ID, Via or From:\n%s", i, buf[:m])
		}
		branch, _ := via.Params.Get("branch")
		tag, _ := from.Params.Get("tag")
		if !strings.HasPrefix(branch, "z9hG4bK") {
			t.Errorf("packet %d: branch %q", i, branch)
		}
		for _, id := range []string{"call-id " + req.CallID().Value(), "branch " + branch, "tag " + tag} {
			if seen[id] {
				t.Errorf("packet %d repeats %s", i, id)
			}
			seen[id] = true
		}
	}
}

// TestParseFlagsBounds checks that the generator refuses to start without
// a destination or sources, or for an unbounded time.
func TestParseFlagsBounds(t *testing.T) {
	for _, args := range [][]string{
		{"-from", "127.0.0.1"},
		{"-to", "127.0.0.1:9"},
		{"-to", "127.0.0.1:9", "-from", "127.0.0.1", "-duration", "0s"},
		{"-to", "127.0.0.1:9", "-from", "127.0.0.1", "-duration", "2h"},
		{"-to", "127.0.0.1:9", "-from", "127.0.0.1", "-rate", "0"},
		{"-to", "127.0.0.1:9", "-from", "::1"},
	} {
		if _, err := parseFlags(args); err == nil {
			t.Errorf("%q accepted", args)
		}
	}
}
