package config

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/gohcl"
	"github.com/hashicorp/hcl/v2/hclparse"
	"github.com/hashicorp/hcl/v2/hclsyntax"
)

// parse is Parse with a switch for the whole-file checks. With whole false
// it checks a fragment (as the README examples are): every block and value
// on its own, but not that zone, pbx and trunk blocks exist nor that a peer's
// zone is defined in the same text.
func parse(filename string, src []byte, whole bool) (*Config, hcl.Diagnostics) {
	file, diags := hclparse.NewParser().ParseHCL(src, filename)
	if file == nil || diags.HasErrors() {
		// Decoding a body with syntax errors only adds noise that
		// disappears once the syntax is fixed.
		return nil, diags
	}
	var raw rawFile
	diags = append(diags, gohcl.DecodeBody(file.Body, nil, &raw)...)
	b := &builder{whole: whole, fileStart: file.Body.MissingItemRange(), blockCount: map[string]int{}}
	if body, ok := file.Body.(*hclsyntax.Body); ok {
		// Count blocks as written, including ones gohcl rejected (a bad
		// label), so a broken pbx block is not also reported as missing.
		for _, blk := range body.Blocks {
			b.blockCount[blk.Type]++
		}
	}
	cfg := b.build(&raw)
	diags = append(diags, b.diags...)
	sortDiagnostics(diags)
	if diags.HasErrors() {
		return nil, diags
	}
	return cfg, diags
}

// sortDiagnostics orders diagnostics by source position, so an operator
// reads them top to bottom and repeated runs print the same output (gohcl
// visits block types in map order). Diagnostics without a Subject go first.
func sortDiagnostics(diags hcl.Diagnostics) {
	sort.SliceStable(diags, func(i, j int) bool {
		a, b := diags[i].Subject, diags[j].Subject
		switch {
		case a == nil || b == nil:
			return a == nil && b != nil
		case a.Filename != b.Filename:
			return a.Filename < b.Filename
		default:
			return a.Start.Byte < b.Start.Byte
		}
	})
}

// builder validates the decoded raw structs and assembles a Config. It keeps
// going after an error so that one run reports every problem; a value that
// failed to decode is simply left out of the checks that depend on it.
type builder struct {
	whole      bool
	fileStart  hcl.Range
	blockCount map[string]int // top-level blocks in the source, by type
	diags      hcl.Diagnostics
}

// zoneDef is a zone block being validated. The ok flags say which values
// decoded cleanly and may take part in cross-block checks.
type zoneDef struct {
	raw          *rawZone
	zone         Zone
	addrOK       bool
	portOK       bool
	transportsOK bool
	deviceOK     bool
}

// peerDef is a pbx or trunk block being validated.
type peerDef struct {
	raw         *rawPeer
	peer        Peer
	zoneOK      bool
	addrOK      bool
	transportOK bool
	extra       []netip.Prefix // sources beyond the peer's own address
}

// mediaDef is the media block being validated.
type mediaDef struct {
	media     Media
	rangeAttr *hcl.Attribute // nil when port_range is defaulted
	rangeOK   bool
	pinAttr   *hcl.Attribute // nil when pinhole_zones is defaulted
}

// add records diagnostics and reports whether they were free of errors.
func (b *builder) add(diags hcl.Diagnostics) bool {
	b.diags = append(b.diags, diags...)
	return !diags.HasErrors()
}

func (b *builder) errorf(rng hcl.Range, summary, format string, args ...any) {
	b.diags = append(b.diags, errorAt(rng, summary, fmt.Sprintf(format, args...)))
}

// at renders a range as "file:line", for details that mention another block.
func at(rng hcl.Range) string {
	return fmt.Sprintf("%s:%d", rng.Filename, rng.Start.Line)
}

func (b *builder) build(raw *rawFile) *Config {
	zones := b.zones(raw.Zones)
	peers := b.peers(raw.PBXs, raw.Trunks, zones)
	media := b.media(raw.Media)
	sip := b.sip(raw.SIP)
	log := b.log(raw.Log)

	b.checkZoneAddresses(zones)
	b.checkPeerAddresses(peers, zones)
	b.checkPeerTransports(peers, zones)
	b.checkMediaPorts(media, zones)
	media.media.PinholeZones = b.pinholeZones(media.pinAttr, zones, peers)
	b.checkDevices(zones)
	if b.whole {
		b.checkComplete(raw)
	}

	cfg := &Config{Media: media.media, SIP: sip, Log: log, Security: Security{
		Allow:       b.allow(raw.Allow),
		RateLimits:  b.rateLimits(raw.RateLimits, zones),
		BanPolicies: b.banPolicies(raw.BanPolicies),
		StateDir:    b.stateDir(raw.StateDir),
		IPv6Prefix:  b.ipv6Prefix(raw.IPv6Prefix),
	}}
	cfg.Access = b.access(raw.Access, zones, peers)
	for _, p := range peers {
		cfg.Peers = append(cfg.Peers, p.finish())
	}
	for _, z := range zones {
		cfg.Zones = append(cfg.Zones, z.finish(cfg.Peers))
	}
	return cfg
}

