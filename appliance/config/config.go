// Package config owns the appliance's configuration file: it parses the HCL
// source, validates every value and cross-reference, and returns plain typed
// Go values (netip, time.Duration, strings). It is the only package in the
// project that imports HCL. Subsystems (sbc, media, firewall, nat) never import
// it; the appliance turns a Config into their own Config values.
//
// Parsing gathers every problem it can find in one pass and reports each one
// as an hcl.Diagnostic whose Subject points at the offending attribute value or
// block label, so an operator can fix a file in one edit-check cycle.
package config

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"time"

	"github.com/hashicorp/hcl/v2"
)

// Defaults for every optional key. They are applied only after validation, so
// a diagnostic always refers to what the operator wrote.
const (
	DefaultSIPPort        = 5060
	DefaultTransport      = "udp"
	DefaultMediaPortMin   = 20000
	DefaultMediaPortMax   = 29999
	DefaultMediaTimeout   = 60 * time.Second
	DefaultQuarantine     = 5 * time.Second
	DefaultUserAgent      = "edgesbc"
	DefaultMaxMessageSize = 16384
	DefaultInviteTimeout  = 180 * time.Second
	DefaultMaxCalls       = 10000
	DefaultLogLevel       = "info"
	// RFC 4028 §4 recommends 1800s; §5 sets 90s as the smallest Min-SE.
	DefaultSessionExpires = 1800 * time.Second
	DefaultMinSE          = 90 * time.Second
	DefaultRefer          = ReferTerminate
	DefaultOffer          = OfferPass
	DefaultPrefixLength4  = 24
	DefaultPrefixLength6  = 64
)

// Limits enforced by validation.
const (
	maxPort = 65535
	// minMediaPort keeps the relay out of the privileged ports.
	minMediaPort = 1024
	// minMediaPortPairs is the smallest useful pool: one call needs an
	// RTP/RTCP pair on each leg.
	minMediaPortPairs = 2
	// A SIP request with SDP rarely stays below 1 KiB, and a UDP datagram
	// cannot carry more than 64 KiB.
	minMaxMessageSize = 1024
	maxMaxMessageSize = 65535
	// maxUserAgentLength bounds a header value we put on every message.
	maxUserAgentLength = 256
	// maxDeviceName is the longest interface name Linux accepts
	// (IFNAMSIZ - 1).
	maxDeviceName = 15
)

// Config is one validated configuration file.
type Config struct {
	// Zones are the network sides of the SBC, in file order.
	Zones []Zone
	// Peers are the pbx and trunk blocks, interleaved in file order.
	Peers []Peer
	Media Media
	SIP   SIP
	Log   Log
	// Security is the allow list, rate limits, ban policies and where bans
	// are kept.
	Security Security
	// Access are the access blocks: remote phones that register with a
	// pbx through the SBC. Default none.
	Access []Access
}

// Zone is a network side of the SBC (a zone block): the local address the SBC
// listens on there and how it presents itself to peers in that zone.
type Zone struct {
	Name string
	// Address is the SBC's own address in this zone; SIP listens on it and
	// media sockets for the zone's legs are bound to it.
	Address netip.Addr
	// SIPPort is the SIP listening port on Address. Default 5060.
	SIPPort int
	// Advertise, when valid, is announced in Via, Contact and SDP instead of
	// Address, for an SBC behind a static 1:1 NAT. Same family as Address.
	Advertise netip.Addr
	// Networks are the zone's internal networks. The topology-leak guard
	// makes sure none of them appears in messages sent into another zone.
	// Default: Address as a single-host prefix plus the address of every peer
	// in the zone.
	Networks []netip.Prefix
	// Transports are the SIP transports the SBC listens on in this zone,
	// lowercase. Default ["udp"].
	Transports []string
	// Device, when set, is the network interface the appliance configures
	// for this zone at start: renamed (see MAC), brought up, Address/
	// PrefixLength assigned and, with Gateway, the default route set.
	// Default "": the interfaces are configured by someone else.
	Device string
	// MAC, when set, picks the interface by hardware address and renames it
	// to Device. Only with Device. Default: the interface is found by name.
	MAC net.HardwareAddr
	// PrefixLength is the length of Address's on-link prefix, with Device.
	// Default 24 for IPv4 and 64 for IPv6.
	PrefixLength int
	// Gateway, when valid, is the next hop of the default route, set on
	// Device. At most one zone has a gateway per address family. Default
	// none.
	Gateway netip.Addr
}

// PeerKind says which side of the routing a peer is on.
type PeerKind string

// Peer kinds. Routing is pbx → trunk and trunk → pbx.
const (
	PeerPBX   PeerKind = "pbx"
	PeerTrunk PeerKind = "trunk"
)

