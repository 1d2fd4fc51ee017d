package appliance

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/edgesbc/edgesbc/appliance/config"
)

// TestPinholeAddrs: the firewall closes the media ports of the zones that
// have trunks unless the file names others.
func TestPinholeAddrs(t *testing.T) {
	const zones = `zone "private" {
  address = "10.91.1.1"
}
zone "public" {
  address = "203.0.113.1"
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
	for _, tc := range []struct {
		name, media string
		want        []netip.Addr
	}{
		{"default: zones with trunks", "", []netip.Addr{netip.MustParseAddr("203.0.113.1")}},
		{"none", "media {\n  pinhole_zones = []\n}\n", nil},
		{"both", "media {\n  pinhole_zones = [\"private\", \"public\"]\n}\n",
			[]netip.Addr{netip.MustParseAddr("10.91.1.1"), netip.MustParseAddr("203.0.113.1")}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, diags := config.Parse("test.hcl", []byte(zones+tc.media))
			if diags.HasErrors() {
				t.Fatal(diags.Error())
			}
			if got := pinholeAddrs(cfg); !slices.Equal(got, tc.want) {
				t.Errorf("pinholeAddrs = %v, want %v", got, tc.want)
			}
		})
	}
}