func (b *builder) zones(raws []*rawZone) []*zoneDef {
	var defs []*zoneDef
	first := map[string]*zoneDef{}
	for _, rz := range raws {
		if rz == nil {
			continue
		}
		d := &zoneDef{raw: rz, zone: Zone{Name: rz.Name, SIPPort: DefaultSIPPort}, portOK: true, transportsOK: true}
		defs = append(defs, d)

		if !validName(rz.Name) {
			b.errorf(rz.NameRange, "Invalid zone name",
				"Zone name %q must start with a letter or digit and contain only letters, digits, '.', '_' or '-' (at most 64).", rz.Name)
		}
		if f, dup := first[rz.Name]; dup {
			b.errorf(rz.NameRange, "Duplicate zone name",
				"A zone named %q is already defined at %s. Zone names must be unique.", rz.Name, at(f.raw.NameRange))
		} else {
			first[rz.Name] = d
		}

		if rz.Address == nil {
			b.errorf(rz.DefRange, "Missing required argument",
				"Zone %q needs address = \"<the SBC's IP address in this zone>\".", rz.Name)
		} else {
			a, diags := decodeAddr(rz.Address)
			d.zone.Address, d.addrOK = a, b.add(diags)
		}

		if rz.SIPPort != nil {
			p, diags := decodePort(rz.SIPPort)
			d.zone.SIPPort, d.portOK = p, b.add(diags)
		}

		if rz.Advertise != nil {
			a, diags := decodeAddr(rz.Advertise)
			if b.add(diags) {
				d.zone.Advertise = a
				if d.addrOK && a.Is4() != d.zone.Address.Is4() {
					b.errorf(rz.Advertise.Expr.Range(), "Address family mismatch",
						"advertise %v and address %v must both be IPv4 or both IPv6; the advertised address replaces address in SIP and SDP.",
						a, d.zone.Address)
				}
			}
		}

		if rz.Networks != nil {
			ps, diags := decodePrefixList(rz.Networks)
			if b.add(diags) {
				if len(ps) == 0 {
					b.errorf(rz.Networks.Expr.Range(), "Empty networks",
						"networks must list at least one prefix; remove the argument to use the default (the zone address and its peers).")
				}
				d.zone.Networks = ps
			}
		}

		if rz.Transports != nil {
			ts, ok := b.transportList(rz.Transports)
			d.zone.Transports, d.transportsOK = ts, ok
		}
		b.zoneDevice(d)
	}
	return defs
}

// zoneDevice checks the keys that let the appliance configure the zone's
// network interface: device, mac, prefix_length and gateway. The last three
// mean nothing without device.
func (b *builder) zoneDevice(d *zoneDef) {
	rz := d.raw
	if rz.Device == nil {
		for _, attr := range []*hcl.Attribute{rz.MAC, rz.PrefixLen, rz.Gateway} {
			if attr != nil {
				b.errorf(attr.NameRange, "Argument needs device",
					"%s configures the zone's network interface; name that interface with device = \"<name>\" in zone %q.", attr.Name, rz.Name)
			}
		}
		return
	}
	if s, diags := decodeString(rz.Device); b.add(diags) {
		if err := checkDeviceName(s); err != nil {
			b.errorf(rz.Device.Expr.Range(), "Invalid device name", "device: %v.", err)
		} else {
			d.zone.Device, d.deviceOK = s, true
		}
	}
	if rz.MAC != nil {
		if s, diags := decodeString(rz.MAC); b.add(diags) {
			mac, err := net.ParseMAC(strings.TrimSpace(s))
			switch {
			case err != nil:
				b.errorf(rz.MAC.Expr.Range(), "Invalid MAC address",
					"mac: %q is not a MAC address; write six hex bytes such as \"52:54:00:12:34:56\".", s)
			case len(mac) != 6:
				b.errorf(rz.MAC.Expr.Range(), "Invalid MAC address",
					"mac: %q is not an Ethernet (6-byte) MAC address.", s)
			case mac[0]&1 == 1:
				b.errorf(rz.MAC.Expr.Range(), "Invalid MAC address",
					"mac: %s is a multicast address; no interface has it.", mac)
			default:
				d.zone.MAC = mac
			}
		}
	}
	if rz.PrefixLen != nil {
		hi := 128
		if d.addrOK && d.zone.Address.Is4() {
			hi = 32
		}
		if n, diags := decodeInt(rz.PrefixLen, 1, hi, "Prefix length out of range"); b.add(diags) {
			d.zone.PrefixLength = n
		}
	} else if d.addrOK {
		d.zone.PrefixLength = DefaultPrefixLength6
		if d.zone.Address.Is4() {
			d.zone.PrefixLength = DefaultPrefixLength4
		}
	}
	if rz.Gateway != nil {
		if a, diags := decodeAddr(rz.Gateway); b.add(diags) {
			switch {
			case !d.addrOK:
			case a.Is4() != d.zone.Address.Is4():
				b.errorf(rz.Gateway.Expr.Range(), "Address family mismatch",
					"gateway %v and address %v must both be IPv4 or both IPv6.", a, d.zone.Address)
			case a == d.zone.Address:
				b.errorf(rz.Gateway.Expr.Range(), "Invalid gateway",
					"gateway %v is the zone's own address; give the next-hop router.", a)
			case d.zone.PrefixLength > 0 && !netip.PrefixFrom(d.zone.Address, d.zone.PrefixLength).Masked().Contains(a):
				b.errorf(rz.Gateway.Expr.Range(), "Gateway not on link",
					"gateway %v is outside %v/%d, the zone's on-link network; the next hop must be reachable on device %q.",
					a, d.zone.Address, d.zone.PrefixLength, d.zone.Device)
			default:
				d.zone.Gateway = a
			}
		}
	}
}