// Peer is a configured remote party: a pbx or a trunk block.
type Peer struct {
	Name string
	Kind PeerKind
	// Zone names the zone block the peer is reached through.
	Zone string
	// Address is where requests toward this peer are sent. The port
	// defaults to 5060 when the file gives only an address.
	Address netip.AddrPort
	// Host is the host part used in the Request-URI and To toward this peer.
	// Default: Address's IP in text form (IPv6 without brackets; the SIP
	// layer adds them).
	Host string
	// Transport is the SIP transport toward this peer, lowercase. It is one
	// of its zone's Transports. Default "udp".
	Transport string
	// KeepHeaders are header names passed through toward this peer (P-*,
	// X-* and the like). Everything not listed is dropped at the boundary.
	// Default none.
	KeepHeaders []string
	// Sources are the source prefixes accepted as this peer: Address's IP
	// as a single-host prefix first, then any extra prefixes from the file
	// (carriers that send from several addresses).
	Sources []netip.Prefix
	// SessionExpires is the session timer interval (RFC 4028) asked for
	// and accepted at most on legs toward this peer; 0 turns session timers
	// off toward it. Whole seconds. Default 1800s.
	SessionExpires time.Duration
	// MinSE is the smallest session interval accepted from the peer;
	// shorter requests get 422. Whole seconds. Default 90s.
	MinSE time.Duration
	// Refer is what the SBC does with a REFER from this peer: "terminate",
	// "pass" or "reject". Default "terminate".
	Refer string
	// Offer is how an INVITE without SDP goes toward this peer: "pass"
	// keeps it a late offer, "early" makes the SBC offer itself. Default
	// "pass".
	Offer string
	// Codecs are the codecs of an offer the SBC makes itself toward this
	// peer (offer = "early"), and the preference when it answers a callee's
	// early offer for a caller from this peer; canonical names from
	// OfferCodecs in the file's order. Default none: the SBC's own default
	// list (PCMU, PCMA, telephone-event).
	Codecs []string
}

// Offer modes of a peer.
const (
	OfferPass  = "pass"
	OfferEarly = "early"
)

// OfferCodecs are the codec names a peer's codecs may list, as written
// canonically; names match in any case.
var OfferCodecs = []string{"PCMU", "PCMA", "G722", "G729", "opus", "telephone-event"}

// REFER handling modes of a peer.
const (
	ReferTerminate = "terminate"
	ReferPass      = "pass"
	ReferReject    = "reject"
)

// Media configures the RTP relay.
type Media struct {
	// PortMin and PortMax bound the relay's UDP ports, inclusive. Default
	// 20000-29999.
	PortMin, PortMax int
	// Timeout ends a call when no RTP arrives in either direction for
	// this long. Default 60s.
	Timeout time.Duration
	// Quarantine keeps a released port pair out of use this long, so late
	// packets of an ended call do not reach the next one. Default 5s.
	Quarantine time.Duration
	// KernelOffload hands latched streams to the kernel (nftables NAT)
	// where the daemon may program it. Default true.
	KernelOffload bool
	// KeepOnRestart keeps confirmed calls across a restart of the daemon:
	// their state is written to state_dir, stopping leaves their kernel
	// flows in place, and the next start takes them over. Default false.
	KeepOnRestart bool
	// PinholeZones name the zones whose media ports the kernel closes to
	// everyone but the remote each call announced (media pinholes; with
	// KernelOffload only). Default: every zone that has a trunk, the
	// public side.
	PinholeZones []string
}

// SIP configures SIP signalling limits and identity.
type SIP struct {
	// UserAgent is the product string in User-Agent and Server headers.
	// Default "edgesbc".
	UserAgent string
	// MaxMessageSize is the largest SIP message accepted, in bytes; larger
	// datagrams are dropped. Default 16384.
	MaxMessageSize int
	// InviteTimeout is how long an INVITE may wait for a final response
	// from the callee before the caller gets 408 and the callee a CANCEL.
	// It also bounds a relayed re-INVITE after a provisional response: the
	// far side gets a CANCEL and the call stays as it was. Default 180s.
	InviteTimeout time.Duration
	// MaxCalls bounds the calls in progress (ringing or answered). A new
	// INVITE beyond it gets 503 with Retry-After before any call state is
	// created, so an overload cannot take the calls already up down with
	// it. Default 10000.
	MaxCalls int
}

// Log configures the appliance logger.
type Log struct {
	// Level is one of trace, debug, info, warn, error (lowercase). Default
	// info.
	Level string
}

// Devices reports whether any zone names a network interface, that is
// whether the appliance configures the network itself.
func (c *Config) Devices() bool {
	for _, z := range c.Zones {
		if z.Device != "" {
			return true
		}
	}
	return false
}

// Zone returns the zone with the given name.
func (c *Config) Zone(name string) (Zone, bool) {
	for _, z := range c.Zones {
		if z.Name == name {
			return z, true
		}
	}
	return Zone{}, false
}

// Peer returns the peer (pbx or trunk) with the given name.
func (c *Config) Peer(name string) (Peer, bool) {
	for _, p := range c.Peers {
		if p.Name == name {
			return p, true
		}
	}
	return Peer{}, false
}

// Parse parses and validates HCL source. Filename is used only in diagnostics.
// It returns every problem it finds rather than stopping at the first. When
// the diagnostics contain an error the Config is nil, so a half-valid file can
// never be run; warnings may accompany a valid Config.
func Parse(filename string, src []byte) (*Config, hcl.Diagnostics) {
	return parse(filename, src, true)
}

// Load reads the file at path and parses it. The returned map holds the
// source of every file the diagnostics refer to, keyed by file name, for
// WriteDiagnostics. A file that cannot be read yields one diagnostic without
// a Subject and an empty map.
func Load(path string) (*Config, map[string][]byte, hcl.Diagnostics) {
	files := map[string][]byte{}
	src, err := os.ReadFile(path)
	if err != nil {
		return nil, files, hcl.Diagnostics{{
			Severity: hcl.DiagError,
			Summary:  "Cannot read configuration file",
			Detail:   fmt.Sprintf("read %s: %v", path, err),
		}}
	}
	files[path] = src
	cfg, diags := Parse(path, src)
	return cfg, files, diags
}
