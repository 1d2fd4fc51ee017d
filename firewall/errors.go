package firewall

import "errors"

var (
	// ErrUnsupported is returned where nftables is not available: another
	// OS, or a kernel or privileges without it.
	ErrUnsupported = errors.New("firewall: nftables not supported here")
	// ErrForwardingOff means the kernel does not forward IPv4, so offloaded
	// media would be dropped.
	ErrForwardingOff = errors.New("firewall: net.ipv4.ip_forward is 0")
	// ErrForwarding6Off is ErrForwardingOff for IPv6.
	ErrForwarding6Off = errors.New("firewall: net.ipv6.conf.all.forwarding is 0")
	// ErrFamilyOff is returned for a flow of an address family that has no
	// media address in MediaConfig.Addrs (left out because the kernel does
	// not forward it): its media stays in userspace.
	ErrFamilyOff = errors.New("firewall: no offload for this address family")
	// ErrMixedFamily is returned for a flow whose legs are of different
	// address families (IPv4 on one, IPv6 on the other): the kernel's NAT
	// translates within one family, so such media stays in userspace.
	ErrMixedFamily = errors.New("firewall: offload needs one address family on both legs")
	// ErrClosed is returned after Close.
	ErrClosed = errors.New("firewall: closed")
)
