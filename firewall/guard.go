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
	// IPv6Prefix is the prefix length IPv6 sources are banned and metered
	// by: the ban set and the meters hold the source address masked to
	// it, so one element covers the prefix. 0 means 64; 128 means each
	// address alone.
	IPv6Prefix int
}

// DefaultIPv6Prefix is the IPv6 source prefix length when none is given.
const DefaultIPv6Prefix = 64

// ipv6Bits is the effective prefix length of cfg.
func (cfg GuardConfig) ipv6Bits() int {
	if cfg.IPv6Prefix <= 0 || cfg.IPv6Prefix > 128 {
		return DefaultIPv6Prefix
	}
	return cfg.IPv6Prefix
}

// MaskSource is the key of src in the ban sets and meters: src itself for
// IPv4, the first address of its /bits prefix for IPv6.
func MaskSource(src netip.Addr, bits int) netip.Addr {
	src = src.Unmap()
	if !src.Is6() || bits >= 128 || bits <= 0 {
		return src
	}
	return netip.PrefixFrom(src.WithZone(""), bits).Masked().Addr()
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
