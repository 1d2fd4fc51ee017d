//go:build linux

package appliance

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"sort"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// linkPoll is how often SetupNetwork looks again for an interface that is
// not there yet.
const linkPoll = 100 * time.Millisecond

// SetupNetwork brings the interfaces, addresses, default routes and sysctls
// of plan into place. It only adds and changes what plan names; other
// interfaces, addresses and routes are left alone. Each change is logged. A
// named interface that does not appear within opts.LinkWait is an error that
// says what was looked for and which interfaces exist.
func SetupNetwork(ctx context.Context, plan NetworkPlan, opts NetworkOptions, log hclog.Logger) error {
	h, err := openNetlink(opts.Netns)
	if err != nil {
		return err
	}
	defer h.Close()
	wait := opts.LinkWait
	if wait <= 0 {
		wait = DefaultLinkWait
	}
	index := map[string]int{}
	for _, l := range plan.Links {
		link, err := waitLink(ctx, h, l, wait)
		if err != nil {
			return err
		}
		if link, err = nameLink(h, link, l, log); err != nil {
			return err
		}
		if link.Attrs().Flags&net.FlagUp == 0 {
			if err := h.LinkSetUp(link); err != nil {
				return fmt.Errorf("bring up %s: %w", l.Device, err)
			}
			log.Info("interface up", "device", l.Device, "zones", strings.Join(l.Zones, ","))
		}
		for _, p := range l.Addrs {
			if err := ensureAddr(h, link, p, log); err != nil {
				return err
			}
		}
		index[l.Device] = link.Attrs().Index
	}
	for _, r := range plan.Routes {
		if err := ensureDefaultRoute(h, r, index[r.Device], log); err != nil {
			return err
		}
	}
	return inNetns(opts.Netns, func() error {
		for _, s := range plan.Sysctls {
			if err := ensureSysctl(s, log); err != nil {
				return err
			}
		}
		return nil
	})
}

// openNetlink returns a netlink handle on the namespace at path, or on the
// process's own namespace when path is empty.
func openNetlink(path string) (*netlink.Handle, error) {
	if path == "" {
		h, err := netlink.NewHandle()
		if err != nil {
			return nil, fmt.Errorf("open netlink: %w", err)
		}
		return h, nil
	}
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return nil, fmt.Errorf("open network namespace %s: %w", path, err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return nil, fmt.Errorf("open netlink in %s: %w", path, err)
	}
	return h, nil
}

// inNetns runs fn on an OS thread that has joined the namespace at path, so
// that what fn opens under /proc/sys/net belongs to that namespace. The
// thread returns to its own namespace before it is unlocked; if it cannot,
// it stays locked and the runtime discards it with the goroutine, so no
// other goroutine ever runs in the wrong namespace.
func inNetns(path string, fn func() error) error {
	if path == "" {
		return fn()
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		errc <- func() error {
			own, err := netns.Get()
			if err != nil {
				return fmt.Errorf("open own network namespace: %w", err)
			}
			defer own.Close()
			target, err := netns.GetFromPath(path)
			if err != nil {
				return fmt.Errorf("open network namespace %s: %w", path, err)
			}
			defer target.Close()
			if err := netns.Set(target); err != nil {
				return fmt.Errorf("enter network namespace %s: %w", path, err)
			}
			ferr := fn()
			if err := netns.Set(own); err != nil {
				return fmt.Errorf("return from network namespace %s: %w", path, err)
			}
			runtime.UnlockOSThread()
			return ferr
		}()
	}()
	return <-errc
}

// waitLink finds the interface l names, by MAC when it has one, else by
// name, polling until wait has passed.
func waitLink(ctx context.Context, h *netlink.Handle, l LinkPlan, wait time.Duration) (netlink.Link, error) {
	deadline := time.Now().Add(wait)
	for {
		links, err := h.LinkList()
		if err != nil {
			return nil, fmt.Errorf("list interfaces: %w", err)
		}
		if link := matchLink(links, l); link != nil {
			return link, nil
		}
		if time.Now().After(deadline) {
			what := fmt.Sprintf("no network interface named %q", l.Device)
			if l.MAC != nil {
				what = fmt.Sprintf("no network interface with MAC %s (to be named %q)", l.MAC, l.Device)
			}
			return nil, fmt.Errorf("zone %s: %s appeared within %v; interfaces present: %s",
				strings.Join(l.Zones, ","), what, wait, describeLinks(links))
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("wait for interface %s: %w", l, ctx.Err())
		case <-time.After(linkPoll):
		}
	}
}

// matchLink picks the interface for l. With a MAC, an interface that already
// has the wanted name wins over others sharing the address (a bridge or VLAN
// on top of the NIC).
func matchLink(links []netlink.Link, l LinkPlan) netlink.Link {
	var found netlink.Link
	for _, link := range links {
		a := link.Attrs()
		switch {
		case l.MAC == nil:
			if a.Name == l.Device {
				return link
			}
		case bytes.Equal(a.HardwareAddr, l.MAC):
			if a.Name == l.Device {
				return link
			}
			if found == nil {
				found = link
			}
		}
	}
	return found
}