// checkDeviceName applies the kernel's rules for interface names
// (dev_valid_name): 1 to 15 bytes, not "." or "..", no '/', ':' or white
// space.
func checkDeviceName(s string) error {
	switch {
	case s == "":
		return fmt.Errorf("the name is empty")
	case len(s) > maxDeviceName:
		return fmt.Errorf("%q is longer than %d bytes", s, maxDeviceName)
	case s == "." || s == "..":
		return fmt.Errorf("%q is not a usable name", s)
	}
	for _, r := range s {
		if r == '/' || r == ':' || r <= ' ' || r == 0x7f || r > 0x7e {
			return fmt.Errorf("%q contains %q; use letters, digits, '-', '_' or '.'", s, r)
		}
	}
	return nil
}

// checkDevices rejects network setups that cannot all hold at once: one MAC
// for two device names, two MACs for one device name, and more than one
// default route per address family.
func (b *builder) checkDevices(zones []*zoneDef) {
	macOf := map[string]*zoneDef{} // device → first zone naming it with a mac
	devOf := map[string]*zoneDef{} // mac → first zone using it
	gateway := map[bool]*zoneDef{} // Is4 → first zone with a gateway
	for _, z := range zones {
		if !z.deviceOK {
			continue
		}
		if z.zone.MAC != nil {
			mac := z.zone.MAC.String()
			if f, ok := devOf[mac]; ok && f.zone.Device != z.zone.Device {
				b.errorf(z.raw.MAC.Expr.Range(), "MAC address used twice",
					"Zone %q (%s) already gives mac %s to device %q; one interface cannot have two names.",
					f.raw.Name, at(f.raw.DefRange), mac, f.zone.Device)
			} else if !ok {
				devOf[mac] = z
			}
			if f, ok := macOf[z.zone.Device]; ok && f.zone.MAC.String() != mac {
				b.errorf(z.raw.MAC.Expr.Range(), "Conflicting MAC addresses",
					"Zone %q (%s) names device %q with mac %s; one device name cannot stand for two interfaces.",
					f.raw.Name, at(f.raw.DefRange), z.zone.Device, f.zone.MAC)
			} else if !ok {
				macOf[z.zone.Device] = z
			}
		}
		if z.zone.Gateway.IsValid() {
			is4 := z.zone.Gateway.Is4()
			if f, ok := gateway[is4]; ok {
				b.errorf(z.raw.Gateway.Expr.Range(), "Second default route",
					"Zone %q (%s) already sets the default gateway %v; only one zone may set gateway per address family.",
					f.raw.Name, at(f.raw.DefRange), f.zone.Gateway)
			} else {
				gateway[is4] = z
			}
		}
	}
}

// transportList decodes and checks a zone's transports.
func (b *builder) transportList(attr *hcl.Attribute) ([]string, bool) {
	items, diags := decodeStringList(attr)
	if !b.add(diags) {
		return nil, false
	}
	if len(items) == 0 {
		b.errorf(attr.Expr.Range(), "Empty transports",
			"transports must list at least one of %s.", quoteList(transports))
		return nil, false
	}
	ok := true
	var out []string
	for _, it := range items {
		t := strings.ToLower(strings.TrimSpace(it.s))
		switch {
		case !slices.Contains(transports, t):
			b.errorf(it.rng, "Unsupported transport",
				"Transport %q is not supported; use %s.", it.s, quoteList(transports))
			ok = false
		case slices.Contains(out, t):
			b.errorf(it.rng, "Duplicate transport", "Transport %q is listed twice.", it.s)
			ok = false
		default:
			out = append(out, t)
		}
	}
	return out, ok
}

