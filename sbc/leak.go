package sbc

import (
	"bytes"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/emiago/sipgo/sip"
)

// foreignSet is what must never appear in a message sent into one zone: the
// networks of every other zone, plus addresses and hostnames learned from
// the other leg of the same call. It is built once per leg and read-only
// afterwards.
type foreignSet struct {
	networks []netip.Prefix
	addrs    []netip.Addr
	hosts    []string // lower case
}

func (f *foreignSet) isForeignAddr(a netip.Addr) bool {
	a = a.Unmap()
	for _, p := range f.networks {
		if p.Contains(a) {
			return true
		}
	}
	for _, x := range f.addrs {
		if x == a {
			return true
		}
	}
	return false
}

// leaks reports whether s mentions a foreign address or hostname.
func (f *foreignSet) leaks(s string) bool {
	if s == "" {
		return false
	}
	if scanAddrs(s, f.isForeignAddr) {
		return true
	}
	if len(f.hosts) == 0 {
		return false
	}
	return f.mentionsHost(s)
}

// mentionsHost reports whether s contains one of the learned hostnames,
// ignoring case. A hostname only ever sits inside a run of hostname
// characters with a dot in it, so only such runs are compared, not every
// position of s.
func (f *foreignSet) mentionsHost(s string) bool {
	for i := 0; i < len(s); {
		if !hostChar[s[i]] {
			i++
			continue
		}
		j, dot := i, false
		for j < len(s) && hostChar[s[j]] {
			dot = dot || s[j] == '.'
			j++
		}
		if tok := s[i:j]; dot && len(tok) >= 4 {
			for _, h := range f.hosts {
				if len(h) <= len(tok) && containsFold(tok, h) {
					return true
				}
			}
		}
		i = j
	}
	return false
}

// hostChar marks the bytes a hostname is made of; addrChar those of IPv4
// and IPv6 literals (hex digits, dots, colons).
var hostChar, addrChar = func() (h, a [256]bool) {
	for c := 0; c < 256; c++ {
		b := byte(c)
		digit, hex := b >= '0' && b <= '9', b >= 'a' && b <= 'f' || b >= 'A' && b <= 'F'
		h[c] = digit || b >= 'a' && b <= 'z' || b >= 'A' && b <= 'Z' || b == '.' || b == '-'
		a[c] = digit || hex || b == '.' || b == ':'
	}
	return h, a
}()

// containsFold reports whether s contains the lower-case ASCII string sub,
// ignoring ASCII case, without allocating.
func containsFold(s, sub string) bool {
	n := len(sub)
	if n == 0 {
		return true
	}
	for i := 0; i+n <= len(s); i++ {
		if lower(s[i]) != sub[0] {
			continue
		}
		j := 1
		for j < n && lower(s[i+j]) == sub[j] {
			j++
		}
		if j == n {
			return true
		}
	}
	return false
}

func lower(c byte) byte {
	if c >= 'A' && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}

// learnFrom adds the topology a received message reveals about its side:
// Via sent-by hosts, Contact, From and Record-Route hosts and the host part of
// the Call-ID. To and the Request-URI name the target, not the sender, so they
// are not learned (they often hold our own or the far side's domain).
func (f *foreignSet) learnFrom(msg sip.Message, own func(string) bool) {
	add := func(host string) {
		host = strings.Trim(strings.ToLower(host), "[]")
		if host == "" || own(host) {
			return
		}
		if a, err := netip.ParseAddr(host); err == nil {
			a = a.Unmap()
			if a.IsUnspecified() || a.IsLoopback() {
				return
			}
			for _, x := range f.addrs {
				if x == a {
					return
				}
			}
			if len(f.addrs) < 32 {
				f.addrs = append(f.addrs, a)
			}
			return
		}
		// very short names ("pbx", "a") would match innocent text
		if len(host) < 4 || !strings.Contains(host, ".") {
			return
		}
		for _, x := range f.hosts {
			if x == host {
				return
			}
		}
		if len(f.hosts) < 32 {
			f.hosts = append(f.hosts, host)
		}
	}
	for h := range headersNamed(msg, "Via") {
		if v, ok := h.(*sip.ViaHeader); ok {
			add(v.Host)
		}
	}
	if c := msgContact(msg); c != nil {
		add(c.Address.Host)
	}
	if fr := msg.From(); fr != nil {
		add(fr.Address.Host)
	}
	for h := range headersNamed(msg, "Record-Route") {
		if rr, ok := h.(*sip.RecordRouteHeader); ok {
			add(rr.Address.Host)
		}
	}
	if id := msg.CallID(); id != nil {
		if at := strings.LastIndexByte(id.Value(), '@'); at >= 0 {
			add(id.Value()[at+1:])
		}
	}
}

