package sbc

import (
	"context"
	"net/netip"
	"time"

	"github.com/edgesbc/edgesbc/media"
)

// Config is everything the signaling core needs. appliance/config builds it
// from the HCL file; this package never sees HCL.
type Config struct {
	Zones []ZoneConfig
	Peers []PeerConfig
	// UserAgent is the product string sent in User-Agent and Server headers
	// instead of anything the far side sent.
	UserAgent string
	// MaxMessageSize drops datagrams larger than this before parsing.
	MaxMessageSize int
	// InviteTimeout bounds how long a new call may stay unanswered: the
	// caller then gets 408 and the callee a CANCEL. It also bounds a
	// relayed re-INVITE that has had a provisional: the other leg then
	// gets a CANCEL and the sender its final response (487).
	InviteTimeout time.Duration
	// MaxCalls bounds the calls in progress; a new INVITE beyond it gets a
	// stateless 503 with Retry-After from the entry filter. 0 means 10000.
	MaxCalls int
	// DrainTimeout bounds graceful shutdown (BYE transactions of calls in
	// progress).
	DrainTimeout time.Duration
	// TCP bounds the SIP-over-TCP connections of every zone that serves
	// TCP. Zero fields take their defaults.
	TCP TCPLimits
	// Access lets remote phones in a zone register with a PBX through the
	// SBC (access.go). At most one per zone; none means REGISTER gets 501
	// as before.
	Access []AccessConfig

	// inDialogWait is how long the SBC waits for the final response to a
	// request it sends within a dialog: 64*T1, Timer F's value (RFC 3261
	// §17.1.2.2), when zero. Tests shorten it.
	inDialogWait time.Duration
}

// AccessConfig is the access mode of one zone: phones there register with
// a pbx peer through the SBC.
type AccessConfig struct {
	Name string
	// Zone is where the phones are; PBX names the pbx peer they register
	// with.
	Zone string
	PBX  string
	// Domain is the registrar domain: a REGISTER is relayed only when its
	// Request-URI host is Domain (compared without case), and reaches the
	// PBX with that Request-URI, since the phone's digest covers it.
	Domain string
	// Expires is the most the SBC grants a phone (default 60 seconds);
	// PBXExpires is what it asks of the PBX (default one hour).
	Expires    time.Duration
	PBXExpires time.Duration
	// MaxBindings bounds the phone bindings held at once (default 10000).
	MaxBindings int
}

// TCPLimits bound what a TCP peer or stranger can hold of the SBC.
type TCPLimits struct {
	// MessageTimeout is how long one message may take to arrive once its
	// first byte is in: a client that trickles bytes (slow loris) loses
	// its connection. Default 10 seconds.
	MessageTimeout time.Duration
	// IdleTimeout closes a connection of a configured peer that carried
	// nothing for this long; the next request opens a new one. Default
	// 10 minutes. Connections of other sources get MessageTimeout.
	IdleTimeout time.Duration
	// MaxConnections bounds the open connections of one zone, accepted
	// and opened together. Default 1024.
	MaxConnections int
	// MaxPerSource bounds the connections from one address that is no
	// configured peer. Default 4.
	MaxPerSource int
}

// ZoneConfig is one network side of the SBC.
type ZoneConfig struct {
	Name    string
	Address netip.Addr
	SIPPort int
	// Advertise is announced in Via, Contact and SDP instead of Address when
	// the SBC sits behind a 1:1 NAT. Zero means Address.
	Advertise netip.Addr
	// Networks are the zone's own networks. The leak guard makes sure none
	// of these addresses appear in a message sent into another zone.
	Networks []netip.Prefix
	// Transports are the SIP transports served on SIPPort: TransportUDP,
	// TransportTCP. Empty means UDP only.
	Transports []string
}

// SIP transports, lower case as in the configuration.
const (
	TransportUDP = "udp"
	TransportTCP = "tcp"
)

// PeerKind says what a peer is, which decides routing.
type PeerKind string

const (
	// PBX is an IP-PBX on the private side.
	PBX PeerKind = "pbx"
	// Trunk is a SIP-trunk carrier on the public side.
	Trunk PeerKind = "trunk"
)

