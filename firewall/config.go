package firewall

import "net/netip"

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
	// Batch caps the flows applied in one netlink transaction (default
	// 2,000: 12,000 elements).
	Batch int
}
