package main_test

import (
	"bytes"
	"fmt"
	"net/netip"
	"regexp"
	"strconv"
	"strings"

	"github.com/edgesbc/edgesbc/internal/testenv"
)

// This file reads captured traffic back for the integration tests: SIP
// messages out of UDP payloads, and the checks made on a capture (leaks of
// inside topology, RTP sources, SDP connection addresses). The checks are
// pure functions so wire_unit_test.go can show that each one fails when it
// should.

// sipMessage is the part of a SIP message the tests look at.
type sipMessage struct {
	Src, Dst   netip.AddrPort
	Method     string // request method, "" for a response
	RequestURI string
	Status     int    // response status code, 0 for a request
	CallID     string // Call-ID
	CSeqMethod string // method of the CSeq header
	Branch     string // branch parameter of the top Via
	Headers    map[string][]string
	Body       string
}

// compactHeaders maps RFC 3261 §7.3.3 compact header names to full names.
var compactHeaders = map[string]string{
	"v": "via", "i": "call-id", "f": "from", "t": "to", "m": "contact",
	"c": "content-type", "l": "content-length", "k": "supported", "s": "subject",
}

// parseSIP reads one SIP message from a UDP payload. ok is false for
// anything that is not SIP (RTP, keepalives).
func parseSIP(p testenv.Packet) (msg sipMessage, ok bool) {
	head, body, _ := bytes.Cut(p.Payload, []byte("\r\n\r\n"))
	lines := strings.Split(string(head), "\r\n")
	if len(lines) == 0 {
		return msg, false
	}
	msg = sipMessage{Src: p.Src, Dst: p.Dst, Headers: map[string][]string{}, Body: string(body)}
	start := strings.Fields(lines[0])
	switch {
	case len(start) >= 2 && start[0] == "SIP/2.0":
		code, err := strconv.Atoi(start[1])
		if err != nil {
			return msg, false
		}
		msg.Status = code
	case len(start) == 3 && start[2] == "SIP/2.0":
		msg.Method, msg.RequestURI = start[0], start[1]
	default:
		return msg, false
	}
	for _, line := range lines[1:] {
		name, value, found := strings.Cut(line, ":")
		if !found {
			continue
		}
		name = strings.ToLower(strings.TrimSpace(name))
		if full, ok := compactHeaders[name]; ok {
			name = full
		}
		msg.Headers[name] = append(msg.Headers[name], strings.TrimSpace(value))
	}
	msg.CallID = msg.header("call-id")
	if f := strings.Fields(msg.header("cseq")); len(f) == 2 {
		msg.CSeqMethod = f[1]
	}
	// The top Via is the first value of the first Via header.
	via, _, _ := strings.Cut(msg.header("via"), ",")
	for _, param := range strings.Split(via, ";")[1:] {
		if k, v, ok := strings.Cut(strings.TrimSpace(param), "="); ok && strings.EqualFold(k, "branch") {
			msg.Branch = v
		}
	}
	return msg, true
}

func (m sipMessage) header(name string) string {
	if v := m.Headers[name]; len(v) > 0 {
		return v[0]
	}
	return ""
}

func (m sipMessage) String() string {
	if m.Method != "" {
		return fmt.Sprintf("%s %s (%v > %v, call %s)", m.Method, m.RequestURI, m.Src, m.Dst, m.CallID)
	}
	return fmt.Sprintf("%d for %s (%v > %v, call %s)", m.Status, m.CSeqMethod, m.Src, m.Dst, m.CallID)
}

// sipMessages returns the SIP messages among pkts, in capture order.
func sipMessages(pkts []testenv.Packet) []sipMessage {
	var msgs []sipMessage
	for _, p := range pkts {
		if p.Proto != testenv.ProtoUDP {
			continue
		}
		if m, ok := parseSIP(p); ok {
			msgs = append(msgs, m)
		}
	}
	return msgs
}