// PeerConfig is a configured remote party.
type PeerConfig struct {
	Name    string
	Kind    PeerKind
	Zone    string
	Address netip.AddrPort
	// Host is put in the Request-URI and To host toward this peer. Empty
	// means the address.
	Host string
	// Sources are extra source prefixes accepted as this peer.
	Sources []netip.Prefix
	// KeepHeaders names headers (for example P-Asserted-Identity) that may
	// cross from the other leg toward this peer. Everything not built by the
	// SBC itself and not listed here is dropped.
	KeepHeaders []string
	// SessionExpires is the session interval (RFC 4028) the SBC asks for
	// and accepts at most on legs toward this peer; it refreshes the leg
	// itself when the peer does not. Zero turns session timers off toward
	// this peer.
	SessionExpires time.Duration
	// MinSE is the smallest session interval accepted from this peer:
	// shorter requests get 422. Zero means 90 seconds (or SessionExpires
	// when that is shorter).
	MinSE time.Duration
	// Refer says what happens to a REFER from this peer. Empty means
	// ReferTerminate.
	Refer ReferMode
	// Offer is how an INVITE without SDP goes toward this peer: OfferPass
	// (the default when empty) keeps it a late offer, OfferEarly makes the
	// SBC offer itself from its anchored media with Codecs.
	Offer OfferMode
	// Codecs are the codecs, in order of preference, of an offer the SBC
	// makes itself toward this peer (see KnownCodec), and of the answer
	// it gives a callee's early offer for a caller from this peer that
	// cannot answer it in time (earlyoffer.go). Empty means DefaultCodecs.
	Codecs []string
	// Transport is how requests toward this peer travel: TransportUDP
	// (the default when empty) or TransportTCP. A UDP peer in a zone that
	// serves TCP too gets requests larger than 1300 bytes over TCP (RFC
	// 3261 §18.1.1).
	Transport string
}

// ReferMode is how the SBC treats a REFER (call transfer, RFC 3515).
type ReferMode string

const (
	// ReferTerminate: the SBC accepts the REFER itself, calls the target
	// and bridges it to the remaining leg, then releases the referrer.
	ReferTerminate ReferMode = "terminate"
	// ReferPass relays the REFER to the other leg with its Refer-To and
	// Referred-By rewritten for topology hiding.
	ReferPass ReferMode = "pass"
	// ReferReject answers every REFER with 603 Decline.
	ReferReject ReferMode = "reject"
)

// Media is what a Call needs from the media relay. media.Relay satisfies
// it; a nil Media means signaling-only operation with SDP passed through
// untouched (only for tests).
type Media interface {
	Open(id media.SessionID, a, b media.Address) error
	Offer(id media.SessionID, from media.Side, body []byte) ([]byte, error)
	Answer(id media.SessionID, from media.Side, body []byte) ([]byte, error)
	// OfferFor and Settle serve the offers the SBC makes itself (offer =
	// "early"): an offer toward a side built from a template, and the
	// answer that completes it on the other side.
	OfferFor(id media.SessionID, to media.Side, tmpl []byte) ([]byte, error)
	Settle(id media.SessionID, from media.Side, body []byte) error
	// AnswerFor is the answer the SBC gives itself to a side's offer that
	// the other side cannot answer in time.
	AnswerFor(id media.SessionID, to media.Side, tmpl []byte) ([]byte, error)
	// Rename makes a session prepared apart (the SBC's offer to a
	// transfer target) the call's session once the old one is closed.
	Rename(from, to media.SessionID) error
	Close(id media.SessionID, reason string) (media.Stats, bool)
}

// Hooks lets the appliance observe calls without the sbc package importing
// it. Every field may be nil.
type Hooks struct {
	// CallEnded is called once per call after both legs are released.
	CallEnded func(ctx context.Context, c CallRecord)
}

// CallRecord summarises a finished call (a CDR).
type CallRecord struct {
	ID         string
	From, To   string // user parts
	InPeer     string
	OutPeer    string
	Start      time.Time
	Answer     time.Time // zero when never answered
	End        time.Time
	Status     int    // final status of the initial INVITE toward the caller
	EndReason  string // "caller bye", "callee bye", "media timeout", "cancel", ...
	Transfers  int    // completed transfers the SBC performed (REFER terminated)
	MediaStats media.Stats
}