func (b *builder) peers(pbxs, trunks []*rawPeer, zones []*zoneDef) []*peerDef {
	var raws []*rawPeer
	for _, r := range pbxs {
		if r != nil {
			r.kind = PeerPBX
			raws = append(raws, r)
		}
	}
	for _, r := range trunks {
		if r != nil {
			r.kind = PeerTrunk
			raws = append(raws, r)
		}
	}
	// gohcl groups blocks by type; restore the file order.
	sort.SliceStable(raws, func(i, j int) bool {
		return raws[i].DefRange.Start.Byte < raws[j].DefRange.Start.Byte
	})

	var zoneNames []string
	for _, z := range zones {
		if !slices.Contains(zoneNames, z.zone.Name) {
			zoneNames = append(zoneNames, z.zone.Name)
		}
	}

	var defs []*peerDef
	first := map[string]*peerDef{}
	for _, rp := range raws {
		d := &peerDef{raw: rp, peer: Peer{Name: rp.Name, Kind: rp.kind}, transportOK: true}
		defs = append(defs, d)

		if !validName(rp.Name) {
			b.errorf(rp.NameRange, "Invalid "+string(rp.kind)+" name",
				"Name %q must start with a letter or digit and contain only letters, digits, '.', '_' or '-' (at most 64).", rp.Name)
		}
		if f, dup := first[rp.Name]; dup {
			b.errorf(rp.NameRange, "Duplicate peer name",
				"A %s named %q is already defined at %s. Names must be unique across pbx and trunk blocks.",
				f.peer.Kind, rp.Name, at(f.raw.NameRange))
		} else {
			first[rp.Name] = d
		}

		if rp.Zone == nil {
			b.errorf(rp.DefRange, "Missing required argument",
				"%s %q needs zone = \"<name of a zone block>\"; defined zones: %s.", rp.kind, rp.Name, zoneList(zoneNames))
		} else if z, diags := decodeString(rp.Zone); b.add(diags) {
			d.peer.Zone = z
			switch {
			case slices.Contains(zoneNames, z):
				d.zoneOK = true
			case b.whole:
				b.errorf(rp.Zone.Expr.Range(), "Unknown zone",
					"No zone block is named %q; defined zones: %s.", z, zoneList(zoneNames))
			}
		}

		if rp.Address == nil {
			b.errorf(rp.DefRange, "Missing required argument",
				"%s %q needs address = \"<ip>:<port>\".", rp.kind, rp.Name)
		} else {
			ap, diags := decodeAddrPort(rp.Address)
			d.peer.Address, d.addrOK = ap, b.add(diags)
		}

		if rp.Host != nil {
			if h, diags := decodeString(rp.Host); b.add(diags) {
				if validHost(h) {
					d.peer.Host = h
				} else {
					b.errorf(rp.Host.Expr.Range(), "Invalid host",
						"host %q is neither a domain name nor an IP address.", h)
				}
			}
		}

		if rp.Transport != nil {
			if t, diags := decodeString(rp.Transport); b.add(diags) {
				t = strings.ToLower(strings.TrimSpace(t))
				if slices.Contains(transports, t) {
					d.peer.Transport = t
				} else {
					d.transportOK = false
					b.errorf(rp.Transport.Expr.Range(), "Unsupported transport",
						"Transport %q is not supported; use %s.", t, quoteList(transports))
				}
			} else {
				d.transportOK = false
			}
		}

		if rp.KeepHeaders != nil {
			d.peer.KeepHeaders = b.keepHeaders(rp.KeepHeaders)
		}

		b.sessionTimer(d)
		d.peer.Refer = DefaultRefer
		if rp.Refer != nil {
			if m, diags := decodeString(rp.Refer); b.add(diags) {
				m = strings.ToLower(strings.TrimSpace(m))
				if modes := []string{ReferTerminate, ReferPass, ReferReject}; slices.Contains(modes, m) {
					d.peer.Refer = m
				} else {
					b.errorf(rp.Refer.Expr.Range(), "Invalid refer mode",
						"refer %q is not one of %s.", m, quoteList(modes))
				}
			}
		}

		b.offer(d)

		if rp.Sources != nil {
			ps, diags := decodePrefixList(rp.Sources)
			if b.add(diags) {
				d.extra = ps
			}
		}
	}
	return defs
}

