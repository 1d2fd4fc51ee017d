// Package firewall owns edgesbc's nftables table, inet edgesbc. It knows
// nothing about SIP: it receives addresses to ban, prefixes to allow and
// packet rates to enforce, and turns them into kernel sets and rules.
//
// The table is shared by edgesbc's subsystems. Each creates it without
// flushing it and manages only its own objects: the guard owns the chain
// guard_prerouting and the sets allow4, allow6, ban4, ban6 and rl_*.
package firewall

import (
	"errors"
	"net/netip"
	"time"
)

// TableName is edgesbc's nftables table (family inet).
const TableName = "edgesbc"

// ErrUnsupported is returned where nftables is not available: another OS,
// or a kernel or privileges without it.
var ErrUnsupported = errors.New("firewall: nftables not supported here")

// GuardConfig is what the kernel enforces for the ban policies.
type GuardConfig struct {
	// Allow are sources accepted before any ban or rate limit: the
	// configured allow list and every peer's sources.
	Allow []netip.Prefix
	// RateLimits are per-source packet rate limits.
	RateLimits []RateLimit
}

// RateLimit drops UDP packets to Dest from one source beyond Rate per Per,
// with Burst packets of slack, counted per source address in a kernel
// meter.
type RateLimit struct {
	// Name names the meter set (rl_NAME).
	Name string
	// Dest is the zone's SIP address and port.
	Dest netip.AddrPort
	Rate uint64
	// Per is time.Second, time.Minute or time.Hour.
	Per   time.Duration
	Burst uint32
}

// Ban sets and their limits.
const (
	// meterSize bounds the sources one rate limit meter tracks.
	meterSize = 65535
	// meterTimeout forgets a source that has been quiet this long.
	meterTimeout = time.Minute
	// maxBanTimeout is the longest element timeout written. A longer ban
	// leaves the kernel set after a year and is enforced in userspace
	// from then on, until it ends or the daemon restarts and re-applies it.
	maxBanTimeout = 365 * 24 * time.Hour
)
