package config

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/gohcl"
)

// The raw structs mirror the file's schema for gohcl, which reports unknown
// blocks and attributes and wrong label counts. Every value that needs a
// semantic check stays an *hcl.Attribute (nil when absent), so its diagnostic
// can point at the exact expression.

type rawFile struct {
	Zones  []*rawZone   `hcl:"zone,block"`
	PBXs   []*rawPeer   `hcl:"pbx,block"`
	Trunks []*rawPeer   `hcl:"trunk,block"`
	Media  *rawMedia    `hcl:"media,block"`
	SIP    *rawSIP      `hcl:"sip,block"`
	Log    *rawLog      `hcl:"log,block"`
	Access []*rawAccess `hcl:"access,block"`

	Allow       []*rawAllow     `hcl:"allow,block"`
	RateLimits  []*rawRateLimit `hcl:"rate_limit,block"`
	BanPolicies []*rawBanPolicy `hcl:"ban_policy,block"`
	StateDir    *hcl.Attribute  `hcl:"state_dir,optional"`
	IPv6Prefix  *hcl.Attribute  `hcl:"ipv6_prefix,optional"`
}

type rawZone struct {
	Name       string         `hcl:"name,label"`
	NameRange  hcl.Range      `hcl:"name,label_range"`
	DefRange   hcl.Range      `hcl:",def_range"`
	Address    *hcl.Attribute `hcl:"address,optional"`
	SIPPort    *hcl.Attribute `hcl:"sip_port,optional"`
	Advertise  *hcl.Attribute `hcl:"advertise,optional"`
	Networks   *hcl.Attribute `hcl:"networks,optional"`
	Transports *hcl.Attribute `hcl:"transports,optional"`
	Device     *hcl.Attribute `hcl:"device,optional"`
	MAC        *hcl.Attribute `hcl:"mac,optional"`
	PrefixLen  *hcl.Attribute `hcl:"prefix_length,optional"`
	Gateway    *hcl.Attribute `hcl:"gateway,optional"`
}

type rawPeer struct {
	Name        string         `hcl:"name,label"`
	NameRange   hcl.Range      `hcl:"name,label_range"`
	DefRange    hcl.Range      `hcl:",def_range"`
	Zone        *hcl.Attribute `hcl:"zone,optional"`
	Address     *hcl.Attribute `hcl:"address,optional"`
	Host        *hcl.Attribute `hcl:"host,optional"`
	Transport   *hcl.Attribute `hcl:"transport,optional"`
	KeepHeaders *hcl.Attribute `hcl:"keep_headers,optional"`
	Sources     *hcl.Attribute `hcl:"sources,optional"`
	// session timers (RFC 4028) and transfers (RFC 3515) toward the peer
	SessionExpires *hcl.Attribute `hcl:"session_expires,optional"`
	MinSE          *hcl.Attribute `hcl:"min_se,optional"`
	Refer          *hcl.Attribute `hcl:"refer,optional"`
	// offer/answer interworking (RFC 3261 §13.2.1) toward the peer
	Offer  *hcl.Attribute `hcl:"offer,optional"`
	Codecs *hcl.Attribute `hcl:"codecs,optional"`

	kind PeerKind
}

type rawMedia struct {
	PortRange  *hcl.Attribute `hcl:"port_range,optional"`
	Timeout    *hcl.Attribute `hcl:"timeout,optional"`
	Quarantine *hcl.Attribute `hcl:"quarantine,optional"`
	Offload    *hcl.Attribute `hcl:"kernel_offload,optional"`
	Keep       *hcl.Attribute `hcl:"keep_on_restart,optional"`
	Pinholes   *hcl.Attribute `hcl:"pinhole_zones,optional"`
}

type rawSIP struct {
	UserAgent      *hcl.Attribute `hcl:"user_agent,optional"`
	MaxMessageSize *hcl.Attribute `hcl:"max_message_size,optional"`
	InviteTimeout  *hcl.Attribute `hcl:"invite_timeout,optional"`
	MaxCalls       *hcl.Attribute `hcl:"max_calls,optional"`
}

type rawLog struct {
	Level *hcl.Attribute `hcl:"level,optional"`
}

// errorAt builds an error diagnostic whose Subject is rng.
func errorAt(rng hcl.Range, summary, detail string) *hcl.Diagnostic {
	return &hcl.Diagnostic{
		Severity: hcl.DiagError,
		Summary:  summary,
		Detail:   detail,
		Subject:  rng.Ptr(),
	}
}

