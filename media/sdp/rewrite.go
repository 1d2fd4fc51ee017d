package sdp

import (
	"fmt"
	"net/netip"
	"strconv"
)

// Anchor is what the SBC announces in place of the far side: its own
// media address and the relay port of every stream.
type Anchor struct {
	// Addr is the address announced in o=, c= and a=rtcp. An IPv4 address
	// gives IN IP4 and an IPv6 one IN IP6; pass IPv4 addresses unmapped.
	Addr netip.Addr
	// Ports holds the RTP port of each m= line, in the order of Media();
	// RTCP is Ports[i]+1. A 0 rejects that stream (the m= port becomes 0);
	// ports of streams that were already rejected are ignored. For an m=
	// line with a port count n the relay must own n consecutive pairs.
	Ports []int
	// Origin fills o=. An empty Username becomes "-" (RFC 8866 §5.2).
	Origin Origin
}

// Rewrite returns a new body in which the SBC is the only media address
// visible. The body keeps the streams, codecs, crypto and direction of the
// original, so the two endpoints still negotiate end to end, while
// everything that describes the far side's network is replaced or removed:
//
//   - o= becomes "o=<Username> <SessionID> <Version> IN IP4|IP6 <Addr>"
//     and s= becomes "s=-" (session names often carry product and host
//     names); i=, u=, e= and p= lines are dropped.
//   - One session-level c= with Addr follows s=. A media-level c= is
//     emitted only for a stream whose original address was 0.0.0.0 or ::
//     (RFC 2543 hold), with the unspecified address of Addr's family, so
//     that the hold survives.
//   - Each m= port becomes Ports[i], keeping a /<n> count, the proto and
//     the formats; a rejected stream (port 0) stays rejected.
//   - a=rtcp becomes a=rtcp:<Ports[i]+1>, with " IN IP4|IP6 <Addr>" only
//     if the original named an address (RFC 3605).
//   - ICE attributes are dropped (the SBC terminates ICE), and so is any
//     other line that carries an IP literal or a control character.
//     v=, t=, r=, z=, b=, k= and all other a= lines (crypto, rtpmap,
//     fmtp, ptime, direction...) are kept verbatim. A missing t= is added
//     as "t=0 0".
//
// The output uses CRLF line endings, ends with CRLF and has no blank
// lines. Rewrite fails with ErrInvalidAnchor when the anchor does not fit
// the body, and with ErrLeak when the body has an IP literal in an m= line
// (which cannot be dropped without renumbering streams).
func (d *Description) Rewrite(a Anchor) ([]byte, error) {
	if d == nil {
		return nil, fmt.Errorf("rewrite sdp: nil description: %w", ErrInvalidAnchor)
	}
	if err := d.checkAnchor(a); err != nil {
		return nil, err
	}
	user := a.Origin.Username
	if user == "" {
		user = "-"
	}
	ipver := " IN IP4 "
	unspec := netip.IPv4Unspecified()
	if !a.Addr.Is4() {
		ipver, unspec = " IN IP6 ", netip.IPv6Unspecified()
	}

	size := 96 + len(user) + 64*len(d.media)
	for _, l := range d.lines {
		if l.kind != lineDrop {
			size += len(l.text) + 2
		}
	}
	b := make([]byte, 0, size)
	b = append(b, "v=0\r\no="...)
	b = append(b, user...)
	b = append(b, ' ')
	b = strconv.AppendUint(b, a.Origin.SessionID, 10)
	b = append(b, ' ')
	b = strconv.AppendUint(b, a.Origin.Version, 10)
	b = append(b, ipver...)
	b = a.Addr.AppendTo(b)
	b = append(b, "\r\ns=-\r\nc="...)
	b = append(b, ipver[1:]...)
	b = a.Addr.AppendTo(b)
	b = append(b, "\r\n"...)

	// RFC 8866 §5 orders the session section v o s i u e p c b t r z k a:
	// a missing t= goes after the b= lines that follow c=.
	needTime := !d.hasTime
	for _, l := range d.lines {
		if needTime && l.kind != lineDrop && (l.media >= 0 || l.text[0] != 'b') {
			b = append(b, "t=0 0\r\n"...)
			needTime = false
		}
		switch l.kind {
		case lineKeep:
			b = append(b, l.text...)
			b = append(b, "\r\n"...)
		case lineMedia:
			m := &d.media[l.media]
			start := len(b)
			b = appendMediaLine(b, m, streamPort(m, a.Ports[l.media]))
			if len(b)-start-2 > MaxLineLength {
				return nil, fmt.Errorf("rewrite m-line %d: line exceeds %d bytes: %w", l.media, MaxLineLength, ErrMalformed)
			}
			if m.Addr.IsUnspecified() {
				b = append(b, 'c', '=')
				b = append(b, ipver[1:]...)
				b = unspec.AppendTo(b)
				b = append(b, "\r\n"...)
			}
		case lineRTCP:
			m := &d.media[l.media]
			port := streamPort(m, a.Ports[l.media])
			if port == 0 {
				break // a rejected stream has no RTCP
			}
			b = append(b, "a=rtcp:"...)
			b = strconv.AppendInt(b, int64(port)+1, 10)
			if m.rtcpHasAddr {
				b = append(b, ipver...)
				b = a.Addr.AppendTo(b)
			}
			b = append(b, "\r\n"...)
		}
	}
	if needTime {
		b = append(b, "t=0 0\r\n"...)
	}

	if len(b) > MaxBodySize {
		return nil, fmt.Errorf("rewrite sdp: result of %d bytes exceeds %d: %w", len(b), MaxBodySize, ErrMalformed)
	}
	// Belt and braces: every kept line was checked by Parse and every
	// rebuilt one holds only the anchor, but a body that would leak must
	// never leave, whatever the reason.
	var leaked netip.Addr
	scanAddrs(b, func(x netip.Addr) bool {
		if x == a.Addr || x.IsUnspecified() {
			return true
		}
		leaked = x
		return false
	})
	if leaked.IsValid() {
		return nil, fmt.Errorf("rewrite sdp: result still names %v: %w", leaked, ErrLeak)
	}
	return b, nil
}

