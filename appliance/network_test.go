package appliance

import (
	"net/netip"
	"testing"

	"github.com/edgesbc/edgesbc/appliance/config"
)

func TestPlanNetwork(t *testing.T) {
	src := `zone "private" {
  address = "10.91.1.1"
  device  = "lan0"
}
zone "voice" {
  address       = "10.92.1.1"
  device        = "lan0"
  prefix_length = 16
}
zone "public" {
  address = "2001:db8::1"
  device  = "wan0"
  mac     = "52:54:00:e5:bc:02"
  gateway = "2001:db8::fe"
}
pbx "main" {
  zone    = "private"
  address = "10.91.1.2"
}
trunk "carrier" {
  zone    = "public"
  address = "[2001:db8::2]:5060"
}
`
	cfg, diags := config.Parse("plan.hcl", []byte(src))
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	plan, ok := PlanNetwork(cfg)
	if !ok {
		t.Fatal("no plan")
	}
	if len(plan.Links) != 2 {
		t.Fatalf("links = %+v, want lan0 and wan0", plan.Links)
	}
	lan := plan.Links[0]
	if lan.Device != "lan0" || len(lan.Addrs) != 2 || lan.Addrs[0] != netip.MustParsePrefix("10.91.1.1/24") || lan.Addrs[1] != netip.MustParsePrefix("10.92.1.1/16") {
		t.Errorf("lan0 plan = %+v", lan)
	}
	if wan := plan.Links[1]; wan.MAC.String() != "52:54:00:e5:bc:02" || wan.Addrs[0] != netip.MustParsePrefix("2001:db8::1/64") {
		t.Errorf("wan0 plan = %+v", wan)
	}
	if len(plan.Routes) != 1 || plan.Routes[0].Device != "wan0" || plan.Routes[0].Gateway != netip.MustParseAddr("2001:db8::fe") {
		t.Errorf("routes = %+v", plan.Routes)
	}
	names := map[string]bool{}
	for _, s := range plan.Sysctls {
		names[s.Name] = true
	}
	if !names["net.ipv4.ip_forward"] || !names["net.ipv6.conf.all.forwarding"] {
		t.Errorf("sysctls = %+v, want IPv4 and IPv6 forwarding", plan.Sysctls)
	}

	plain, diags := config.Parse("plain.hcl", []byte(`zone "a" {
  address = "10.91.1.1"
}
zone "b" {
  address = "203.0.113.1"
}
pbx "p" {
  zone    = "a"
  address = "10.91.1.2"
}
trunk "t" {
  zone    = "b"
  address = "203.0.113.2"
}
`))
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	if _, ok := PlanNetwork(plain); ok {
		t.Error("a config without devices yields a network plan")
	}
}