// findLeaks returns a description of every packet that carries inside
// topology: an IP header address in inside, or one of the forbidden strings
// anywhere in its payload (headers, SDP, and the packets quoted by ICMP).
func findLeaks(pkts []testenv.Packet, inside netip.Prefix, forbidden []string) []string {
	var leaks []string
	for i, p := range pkts {
		if inside.Contains(p.Src.Addr()) || inside.Contains(p.Dst.Addr()) {
			leaks = append(leaks, fmt.Sprintf("packet %d: %v > %v: address in %v", i, p.Src, p.Dst, inside))
		}
		for _, s := range forbidden {
			if bytes.Contains(p.Payload, []byte(s)) {
				leaks = append(leaks, fmt.Sprintf("packet %d: %v > %v: payload contains %q:\n%s", i, p.Src, p.Dst, s, printable(p.Payload)))
			}
		}
	}
	return leaks
}

// printable returns payload for an error message, non-text bytes escaped.
func printable(b []byte) string {
	const limit = 2048
	s := strconv.Quote(string(b[:min(len(b), limit)]))
	return strings.ReplaceAll(s[1:len(s)-1], `\r\n`, "\n")
}

// portRange is a media port range, both ends included.
type portRange struct{ min, max uint16 }

func (r portRange) contains(port uint16) bool { return port >= r.min && port <= r.max }

// rtpReport counts the media datagrams on the link between the SBC and one
// peer, and lists datagrams that reached the peer from anywhere but the
// SBC's media ports.
type rtpReport struct {
	ToPeer, FromPeer int      // datagrams SBC media port > peer, peer > SBC media port
	Strays           []string // non-SIP datagrams to the peer not sent from an SBC media port
}

// checkRTP classifies the UDP datagrams of a capture on the peer's
// interface. SIP (to or from sipPort) is left out: it has checks of its own.
func checkRTP(pkts []testenv.Packet, sbc, peer netip.Addr, media portRange, sipPort uint16) rtpReport {
	var r rtpReport
	for i, p := range pkts {
		if p.Proto != testenv.ProtoUDP || p.Src.Port() == sipPort || p.Dst.Port() == sipPort {
			continue
		}
		switch {
		case p.Src.Addr() == sbc && media.contains(p.Src.Port()) && p.Dst.Addr() == peer:
			r.ToPeer++
		case p.Src.Addr() == peer && p.Dst.Addr() == sbc && media.contains(p.Dst.Port()):
			r.FromPeer++
		case p.Dst.Addr() == peer:
			r.Strays = append(r.Strays, fmt.Sprintf("packet %d: %v > %v, %d bytes", i, p.Src, p.Dst, len(p.Payload)))
		}
	}
	return r
}

// checkSDP returns a problem for every SDP body sent to peer whose
// connection address (c=) is not the SBC's: media must be anchored at the
// SBC, never point past it.
func checkSDP(msgs []sipMessage, sbc, peer netip.Addr) []string {
	var problems []string
	for _, m := range msgs {
		if m.Dst.Addr() != peer || m.Body == "" {
			continue
		}
		for line := range strings.Lines(m.Body) {
			line = strings.TrimSpace(line)
			if !strings.HasPrefix(line, "c=") {
				continue
			}
			f := strings.Fields(strings.TrimPrefix(line, "c="))
			if len(f) != 3 || f[2] != sbc.String() {
				problems = append(problems, fmt.Sprintf("%v: %q, want c=IN IP4 %v", m, line, sbc))
			}
		}
	}
	return problems
}

