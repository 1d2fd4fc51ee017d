package sdp

import (
	"bytes"
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// Limits enforced by Parse. They bound the work one message can cause and
// are far above what any real offer needs (a typical audio offer is about
// 300 bytes and a dozen lines).
const (
	// MaxBodySize is the largest body Parse accepts, in bytes.
	MaxBodySize = 64 << 10
	// MaxMediaLines is the largest number of m= lines Parse accepts.
	MaxMediaLines = 64
	// MaxLineLength is the longest line Parse accepts, in bytes, not
	// counting the line terminator.
	MaxLineLength = 4096
)

// Direction attribute values (RFC 8866 §6.7). An absent attribute means
// sendrecv.
const (
	SendRecv = "sendrecv"
	SendOnly = "sendonly"
	RecvOnly = "recvonly"
	Inactive = "inactive"
)

// Description is a parsed SDP body that keeps every line so it can be
// rewritten faithfully. It is immutable after Parse and safe for concurrent
// use.
type Description struct {
	lines  []line
	media  []mediaDesc
	origin Origin
	// hasTime is set when a t= line survives filtering; Rewrite adds
	// "t=0 0" otherwise because RFC 8866 §5 requires one.
	hasTime bool
}

// Media describes one m= line (RFC 8866 §5.14) together with the session
// level values it inherits.
type Media struct {
	// Index is the position of the m= line in the body, from 0. Offer and
	// answer match streams by this position (RFC 3264 §6).
	Index int
	// Kind is the media type: "audio", "video", "image", "application"...
	Kind string
	// Port is the transport port; 0 means the stream is disabled or
	// rejected (RFC 3264 §5.1, §6).
	Port int
	// NumPorts is the count from m=<kind> <port>/<n>, 1 when absent.
	NumPorts int
	// Proto is the transport protocol: "RTP/AVP", "RTP/SAVP", "udptl"...
	Proto string
	// Formats are the media formats (payload types for RTP) verbatim.
	Formats []string
	// Addr is the effective connection address: the media-level c= if
	// present, else the session-level c=. It is invalid when neither
	// exists or when the c= names a host instead of an IP literal.
	// 0.0.0.0 and :: are kept as such: they are the RFC 2543 way of
	// putting a call on hold.
	Addr netip.Addr
	// RTCP is the address from a=rtcp:<port> [IN IP4 <addr>] (RFC 3605).
	// Without an explicit address it uses Addr. It is invalid when the
	// attribute is absent or malformed; RTCP then goes to Port+1.
	RTCP netip.AddrPort
	// RTCPMux is set by a=rtcp-mux (RFC 5761 §5.1.1).
	RTCPMux bool
	// Direction is SendRecv, SendOnly, RecvOnly or Inactive: the media
	// level attribute if present, else the session level one, else
	// SendRecv (RFC 8866 §6.7).
	Direction string
}

// Origin is the identifying part of an o= line (RFC 8866 §5.2). SessionID
// and Version let a receiver tell a changed offer from a repeated one
// (RFC 3264 §8), so the SBC keeps its own per leg and increments Version
// whenever the body it sends changes.
type Origin struct {
	Username  string
	SessionID uint64
	Version   uint64
}

// lineKind says what Rewrite does with a line. Parse decides it once, so
// that Rewrite only walks the lines.
type lineKind uint8

const (
	// lineDrop lines never reach the output: v=, o=, s= and c= are
	// regenerated, i=/u=/e=/p= and ICE attributes are topology, and
	// unknown or misplaced lines are not SDP.
	lineDrop lineKind = iota
	// lineKeep lines are copied verbatim. Parse has checked that they
	// carry no IP literal and no control characters.
	lineKeep
	// lineMedia is an m= line, rebuilt with the anchor port.
	lineMedia
	// lineRTCP is the first well-formed a=rtcp of a media section,
	// rebuilt with the anchor port and address.
	lineRTCP
)

type line struct {
	text string
	kind lineKind
	// media is the index of the m= section the line belongs to, -1 for
	// the session section.
	media int
}

// mediaDesc is a Media plus what Rewrite needs to rebuild its lines.
type mediaDesc struct {
	Media
	// hasCount is set when the m= line spelled a port count.
	hasCount bool
	// hasConn is set by a media-level c= line.
	hasConn bool
	// rtcpPort is the port of a=rtcp, 0 when there is none.
	rtcpPort int
	// rtcpAddr and rtcpHasAddr hold the optional address of a=rtcp;
	// rtcpAddr is invalid for a host name.
	rtcpAddr    netip.Addr
	rtcpHasAddr bool
	// tainted is set when the m= line itself carries an IP literal
	// (in its proto or formats); it cannot be dropped, so Rewrite fails.
	tainted bool
}

// iceAttrs are the ICE attributes (RFC 8839 §5) that describe the far
// side's candidate addresses or its ICE agent. The SBC terminates media, so
// none of them is true for the body it sends.
var iceAttrs = [...]string{
	"candidate", "remote-candidates", "ice-ufrag", "ice-pwd", "ice-options",
	"ice-lite", "ice-mismatch", "ice-pacing", "end-of-candidates",
}

// Parse parses an SDP body. It is tolerant of what real devices send: LF
// line endings, trailing whitespace, blank lines, unknown and misplaced
// lines, missing s= or t=, and host names in o= and c=. It fails, with an
// error wrapping ErrMalformed, on an empty body, a first line other than
// v=0, a missing, repeated or malformed o=, a malformed m= or c= line, a
// body over MaxBodySize, more than MaxMediaLines m= lines, a line over
// MaxLineLength and NUL bytes.
func Parse(body []byte) (*Description, error) {
	switch {
	case len(body) == 0:
		return nil, fmt.Errorf("parse sdp: empty body: %w", ErrMalformed)
	case len(body) > MaxBodySize:
		return nil, fmt.Errorf("parse sdp: body of %d bytes exceeds %d: %w", len(body), MaxBodySize, ErrMalformed)
	case bytes.IndexByte(body, 0) >= 0:
		return nil, fmt.Errorf("parse sdp: NUL byte at offset %d: %w", bytes.IndexByte(body, 0), ErrMalformed)
	}

	text := string(body)
	d := &Description{lines: make([]line, 0, bytes.Count(body, []byte{'\n'})+1)}
	var (
		sessionAddr netip.Addr
		sessionConn bool
		sessionDir  = SendRecv
		sawVersion  bool
		sawOrigin   bool
		cur         = -1
	)
	for lineNo, rest := 0, text; rest != ""; {
		var raw string
		if i := strings.IndexByte(rest, '\n'); i >= 0 {
			raw, rest = rest[:i], rest[i+1:]
		} else {
			raw, rest = rest, ""
		}
		lineNo++
		raw = strings.TrimSuffix(raw, "\r")
		if len(raw) > MaxLineLength {
			return nil, fmt.Errorf("parse sdp line %d: length %d exceeds %d: %w", lineNo, len(raw), MaxLineLength, ErrMalformed)
		}
		s := strings.TrimRight(raw, " \t\r")
		if s == "" {
			continue
		}
		if !sawVersion {
			if s != "v=0" {
				return nil, malformed(lineNo, "first line %q is not v=0", clip(s))
			}
			sawVersion = true
			d.lines = append(d.lines, line{text: s, kind: lineDrop, media: -1})
			continue
		}

		l := line{text: s, kind: lineDrop, media: cur}
		if len(s) > 1 && (s[1] == ' ' || s[1] == '\t') && strings.TrimLeft(s[1:], " \t")[0] == '=' {
			// "m =video ..." (RFC 4475 §3.1.1.8): ignoring it would move
			// the following attributes to the previous stream.
			return nil, malformed(lineNo, "whitespace before '=' in %q", clip(s))
		}
		if len(s) < 2 || s[1] != '=' {
			// Not SDP at all: tolerated, never relayed.
			d.lines = append(d.lines, l)
			continue
		}
		value := s[2:]
		switch s[0] {
		case 'o':
			if cur >= 0 {
				break // misplaced; the session-level one is authoritative
			}
			if sawOrigin {
				return nil, malformed(lineNo, "repeated o= line")
			}
			o, err := parseOrigin(value)
			if err != nil {
				return nil, malformed(lineNo, "o= %q: %v", clip(value), err)
			}
			d.origin, sawOrigin = o, true

		case 'c':
			a, err := parseConnection(value)
			if err != nil {
				return nil, malformed(lineNo, "c= %q: %v", clip(value), err)
			}
			// Several c= lines are legal only for layered multicast
			// (RFC 8866 §5.7); the first one is the one that counts.
			if cur < 0 {
				if !sessionConn {
					sessionAddr, sessionConn = a, true
				}
			} else if m := &d.media[cur]; !m.hasConn {
				m.Addr, m.hasConn = a, true
			}

		case 'b', 'k':
			l.kind = keepIfClean(s)

		case 't', 'r', 'z':
			if cur < 0 {
				l.kind = keepIfClean(s)
				if s[0] == 't' && l.kind == lineKeep {
					d.hasTime = true
				}
			}

		case 'a':
			l.kind = d.classifyAttr(s, value, cur, &sessionDir)

		case 'm':
			if len(d.media) == MaxMediaLines {
				return nil, malformed(lineNo, "more than %d m= lines", MaxMediaLines)
			}
			m, err := parseMediaLine(value)
			if err != nil {
				return nil, malformed(lineNo, "m= %q: %v", clip(value), err)
			}
			m.Index = len(d.media)
			m.Direction = sessionDir
			d.media = append(d.media, m)
			cur = m.Index
			l.kind, l.media = lineMedia, cur
		}
		// v=, s=, i=, u=, e=, p= and unknown types stay lineDrop.
		d.lines = append(d.lines, l)
	}
	if !sawVersion {
		return nil, fmt.Errorf("parse sdp: empty body: %w", ErrMalformed)
	}
	if !sawOrigin {
		return nil, fmt.Errorf("parse sdp: missing o= line: %w", ErrMalformed)
	}

	for i := range d.media {
		m := &d.media[i]
		if !m.hasConn {
			m.Addr = sessionAddr
		}
		if m.rtcpPort != 0 {
			addr := m.Addr
			if m.rtcpHasAddr {
				addr = m.rtcpAddr
			}
			if addr.IsValid() {
				m.RTCP = netip.AddrPortFrom(addr, uint16(m.rtcpPort))
			}
		}
	}
	return d, nil
}

// classifyAttr records what an a= line says about its media section (or
// the session) and decides whether Rewrite keeps it.
func (d *Description) classifyAttr(s, value string, cur int, sessionDir *string) lineKind {
	name, arg, hasArg := strings.Cut(value, ":")
	switch {
	case strings.EqualFold(name, "rtcp"):
		// RFC 3605 defines a=rtcp at media level only. It is rebuilt,
		// so its address does not count as a leak here. The name is
		// matched without case so that a variant spelling cannot carry
		// the original port through verbatim.
		if cur < 0 {
			return lineDrop
		}
		m := &d.media[cur]
		if m.rtcpPort != 0 || !hasArg {
			return lineDrop
		}
		port, addr, hasAddr, ok := parseRTCP(arg)
		if !ok {
			// A broken a=rtcp is ignored: RTCP then defaults to the
			// port after RTP, which is what the SBC allocates anyway.
			return lineDrop
		}
		m.rtcpPort, m.rtcpAddr, m.rtcpHasAddr = port, addr, hasAddr
		return lineRTCP
	case isICEAttr(name):
		return lineDrop
	}
	kind := keepIfClean(s)
	if kind == lineDrop || hasArg {
		return kind
	}
	switch name {
	case SendRecv, SendOnly, RecvOnly, Inactive:
		if cur < 0 {
			*sessionDir = name
		} else {
			d.media[cur].Direction = name
		}
	case "rtcp-mux":
		if cur >= 0 {
			d.media[cur].RTCPMux = true
		}
	}
	return kind
}

// Media returns the m= lines in body order. The slice and its Formats are
// copies the caller may keep and modify.
func (d *Description) Media() []Media {
	out := make([]Media, len(d.media))
	for i := range d.media {
		out[i] = d.media[i].Media
		out[i].Formats = slices.Clone(d.media[i].Formats)
	}
	return out
}

// Origin returns the username, session id and version of the o= line.
// Comparing versions tells a changed re-offer from a refresh (RFC 3264 §8).
func (d *Description) Origin() Origin { return d.origin }

// parseOrigin parses the value of o=: <username> <sess-id> <sess-version>
// <nettype> <addrtype> <unicast-address> (RFC 8866 §5.2).
func parseOrigin(v string) (Origin, error) {
	var f [6]string
	if n := fields(v, f[:]); n != len(f) {
		return Origin{}, fmt.Errorf("want 6 fields, have %d", n)
	}
	id, ok := parseUint(f[1], 1<<64-1)
	if !ok {
		return Origin{}, fmt.Errorf("session id %q is not a 64-bit number", clip(f[1]))
	}
	ver, ok := parseUint(f[2], 1<<64-1)
	if !ok {
		return Origin{}, fmt.Errorf("session version %q is not a 64-bit number", clip(f[2]))
	}
	if _, err := parseAddress(f[3], f[4], f[5]); err != nil {
		return Origin{}, err
	}
	return Origin{Username: f[0], SessionID: id, Version: ver}, nil
}

// parseConnection parses the value of c=: <nettype> <addrtype>
// <connection-address> (RFC 8866 §5.7). It returns an invalid Addr for a
// host name.
func parseConnection(v string) (netip.Addr, error) {
	var f [3]string
	if n := fields(v, f[:]); n != len(f) {
		return netip.Addr{}, fmt.Errorf("want 3 fields, have %d", n)
	}
	return parseAddress(f[0], f[1], f[2])
}

// parseAddress checks <nettype> <addrtype> <address>, where address may
// carry the multicast /<ttl>[/<count>] suffix. An IP literal must match
// addrtype. Anything else without a colon and not made of digits and dots
// only is taken as a host name (RFC 8866 allows an FQDN) and yields an
// invalid Addr: the SBC does not resolve names and latches on the first
// packet instead.
func parseAddress(nettype, addrtype, addr string) (netip.Addr, error) {
	if nettype != "IN" {
		return netip.Addr{}, fmt.Errorf("network type %q is not IN", clip(nettype))
	}
	if addrtype != "IP4" && addrtype != "IP6" {
		return netip.Addr{}, fmt.Errorf("address type %q is not IP4 or IP6", clip(addrtype))
	}
	host, suffix, hasSuffix := strings.Cut(addr, "/")
	if hasSuffix {
		for part := range strings.SplitSeq(suffix, "/") {
			if _, ok := parseUint(part, 1<<32-1); !ok {
				return netip.Addr{}, fmt.Errorf("multicast suffix %q is not numeric", clip(suffix))
			}
		}
	}
	if host == "" {
		return netip.Addr{}, fmt.Errorf("empty address")
	}
	if a, err := netip.ParseAddr(host); err == nil {
		switch {
		case a.Zone() != "":
			return netip.Addr{}, fmt.Errorf("address %q has a zone", clip(host))
		case addrtype == "IP4" && !a.Is4(), addrtype == "IP6" && !a.Is6():
			return netip.Addr{}, fmt.Errorf("address %q is not %s", clip(host), addrtype)
		}
		return a, nil
	}
	if strings.IndexByte(host, ':') >= 0 || strings.Trim(host, "0123456789.") == "" {
		return netip.Addr{}, fmt.Errorf("address %q is not a valid %s literal", clip(host), addrtype)
	}
	return netip.Addr{}, nil
}

// parseMediaLine parses the value of m=: <media> <port>[/<number of
// ports>] <proto> <fmt> ... (RFC 8866 §5.14). A rejected stream (port 0)
// may omit its formats; some devices answer that way.
func parseMediaLine(v string) (mediaDesc, error) {
	f := strings.Fields(v)
	if len(f) < 3 {
		return mediaDesc{}, fmt.Errorf("want at least 3 fields, have %d", len(f))
	}
	for _, tok := range f {
		if !isVisibleASCII(tok) {
			return mediaDesc{}, fmt.Errorf("field %q is not a token", clip(tok))
		}
	}
	portText, countText, hasCount := strings.Cut(f[1], "/")
	port, ok := parseUint(portText, 65535)
	if !ok {
		return mediaDesc{}, fmt.Errorf("port %q is not a number up to 65535", clip(portText))
	}
	count := uint64(1)
	if hasCount {
		count, ok = parseUint(countText, 65535)
		if !ok || count == 0 {
			return mediaDesc{}, fmt.Errorf("port count %q is not a number from 1 to 65535", clip(countText))
		}
	}
	if len(f) == 3 && port != 0 {
		return mediaDesc{}, fmt.Errorf("no media formats")
	}
	return mediaDesc{
		Media: Media{
			Kind:     f[0],
			Port:     int(port),
			NumPorts: int(count),
			Proto:    f[2],
			Formats:  f[3:],
		},
		hasCount: hasCount,
		tainted:  hasAddrLiteral(v),
	}, nil
}

// parseRTCP parses the value of a=rtcp: <port> [<nettype> <addrtype>
// <connection-address>] (RFC 3605 §2.1).
func parseRTCP(v string) (port int, addr netip.Addr, hasAddr, ok bool) {
	var f [4]string
	n := fields(v, f[:])
	if n != 1 && n != 4 {
		return 0, netip.Addr{}, false, false
	}
	p, ok := parseUint(f[0], 65535)
	if !ok || p == 0 {
		return 0, netip.Addr{}, false, false
	}
	if n == 1 {
		return int(p), netip.Addr{}, false, true
	}
	a, err := parseAddress(f[1], f[2], f[3])
	if err != nil {
		return 0, netip.Addr{}, false, false
	}
	return int(p), a, true, true
}

// keepIfClean keeps a verbatim line unless it carries an IP literal or a
// control character. An address cannot be hidden inside a line the SBC does
// not understand, so the line goes; a control character (a bare CR in
// particular) could make a receiver split the line differently from us.
func keepIfClean(s string) lineKind {
	if hasControl(s) || hasAddrLiteral(s) {
		return lineDrop
	}
	return lineKeep
}

func isICEAttr(name string) bool {
	for _, a := range iceAttrs {
		if strings.EqualFold(name, a) {
			return true
		}
	}
	return false
}

// fields splits s on runs of spaces and tabs into dst without allocating.
// It returns the number of fields found, which may exceed len(dst).
func fields(s string, dst []string) int {
	n := 0
	for s != "" {
		i := 0
		for i < len(s) && (s[i] == ' ' || s[i] == '\t') {
			i++
		}
		s = s[i:]
		if s == "" {
			break
		}
		j := 0
		for j < len(s) && s[j] != ' ' && s[j] != '\t' {
			j++
		}
		if n < len(dst) {
			dst[n] = s[:j]
		}
		n++
		s = s[j:]
	}
	return n
}

// parseUint parses a non-empty string of ASCII digits no greater than max.
// Unlike strconv it accepts no sign, underscore or base prefix.
func parseUint(s string, max uint64) (uint64, bool) {
	if s == "" {
		return 0, false
	}
	var n uint64
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		d := uint64(c - '0')
		if n > (max-d)/10 {
			return 0, false
		}
		n = n*10 + d
	}
	return n, true
}

func isVisibleASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] >= 0x7f {
			return false
		}
	}
	return s != ""
}

func hasControl(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < ' ' && c != '\t') || c == 0x7f {
			return true
		}
	}
	return false
}

// malformed builds a parse error for line lineNo wrapping ErrMalformed.
func malformed(lineNo int, format string, args ...any) error {
	return fmt.Errorf("parse sdp line %d: %s: %w", lineNo, fmt.Sprintf(format, args...), ErrMalformed)
}

// clip shortens peer-supplied text quoted in errors so that one bad line
// cannot flood the log.
func clip(s string) string {
	const max = 64
	if len(s) <= max {
		return s
	}
	return s[:max] + "..."
}