// offer decodes offer and codecs of a peer: a mode, and a list of codecs
// the SBC can offer, without repeats and with an audio codec besides
// telephone-event.
func (b *builder) offer(d *peerDef) {
	rp := d.raw
	d.peer.Offer = DefaultOffer
	if rp.Offer != nil {
		if m, diags := decodeString(rp.Offer); b.add(diags) {
			m = strings.ToLower(strings.TrimSpace(m))
			if modes := []string{OfferPass, OfferEarly}; slices.Contains(modes, m) {
				d.peer.Offer = m
			} else {
				b.errorf(rp.Offer.Expr.Range(), "Invalid offer mode",
					"offer %q is not one of %s.", m, quoteList(modes))
			}
		}
	}
	if rp.Codecs == nil {
		return
	}
	items, diags := decodeStringList(rp.Codecs)
	if !b.add(diags) {
		return
	}
	var out []string
	seen := map[string]hcl.Range{}
	audio, ok := false, true
	for _, it := range items {
		i := slices.IndexFunc(OfferCodecs, func(c string) bool { return strings.EqualFold(c, strings.TrimSpace(it.s)) })
		if i < 0 {
			b.errorf(it.rng, "Unknown codec",
				"codec %q is not one the SBC can offer; use %s.", it.s, quoteList(OfferCodecs))
			ok = false
			continue
		}
		name := OfferCodecs[i]
		if first, dup := seen[name]; dup {
			b.errorf(it.rng, "Duplicate codec", "%q is already listed at %s.", name, at(first))
			ok = false
			continue
		}
		seen[name] = it.rng
		audio = audio || name != "telephone-event"
		out = append(out, name)
	}
	if ok && !audio {
		b.errorf(rp.Codecs.Expr.Range(), "No audio codec",
			"codecs must list an audio codec besides telephone-event; use some of %s.", quoteList(OfferCodecs[:5]))
		return
	}
	if ok {
		d.peer.Codecs = out
	}
}

// sessionTimer decodes session_expires and min_se of a peer: whole
// seconds (they go on the wire as delta-seconds), session_expires "0s"
// for off, else at least min_se.
func (b *builder) sessionTimer(d *peerDef) {
	rp := d.raw
	d.peer.SessionExpires, d.peer.MinSE = DefaultSessionExpires, DefaultMinSE
	whole := func(attr *hcl.Attribute, allowZero bool) (time.Duration, bool) {
		v, diags := decodeDuration(attr, allowZero)
		if !b.add(diags) {
			return 0, false
		}
		if v%time.Second != 0 {
			b.errorf(attr.Expr.Range(), "Duration out of range",
				"%s must be whole seconds (it is sent as delta-seconds), got %v.", attr.Name, v)
			return 0, false
		}
		return v, true
	}
	minOK, seOK := true, true
	if rp.MinSE != nil {
		d.peer.MinSE, minOK = whole(rp.MinSE, false)
	}
	if rp.SessionExpires != nil {
		d.peer.SessionExpires, seOK = whole(rp.SessionExpires, true)
	}
	if minOK && seOK && d.peer.SessionExpires != 0 && d.peer.SessionExpires < d.peer.MinSE {
		rng := rp.DefRange
		if rp.SessionExpires != nil {
			rng = rp.SessionExpires.Expr.Range()
		}
		b.errorf(rng, "Session interval below Min-SE",
			"session_expires %v is shorter than min_se %v; raise it, lower min_se, or set \"0s\" to turn session timers off.",
			d.peer.SessionExpires, d.peer.MinSE)
	}
}

// keepHeaders decodes and checks a keep_headers list.
func (b *builder) keepHeaders(attr *hcl.Attribute) []string {
	items, diags := decodeStringList(attr)
	if !b.add(diags) {
		return nil
	}
	var out []string
	seen := map[string]hcl.Range{}
	for _, it := range items {
		name := strings.TrimSpace(it.s)
		lower := strings.ToLower(name)
		if !validToken(name) {
			b.errorf(it.rng, "Invalid header name",
				"%q is not a SIP header name (RFC 3261 token: letters, digits and -.!%%*_+`'~).", it.s)
			continue
		}
		if full, ok := managedHeaders[lower]; ok {
			b.errorf(it.rng, "Header cannot be kept",
				"The SBC rewrites %s on every message it forwards; it cannot pass through.", full)
			continue
		}
		if prev, dup := seen[lower]; dup {
			b.errorf(it.rng, "Duplicate header name",
				"%q is already listed at %s:%d:%d.", name, prev.Filename, prev.Start.Line, prev.Start.Column)
			continue
		}
		seen[lower] = it.rng
		out = append(out, name)
	}
	return out
}