// checkAnchor validates a against d before anything is written.
func (d *Description) checkAnchor(a Anchor) error {
	switch {
	case !a.Addr.IsValid():
		return fmt.Errorf("rewrite sdp: anchor address not set: %w", ErrInvalidAnchor)
	case a.Addr.Zone() != "":
		return fmt.Errorf("rewrite sdp: anchor address %v has a zone: %w", a.Addr, ErrInvalidAnchor)
	case a.Addr.IsUnspecified() || a.Addr.IsMulticast():
		return fmt.Errorf("rewrite sdp: anchor address %v is not a unicast address: %w", a.Addr, ErrInvalidAnchor)
	case len(a.Ports) != len(d.media):
		return fmt.Errorf("rewrite sdp: %d anchor ports for %d m= lines: %w", len(a.Ports), len(d.media), ErrInvalidAnchor)
	}
	if u := a.Origin.Username; u != "" && (!isVisibleASCII(u) || hasAddrLiteral(u)) {
		return fmt.Errorf("rewrite sdp: origin username %q is not a plain token: %w", clip(u), ErrInvalidAnchor)
	}
	for i := range d.media {
		m := &d.media[i]
		// The RTCP port Ports[i]+1 must fit too.
		if p := a.Ports[i]; m.Port != 0 && (p < 0 || p > 65534) {
			return fmt.Errorf("rewrite sdp: anchor port %d for m-line %d out of range: %w", p, i, ErrInvalidAnchor)
		}
		if m.tainted {
			return fmt.Errorf("rewrite sdp: m-line %d carries an address literal: %w", i, ErrLeak)
		}
	}
	return nil
}

// streamPort is the port announced for m: 0 keeps a rejected stream
// rejected whatever the anchor says.
func streamPort(m *mediaDesc, anchorPort int) int {
	if m.Port == 0 {
		return 0
	}
	return anchorPort
}

func appendMediaLine(b []byte, m *mediaDesc, port int) []byte {
	b = append(b, 'm', '=')
	b = append(b, m.Kind...)
	b = append(b, ' ')
	b = strconv.AppendInt(b, int64(port), 10)
	if m.hasCount {
		b = append(b, '/')
		b = strconv.AppendInt(b, int64(m.NumPorts), 10)
	}
	b = append(b, ' ')
	b = append(b, m.Proto...)
	for _, f := range m.Formats {
		b = append(b, ' ')
		b = append(b, f...)
	}
	return append(b, "\r\n"...)
}