func msgContact(msg sip.Message) *sip.ContactHeader {
	for h := range headersNamed(msg, "Contact") {
		if c, ok := h.(*sip.ContactHeader); ok {
			return c
		}
	}
	return nil
}

// scanAddrs finds IPv4 and IPv6 literals in s and reports whether any of
// them satisfies match. It runs on every outgoing message, so it only calls
// the address parser for tokens shaped like an address (three dots and only
// digits, or two colons) and allocates nothing for ordinary text.
func scanAddrs(s string, match func(netip.Addr) bool) bool {
	for i := 0; i < len(s); {
		if !isAddrChar(s[i]) {
			i++
			continue
		}
		j := i
		dots, colons, letters := 0, 0, 0
		for j < len(s) && isAddrChar(s[j]) {
			switch c := s[j]; {
			case c == '.':
				dots++
			case c == ':':
				colons++
			case c > '9':
				letters++
			}
			j++
		}
		tok := s[i:j]
		i = j
		for len(tok) > 0 && (tok[len(tok)-1] == ':' || tok[len(tok)-1] == '.') {
			tok = tok[:len(tok)-1]
		}
		if len(tok) > 1 && tok[0] == ':' && tok[1] != ':' {
			tok = tok[1:] // "a=x:10.0.0.1": the colon separates, it is no IPv6
		}
		switch {
		case colons >= 2:
			// "sip:10.0.0.1:5060" gives ":10.0.0.1:5060", no IPv6 once
			// its leading colon is off: parsing it would only fail (and
			// allocate the error), and an address with fewer than two
			// colons is an IPv4 one, which trailingIPv4 finds
			if strings.Count(tok, ":") >= 2 {
				if a, err := netip.ParseAddr(tok); err == nil && match(a) {
					return true
				}
			}
			fallthrough
		case dots == 3 && letters == 0:
			// an IPv4 literal, possibly followed by ":port", possibly at
			// the end of an IPv6 token (::ffff:10.0.0.1)
			if a, ok := trailingIPv4(tok); ok && match(a) {
				return true
			}
		}
	}
	return false
}

// trailingIPv4 parses the last dotted quad in tok, ignoring a ":port".
func trailingIPv4(tok string) (netip.Addr, bool) {
	end := len(tok)
	if k := strings.LastIndexByte(tok, ':'); k >= 0 && strings.IndexByte(tok[k:], '.') < 0 {
		end = k // strip ":5060"
	}
	start := end
	for start > 0 && (tok[start-1] == '.' || tok[start-1] >= '0' && tok[start-1] <= '9') {
		start--
	}
	cand := tok[start:end]
	if strings.Count(cand, ".") != 3 || len(cand) < 7 {
		return netip.Addr{}, false
	}
	a, err := netip.ParseAddr(cand)
	return a, err == nil
}

func isAddrChar(c byte) bool { return addrChar[c] }

// leakGuard is the last line of defence: every message is checked just
// before it is sent into a zone. Messages are built from scratch so this
// should never fire; when it does, the offending header or SDP line is
// removed and counted, and the event is logged.
type leakGuard struct {
	fired atomic.Uint64
}

// mandatory headers cannot be dropped; their display names and user parts
// are cleared instead.
var mandatoryHeaders = map[string]bool{"via": true, "from": true, "to": true, "call-id": true, "cseq": true, "max-forwards": true, "content-length": true}

