package config

import (
	"bytes"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/edgesbc/edgesbc/examples"
)

// FuzzParse feeds arbitrary bytes to Parse and WriteDiagnostics. Neither may
// panic; every diagnostic must point into the file; output must not depend
// on map order; and whatever Parse accepts must satisfy the guarantees the
// rest of the appliance relies on. Crashers found locally live in
// testdata/fuzz/FuzzParse.
func FuzzParse(f *testing.F) {
	f.Add([]byte(base))
	f.Add(examples.Default)
	f.Add([]byte("zone \"a\" {\n  address = \"::1\"\n  transports = [\"tcp\", \"udp\"]\n}\npbx \"p\" {\n  zone = \"a\"\n  address = \"[::2]:5070\"\n  transport = \"tcp\"\n}\ntrunk \"t\" {\n  zone = \"a\"\n  address = \"::3\"\n  sources = [\"2001:db8::/32\"]\n  keep_headers = [\"X-A\"]\n}\nmedia {\n  port_range = \"1024-1027\"\n  quarantine = \"0s\"\n}\n"))
	f.Add([]byte("zone \"a\" {\n  address = \"${1}\"\n  sip_port = 1e100\n}\nmedia { port_range = \"-\" }\n"))
	f.Add([]byte("zone \"\xff\" { address = [for x in [1]: x] }\nsip { user_agent = \"\\u0000\" }\n"))
	f.Add([]byte(base + "access \"phones\" {\n  zone = \"public\"\n  pbx = \"main\"\n  domain = \"pbx.example.com\"\n  expires = \"30s\"\n}\n"))
	f.Add([]byte("log {\n  level = <<EOT\ninfo\nEOT\n}\n"))
	f.Add([]byte("\xef\xbb\xbfzone"))
	f.Add([]byte("zone \"a\" {\n  address = \"10.0.0.1\"\n  device = \"lan0\"\n  mac = \"52:54:00:00:00:01\"\n  prefix_length = 30\n  gateway = \"10.0.0.2\"\n}\nzone \"b\" {\n  address = \"2001:db8::1\"\n  device = \"lan0\"\n  gateway = \"2001:db8::fe\"\n}\npbx \"p\" {\n  zone = \"a\"\n  address = \"10.0.0.3\"\n}\ntrunk \"t\" {\n  zone = \"b\"\n  address = \"[2001:db8::2]:5060\"\n}\n"))

	f.Fuzz(func(t *testing.T, src []byte) {
		const name = "fuzz.hcl"
		cfg, diags := Parse(name, src)
		files := map[string][]byte{name: src}

		var out bytes.Buffer
		if err := WriteDiagnostics(&out, files, diags); err != nil {
			t.Fatalf("WriteDiagnostics: %v", err)
		}
		for _, d := range diags {
			if d.Subject == nil || d.Subject.Filename != name {
				t.Fatalf("diagnostic %q does not point into the file: %v", d.Summary, d.Subject)
			}
		}
		_, again := Parse(name, src)
		var out2 bytes.Buffer
		if err := WriteDiagnostics(&out2, files, again); err != nil {
			t.Fatalf("WriteDiagnostics: %v", err)
		}
		if !bytes.Equal(out.Bytes(), out2.Bytes()) {
			t.Fatalf("diagnostics differ between runs:\n%s\n---\n%s", out.Bytes(), out2.Bytes())
		}

		if diags.HasErrors() {
			if cfg != nil {
				t.Fatalf("Config returned with errors:\n%s", out.Bytes())
			}
			return
		}
		if cfg == nil {
			t.Fatal("no Config and no errors")
		}
		checkInvariants(t, cfg)
	})
}