// item is one decoded string together with the range of the expression it
// came from, so a later check on it can still point at the source.
type item struct {
	s   string
	rng hcl.Range
}

// decode evaluates expr as a constant and converts it into target. An
// evaluation error (a variable, a function call) is reported alone, without
// the conversion error that would follow from it, and a conversion error
// points at the whole expression rather than only its first token, like
// every other diagnostic in this package.
func decode(expr hcl.Expression, target any) hcl.Diagnostics {
	if _, diags := expr.Value(nil); diags.HasErrors() {
		return diags
	}
	diags := gohcl.DecodeExpression(expr, nil, target)
	for _, d := range diags {
		if d.Severity == hcl.DiagError {
			d.Subject = expr.Range().Ptr()
		}
	}
	return diags
}

// decodeString decodes a constant string attribute. Numbers and bools are
// converted to their string form, as HCL does everywhere.
func decodeString(attr *hcl.Attribute) (string, hcl.Diagnostics) {
	var s string
	if diags := decode(attr.Expr, &s); diags.HasErrors() {
		return "", diags
	}
	return s, nil
}

// decodeBool decodes a constant bool attribute.
func decodeBool(attr *hcl.Attribute) (bool, hcl.Diagnostics) {
	var v bool
	if diags := decode(attr.Expr, &v); diags.HasErrors() {
		return false, diags
	}
	return v, nil
}

// decodeStringList decodes a list of strings. Each item carries the range of
// its own element when the list is written literally, else the whole
// expression's range.
func decodeStringList(attr *hcl.Attribute) ([]item, hcl.Diagnostics) {
	var ss []string
	if diags := decode(attr.Expr, &ss); diags.HasErrors() {
		return nil, diags
	}
	ranges := make([]hcl.Range, len(ss))
	elems, diags := hcl.ExprList(attr.Expr)
	for i := range ranges {
		if !diags.HasErrors() && len(elems) == len(ss) {
			ranges[i] = elems[i].Range()
		} else {
			ranges[i] = attr.Expr.Range()
		}
	}
	items := make([]item, len(ss))
	for i, s := range ss {
		items[i] = item{s: s, rng: ranges[i]}
	}
	return items, nil
}

// decodeInt decodes a whole number attribute and checks it lies in [lo, hi].
func decodeInt(attr *hcl.Attribute, lo, hi int, summary string) (int, hcl.Diagnostics) {
	var n int
	if diags := decode(attr.Expr, &n); diags.HasErrors() {
		return 0, diags
	}
	if n < lo || n > hi {
		return 0, hcl.Diagnostics{errorAt(attr.Expr.Range(), summary,
			fmt.Sprintf("%s must be between %d and %d, got %d.", attr.Name, lo, hi, n))}
	}
	return n, nil
}

// decodePort decodes a UDP/TCP port number (1-65535).
func decodePort(attr *hcl.Attribute) (int, hcl.Diagnostics) {
	return decodeInt(attr, 1, maxPort, "Port out of range")
}

// decodeDuration decodes a Go duration string such as "60s" or "1m30s". Zero
// is accepted only when allowZero is set; negative durations never are.
func decodeDuration(attr *hcl.Attribute, allowZero bool) (time.Duration, hcl.Diagnostics) {
	s, diags := decodeString(attr)
	if diags.HasErrors() {
		return 0, diags
	}
	d, err := time.ParseDuration(strings.TrimSpace(s))
	if err != nil {
		return 0, hcl.Diagnostics{errorAt(attr.Expr.Range(), "Invalid duration",
			fmt.Sprintf("%s: %v. Write a number with a unit, such as \"60s\", \"500ms\" or \"2m\".", attr.Name, err))}
	}
	switch {
	case d < 0:
		return 0, hcl.Diagnostics{errorAt(attr.Expr.Range(), "Duration out of range",
			fmt.Sprintf("%s must not be negative, got %v.", attr.Name, d))}
	case d == 0 && !allowZero:
		return 0, hcl.Diagnostics{errorAt(attr.Expr.Range(), "Duration out of range",
			fmt.Sprintf("%s must be greater than zero.", attr.Name))}
	}
	return d, nil
}

