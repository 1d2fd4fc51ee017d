package firewall

import (
	"net/netip"
	"time"
)

// TableName is the one nftables table edgesbc owns (family inet).
const TableName = "edgesbc"

// MediaConfig configures kernel media offload.
type MediaConfig struct {
	// Addrs are the relay's bind addresses: traffic to and from their
	// media ports is the relay's. IPv6 addresses are ignored (their media
	// stays in userspace).
	Addrs []netip.Addr
	// PortMin and PortMax are the relay's port range, inclusive.
	PortMin, PortMax int
	// NetNS, when non-zero, is a file descriptor of the network namespace
	// to program instead of the caller's (tests use it).
	NetNS int
	// Keep takes over the flows an earlier run left in the kernel instead
	// of removing them (media.keep_on_restart): they stay until Adopt
	// claims them or Prune removes them.
	Keep bool
	// Batch caps the flows applied in one netlink transaction (default
	// 2,000: 8,000 elements).
	Batch int
	// Closed are relay addresses (of the public side, typically) whose
	// media port range is closed but for pinholes: a UDP datagram to one
	// of them in [PortMin, PortMax] is dropped in the kernel unless the
	// relay expects its source IP on the port it is sent to (see
	// media.Pinholer). Pinholes for other addresses are not kept. Both
	// families work, whether or not the family is offloaded.
	Closed []netip.Addr
	// CheckEvery is how often the owner goroutine, when idle, looks for
	// its objects and rebuilds them if they were removed from outside
	// (default 10s). Any change or counter read also finds out.
	CheckEvery time.Duration
}