func (b *builder) media(raw *rawMedia) mediaDef {
	d := mediaDef{media: Media{
		PortMin:       DefaultMediaPortMin,
		PortMax:       DefaultMediaPortMax,
		Timeout:       DefaultMediaTimeout,
		Quarantine:    DefaultQuarantine,
		KernelOffload: true,
	}, rangeOK: true}
	if raw == nil {
		return d
	}
	if raw.PortRange != nil {
		d.rangeAttr = raw.PortRange
		d.rangeOK = false
		if s, diags := decodeString(raw.PortRange); b.add(diags) {
			rng := raw.PortRange.Expr.Range()
			lo, hi, err := parsePortRange(s)
			switch {
			case err != nil:
				b.errorf(rng, "Invalid port range", "port_range: %v.", err)
			case lo < minMediaPort || lo > maxPort || hi < minMediaPort || hi > maxPort:
				b.errorf(rng, "Port out of range",
					"Both ends of port_range must be between %d and %d, got %d-%d.", minMediaPort, maxPort, lo, hi)
			case lo >= hi:
				b.errorf(rng, "Invalid port range",
					"port_range minimum %d must be below its maximum %d.", lo, hi)
			case portPairs(lo, hi) < minMediaPortPairs:
				b.errorf(rng, "Port range too small",
					"port_range %d-%d holds %d RTP/RTCP port pair(s) (even port and the next odd one); at least %d are needed.",
					lo, hi, portPairs(lo, hi), minMediaPortPairs)
			default:
				d.media.PortMin, d.media.PortMax, d.rangeOK = lo, hi, true
			}
		}
	}
	if raw.Timeout != nil {
		if t, diags := decodeDuration(raw.Timeout, false); b.add(diags) {
			d.media.Timeout = t
		}
	}
	if raw.Quarantine != nil {
		if q, diags := decodeDuration(raw.Quarantine, true); b.add(diags) {
			d.media.Quarantine = q
		}
	}
	if raw.Offload != nil {
		if v, diags := decodeBool(raw.Offload); b.add(diags) {
			d.media.KernelOffload = v
		}
	}
	if raw.Keep != nil {
		if v, diags := decodeBool(raw.Keep); b.add(diags) {
			d.media.KeepOnRestart = v
		}
	}
	d.pinAttr = raw.Pinholes
	return d
}

// pinholeZones checks media.pinhole_zones against the zone blocks, or
// names every zone that has a trunk when it is not set.
func (b *builder) pinholeZones(attr *hcl.Attribute, zones []*zoneDef, peers []*peerDef) []string {
	var names []string
	for _, z := range zones {
		names = append(names, z.zone.Name)
	}
	if attr == nil {
		var out []string
		for _, z := range zones {
			for _, p := range peers {
				if p.peer.Kind == PeerTrunk && p.zoneOK && p.peer.Zone == z.zone.Name {
					out = append(out, z.zone.Name)
					break
				}
			}
		}
		return out
	}
	items, diags := decodeStringList(attr)
	if !b.add(diags) {
		return nil
	}
	out := []string{} // set but empty: no zone is closed
	seen := map[string]hcl.Range{}
	for _, it := range items {
		switch prev, dup := seen[it.s]; {
		case b.whole && !slices.Contains(names, it.s):
			b.errorf(it.rng, "Unknown zone", "No zone block is named %q; defined zones: %s.", it.s, zoneList(names))
		case dup:
			b.errorf(it.rng, "Duplicate zone name", "%q is already listed at %s:%d:%d.", it.s, prev.Filename, prev.Start.Line, prev.Start.Column)
		default:
			seen[it.s] = it.rng
			out = append(out, it.s)
		}
	}
	return out
}

func (b *builder) sip(raw *rawSIP) SIP {
	s := SIP{
		UserAgent:      DefaultUserAgent,
		MaxMessageSize: DefaultMaxMessageSize,
		InviteTimeout:  DefaultInviteTimeout,
		MaxCalls:       DefaultMaxCalls,
	}
	if raw == nil {
		return s
	}
	if raw.UserAgent != nil {
		if ua, diags := decodeString(raw.UserAgent); b.add(diags) {
			switch {
			case strings.TrimSpace(ua) == "":
				b.errorf(raw.UserAgent.Expr.Range(), "Invalid user agent", "user_agent must not be empty.")
			case len(ua) > maxUserAgentLength:
				b.errorf(raw.UserAgent.Expr.Range(), "Invalid user agent",
					"user_agent is %d bytes long; at most %d are allowed.", len(ua), maxUserAgentLength)
			case !validText(ua):
				b.errorf(raw.UserAgent.Expr.Range(), "Invalid user agent",
					"user_agent must be valid UTF-8 without control characters such as line breaks.")
			default:
				s.UserAgent = ua
			}
		}
	}
	if raw.MaxMessageSize != nil {
		if n, diags := decodeInt(raw.MaxMessageSize, minMaxMessageSize, maxMaxMessageSize, "Message size out of range"); b.add(diags) {
			s.MaxMessageSize = n
		}
	}
	if raw.InviteTimeout != nil {
		if t, diags := decodeDuration(raw.InviteTimeout, false); b.add(diags) {
			s.InviteTimeout = t
		}
	}
	if raw.MaxCalls != nil {
		if n, diags := decodeInt(raw.MaxCalls, 1, 1_000_000, "Call limit out of range"); b.add(diags) {
			s.MaxCalls = n
		}
	}
	return s
}