// checkHostAddr rejects addresses that can never be a SIP endpoint: the
// unspecified address (the SBC must announce a concrete address), multicast,
// and IPv6 scoped addresses (a zone index has no meaning on the wire).
func checkHostAddr(a netip.Addr) error {
	switch {
	case a.IsUnspecified():
		return fmt.Errorf("%v is the unspecified address; give the concrete address", a)
	case a.IsMulticast():
		return fmt.Errorf("%v is a multicast address", a)
	case a.Zone() != "":
		return fmt.Errorf("%v has an IPv6 zone index, which is not supported", a)
	}
	return nil
}

// parseAddr parses a host IP address. IPv4-mapped IPv6 addresses are unmapped
// so that comparisons with plain IPv4 addresses work.
func parseAddr(s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(strings.TrimSpace(s))
	if err != nil {
		return netip.Addr{}, err
	}
	a = a.Unmap()
	if err := checkHostAddr(a); err != nil {
		return netip.Addr{}, err
	}
	return a, nil
}

// decodeAddr decodes an IP address attribute.
func decodeAddr(attr *hcl.Attribute) (netip.Addr, hcl.Diagnostics) {
	s, diags := decodeString(attr)
	if diags.HasErrors() {
		return netip.Addr{}, diags
	}
	a, err := parseAddr(s)
	if err != nil {
		return netip.Addr{}, hcl.Diagnostics{errorAt(attr.Expr.Range(), "Invalid IP address",
			fmt.Sprintf("%s: %v.", attr.Name, err))}
	}
	return a, nil
}

// parseAddrPort parses "ip:port", "[ipv6]:port", "ip" or "[ipv6]"; the port
// defaults to defaultPort.
func parseAddrPort(s string, defaultPort uint16) (netip.AddrPort, error) {
	s = strings.TrimSpace(s)
	if ap, err := netip.ParseAddrPort(s); err == nil {
		if ap.Port() == 0 {
			return netip.AddrPort{}, fmt.Errorf("port 0 in %q is not a usable port", s)
		}
		a := ap.Addr().Unmap()
		if err := checkHostAddr(a); err != nil {
			return netip.AddrPort{}, err
		}
		return netip.AddrPortFrom(a, ap.Port()), nil
	}
	bare := s
	if strings.HasPrefix(bare, "[") && strings.HasSuffix(bare, "]") {
		bare = bare[1 : len(bare)-1]
	}
	a, err := netip.ParseAddr(bare)
	if err != nil {
		if host, port, ok := cutPort(s); ok {
			if _, herr := netip.ParseAddr(strings.Trim(host, "[]")); herr == nil {
				return netip.AddrPort{}, fmt.Errorf("invalid port %q: want a number between 1 and %d", port, maxPort)
			}
		}
		return netip.AddrPort{}, fmt.Errorf("%q is not \"ip\", \"ip:port\" or \"[ipv6]:port\"", s)
	}
	a = a.Unmap()
	if err := checkHostAddr(a); err != nil {
		return netip.AddrPort{}, err
	}
	return netip.AddrPortFrom(a, defaultPort), nil
}

// cutPort splits "host:port" at the last colon, for error messages only.
func cutPort(s string) (host, port string, ok bool) {
	i := strings.LastIndexByte(s, ':')
	if i < 0 {
		return "", "", false
	}
	return s[:i], s[i+1:], true
}

// decodeAddrPort decodes a peer address attribute.
func decodeAddrPort(attr *hcl.Attribute) (netip.AddrPort, hcl.Diagnostics) {
	s, diags := decodeString(attr)
	if diags.HasErrors() {
		return netip.AddrPort{}, diags
	}
	ap, err := parseAddrPort(s, DefaultSIPPort)
	if err != nil {
		return netip.AddrPort{}, hcl.Diagnostics{errorAt(attr.Expr.Range(), "Invalid address",
			fmt.Sprintf("%s: %v.", attr.Name, err))}
	}
	return ap, nil
}

// parsePrefix parses "ip/bits", or a bare IP as a single-host prefix. Host bits
// are cleared: "10.0.0.7/24" means 10.0.0.0/24.
func parsePrefix(s string) (netip.Prefix, error) {
	s = strings.TrimSpace(s)
	if !strings.Contains(s, "/") {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("%q is neither \"ip/bits\" nor an IP address", s)
		}
		if a.Zone() != "" {
			return netip.Prefix{}, fmt.Errorf("%v has an IPv6 zone index, which is not supported", a)
		}
		a = a.Unmap()
		return netip.PrefixFrom(a, a.BitLen()), nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	return p.Masked(), nil
}

