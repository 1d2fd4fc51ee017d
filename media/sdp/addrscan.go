package sdp

import (
	"net/netip"
	"slices"
)

// ForeignAddrs returns every IP literal in body for which isForeign
// returns true, in order of first appearance and without duplicates; nil
// when there is none. An IPv4-mapped IPv6 literal is also tested in its
// IPv4 form.
//
// It is the last-line leak guard: run on a body just before it leaves the
// SBC with isForeign reporting every address other than the ones the SBC
// announces, it must return nothing. It reads the body as text and knows
// nothing of SDP beyond splitting a= attribute names from their values, so
// it also sees addresses in lines Rewrite would not understand.
//
// A literal is recognised as a maximal run of hexadecimal digits, colons
// and dots that parses as an address once a stray leading colon or
// trailing colons and dots are removed, or, inside a longer run, as four
// dotted decimal fields no greater than 255 (so "10.0.0.5:5060" and
// "010.000.000.005" count). Runs of more than eight colon-separated groups,
// such as DTLS fingerprints, are not addresses.
func ForeignAddrs(body []byte, isForeign func(netip.Addr) bool) []netip.Addr {
	var (
		out  []netip.Addr
		seen map[netip.Addr]struct{} // only for bodies with many addresses
	)
	scanAddrs(body, func(a netip.Addr) bool {
		if !isForeign(a) && !(a.Is4In6() && isForeign(a.Unmap())) {
			return true
		}
		if seen != nil {
			if _, dup := seen[a]; dup {
				return true
			}
			seen[a] = struct{}{}
		} else if slices.Contains(out, a) {
			return true
		} else if len(out) == 16 {
			seen = make(map[netip.Addr]struct{}, 64)
			for _, x := range out {
				seen[x] = struct{}{}
			}
			seen[a] = struct{}{}
		}
		out = append(out, a)
		return true
	})
	return out
}

// hasAddrLiteral reports whether s contains anything ForeignAddrs would
// recognise as an IP literal.
func hasAddrLiteral(s string) bool {
	return !scanAddrs(s, func(netip.Addr) bool { return false })
}

// textual is the input of scanAddrs: a body or a line.
type textual interface{ ~string | ~[]byte }

// scanAddrs calls yield for each IP literal in s, line by line, until
// yield returns false. It reports whether it ran to the end.
//
// On an a= line the attribute name and the value are also scanned apart,
// so that "a=x-bad:fe80::1" yields fe80::1 as well as bad:fe80::1.
func scanAddrs[T textual](s T, yield func(netip.Addr) bool) bool {
	for start := 0; start <= len(s); {
		end := start
		for end < len(s) && s[end] != '\n' && s[end] != '\r' {
			end++
		}
		ln := s[start:end]
		if !scanSegment(ln, yield) {
			return false
		}
		if len(ln) > 2 && ln[0] == 'a' && ln[1] == '=' {
			for i := 2; i < len(ln); i++ {
				if ln[i] != ':' {
					continue
				}
				// Splitting only changes the runs when the colon is
				// inside one.
				if i > 2 && i+1 < len(ln) && isAddrChar(ln[i-1]) && isAddrChar(ln[i+1]) &&
					(!scanSegment(ln[2:i], yield) || !scanSegment(ln[i+1:], yield)) {
					return false
				}
				break
			}
		}
		start = end + 1
	}
	return true
}

func scanSegment[T textual](s T, yield func(netip.Addr) bool) bool {
	for i := 0; i < len(s); {
		if !isAddrChar(s[i]) {
			i++
			continue
		}
		j := i + 1
		for j < len(s) && isAddrChar(s[j]) {
			j++
		}
		if !scanRun(s[i:j], yield) {
			return false
		}
		i = j
	}
	return true
}

// maxAddrText is the longest textual IPv6 address
// (ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255).
const maxAddrText = 45

// scanRun looks for literals in one maximal run of address characters.
func scanRun[T textual](run T, yield func(netip.Addr) bool) bool {
	colons, dots := 0, 0
	for i := 0; i < len(run); i++ {
		switch run[i] {
		case ':':
			colons++
		case '.':
			dots++
		}
	}
	if colons < 2 && dots < 3 {
		return true
	}
	if a, ok := parseRun(run); ok {
		return yield(a)
	}
	if dots < 3 {
		return true
	}
	// Dotted quads inside a run that is not an address as a whole, such as
	// 10.0.0.5:5060 or a version string 1.2.3.4.5. Fields are the digit
	// strings between dots; four valid ones in a row make an address.
	var quad [4]byte
	n := 0
	for i := 0; i <= len(run); {
		j := i
		for j < len(run) && run[j] >= '0' && run[j] <= '9' {
			j++
		}
		v, valid := 0, j > i && j-i <= 3
		for k := i; valid && k < j; k++ {
			v = v*10 + int(run[k]-'0')
		}
		valid = valid && v <= 255
		if valid {
			quad[0], quad[1], quad[2], quad[3] = quad[1], quad[2], quad[3], byte(v)
			n++
			if n >= 4 && !yield(netip.AddrFrom4(quad)) {
				return false
			}
		} else {
			n = 0
		}
		if j < len(run) && run[j] != '.' {
			// A hex letter or colon ends the dotted sequence.
			n = 0
		}
		i = j + 1
	}
	return true
}