// checkInvariants asserts what consumers of a valid Config may rely on
// without checking again.
func checkInvariants(t *testing.T, cfg *Config) {
	t.Helper()
	if len(cfg.Zones) == 0 {
		t.Fatal("valid Config without zones")
	}
	zones := map[string]Zone{}
	listen := map[netip.AddrPort]bool{}
	for _, z := range cfg.Zones {
		if _, dup := zones[z.Name]; dup || !validName(z.Name) {
			t.Fatalf("zone name %q duplicated or invalid", z.Name)
		}
		zones[z.Name] = z
		if !z.Address.IsValid() || z.Address.IsUnspecified() || z.SIPPort < 1 || z.SIPPort > 65535 {
			t.Fatalf("zone %q address %v port %d", z.Name, z.Address, z.SIPPort)
		}
		ap := netip.AddrPortFrom(z.Address, uint16(z.SIPPort))
		if listen[ap] {
			t.Fatalf("two zones listen on %v", ap)
		}
		listen[ap] = true
		if z.Advertise.IsValid() && z.Advertise.Is4() != z.Address.Is4() {
			t.Fatalf("zone %q advertise family mismatch", z.Name)
		}
		if len(z.Networks) == 0 || len(z.Transports) == 0 {
			t.Fatalf("zone %q has no networks or transports", z.Name)
		}
		for _, tr := range z.Transports {
			if !slices.Contains(transports, tr) {
				t.Fatalf("zone %q transport %q", z.Name, tr)
			}
		}
		if z.SIPPort >= cfg.Media.PortMin && z.SIPPort <= cfg.Media.PortMax {
			t.Fatalf("zone %q sip port inside media range", z.Name)
		}
		checkZoneDevice(t, z)
	}
	gateways := map[bool]int{}
	for _, z := range cfg.Zones {
		if z.Gateway.IsValid() {
			gateways[z.Gateway.Is4()]++
		}
	}
	if gateways[true] > 1 || gateways[false] > 1 {
		t.Fatalf("more than one default gateway per family: %v", gateways)
	}
	var pbx, trunk bool
	names := map[string]bool{}
	for _, p := range cfg.Peers {
		pbx = pbx || p.Kind == PeerPBX
		trunk = trunk || p.Kind == PeerTrunk
		if names[p.Name] || !validName(p.Name) {
			t.Fatalf("peer name %q duplicated or invalid", p.Name)
		}
		names[p.Name] = true
		z, ok := zones[p.Zone]
		if !ok {
			t.Fatalf("peer %q in unknown zone %q", p.Name, p.Zone)
		}
		if !p.Address.IsValid() || p.Address.Port() == 0 || listen[p.Address] {
			t.Fatalf("peer %q address %v", p.Name, p.Address)
		}
		if !slices.Contains(z.Transports, p.Transport) {
			t.Fatalf("peer %q transport %q not in zone %v", p.Name, p.Transport, z.Transports)
		}
		if len(p.Sources) == 0 || p.Sources[0] != hostPrefix(p.Address.Addr()) {
			t.Fatalf("peer %q sources %v do not start with its address", p.Name, p.Sources)
		}
		if p.Host == "" || !validHost(p.Host) {
			t.Fatalf("peer %q host %q", p.Name, p.Host)
		}
		for _, h := range p.KeepHeaders {
			if !validToken(h) {
				t.Fatalf("peer %q keeps header %q", p.Name, h)
			}
		}
	}
	if !pbx || !trunk {
		t.Fatal("valid Config without a pbx or a trunk")
	}
	m := cfg.Media
	if m.PortMin < 1024 || m.PortMax > 65535 || portPairs(m.PortMin, m.PortMax) < 2 || m.Timeout <= 0 || m.Quarantine < 0 {
		t.Fatalf("media %+v", m)
	}
	s := cfg.SIP
	if s.UserAgent == "" || strings.ContainsAny(s.UserAgent, "\r\n") || s.MaxMessageSize < 1024 || s.MaxMessageSize > 65535 || s.InviteTimeout <= 0 {
		t.Fatalf("sip %+v", s)
	}
	if !slices.Contains(logLevels, cfg.Log.Level) {
		t.Fatalf("log level %q", cfg.Log.Level)
	}
	// an access block the SBC can build: its zone exists, its pbx is a
	// pbx elsewhere, its domain is a name (sbc.NewServer relies on it)
	accessZones := map[string]bool{}
	for _, a := range cfg.Access {
		p, ok := cfg.Peer(a.PBX)
		if _, zok := zones[a.Zone]; !zok || !ok || p.Kind != PeerPBX || p.Zone == a.Zone || accessZones[a.Zone] {
			t.Fatalf("access %q: zone %q pbx %q (%+v)", a.Name, a.Zone, a.PBX, p)
		}
		accessZones[a.Zone] = true
		if _, err := netip.ParseAddr(a.Domain); err == nil || !validHost(a.Domain) {
			t.Fatalf("access %q domain %q", a.Name, a.Domain)
		}
		if a.Expires < minAccessExpires || a.PBXExpires < minAccessExpires || a.MaxBindings < 1 {
			t.Fatalf("access %q: %+v", a.Name, a)
		}
	}
}

// checkZoneDevice asserts what the network setup relies on: a valid
// interface name, a unicast Ethernet MAC, a prefix length that fits the
// address, and an on-link gateway of the same family; none of it without a
// device.
func checkZoneDevice(t *testing.T, z Zone) {
	t.Helper()
	if z.Device == "" {
		if z.MAC != nil || z.PrefixLength != 0 || z.Gateway.IsValid() {
			t.Fatalf("zone %q has network settings without a device", z.Name)
		}
		return
	}
	if checkDeviceName(z.Device) != nil {
		t.Fatalf("zone %q device %q", z.Name, z.Device)
	}
	if z.MAC != nil && (len(z.MAC) != 6 || z.MAC[0]&1 == 1) {
		t.Fatalf("zone %q mac %v", z.Name, z.MAC)
	}
	if z.PrefixLength < 1 || z.PrefixLength > z.Address.BitLen() {
		t.Fatalf("zone %q prefix length %d for %v", z.Name, z.PrefixLength, z.Address)
	}
	if z.Gateway.IsValid() && (z.Gateway.Is4() != z.Address.Is4() || z.Gateway == z.Address ||
		!netip.PrefixFrom(z.Address, z.PrefixLength).Masked().Contains(z.Gateway)) {
		t.Fatalf("zone %q gateway %v for %v/%d", z.Name, z.Gateway, z.Address, z.PrefixLength)
	}
}
