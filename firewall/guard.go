package firewall

import (
	"net/netip"
	"time"
)

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