// scrub removes what leaks and returns the names of the headers it touched.
func (g *leakGuard) scrub(msg sip.Message, f *foreignSet) []string {
	touched, _ := g.scrubSized(msg, f)
	return touched
}

// scrubSized is scrub that also returns the size of msg on the wire when
// it left msg as it was (-1 when it changed it): the size the guard's one
// serialisation measured, which the transport choice needs too (direct).
func (g *leakGuard) scrubSized(msg sip.Message, f *foreignSet) ([]string, int) {
	// fast path: one serialisation and one scan of the whole message;
	// messages are clean by construction, so this is almost always it
	leak, size := f.leaksIn(msg)
	if !leak {
		return nil, size
	}
	var touched []string
	all := headersOf(msg)
	leaky := false
	for _, h := range all {
		if f.leaks(h.Value()) {
			leaky = true
			break
		}
	}
	if leaky {
		keep := make([]sip.Header, 0, len(all))
		for _, h := range all {
			if !f.leaks(h.Value()) {
				keep = append(keep, h)
				continue
			}
			touched = append(touched, h.Name())
			lname := strings.ToLower(h.Name())
			if !mandatoryHeaders[lname] {
				continue
			}
			switch v := h.(type) {
			case *sip.FromHeader:
				v.DisplayName = ""
				if f.leaks(v.Value()) {
					v.Address.User = "anonymous"
				}
			case *sip.ToHeader:
				v.DisplayName = ""
				if f.leaks(v.Value()) {
					v.Address.User = "anonymous"
				}
			}
			keep = append(keep, h)
		}
		for _, h := range all {
			for msg.GetHeaders(h.Name()) != nil && len(msg.GetHeaders(h.Name())) > 0 {
				if !removeHeader(msg, h.Name()) {
					break
				}
			}
		}
		for _, h := range keep {
			msg.AppendHeader(h)
		}
	}
	if body := msg.Body(); len(body) > 0 && f.leaks(string(body)) {
		msg.SetBody(scrubBody(body, f))
		touched = append(touched, "body")
	}
	if len(touched) == 0 {
		return nil, size
	}
	g.fired.Add(1)
	return touched, -1
}

// wireBufs holds the buffers the fast path serialises messages into: every
// message sent is scanned once, so a fresh string each time was a large
// share of the allocations per call.
var wireBufs = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// leaksIn reports whether msg, as it would be written, mentions a foreign
// address or hostname, and how many bytes it is when written.
func (f *foreignSet) leaksIn(msg sip.Message) (bool, int) {
	buf := wireBufs.Get().(*bytes.Buffer)
	buf.Reset()
	msg.StringWrite(buf)
	var leak bool
	size := buf.Len()
	if b := buf.Bytes(); len(b) > 0 {
		// the buffer is neither changed nor kept while the string view of
		// it is in use
		leak = f.leaks(unsafe.String(unsafe.SliceData(b), len(b)))
	}
	if buf.Cap() <= 64<<10 { // an oversized message's buffer is not kept
		wireBufs.Put(buf)
	}
	return leak, size
}

func scrubBody(body []byte, f *foreignSet) []byte {
	var out bytes.Buffer
	for _, line := range bytes.SplitAfter(body, []byte("\n")) {
		if len(line) == 0 || f.leaks(string(line)) {
			continue
		}
		out.Write(line)
	}
	return out.Bytes()
}

func headersOf(msg sip.Message) []sip.Header {
	switch m := msg.(type) {
	case *sip.Request:
		return append([]sip.Header(nil), m.Headers()...)
	case *sip.Response:
		return append([]sip.Header(nil), m.Headers()...)
	}
	return nil
}

func removeHeader(msg sip.Message, name string) bool {
	switch m := msg.(type) {
	case *sip.Request:
		return m.RemoveHeader(name)
	case *sip.Response:
		return m.RemoveHeader(name)
	}
	return false
}
