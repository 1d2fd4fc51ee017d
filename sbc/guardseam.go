package sbc

import (
	"bytes"
	"net/netip"

	"github.com/emiago/sipgo/sip"

	"github.com/edgesbc/edgesbc/sbc/guard"
)

// Guard is what the SBC needs from the ban policies. The appliance wires an
// implementation that asks sbc/guard for a Verdict and enforces it; a nil
// Guard means no policies. Sources that are configured peers never reach
// it: a peer can be neither counted nor banned.
//
// Both methods run on the listener's read goroutine or a request handler,
// so they must not block.
type Guard interface {
	// Inbound is called for every datagram (and every message framed on
	// a TCP connection, and every TCP connection accepted) from a source
	// that is no peer, before the SBC does anything else with it: before
	// the public side's unknown-source drop and before parsing. r.Method
	// is empty when the datagram is not a request, r.Metered is set for
	// what the rate limits count (all of these) and r.Zone names the zone. Returning false drops it.
	Inbound(src netip.Addr, r guard.Request) bool
	// Outcome is called for each final response the SBC sends to a source
	// that is no peer, with the request it answers.
	Outcome(src netip.Addr, r guard.Request, code int)
}

// guardBox lets an interface value live in an atomic.Pointer.
type guardBox struct{ Guard }

// SetGuard installs the ban policies' seam, or removes it when g is nil.
// It may be called at any time; the entry filter picks it up with the next
// datagram.
func (s *Server) SetGuard(g Guard) {
	if g == nil {
		s.sec.Store(nil)
		return
	}
	s.sec.Store(&guardBox{g})
}

// guardInbound runs the guard on a message from a non-peer source and
// reports whether it may go on. accessed is whether the zone's access mode
// takes the message (a REGISTER, or anything from a registered phone).
func (s *Server) guardInbound(g Guard, z *zone, src netip.AddrPort, data []byte, accessed bool) bool {
	r, inDialog := summarize(data)
	r.Zone, r.Metered, r.InDialog = z.cfg.Name, true, inDialog
	// a request the access mode takes is solicited: the access mode exists
	// for it, and its registrar decides whether the user is known; what it
	// answers counts (accessRespond)
	r.Relayed = accessed && r.Method != ""
	r.Unsolicited = r.Method != "" && r.Method != "ACK" && !inDialog && !z.private && !r.Relayed
	return g.Inbound(src.Addr(), r)
}

// guardOutcome reports a final response sent to a non-peer source. Only the
// codes a policy counts are reported, so the common responses cost nothing.
func (s *Server) guardOutcome(g Guard, z *zone, req *sip.Request, code int) {
	switch code {
	case 401, 403, 404, 407, 484:
	default:
		return
	}
	src := sourceOf(req)
	if s.peerBySource(z, src.Addr()) != nil {
		return
	}
	r := guard.Request{Method: string(req.Method), User: req.Recipient.User, Zone: z.cfg.Name}
	if to := req.To(); r.User == "" && to != nil {
		r.User = to.Address.User
	}
	if len(r.User) > maxSummaryUser {
		r.User = r.User[:maxSummaryUser]
	}
	if h := req.GetHeader("User-Agent"); h != nil {
		r.UserAgent = h.Value()
	}
	g.Outcome(src.Addr(), r, code)
}

// Bounds of the fields summarize copies out of a datagram.
const (
	maxSummaryMethod    = 32
	maxSummaryUser      = 64
	maxSummaryUserAgent = 256
)

// summarize extracts from a raw datagram what the ban policies look at: the
// method and Request-URI user of a request (the To user when the
// Request-URI has none, as in a REGISTER), its User-Agent, and whether the
// To header carries a tag (an in-dialog request). It reads at most the
// header section, allocates only the strings it returns and never fails:
// a datagram it cannot read yields an empty Request. It runs before any
// other parsing, on traffic from strangers (see FuzzSummarize).
func summarize(data []byte) (r guard.Request, inDialog bool) {
	data = bytes.TrimLeft(data, "\r\n\x00")
	if end := bytes.Index(data, []byte("\r\n\r\n")); end >= 0 {
		data = data[:end]
	}
	line, rest, _ := bytes.Cut(data, []byte("\n"))
	line = bytes.TrimRight(line, "\r")
	method, after, ok := bytes.Cut(line, []byte(" "))
	if !ok || len(method) == 0 || len(method) > maxSummaryMethod || bytes.HasPrefix(method, []byte("SIP/")) || !isToken(method) {
		return guard.Request{}, false
	}
	r.Method = string(method)
	uri, _, _ := bytes.Cut(after, []byte(" "))
	r.User = uriUser(uri)
	var toUser string
	for len(rest) > 0 {
		var h []byte
		h, rest, _ = bytes.Cut(rest, []byte("\n"))
		h = bytes.TrimRight(h, "\r")
		name, value, ok := bytes.Cut(h, []byte(":"))
		if !ok {
			continue
		}
		name = bytes.TrimSpace(name)
		value = bytes.TrimSpace(value)
		switch {
		case bytes.EqualFold(name, []byte("User-Agent")):
			if len(value) > maxSummaryUserAgent {
				value = value[:maxSummaryUserAgent]
			}
			r.UserAgent = string(value)
		case bytes.EqualFold(name, []byte("To")) || bytes.EqualFold(name, []byte("t")):
			inDialog = hasTag(value)
			toUser = uriUser(headerURI(value))
		}
	}
	if r.User == "" {
		r.User = toUser
	}
	return r, inDialog
}

// headerURI is the URI of a name-addr or addr-spec header value: inside
// the angle brackets if there are any, else up to the first ';'.
func headerURI(v []byte) []byte {
	if i := bytes.IndexByte(v, '<'); i >= 0 {
		v = v[i+1:]
		if j := bytes.IndexByte(v, '>'); j >= 0 {
			v = v[:j]
		}
		return v
	}
	v, _, _ = bytes.Cut(v, []byte(";"))
	return v
}

// uriUser is the user part of a SIP URI ("sip:100@host" → "100"), bounded.
func uriUser(uri []byte) string {
	_, uri, ok := bytes.Cut(uri, []byte(":"))
	if !ok {
		return ""
	}
	user, _, ok := bytes.Cut(uri, []byte("@"))
	if !ok {
		return ""
	}
	if i := bytes.IndexByte(user, ';'); i >= 0 {
		user = user[:i]
	}
	if len(user) > maxSummaryUser {
		user = user[:maxSummaryUser]
	}
	return string(user)
}

// hasTag reports whether a To header value carries a tag parameter
// outside its URI's angle brackets.
func hasTag(v []byte) bool {
	if i := bytes.LastIndexByte(v, '>'); i >= 0 {
		v = v[i+1:]
	}
	for _, p := range bytes.Split(v, []byte(";"))[1:] {
		name, _, _ := bytes.Cut(p, []byte("="))
		if bytes.EqualFold(bytes.TrimSpace(name), []byte("tag")) {
			return true
		}
	}
	return false
}

func isToken(b []byte) bool {
	for _, c := range b {
		if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || bytes.IndexByte([]byte("-.!%*_+`'~"), c) >= 0) {
			return false
		}
	}
	return true
}