// parseRun tries the run as an address, then without one leading colon
// (attribute separators such as "x-foo:10.0.0.5") and without trailing
// colons and dots (sentence punctuation, "host:").
func parseRun[T textual](run T) (netip.Addr, bool) {
	end := len(run)
	for end > 0 && (run[end-1] == '.' || run[end-1] == ':') {
		end--
	}
	start := 0
	if len(run) > 0 && run[0] == ':' {
		start = 1
	}
	// Candidate spans, most literal first; duplicates are skipped.
	spans := [4][2]int{{0, len(run)}, {start, len(run)}, {0, end}, {start, end}}
	for i, sp := range spans {
		if slices.Contains(spans[:i], sp) || sp[1]-sp[0] < 2 || sp[1]-sp[0] > maxAddrText {
			continue
		}
		if a, ok := parseAddrText(run[sp[0]:sp[1]]); ok {
			return a, true
		}
	}
	return netip.Addr{}, false
}

// addrChars marks the bytes an IP literal is made of: hex digits, colon
// and dot.
var addrChars = func() (t [256]bool) {
	for _, c := range []byte("0123456789abcdefABCDEF:.") {
		t[c] = true
	}
	return t
}()

func isAddrChar(c byte) bool { return addrChars[c] }

// parseAddrText parses an IPv4 or IPv6 literal without a zone, accepting
// exactly what netip.ParseAddr accepts. It exists because ParseAddr takes
// a string, and converting each candidate of a []byte body would allocate
// on every scan.
func parseAddrText[T textual](s T) (netip.Addr, bool) {
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '.':
			var ip [4]byte
			if !parseIPv4Fields(s, ip[:]) {
				return netip.Addr{}, false
			}
			return netip.AddrFrom4(ip), true
		case ':':
			return parseIPv6Text(s)
		}
	}
	return netip.Addr{}, false
}

// parseIPv4Fields parses a dotted quad into fields: four decimal octets,
// no leading zeros.
func parseIPv4Fields[T textual](s T, fields []byte) bool {
	val, pos, digits := 0, 0, 0
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c >= '0' && c <= '9':
			if digits == 1 && val == 0 {
				return false
			}
			val = val*10 + int(c-'0')
			digits++
			if val > 255 {
				return false
			}
		case c == '.':
			if i == 0 || i == len(s)-1 || s[i-1] == '.' || pos == 3 {
				return false
			}
			fields[pos] = byte(val)
			pos++
			val, digits = 0, 0
		default:
			return false
		}
	}
	if pos != 3 {
		return false
	}
	fields[3] = byte(val)
	return true
}

// parseIPv6Text parses RFC 4291 §2.2 text: up to eight groups of one to
// four hex digits, at most one "::" standing for at least one zero group,
// and optionally a dotted quad as the last 32 bits.
func parseIPv6Text[T textual](s T) (netip.Addr, bool) {
	var ip [16]byte
	ellipsis := -1
	if len(s) >= 2 && s[0] == ':' && s[1] == ':' {
		ellipsis = 0
		s = s[2:]
		if len(s) == 0 {
			return netip.IPv6Unspecified(), true
		}
	}
	i := 0
	for i < 16 {
		off, acc := 0, 0
	group:
		for ; off < len(s); off++ {
			switch c := s[off]; {
			case c >= '0' && c <= '9':
				acc = acc<<4 + int(c-'0')
			case c >= 'a' && c <= 'f':
				acc = acc<<4 + int(c-'a'+10)
			case c >= 'A' && c <= 'F':
				acc = acc<<4 + int(c-'A'+10)
			default:
				break group
			}
			if off > 3 {
				return netip.Addr{}, false
			}
		}
		if off == 0 {
			return netip.Addr{}, false
		}
		if off < len(s) && s[off] == '.' {
			// Embedded IPv4 must fill the last 32 bits.
			if (ellipsis < 0 && i != 12) || i+4 > 16 {
				return netip.Addr{}, false
			}
			if !parseIPv4Fields(s, ip[i:i+4]) {
				return netip.Addr{}, false
			}
			s = s[len(s):]
			i += 4
			break
		}
		ip[i], ip[i+1] = byte(acc>>8), byte(acc)
		i += 2
		s = s[off:]
		if len(s) == 0 {
			break
		}
		if s[0] != ':' || len(s) == 1 {
			return netip.Addr{}, false
		}
		s = s[1:]
		if s[0] == ':' {
			if ellipsis >= 0 {
				return netip.Addr{}, false
			}
			ellipsis = i
			s = s[1:]
			if len(s) == 0 {
				break
			}
		}
	}
	if len(s) != 0 {
		return netip.Addr{}, false
	}
	if i < 16 {
		if ellipsis < 0 {
			return netip.Addr{}, false
		}
		n := 16 - i
		for j := i - 1; j >= ellipsis; j-- {
			ip[j+n] = ip[j]
		}
		clear(ip[ellipsis : ellipsis+n])
	} else if ellipsis >= 0 {
		return netip.Addr{}, false
	}
	return netip.AddrFrom16(ip), true
}
