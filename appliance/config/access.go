package config

import (
	"net/netip"
	"strings"
	"time"

	"github.com/hashicorp/hcl/v2"
)

// Defaults and limits of the access keys.
const (
	// DefaultAccessExpires is the registration interval given to phones:
	// short, so their REGISTER refreshes keep a NAT binding open.
	DefaultAccessExpires = 60 * time.Second
	// DefaultAccessPBXExpires is the interval asked of the PBX.
	DefaultAccessPBXExpires = time.Hour
	// DefaultAccessMaxBindings bounds the phone bindings held at once.
	DefaultAccessMaxBindings = 10000
	minAccessExpires         = 10 * time.Second
	maxAccessExpires         = 24 * time.Hour
	maxAccessBindings        = 1_000_000
)

// Access is an access block: remote phones in a zone register through the
// SBC with a PBX.
type Access struct {
	Name string
	// Zone names the zone the phones are in.
	Zone string
	// PBX names the pbx block the phones register with.
	PBX string
	// Domain is the registrar domain the phones are configured with: a
	// REGISTER is relayed only when its Request-URI host is Domain, and
	// it reaches the PBX with that Request-URI unchanged, since the
	// phone's digest covers it. A domain name, never an IP address.
	// Default: the pbx block's host.
	Domain string
	// Expires is the registration interval the SBC gives a phone, at
	// most what it asked for. Default 60s.
	Expires time.Duration
	// PBXExpires is the interval the SBC asks of the PBX. Default 1h.
	PBXExpires time.Duration
	// MaxBindings bounds the phone bindings held at once; a REGISTER that
	// would need one more gets 503. Default 10000.
	MaxBindings int
}

type rawAccess struct {
	Name        string         `hcl:"name,label"`
	NameRange   hcl.Range      `hcl:"name,label_range"`
	DefRange    hcl.Range      `hcl:",def_range"`
	Zone        *hcl.Attribute `hcl:"zone,optional"`
	PBX         *hcl.Attribute `hcl:"pbx,optional"`
	Domain      *hcl.Attribute `hcl:"domain,optional"`
	Expires     *hcl.Attribute `hcl:"expires,optional"`
	PBXExpires  *hcl.Attribute `hcl:"pbx_expires,optional"`
	MaxBindings *hcl.Attribute `hcl:"max_bindings,optional"`
}

// access validates the access blocks: names, a zone that exists and hosts
// no pbx of its own (phones and their PBX are on different sides), a pbx
// block, a domain name, and the intervals.
func (b *builder) access(raws []*rawAccess, zones []*zoneDef, peers []*peerDef) []Access {
	blocks := newPerZoneBlocks("access", "an access block", "Duplicate access for zone", "zone the phones are in", zones)
	var out []Access
	for _, r := range raws {
		if r == nil {
			continue
		}
		a := Access{Name: r.Name, Expires: DefaultAccessExpires, PBXExpires: DefaultAccessPBXExpires, MaxBindings: DefaultAccessMaxBindings}
		var ok bool
		a.Zone, ok = blocks.check(b, r.Name, r.NameRange, r.DefRange, r.Zone)
		var pbx *peerDef
		if r.PBX == nil {
			b.errorf(r.DefRange, "Missing required argument", "access %q needs pbx = \"<name of a pbx block>\".", r.Name)
			ok = false
		} else if n, diags := decodeString(r.PBX); b.add(diags) {
			a.PBX = n
			for _, p := range peers {
				if p.peer.Name == n {
					pbx = p
				}
			}
			switch {
			case pbx != nil && pbx.peer.Kind != PeerPBX:
				b.errorf(r.PBX.Expr.Range(), "Not a pbx", "%q is a %s block; phones register with a pbx.", n, pbx.peer.Kind)
				ok = false
			case pbx == nil && b.whole:
				b.errorf(r.PBX.Expr.Range(), "Unknown pbx", "No pbx block is named %q.", n)
				ok = false
			case pbx != nil && pbx.zoneOK && pbx.peer.Zone == a.Zone:
				b.errorf(r.Zone.Expr.Range(), "Phones in the pbx's zone",
					"pbx %q is in zone %q itself; the access zone is the other side, where the remote phones are.", n, a.Zone)
				ok = false
			}
		} else {
			ok = false
		}
		if r.Domain != nil {
			if d, diags := decodeString(r.Domain); b.add(diags) {
				d = strings.TrimSpace(d)
				if _, err := netip.ParseAddr(d); err == nil || !validHost(d) {
					b.errorf(r.Domain.Expr.Range(), "Invalid domain",
						"domain %q must be a domain name: it travels in the phones' own headers to both sides, and an IP address there would reveal one side to the other.", d)
					ok = false
				}
				a.Domain = d
			} else {
				ok = false
			}
		} else if pbx != nil {
			if h := pbx.peer.Host; h != "" {
				if _, err := netip.ParseAddr(h); err != nil {
					a.Domain = h
				}
			}
			if a.Domain == "" {
				b.errorf(r.DefRange, "Missing required argument",
					"access %q needs domain = \"<the phones' registrar domain>\": pbx %q has no host name to take it from.", r.Name, pbx.peer.Name)
				ok = false
			}
		}
		for _, d := range []struct {
			attr *hcl.Attribute
			key  string
			into *time.Duration
		}{{r.Expires, "expires", &a.Expires}, {r.PBXExpires, "pbx_expires", &a.PBXExpires}} {
			if d.attr == nil {
				continue
			}
			v, diags := decodeDuration(d.attr, false)
			if !b.add(diags) {
				ok = false
				continue
			}
			if v < minAccessExpires || v > maxAccessExpires || v%time.Second != 0 {
				b.errorf(d.attr.Expr.Range(), "Duration out of range", "%s must be whole seconds from %v to %v, got %v.", d.key, minAccessExpires, maxAccessExpires, v)
				ok = false
			}
			*d.into = v
		}
		if r.MaxBindings != nil {
			if n, diags := decodeInt(r.MaxBindings, 1, maxAccessBindings, "Value out of range"); b.add(diags) {
				a.MaxBindings = n
			} else {
				ok = false
			}
		}
		if ok {
			out = append(out, a)
		}
	}
	return out
}
