package appliance

import (
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/edgesbc/edgesbc/appliance/config"
)

// NetworkPlan is the interface setup the zones of a configuration ask for:
// which NICs to name, bring up and address, the default routes, and the
// kernel settings the SBC depends on. It is derived from the config alone
// (PlanNetwork) and applied by SetupNetwork.
type NetworkPlan struct {
	Links []LinkPlan
	// Routes are default routes, at most one per address family.
	Routes []DefaultRoute
	// Sysctls are written in order. Optional ones are skipped, with a log
	// line, when the kernel does not offer them (conntrack settings exist
	// only once the conntrack module is loaded).
	Sysctls []Sysctl
}

// LinkPlan is the wanted state of one network interface.
type LinkPlan struct {
	// Zones are the zones served on this interface, for log lines and
	// error messages.
	Zones []string
	// Device is the interface name.
	Device string
	// MAC, when set, selects the interface by hardware address; it is
	// renamed to Device if it has another name.
	MAC net.HardwareAddr
	// Addrs are the addresses with their on-link prefix length.
	Addrs []netip.Prefix
}

// DefaultRoute is a default route via Gateway on Device.
type DefaultRoute struct {
	Zone    string
	Device  string
	Gateway netip.Addr
}

// Sysctl is one kernel setting, by its dotted name.
type Sysctl struct {
	Name     string
	Value    string
	Optional bool
	// Why is logged next to the change.
	Why string
}

// NetworkOptions tune SetupNetwork.
type NetworkOptions struct {
	// LinkWait bounds how long SetupNetwork waits for a named interface to
	// appear (NIC drivers and udev may still be probing at boot). Zero
	// means DefaultLinkWait.
	LinkWait time.Duration
	// Netns, when not empty, is the path of a network namespace
	// (/run/netns/NAME) to configure instead of the process's own. Tests
	// use it; the appliance configures its own namespace.
	Netns string
}

// DefaultLinkWait is how long a named interface may take to appear.
const DefaultLinkWait = 15 * time.Second

// PlanNetwork derives the network setup from the zones that name a device.
// It reports false when no zone does: then the appliance leaves the
// network alone.
func PlanNetwork(cfg *config.Config) (NetworkPlan, bool) {
	var p NetworkPlan
	v6 := false
	for _, z := range cfg.Zones {
		if z.Device == "" {
			continue
		}
		var l *LinkPlan
		for i := range p.Links {
			if p.Links[i].Device == z.Device {
				l = &p.Links[i]
			}
		}
		if l == nil {
			p.Links = append(p.Links, LinkPlan{Device: z.Device})
			l = &p.Links[len(p.Links)-1]
		}
		l.Zones = append(l.Zones, z.Name)
		if z.MAC != nil {
			l.MAC = z.MAC
		}
		l.Addrs = append(l.Addrs, netip.PrefixFrom(z.Address, z.PrefixLength))
		if z.Gateway.IsValid() {
			p.Routes = append(p.Routes, DefaultRoute{Zone: z.Name, Device: z.Device, Gateway: z.Gateway})
		}
		if z.Address.Is6() {
			v6 = true
		}
	}
	if len(p.Links) == 0 {
		return NetworkPlan{}, false
	}
	p.Sysctls = []Sysctl{
		{Name: "net.ipv4.ip_forward", Value: "1", Why: "kernel media forwarding between zones"},
	}
	if v6 {
		p.Sysctls = append(p.Sysctls,
			Sysctl{Name: "net.ipv6.conf.all.forwarding", Value: "1", Why: "kernel media forwarding between IPv6 zones"})
	}
	p.Sysctls = append(p.Sysctls,
		Sysctl{Name: "net.netfilter.nf_conntrack_acct", Value: "1", Optional: true,
			Why: "per-flow byte and packet counters for offloaded media"},
		// RTP sends a packet every 20 ms, but a call on hold may pause
		// for longer than the default 120 s of an assured UDP flow.
		Sysctl{Name: "net.netfilter.nf_conntrack_udp_timeout_stream", Value: "300", Optional: true,
			Why: "keep media flows of held calls"},
	)
	return p, true
}

// String renders the link for log lines and errors.
func (l LinkPlan) String() string {
	if l.MAC != nil {
		return fmt.Sprintf("%s (mac %s)", l.Device, l.MAC)
	}
	return l.Device
}