// decodePrefixList decodes a list of prefixes, one diagnostic per bad element.
func decodePrefixList(attr *hcl.Attribute) ([]netip.Prefix, hcl.Diagnostics) {
	items, diags := decodeStringList(attr)
	if diags.HasErrors() {
		return nil, diags
	}
	var out []netip.Prefix
	for _, it := range items {
		p, err := parsePrefix(it.s)
		if err != nil {
			diags = append(diags, errorAt(it.rng, "Invalid address prefix",
				fmt.Sprintf("%s: %v.", attr.Name, err)))
			continue
		}
		out = appendPrefix(out, p)
	}
	return out, diags
}

// appendPrefix appends p unless it is already present.
func appendPrefix(ps []netip.Prefix, p netip.Prefix) []netip.Prefix {
	for _, q := range ps {
		if q == p {
			return ps
		}
	}
	return append(ps, p)
}

// hostPrefix is a as a single-host prefix (/32 or /128).
func hostPrefix(a netip.Addr) netip.Prefix {
	return netip.PrefixFrom(a, a.BitLen())
}

// parsePortRange parses "min-max".
func parsePortRange(s string) (lo, hi int, err error) {
	a, b, ok := strings.Cut(s, "-")
	if !ok {
		return 0, 0, fmt.Errorf("%q is not \"min-max\", such as \"20000-29999\"", s)
	}
	lo, err = strconv.Atoi(strings.TrimSpace(a))
	if err != nil {
		return 0, 0, fmt.Errorf("%q is not \"min-max\": first port is not a number", s)
	}
	hi, err = strconv.Atoi(strings.TrimSpace(b))
	if err != nil {
		return 0, 0, fmt.Errorf("%q is not \"min-max\": second port is not a number", s)
	}
	return lo, hi, nil
}

// portPairs counts the RTP/RTCP pairs (even port p and p+1) inside [lo, hi].
func portPairs(lo, hi int) int {
	first := lo + lo%2
	if hi-1 < first {
		return 0
	}
	return (hi-1-first)/2 + 1
}

// validName reports whether s can name a zone or peer. Names show up in log
// keys and metrics labels, so they stay plain: a letter or digit, then
// letters, digits, '.', '_' or '-'.
func validName(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case isAlnum(c):
		case i > 0 && (c == '.' || c == '_' || c == '-'):
		default:
			return false
		}
	}
	return true
}

func isAlnum(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9'
}

// validHost reports whether s can be a host in a SIP URI: an IP address or a
// domain name (RFC 1123 labels, optional trailing dot).
func validHost(s string) bool {
	if a, err := netip.ParseAddr(s); err == nil {
		return a.Zone() == ""
	}
	s = strings.TrimSuffix(s, ".")
	if s == "" || len(s) > 253 {
		return false
	}
	for _, label := range strings.Split(s, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for i := 0; i < len(label); i++ {
			if !isAlnum(label[i]) && label[i] != '-' {
				return false
			}
		}
	}
	return true
}

// validToken reports whether s is an RFC 3261 §25.1 token, the syntax of a
// header name.
func validToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if isAlnum(c) || strings.IndexByte("-.!%*_+`'~", c) >= 0 {
			continue
		}
		return false
	}
	return true
}

// managedHeaders are rewritten by the B2BUA on every message (dialog
// identity, routing, body framing), so listing one in keep_headers would
// promise a pass-through that cannot happen. Keys are lowercase; compact
// forms (RFC 3261 §7.3.3) map to the full name.
var managedHeaders = map[string]string{
	"via": "Via", "v": "Via",
	"from": "From", "f": "From",
	"to": "To", "t": "To",
	"call-id": "Call-ID", "i": "Call-ID",
	"cseq":    "CSeq",
	"contact": "Contact", "m": "Contact",
	"route":          "Route",
	"record-route":   "Record-Route",
	"max-forwards":   "Max-Forwards",
	"content-length": "Content-Length", "l": "Content-Length",
	"content-type": "Content-Type", "c": "Content-Type",
}

// validText reports whether s is printable header text: no control
// characters, so it cannot break a SIP message apart, and valid UTF-8.
func validText(s string) bool {
	if !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			return false
		}
	}
	return true
}

// logLevels are the hclog levels an operator may choose.
var logLevels = []string{"trace", "debug", "info", "warn", "error"}

// transports are the SIP transports the SBC implements.
var transports = []string{"udp", "tcp"}