func (b *builder) log(raw *rawLog) Log {
	l := Log{Level: DefaultLogLevel}
	if raw == nil || raw.Level == nil {
		return l
	}
	if lv, diags := decodeString(raw.Level); b.add(diags) {
		lv = strings.ToLower(strings.TrimSpace(lv))
		if slices.Contains(logLevels, lv) {
			l.Level = lv
		} else {
			b.errorf(raw.Level.Expr.Range(), "Invalid log level",
				"Log level %q is not one of %s.", lv, quoteList(logLevels))
		}
	}
	return l
}

// checkZoneAddresses rejects two zones listening on the same address and
// port: a message arriving there could not be assigned to a zone.
func (b *builder) checkZoneAddresses(zones []*zoneDef) {
	first := map[netip.AddrPort]*zoneDef{}
	for _, z := range zones {
		if !z.addrOK || !z.portOK {
			continue
		}
		ap := netip.AddrPortFrom(z.zone.Address, uint16(z.zone.SIPPort))
		if f, dup := first[ap]; dup {
			b.errorf(z.raw.Address.Expr.Range(), "Duplicate zone address",
				"Zone %q (%s) already listens on %v; each zone needs its own address or sip_port.",
				f.zone.Name, at(f.raw.DefRange), ap)
			continue
		}
		first[ap] = z
	}
}

// checkPeerAddresses rejects a peer whose address is one of the SBC's own
// SIP addresses (a request sent there would loop back into the SBC), and two
// peers in one zone with the same address and transport (the SBC could not
// tell which one a message came from).
func (b *builder) checkPeerAddresses(peers []*peerDef, zones []*zoneDef) {
	first := map[string]*peerDef{}
	for _, p := range peers {
		if !p.addrOK {
			continue
		}
		rng := p.raw.Address.Expr.Range()
		for _, z := range zones {
			if !z.addrOK || !z.portOK {
				continue
			}
			port := uint16(z.zone.SIPPort)
			own := netip.AddrPortFrom(z.zone.Address, port)
			adv := netip.AddrPortFrom(z.zone.Advertise, port)
			if p.peer.Address == own || (z.zone.Advertise.IsValid() && p.peer.Address == adv) {
				b.errorf(rng, "Peer address is the SBC's own",
					"%s %q address %v is a SIP address of zone %q (%s); requests to it would loop back into the SBC.",
					p.peer.Kind, p.peer.Name, p.peer.Address, z.zone.Name, at(z.raw.DefRange))
			}
		}
		if !p.zoneOK || !p.transportOK {
			continue
		}
		key := fmt.Sprintf("%s|%v|%s", p.peer.Zone, p.peer.Address, p.transport())
		if f, dup := first[key]; dup {
			b.errorf(rng, "Duplicate peer address",
				"%s %q (%s) already uses %v over %s in zone %q; the SBC could not tell the two apart.",
				f.peer.Kind, f.peer.Name, at(f.raw.DefRange), p.peer.Address, p.transport(), p.peer.Zone)
			continue
		}
		first[key] = p
	}
}

// checkPeerTransports rejects a peer whose transport its zone does not
// listen on: replies and requests from that peer would have nowhere to land.
func (b *builder) checkPeerTransports(peers []*peerDef, zones []*zoneDef) {
	for _, p := range peers {
		if !p.zoneOK || !p.transportOK {
			continue
		}
		z := findZone(zones, p.peer.Zone)
		if z == nil || !z.transportsOK {
			continue
		}
		ts := z.transports()
		if slices.Contains(ts, p.transport()) {
			continue
		}
		rng := p.raw.DefRange
		how := "the default"
		if p.raw.Transport != nil {
			rng, how = p.raw.Transport.Expr.Range(), "set"
		}
		b.errorf(rng, "Transport not available in zone",
			"%s %q uses transport %q (%s) but zone %q listens only on %s; set transport or add it to the zone's transports.",
			p.peer.Kind, p.peer.Name, p.transport(), how, z.zone.Name, quoteList(ts))
	}
}

