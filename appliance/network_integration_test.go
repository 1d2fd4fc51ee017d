//go:build linux

package appliance

import (
	"bytes"
	"context"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/edgesbc/edgesbc/appliance/config"
	"github.com/edgesbc/edgesbc/internal/testenv"
)

const netConfig = `zone "private" {
  address = "10.91.1.1"
  device  = "lan0"
}
zone "public" {
  address       = "203.0.113.1"
  device        = "wan0"
  mac           = "52:54:00:e5:bc:02"
  prefix_length = 24
  gateway       = "203.0.113.254"
}
pbx "main" {
  zone    = "private"
  address = "10.91.1.2:5060"
}
trunk "carrier" {
  zone    = "public"
  address = "203.0.113.2:5060"
}
`

// ipIn runs ip(8) to build the test's fixture.
func ipIn(t *testing.T, args ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

func parseNet(t *testing.T, src string) NetworkPlan {
	t.Helper()
	cfg, diags := config.Parse("net.hcl", []byte(src))
	if diags.HasErrors() {
		t.Fatalf("parse: %v", diags)
	}
	plan, ok := PlanNetwork(cfg)
	if !ok {
		t.Fatal("PlanNetwork: no plan for zones with devices")
	}
	return plan
}

// TestIntegrationSetupNetwork configures a namespace the way the appliance
// configures its own at boot: one NIC found by name, one found by MAC under
// a kernel name and renamed, addresses, the default route and sysctls. It
// checks the result with netlink inside that namespace.
func TestIntegrationSetupNetwork(t *testing.T) {
	testenv.Integration(t)
	sbc := testenv.NewNetns(t, "esbc-net")
	peer := testenv.NewNetns(t, "esbc-netp")
	// lan0 exists under its final name; the public NIC comes up as "eth7"
	// with the configured MAC and must be renamed to wan0.
	ipIn(t, "link", "add", "lan0", "netns", sbc.Name, "type", "veth", "peer", "name", "pbx0", "netns", peer.Name)
	ipIn(t, "link", "add", "eth7", "netns", sbc.Name, "address", "52:54:00:e5:bc:02", "type", "veth", "peer", "name", "carrier0", "netns", peer.Name)
	ipIn(t, "-n", peer.Name, "link", "set", "pbx0", "up")
	ipIn(t, "-n", peer.Name, "link", "set", "carrier0", "up")

	plan := parseNet(t, netConfig)
	var logs bytes.Buffer
	log := hclog.New(&hclog.LoggerOptions{Output: &logs, Level: hclog.Info})
	opts := NetworkOptions{Netns: "/run/netns/" + sbc.Name, LinkWait: 2 * time.Second}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := SetupNetwork(ctx, plan, opts, log); err != nil {
		t.Fatalf("SetupNetwork: %v\n%s", err, logs.String())
	}

	ns, err := netns.GetFromPath(opts.Netns)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if _, err := h.LinkByName("eth7"); err == nil {
		t.Error("eth7 still exists; want it renamed to wan0")
	}
	wantAddrs := map[string]string{"lan0": "10.91.1.1/24", "wan0": "203.0.113.1/24"}
	for dev, want := range wantAddrs {
		link, err := h.LinkByName(dev)
		if err != nil {
			t.Fatalf("link %s: %v", dev, err)
		}
		if link.Attrs().Flags&net.FlagUp == 0 {
			t.Errorf("%s is down", dev)
		}
		addrs, err := h.AddrList(link, netlink.FAMILY_V4)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, a := range addrs {
			got = append(got, a.IPNet.String())
		}
		if len(got) != 1 || got[0] != want {
			t.Errorf("%s addresses = %v, want [%s]", dev, got, want)
		}
	}
	wan, _ := h.LinkByName("wan0")
	if mac := wan.Attrs().HardwareAddr.String(); mac != "52:54:00:e5:bc:02" {
		t.Errorf("wan0 mac = %s, want 52:54:00:e5:bc:02", mac)
	}
	routes, err := h.RouteList(nil, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	defaults := 0
	for _, r := range routes {
		if isDefault(r.Dst) {
			defaults++
			if r.Gw.String() != "203.0.113.254" || r.LinkIndex != wan.Attrs().Index {
				t.Errorf("default route via %v on link %d, want 203.0.113.254 on wan0 (%d)", r.Gw, r.LinkIndex, wan.Attrs().Index)
			}
		}
	}
	if defaults != 1 {
		t.Errorf("%d default routes, want 1", defaults)
	}
	out, err := sbc.Command(ctx, "cat", "/proc/sys/net/ipv4/ip_forward").Output()
	if err != nil || strings.TrimSpace(string(out)) != "1" {
		t.Errorf("ip_forward in %s = %q (%v), want 1", sbc, out, err)
	}
	for _, want := range []string{"interface renamed: from=eth7 to=wan0", "address assigned: device=lan0", "default route set", "sysctl set: name=net.ipv4.ip_forward"} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("log lacks %q:\n%s", want, logs.String())
		}
	}

	// A second run finds everything in place and changes nothing.
	logs.Reset()
	if err := SetupNetwork(ctx, plan, opts, log); err != nil {
		t.Fatalf("second SetupNetwork: %v", err)
	}
	if logs.Len() != 0 {
		t.Errorf("second run logged changes:\n%s", logs.String())
	}
}

// TestIntegrationSetupNetworkMissingDevice checks that a NIC named in the
// config but absent makes setup fail, bounded in time, with a message that
// says what was missing and what exists.
func TestIntegrationSetupNetworkMissingDevice(t *testing.T) {
	testenv.Integration(t)
	sbc := testenv.NewNetns(t, "esbc-net")
	peer := testenv.NewNetns(t, "esbc-netp")
	ipIn(t, "link", "add", "lan0", "netns", sbc.Name, "address", "52:54:00:e5:bc:01", "type", "veth", "peer", "name", "pbx0", "netns", peer.Name)
	opts := NetworkOptions{Netns: "/run/netns/" + sbc.Name, LinkWait: 500 * time.Millisecond}
	log := hclog.NewNullLogger()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	for _, tc := range []struct{ name, src, want string }{
		{"by mac", netConfig, `no network interface with MAC 52:54:00:e5:bc:02 (to be named "wan0") appeared within 500ms; interfaces present: lan0 52:54:00:e5:bc:01`},
		{"by name", strings.Replace(netConfig, "  mac           = \"52:54:00:e5:bc:02\"\n", "", 1), `zone public: no network interface named "wan0" appeared within 500ms`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			err := SetupNetwork(ctx, parseNet(t, tc.src), opts, log)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("SetupNetwork error = %v, want it to contain %q", err, tc.want)
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Errorf("took %v to give up, want about 500ms", d)
			}
		})
	}
}