func describeLinks(links []netlink.Link) string {
	var out []string
	for _, link := range links {
		a := link.Attrs()
		if a.Flags&net.FlagLoopback != 0 {
			continue
		}
		s := a.Name
		if len(a.HardwareAddr) > 0 {
			s += " " + a.HardwareAddr.String()
		}
		out = append(out, s)
	}
	if len(out) == 0 {
		return "none besides loopback"
	}
	sort.Strings(out)
	return strings.Join(out, ", ")
}

// nameLink renames link to l.Device when it was found by MAC under another
// name. The kernel renames only interfaces that are down.
func nameLink(h *netlink.Handle, link netlink.Link, l LinkPlan, log hclog.Logger) (netlink.Link, error) {
	old := link.Attrs().Name
	if old == l.Device {
		return link, nil
	}
	if other, err := h.LinkByName(l.Device); err == nil {
		return nil, fmt.Errorf("zone %s: cannot rename %s (mac %s) to %s: another interface has that name (mac %s)",
			strings.Join(l.Zones, ","), old, l.MAC, l.Device, other.Attrs().HardwareAddr)
	}
	if link.Attrs().Flags&net.FlagUp != 0 {
		if err := h.LinkSetDown(link); err != nil {
			return nil, fmt.Errorf("take %s down to rename it: %w", old, err)
		}
	}
	if err := h.LinkSetName(link, l.Device); err != nil {
		return nil, fmt.Errorf("rename %s to %s: %w", old, l.Device, err)
	}
	log.Info("interface renamed", "from", old, "to", l.Device, "mac", l.MAC.String())
	renamed, err := h.LinkByIndex(link.Attrs().Index)
	if err != nil {
		return nil, fmt.Errorf("look up %s after rename: %w", l.Device, err)
	}
	return renamed, nil
}

// ensureAddr assigns p to link unless it is there already. An existing
// address with another prefix length is replaced. IPv6 addresses skip
// duplicate address detection, so SIP can bind them at once.
func ensureAddr(h *netlink.Handle, link netlink.Link, p netip.Prefix, log hclog.Logger) error {
	family := netlink.FAMILY_V4
	if p.Addr().Is6() {
		family = netlink.FAMILY_V6
	}
	have, err := h.AddrList(link, family)
	if err != nil {
		return fmt.Errorf("list addresses of %s: %w", link.Attrs().Name, err)
	}
	for _, a := range have {
		if got, ok := prefixOf(a.IPNet); ok && got == p {
			return nil
		}
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{
		IP:   net.IP(p.Addr().AsSlice()),
		Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen()),
	}}
	if p.Addr().Is6() {
		addr.Flags = unix.IFA_F_NODAD
	}
	if err := h.AddrReplace(link, addr); err != nil {
		return fmt.Errorf("assign %v to %s: %w", p, link.Attrs().Name, err)
	}
	log.Info("address assigned", "device", link.Attrs().Name, "address", p.String())
	return nil
}

func prefixOf(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones), true
}

// ensureDefaultRoute points the default route of r's family at r.Gateway on
// the zone's device, replacing another default route of that family.
func ensureDefaultRoute(h *netlink.Handle, r DefaultRoute, linkIndex int, log hclog.Logger) error {
	family, bits := netlink.FAMILY_V4, 32
	if r.Gateway.Is6() {
		family, bits = netlink.FAMILY_V6, 128
	}
	gw := net.IP(r.Gateway.AsSlice())
	routes, err := h.RouteList(nil, family)
	if err != nil {
		return fmt.Errorf("list routes: %w", err)
	}
	for _, rt := range routes {
		if isDefault(rt.Dst) && rt.Gw.Equal(gw) && rt.LinkIndex == linkIndex {
			return nil
		}
	}
	dst := &net.IPNet{IP: make(net.IP, bits/8), Mask: net.CIDRMask(0, bits)}
	if err := h.RouteReplace(&netlink.Route{LinkIndex: linkIndex, Dst: dst, Gw: gw}); err != nil {
		return fmt.Errorf("zone %s: set default route via %v on %s: %w", r.Zone, r.Gateway, r.Device, err)
	}
	log.Info("default route set", "zone", r.Zone, "device", r.Device, "gateway", r.Gateway.String())
	return nil
}

func isDefault(dst *net.IPNet) bool {
	if dst == nil {
		return true
	}
	ones, _ := dst.Mask.Size()
	return ones == 0
}

// ensureSysctl writes s under /proc/sys unless it already has the value.
func ensureSysctl(s Sysctl, log hclog.Logger) error {
	path := "/proc/sys/" + strings.ReplaceAll(s.Name, ".", "/")
	old, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) && s.Optional {
			log.Info("sysctl not available, skipped", "name", s.Name, "why", s.Why)
			return nil
		}
		return fmt.Errorf("read sysctl %s: %w", s.Name, err)
	}
	if strings.TrimSpace(string(old)) == s.Value {
		return nil
	}
	if err := os.WriteFile(path, []byte(s.Value+"\n"), 0o644); err != nil {
		return fmt.Errorf("set sysctl %s=%s: %w", s.Name, s.Value, err)
	}
	log.Info("sysctl set", "name", s.Name, "from", strings.TrimSpace(string(old)), "to", s.Value, "why", s.Why)
	return nil
}
