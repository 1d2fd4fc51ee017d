package media

import (
	"fmt"
	"net/netip"
	"strings"
	"time"
)

// Defaults applied by NewRelay to zero Config fields.
const (
	DefaultQuarantine = 5 * time.Second
	DefaultTimeout    = 60 * time.Second
	DefaultUsername   = "edgesbc"
)

// Config is the relay's plain configuration. appliance/config builds it from
// the HCL file; zero values take the documented defaults.
type Config struct {
	// PortMin and PortMax bound the UDP ports the relay binds, inclusive.
	// RTP ports are even and RTCP is RTP+1 (RFC 3550 §11), so only pairs
	// whose both ports lie inside the range are used.
	PortMin, PortMax int
	// Quarantine is how long a released port pair is withheld from reuse
	// (default 5s), so late packets of an ended call never reach a new one.
	Quarantine time.Duration
	// Timeout is how long a session may go without a single admitted RTP
	// packet, on any stream and in either direction, before OnTimeout is
	// called (default 60s). The clock starts at Open.
	Timeout time.Duration
	// OnTimeout is called once per idle session, in its own goroutine, so a
	// slow callback cannot delay the idle check of other sessions. It may
	// race with Close; it is advice to end the call, and the session stays
	// open until someone closes it. When nil the Relay closes idle sessions
	// itself with reason "media timeout".
	OnTimeout func(id SessionID)
	// Username is the SDP o= username of every body the relay writes
	// (default "edgesbc"). It is one token: no whitespace.
	Username string
	// Offloader, when set, moves the flows of latched streams into the
	// kernel (see Offloader). Nil keeps every packet in userspace.
	Offloader Offloader

	// batchIO selects the datagram I/O implementation; the zero value is the
	// platform default. Tests use it to run the portable path on Linux too.
	batchIO ioImpl
	// workers is the number of poller goroutines of the ioEpoll path; zero
	// is pollWorkers(). Tests raise it to have workers race each other.
	workers int
}

// withDefaults returns c with zero fields replaced by their defaults, or an
// error naming the first invalid field.
func (c Config) withDefaults() (Config, error) {
	if c.PortMin < 1 || c.PortMax > 65535 || c.PortMin > c.PortMax {
		return c, fmt.Errorf("media: port range [%d, %d] is not inside [1, 65535]", c.PortMin, c.PortMax)
	}
	if first := c.PortMin + c.PortMin%2; first+1 > c.PortMax {
		return c, fmt.Errorf("media: port range [%d, %d] holds no even RTP port with its RTCP port", c.PortMin, c.PortMax)
	}
	switch {
	case c.Quarantine < 0:
		return c, fmt.Errorf("media: quarantine %v is negative", c.Quarantine)
	case c.Quarantine == 0:
		c.Quarantine = DefaultQuarantine
	}
	switch {
	case c.Timeout < 0:
		return c, fmt.Errorf("media: timeout %v is negative", c.Timeout)
	case c.Timeout == 0:
		c.Timeout = DefaultTimeout
	}
	if c.Username == "" {
		c.Username = DefaultUsername
	}
	if strings.ContainsAny(c.Username, " \t\r\n") {
		return c, fmt.Errorf("media: sdp username %q contains whitespace", c.Username)
	}
	return c, nil
}

// Address is the SBC's media address facing one side of a call.
type Address struct {
	// Bind is the local address the side's sockets are bound to. It must be
	// valid; an unspecified address (0.0.0.0, ::) lets the kernel pick the
	// source address per packet, and then Advertise is required.
	Bind netip.Addr
	// Advertise is the address announced in SDP sent to that side, for
	// example the public address of a 1:1 NAT (see package nat). It
	// defaults to Bind when invalid.
	Advertise netip.Addr
}

// normalize returns a with Advertise filled in, or an error.
func (a Address) normalize() (Address, error) {
	if !a.Bind.IsValid() {
		return a, fmt.Errorf("media: bind address is missing")
	}
	a.Bind = a.Bind.Unmap()
	if !a.Advertise.IsValid() {
		if a.Bind.IsUnspecified() {
			return a, fmt.Errorf("media: bind address %v is unspecified and no advertise address is set", a.Bind)
		}
		a.Advertise = a.Bind
	}
	a.Advertise = a.Advertise.Unmap()
	if a.Advertise.IsUnspecified() {
		return a, fmt.Errorf("media: advertise address %v is unspecified", a.Advertise)
	}
	return a, nil
}