// checkTransactions returns a problem for every CANCEL, and every ACK of a
// non-2xx final response, whose branch differs from its INVITE's, and for
// every ACK of a 2xx that reuses it (RFC 3261 §9.1, §17.1.1.3, §13.2.2.4).
// Messages are grouped by Call-ID; only requests sent by from are checked.
func checkTransactions(msgs []sipMessage, from netip.Addr) []string {
	type inviteTx struct {
		branch string
		final  int
	}
	txs := map[string]*inviteTx{}
	var problems []string
	for _, m := range msgs {
		tx := txs[m.CallID]
		switch {
		case m.Method == "INVITE" && m.Src.Addr() == from:
			if tx == nil || tx.branch != m.Branch { // not a retransmission
				txs[m.CallID] = &inviteTx{branch: m.Branch}
			}
		case m.Status >= 200 && m.CSeqMethod == "INVITE" && tx != nil && tx.final == 0:
			tx.final = m.Status
		case m.Method == "CANCEL" && m.Src.Addr() == from:
			if tx == nil || m.Branch != tx.branch {
				problems = append(problems, fmt.Sprintf("%v: branch %q is not the INVITE's", m, m.Branch))
			}
		case m.Method == "ACK" && m.Src.Addr() == from:
			switch {
			case tx == nil || tx.final == 0:
				problems = append(problems, fmt.Sprintf("%v: ACK without a final response", m))
			case tx.final >= 300 && m.Branch != tx.branch:
				problems = append(problems, fmt.Sprintf("%v: ACK of %d has branch %q, want the INVITE's %q", m, tx.final, m.Branch, tx.branch))
			case tx.final < 300 && m.Branch == tx.branch:
				problems = append(problems, fmt.Sprintf("%v: ACK of %d reuses the INVITE's branch", m, tx.final))
			}
		}
	}
	return problems
}

// tcpSIP reassembles the TCP streams to or from port in pkts (capture
// order; veth links do not reorder or lose segments) and cuts them into SIP
// messages by Content-Length. Each message is returned as a Packet of its
// stream's addresses whose payload is the whole message.
func tcpSIP(pkts []testenv.Packet, port uint16) []testenv.Packet {
	type flow struct{ src, dst string }
	streams := map[flow][]byte{}
	var order []flow
	first := map[flow]testenv.Packet{}
	for _, p := range pkts {
		if p.Proto != testenv.ProtoTCP || len(p.Payload) == 0 || (p.Src.Port() != port && p.Dst.Port() != port) {
			continue
		}
		f := flow{p.Src.String(), p.Dst.String()}
		if _, ok := streams[f]; !ok {
			order = append(order, f)
			first[f] = p
		}
		streams[f] = append(streams[f], p.Payload...)
	}
	var out []testenv.Packet
	for _, f := range order {
		s := streams[f]
		for len(s) > 0 {
			s = bytes.TrimLeft(s, "\r\n")
			end := bytes.Index(s, []byte("\r\n\r\n"))
			if end < 0 {
				break
			}
			n := 0
			if m := contentLengthRe.FindSubmatch(s[:end+2]); m != nil {
				n, _ = strconv.Atoi(string(m[1]))
			}
			total := min(end+4+n, len(s))
			p := first[f]
			p.Payload = s[:total]
			out = append(out, p)
			s = s[total:]
		}
	}
	return out
}

// sipMessagesOf parses the messages tcpSIP cut out.
func sipMessagesOf(msgs []testenv.Packet) []sipMessage {
	var out []sipMessage
	for _, p := range msgs {
		if m, ok := parseSIP(p); ok {
			out = append(out, m)
		}
	}
	return out
}

// initialInvites keeps the first INVITE of each Call-ID: re-INVITEs go to
// the peer's Contact, which checkRouting does not expect.
func initialInvites(msgs []sipMessage) []sipMessage {
	seen := map[string]bool{}
	var out []sipMessage
	for _, m := range msgs {
		if m.Method != "INVITE" || seen[m.CallID] {
			continue
		}
		seen[m.CallID] = true
		out = append(out, m)
	}
	return out
}

var contentLengthRe = regexp.MustCompile(`(?im)^(?:content-length|l)\s*:\s*(\d+)\s*$`)