// checkMediaPorts rejects a SIP port inside the media port range: the relay
// binds media ports on the zone addresses and would collide with SIP. An
// explicit port_range gets one diagnostic naming every zone it hits;
// otherwise each offending sip_port gets its own.
func (b *builder) checkMediaPorts(m mediaDef, zones []*zoneDef) {
	if !m.rangeOK {
		return
	}
	var hits []string
	for _, z := range zones {
		if !z.portOK || z.zone.SIPPort < m.media.PortMin || z.zone.SIPPort > m.media.PortMax {
			continue
		}
		if m.rangeAttr != nil {
			hits = append(hits, fmt.Sprintf("zone %q (sip_port %d)", z.zone.Name, z.zone.SIPPort))
			continue
		}
		rng := z.raw.DefRange
		if z.raw.SIPPort != nil {
			rng = z.raw.SIPPort.Expr.Range()
		}
		b.errorf(rng, "SIP port inside media port range",
			"Zone %q listens for SIP on port %d, inside media port_range %d-%d; move one of them.",
			z.zone.Name, z.zone.SIPPort, m.media.PortMin, m.media.PortMax)
	}
	if len(hits) > 0 {
		b.errorf(m.rangeAttr.Expr.Range(), "SIP port inside media port range",
			"Media port_range %d-%d contains the SIP port of %s; move one of them.",
			m.media.PortMin, m.media.PortMax, strings.Join(hits, ", "))
	}
}

// checkComplete requires the blocks a running SBC needs: a zone, and a pbx
// and a trunk to route between. Blocks that are present but invalid have
// their own diagnostics, so they count here.
func (b *builder) checkComplete(raw *rawFile) {
	if len(raw.Zones) == 0 && b.blockCount["zone"] == 0 {
		b.errorf(b.fileStart, "No zone defined",
			"The file needs at least one zone block, such as: zone \"private\" { address = \"10.0.0.1\" }.")
	}
	if len(raw.PBXs) == 0 && b.blockCount["pbx"] == 0 {
		b.errorf(b.fileStart, "No pbx defined",
			"The file needs at least one pbx block: calls from trunks are routed to a pbx.")
	}
	if len(raw.Trunks) == 0 && b.blockCount["trunk"] == 0 {
		b.errorf(b.fileStart, "No trunk defined",
			"The file needs at least one trunk block: calls from a pbx are routed to a trunk.")
	}
}

func findZone(zones []*zoneDef, name string) *zoneDef {
	for _, z := range zones {
		if z.zone.Name == name {
			return z
		}
	}
	return nil
}

// transport is the peer's transport with the default applied.
func (p *peerDef) transport() string {
	if p.peer.Transport == "" {
		return DefaultTransport
	}
	return p.peer.Transport
}

// transports are the zone's transports with the default applied.
func (z *zoneDef) transports() []string {
	if len(z.zone.Transports) == 0 {
		return []string{DefaultTransport}
	}
	return z.zone.Transports
}

// finish applies the peer defaults. Called only on the way to a Config.
func (p *peerDef) finish() Peer {
	out := p.peer
	out.Transport = p.transport()
	if out.Host == "" && out.Address.IsValid() {
		out.Host = out.Address.Addr().String()
	}
	if out.Address.IsValid() {
		out.Sources = []netip.Prefix{hostPrefix(out.Address.Addr())}
	}
	for _, s := range p.extra {
		out.Sources = appendPrefix(out.Sources, s)
	}
	return out
}

// finish applies the zone defaults; peers must already be finished.
func (z *zoneDef) finish(peers []Peer) Zone {
	out := z.zone
	out.Transports = slices.Clone(z.transports())
	if len(out.Networks) == 0 && out.Address.IsValid() {
		out.Networks = []netip.Prefix{hostPrefix(out.Address)}
		for _, p := range peers {
			if p.Zone == out.Name && p.Address.IsValid() {
				out.Networks = appendPrefix(out.Networks, hostPrefix(p.Address.Addr()))
			}
		}
	}
	return out
}

// quoteList renders names as `"a", "b" or "c"`.
func quoteList(names []string) string {
	q := make([]string, len(names))
	for i, n := range names {
		q[i] = fmt.Sprintf("%q", n)
	}
	if len(q) <= 1 {
		return strings.Join(q, "")
	}
	return strings.Join(q[:len(q)-1], ", ") + " or " + q[len(q)-1]
}

// zoneList renders the defined zone names for a reference error.
func zoneList(names []string) string {
	if len(names) == 0 {
		return "none (add a zone block)"
	}
	q := make([]string, len(names))
	for i, n := range names {
		q[i] = fmt.Sprintf("%q", n)
	}
	return strings.Join(q, ", ")
}
