package firewall

import "errors"

var (
	// ErrUnsupported is returned where nftables does not exist (not Linux).
	ErrUnsupported = errors.New("firewall: nftables needs Linux")
	// ErrForwardingOff means the kernel does not forward IPv4, so offloaded
	// media would be dropped.
	ErrForwardingOff = errors.New("firewall: net.ipv4.ip_forward is 0")
	// ErrNotIPv4 is returned for a flow the kernel path cannot carry: media
	// offload handles IPv4 on both legs.
	ErrNotIPv4 = errors.New("firewall: offload handles IPv4 flows only")
	// ErrClosed is returned after Close.
	ErrClosed = errors.New("firewall: closed")
)
