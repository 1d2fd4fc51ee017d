package config

import (
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/hcl/v2"
)

// base is a minimal valid file. Error cases append a snippet to it, so each
// case shows only what it breaks; their wantLine counts from the snippet's
// first line.
const base = `zone "private" {
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

var baseLines = strings.Count(base, "\n")

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name string
		hcl  string
		// whole means hcl is the entire file; otherwise it is appended
		// to base and wantLine counts from its first line.
		whole    bool
		wantErr  string // substring of "summary: detail" of the first error
		wantLine int
		wantCol  int
		// wantErrs is the number of errors expected; 0 means 1.
		wantErrs int
	}{
		// Syntax and schema, reported by the HCL parser and gohcl.
		{name: "syntax error", hcl: "zone \"x\" {\n  address = \n}\n",
			wantErr: "Invalid expression", wantLine: 2, wantCol: 13},
		{name: "unknown attribute", hcl: "media {\n  colour = \"blue\"\n}\n",
			wantErr: `argument named "colour" is not expected`, wantLine: 2, wantCol: 3},
		{name: "unknown block", hcl: "dial_plan {\n}\n",
			wantErr: `Blocks of type "dial_plan" are not expected`, wantLine: 1, wantCol: 1},
		{name: "duplicate singleton block", hcl: "media {\n}\nmedia {\n}\n",
			wantErr: "Duplicate media block", wantLine: 3, wantCol: 1},
		{name: "extra label", hcl: "media \"x\" {\n}\n",
			wantErr: "Extraneous label", wantLine: 1, wantCol: 7},
		{name: "pbx with bad labels is not also missing", whole: true,
			hcl:     "zone \"private\" {\n  address = \"10.91.1.1\"\n}\npbx \"main\" \"extra\" {\n}\ntrunk \"carrier\" {\n  zone    = \"private\"\n  address = \"10.91.1.3\"\n}\n",
			wantErr: "Extraneous label for pbx", wantLine: 4, wantCol: 12},
		{name: "missing label", hcl: "zone {\n  address = \"10.91.1.9\"\n}\n",
			wantErr: "Missing name for zone", wantLine: 1, wantCol: 6},
		{name: "variables not allowed", hcl: "zone \"dmz\" {\n  address = var.ip\n}\n",
			wantErr: "Variables not allowed", wantLine: 2, wantCol: 13},
		{name: "wrong value type", hcl: "zone \"dmz\" {\n  address = \"10.91.1.9\"\n  sip_port = \"five\"\n}\n",
			wantErr: "Unsuitable value", wantLine: 3, wantCol: 14},
		{name: "null value", hcl: "sip {\n  user_agent = null\n}\n",
			wantErr: "null value is not allowed", wantLine: 2, wantCol: 16},

		// Zones.
		{name: "duplicate zone name", hcl: "zone \"private\" {\n  address = \"10.91.1.9\"\n}\n",
			wantErr: `A zone named "private" is already defined at test.hcl:1`, wantLine: 1, wantCol: 6},
		{name: "invalid zone name", hcl: "zone \"dm z\" {\n  address = \"10.91.1.9\"\n}\n",
			wantErr: "Invalid zone name", wantLine: 1, wantCol: 6},
		{name: "zone without address", hcl: "zone \"dmz\" {\n  sip_port = 5070\n}\n",
			wantErr: `Zone "dmz" needs address`, wantLine: 1, wantCol: 1},
		{name: "zone address syntax", hcl: "zone \"dmz\" {\n  address = \"10.91.1\"\n}\n",
			wantErr: "Invalid IP address", wantLine: 2, wantCol: 13},
		{name: "zone address unspecified", hcl: "zone \"dmz\" {\n  address = \"0.0.0.0\"\n}\n",
			wantErr: "unspecified address", wantLine: 2, wantCol: 13},
		{name: "zone address multicast", hcl: "zone \"dmz\" {\n  address = \"ff02::1\"\n}\n",
			wantErr: "multicast", wantLine: 2, wantCol: 13},
		{name: "zone address scoped", hcl: "zone \"dmz\" {\n  address = \"fe80::1%eth0\"\n}\n",
			wantErr: "zone index", wantLine: 2, wantCol: 13},
		{name: "sip_port too large", hcl: "zone \"dmz\" {\n  address  = \"10.91.1.9\"\n  sip_port = 70000\n}\n",
			wantErr: "sip_port must be between 1 and 65535, got 70000", wantLine: 3, wantCol: 14},
		{name: "sip_port zero", hcl: "zone \"dmz\" {\n  address  = \"10.91.1.9\"\n  sip_port = 0\n}\n",
			wantErr: "Port out of range", wantLine: 3, wantCol: 14},
		{name: "sip_port fraction", hcl: "zone \"dmz\" {\n  address  = \"10.91.1.9\"\n  sip_port = 50.5\n}\n",
			wantErr: "Unsuitable value", wantLine: 3, wantCol: 14},
		{name: "advertise syntax", hcl: "zone \"dmz\" {\n  address   = \"10.91.1.9\"\n  advertise = \"198.51.100\"\n}\n",
			wantErr: "Invalid IP address: advertise", wantLine: 3, wantCol: 15},
		{name: "advertise family mismatch", hcl: "zone \"dmz\" {\n  address   = \"10.91.1.9\"\n  advertise = \"2001:db8::7\"\n}\n",
			wantErr: "Address family mismatch", wantLine: 3, wantCol: 15},
		{name: "networks bad element", hcl: "zone \"dmz\" {\n  address = \"10.91.1.9\"\n  networks = [\"10.0.0.0/8\", \"10.0.0.0/33\"]\n}\n",
			wantErr: "Invalid address prefix", wantLine: 3, wantCol: 29},
		{name: "networks not a list", hcl: "zone \"dmz\" {\n  address = \"10.91.1.9\"\n  networks = \"10.0.0.0/8\"\n}\n",
			wantErr: "Unsuitable value", wantLine: 3, wantCol: 14},
		{name: "networks empty", hcl: "zone \"dmz\" {\n  address = \"10.91.1.9\"\n  networks = []\n}\n",
			wantErr: "Empty networks", wantLine: 3, wantCol: 14},
		{name: "transport unknown", hcl: "zone \"dmz\" {\n  address = \"10.91.1.9\"\n  transports = [\"udp\", \"sctp\"]\n}\n",
			wantErr: `Transport "sctp" is not supported; use "udp" or "tcp"`, wantLine: 3, wantCol: 24},
		{name: "transport twice", hcl: "zone \"dmz\" {\n  address = \"10.91.1.9\"\n  transports = [\"udp\", \"UDP\"]\n}\n",
			wantErr: "Duplicate transport", wantLine: 3, wantCol: 24},
		{name: "transports empty", hcl: "zone \"dmz\" {\n  address = \"10.91.1.9\"\n  transports = []\n}\n",
			wantErr: "Empty transports", wantLine: 3, wantCol: 16},
		{name: "two zones on one address and port", hcl: "zone \"dmz\" {\n  address = \"10.91.1.1\"\n}\n",
			wantErr: `Zone "private" (test.hcl:1) already listens on 10.91.1.1:5060`, wantLine: 2, wantCol: 13},
		{name: "two zones on one address and explicit port", hcl: "zone \"dmz\" {\n  address  = \"203.0.113.1\"\n  sip_port = 5060\n}\n",
			wantErr: `Zone "public" (test.hcl:4) already listens on 203.0.113.1:5060`, wantLine: 2, wantCol: 14},

		// Zone network interfaces.
		{name: "mac without device", hcl: "zone \"dmz\" {\n  address = \"10.91.1.9\"\n  mac = \"52:54:00:00:00:01\"\n}\n",
			wantErr: "Argument needs device: mac configures the zone's network interface", wantLine: 3, wantCol: 3},
		{name: "gateway without device", hcl: "zone \"dmz\" {\n  address = \"10.91.1.9\"\n  gateway = \"10.91.1.254\"\n}\n",
			wantErr: "Argument needs device: gateway", wantLine: 3, wantCol: 3},
		{name: "device name too long", hcl: "zone \"dmz\" {\n  address = \"10.91.1.9\"\n  device = \"averyverylongname0\"\n}\n",
			wantErr: "Invalid device name: device: \"averyverylongname0\" is longer than 15 bytes", wantLine: 3, wantCol: 12},
		{name: "device name with slash", hcl: "zone \"dmz\" {\n  address = \"10.91.1.9\"\n  device = \"eth/0\"\n}\n",
			wantErr: "Invalid device name", wantLine: 3, wantCol: 12},
		{name: "mac syntax", hcl: "zone \"dmz\" {\n  address = \"10.91.1.9\"\n  device = \"dmz0\"\n  mac = \"52:54:00:00:01\"\n}\n",
			wantErr: "Invalid MAC address", wantLine: 4, wantCol: 9},
		{name: "mac multicast", hcl: "zone \"dmz\" {\n  address = \"10.91.1.9\"\n  device = \"dmz0\"\n  mac = \"01:00:5e:00:00:01\"\n}\n",
			wantErr: "multicast address; no interface has it", wantLine: 4, wantCol: 9},
		{name: "prefix length too long for IPv4", hcl: "zone \"dmz\" {\n  address = \"10.91.1.9\"\n  device = \"dmz0\"\n  prefix_length = 33\n}\n",
			wantErr: "prefix_length must be between 1 and 32, got 33", wantLine: 4, wantCol: 19},
		{name: "gateway family", hcl: "zone \"dmz\" {\n  address = \"10.91.1.9\"\n  device = \"dmz0\"\n  gateway = \"2001:db8::1\"\n}\n",
			wantErr: "Address family mismatch: gateway", wantLine: 4, wantCol: 13},
		{name: "gateway off link", hcl: "zone \"dmz\" {\n  address = \"10.91.1.9\"\n  device = \"dmz0\"\n  prefix_length = 28\n  gateway = \"10.91.1.30\"\n}\n",
			wantErr: "gateway 10.91.1.30 is outside 10.91.1.9/28", wantLine: 5, wantCol: 13},
		{name: "gateway is own address", hcl: "zone \"dmz\" {\n  address = \"10.91.1.9\"\n  device = \"dmz0\"\n  gateway = \"10.91.1.9\"\n}\n",
			wantErr: "zone's own address", wantLine: 4, wantCol: 13},
		{name: "two default gateways", hcl: "zone \"a\" {\n  address = \"10.92.1.9\"\n  device = \"a0\"\n  gateway = \"10.92.1.1\"\n}\nzone \"b\" {\n  address = \"10.93.1.9\"\n  device = \"b0\"\n  gateway = \"10.93.1.1\"\n}\n",
			wantErr: `Second default route: Zone "a" (test.hcl:15) already sets the default gateway 10.92.1.1`, wantLine: 9, wantCol: 13},
		{name: "one mac two devices", hcl: "zone \"a\" {\n  address = \"10.92.1.9\"\n  device = \"a0\"\n  mac = \"52:54:00:00:00:01\"\n}\nzone \"b\" {\n  address = \"10.93.1.9\"\n  device = \"b0\"\n  mac = \"52:54:00:00:00:01\"\n}\n",
			wantErr: "MAC address used twice", wantLine: 9, wantCol: 9},
		{name: "one device two macs", hcl: "zone \"a\" {\n  address = \"10.92.1.9\"\n  device = \"a0\"\n  mac = \"52:54:00:00:00:01\"\n}\nzone \"b\" {\n  address = \"10.93.1.9\"\n  device = \"a0\"\n  mac = \"52:54:00:00:00:02\"\n}\n",
			wantErr: "Conflicting MAC addresses", wantLine: 9, wantCol: 9},

		// Peers.
		{name: "duplicate peer name same kind", hcl: "pbx \"main\" {\n  zone    = \"private\"\n  address = \"10.91.1.3\"\n}\n",
			wantErr: `A pbx named "main" is already defined at test.hcl:7`, wantLine: 1, wantCol: 5},
		{name: "duplicate peer name across kinds", hcl: "trunk \"main\" {\n  zone    = \"public\"\n  address = \"203.0.113.3\"\n}\n",
			wantErr: `A pbx named "main" is already defined at test.hcl:7`, wantLine: 1, wantCol: 7},
		{name: "invalid peer name", hcl: "trunk \"-x\" {\n  zone    = \"public\"\n  address = \"203.0.113.3\"\n}\n",
			wantErr: "Invalid trunk name", wantLine: 1, wantCol: 7},
		{name: "unknown zone lists zones", hcl: "pbx \"b\" {\n  zone    = \"privat\"\n  address = \"10.91.1.3\"\n}\n",
			wantErr: `No zone block is named "privat"; defined zones: "private", "public"`, wantLine: 2, wantCol: 13},
		{name: "peer without zone", hcl: "pbx \"b\" {\n  address = \"10.91.1.3\"\n}\n",
			wantErr: `pbx "b" needs zone`, wantLine: 1, wantCol: 1},
		{name: "peer without address", hcl: "trunk \"b\" {\n  zone = \"public\"\n}\n",
			wantErr: `trunk "b" needs address`, wantLine: 1, wantCol: 1},
		{name: "peer address syntax", hcl: "pbx \"b\" {\n  zone    = \"private\"\n  address = \"pbx.example.com:5060\"\n}\n",
			wantErr: `is not "ip", "ip:port" or "[ipv6]:port"`, wantLine: 3, wantCol: 13},
		{name: "peer port out of range", hcl: "pbx \"b\" {\n  zone    = \"private\"\n  address = \"10.91.1.3:65536\"\n}\n",
			wantErr: `invalid port "65536"`, wantLine: 3, wantCol: 13},
		{name: "peer port zero", hcl: "pbx \"b\" {\n  zone    = \"private\"\n  address = \"10.91.1.3:0\"\n}\n",
			wantErr: "port 0", wantLine: 3, wantCol: 13},
		{name: "peer ipv6 port out of range", hcl: "pbx \"b\" {\n  zone    = \"private\"\n  address = \"[2001:db8::3]:99999\"\n}\n",
			wantErr: `invalid port "99999"`, wantLine: 3, wantCol: 13},
		{name: "peer address unspecified", hcl: "pbx \"b\" {\n  zone    = \"private\"\n  address = \"0.0.0.0:5060\"\n}\n",
			wantErr: "unspecified address", wantLine: 3, wantCol: 13},
		{name: "peer address is a zone address", hcl: "pbx \"loop\" {\n  zone    = \"private\"\n  address = \"10.91.1.1\"\n}\n",
			wantErr: `is a SIP address of zone "private" (test.hcl:1)`, wantLine: 3, wantCol: 13},
		{name: "peer address is another zone's address", hcl: "pbx \"loop\" {\n  zone    = \"private\"\n  address = \"203.0.113.1:5060\"\n}\n",
			wantErr: `would loop back into the SBC`, wantLine: 3, wantCol: 13},
		{name: "two peers on one address", hcl: "pbx \"second\" {\n  zone    = \"private\"\n  address = \"10.91.1.2\"\n}\n",
			wantErr: `pbx "main" (test.hcl:7) already uses 10.91.1.2:5060 over udp in zone "private"`, wantLine: 3, wantCol: 13},
		{name: "peer transport unknown", hcl: "trunk \"t\" {\n  zone      = \"public\"\n  address   = \"203.0.113.9\"\n  transport = \"tls\"\n}\n",
			wantErr: `Transport "tls" is not supported`, wantLine: 4, wantCol: 15},
		{name: "peer transport not in zone", hcl: "trunk \"t\" {\n  zone      = \"public\"\n  address   = \"203.0.113.9\"\n  transport = \"tcp\"\n}\n",
			wantErr: `zone "public" listens only on "udp"`, wantLine: 4, wantCol: 15},
		{name: "invalid host", hcl: "trunk \"t\" {\n  zone    = \"public\"\n  address = \"203.0.113.9\"\n  host    = \"sip_carrier.example\"\n}\n",
			wantErr: "Invalid host", wantLine: 4, wantCol: 13},
		{name: "keep_headers not a token", hcl: "trunk \"t\" {\n  zone         = \"public\"\n  address      = \"203.0.113.9\"\n  keep_headers = [\"X-Good\", \"P Asserted\"]\n}\n",
			wantErr: "Invalid header name", wantLine: 4, wantCol: 29},
		{name: "keep_headers managed header", hcl: "trunk \"t\" {\n  zone         = \"public\"\n  address      = \"203.0.113.9\"\n  keep_headers = [\"m\"]\n}\n",
			wantErr: "The SBC rewrites Contact", wantLine: 4, wantCol: 19},
		{name: "keep_headers duplicate", hcl: "trunk \"t\" {\n  zone         = \"public\"\n  address      = \"203.0.113.9\"\n  keep_headers = [\"X-A\", \"x-a\"]\n}\n",
			wantErr: `"x-a" is already listed at test.hcl:` + strconv.Itoa(baseLines+4) + ":19", wantLine: 4, wantCol: 26},
		{name: "refer mode unknown", hcl: "trunk \"t\" {\n  zone    = \"public\"\n  address = \"203.0.113.9\"\n  refer   = \"forward\"\n}\n",
			wantErr: `refer "forward" is not one of`, wantLine: 4, wantCol: 13},
		{name: "offer mode unknown", hcl: "trunk \"t\" {\n  zone    = \"public\"\n  address = \"203.0.113.9\"\n  offer   = \"late\"\n}\n",
			wantErr: `offer "late" is not one of "pass" or "early"`, wantLine: 4, wantCol: 13},
		{name: "codec unknown", hcl: "trunk \"t\" {\n  zone    = \"public\"\n  address = \"203.0.113.9\"\n  offer   = \"early\"\n  codecs  = [\"PCMU\", \"speex\"]\n}\n",
			wantErr: `codec "speex" is not one the SBC can offer`, wantLine: 5, wantCol: 22},
		{name: "codec duplicate", hcl: "trunk \"t\" {\n  zone    = \"public\"\n  address = \"203.0.113.9\"\n  codecs  = [\"PCMU\", \"pcmu\"]\n}\n",
			wantErr: `"PCMU" is already listed at test.hcl:` + strconv.Itoa(baseLines+4), wantLine: 4, wantCol: 22},
		{name: "codecs without audio", hcl: "trunk \"t\" {\n  zone    = \"public\"\n  address = \"203.0.113.9\"\n  codecs  = [\"telephone-event\"]\n}\n",
			wantErr: "codecs must list an audio codec", wantLine: 4, wantCol: 13},
		{name: "session_expires below min_se", hcl: "trunk \"t\" {\n  zone            = \"public\"\n  address         = \"203.0.113.9\"\n  session_expires = \"60s\"\n}\n",
			wantErr: "session_expires 1m0s is shorter than min_se 1m30s", wantLine: 4, wantCol: 21},
		{name: "min_se fraction", hcl: "trunk \"t\" {\n  zone    = \"public\"\n  address = \"203.0.113.9\"\n  min_se  = \"1500ms\"\n}\n",
			wantErr: "min_se must be whole seconds", wantLine: 4, wantCol: 13},
		{name: "min_se zero", hcl: "trunk \"t\" {\n  zone    = \"public\"\n  address = \"203.0.113.9\"\n  min_se  = \"0s\"\n}\n",
			wantErr: "min_se must be greater than zero", wantLine: 4, wantCol: 13},
		{name: "sources bad prefix", hcl: "trunk \"t\" {\n  zone    = \"public\"\n  address = \"203.0.113.9\"\n  sources = [\"203.0.113.0/24\", \"carrier\"]\n}\n",
			wantErr: `"carrier" is neither "ip/bits" nor an IP address`, wantLine: 4, wantCol: 32},

		// Media.
		{name: "port_range syntax", hcl: "media {\n  port_range = \"20000:29999\"\n}\n",
			wantErr: "Invalid port range", wantLine: 2, wantCol: 16},
		{name: "port_range not numbers", hcl: "media {\n  port_range = \"low-high\"\n}\n",
			wantErr: "first port is not a number", wantLine: 2, wantCol: 16},
		{name: "port_range privileged", hcl: "media {\n  port_range = \"80-1000\"\n}\n",
			wantErr: "between 1024 and 65535, got 80-1000", wantLine: 2, wantCol: 16},
		{name: "port_range above 65535", hcl: "media {\n  port_range = \"60000-70000\"\n}\n",
			wantErr: "Port out of range", wantLine: 2, wantCol: 16},
		{name: "port_range reversed", hcl: "media {\n  port_range = \"30000-20000\"\n}\n",
			wantErr: "minimum 30000 must be below its maximum 20000", wantLine: 2, wantCol: 16},
		{name: "port_range one pair", hcl: "media {\n  port_range = \"20000-20002\"\n}\n",
			wantErr: "holds 1 RTP/RTCP port pair(s)", wantLine: 2, wantCol: 16},
		{name: "port_range odd start one pair", hcl: "media {\n  port_range = \"20001-20004\"\n}\n",
			wantErr: "holds 1 RTP/RTCP port pair(s)", wantLine: 2, wantCol: 16},
		{name: "pinhole_zones unknown zone", hcl: "media {\n  pinhole_zones = [\"public\", \"dmz\"]\n}\n",
			wantErr: `No zone block is named "dmz"; defined zones: "private", "public"`, wantLine: 2, wantCol: 30},
		{name: "pinhole_zones duplicate", hcl: "media {\n  pinhole_zones = [\"public\", \"public\"]\n}\n",
			wantErr: `"public" is already listed at test.hcl:`, wantLine: 2, wantCol: 30},
		{name: "pinhole_zones not a list", hcl: "media {\n  pinhole_zones = \"public\"\n}\n",
			wantErr: "Unsuitable value", wantLine: 2, wantCol: 19},
		{name: "sip port inside media range", hcl: "media {\n  port_range = \"5000-6000\"\n}\n",
			wantErr: `port_range 5000-6000 contains the SIP port of zone "private" (sip_port 5060), zone "public" (sip_port 5060)`, wantLine: 2, wantCol: 16},
		{name: "timeout without unit", hcl: "media {\n  timeout = \"60\"\n}\n",
			wantErr: "missing unit", wantLine: 2, wantCol: 13},
		{name: "timeout zero", hcl: "media {\n  timeout = \"0s\"\n}\n",
			wantErr: "timeout must be greater than zero", wantLine: 2, wantCol: 13},
		{name: "quarantine negative", hcl: "media {\n  quarantine = \"-1s\"\n}\n",
			wantErr: "quarantine must not be negative", wantLine: 2, wantCol: 16},

		// SIP and log.
		{name: "user_agent empty", hcl: "sip {\n  user_agent = \"  \"\n}\n",
			wantErr: "user_agent must not be empty", wantLine: 2, wantCol: 16},
		{name: "user_agent with line break", hcl: "sip {\n  user_agent = \"edgesbc\\r\\nX-Injected: 1\"\n}\n",
			wantErr: "without control characters", wantLine: 2, wantCol: 16},
		{name: "user_agent too long", hcl: "sip {\n  user_agent = \"" + strings.Repeat("a", 257) + "\"\n}\n",
			wantErr: "user_agent is 257 bytes long", wantLine: 2, wantCol: 16},
		{name: "max_message_size too small", hcl: "sip {\n  max_message_size = 512\n}\n",
			wantErr: "max_message_size must be between 1024 and 65535, got 512", wantLine: 2, wantCol: 22},
		{name: "max_calls range", hcl: "sip {\n  max_calls = 0\n}\n",
			wantErr: "Call limit out of range", wantLine: 2, wantCol: 15},
		{name: "invite_timeout syntax", hcl: "sip {\n  invite_timeout = \"three minutes\"\n}\n",
			wantErr: "Invalid duration: invite_timeout", wantLine: 2, wantCol: 20},
		{name: "log level", hcl: "log {\n  level = \"verbose\"\n}\n",
			wantErr: `Log level "verbose" is not one of "trace", "debug", "info", "warn" or "error"`, wantLine: 2, wantCol: 11},

		// Whole-file requirements.
		{name: "empty file", whole: true, hcl: "",
			wantErr: "No zone defined", wantLine: 1, wantCol: 1, wantErrs: 3},
		{name: "no pbx", whole: true,
			hcl:     "zone \"public\" {\n  address = \"203.0.113.1\"\n}\ntrunk \"carrier\" {\n  zone    = \"public\"\n  address = \"203.0.113.2\"\n}\n",
			wantErr: "No pbx defined", wantLine: 1, wantCol: 1},
		{name: "no trunk", whole: true,
			hcl:     "zone \"private\" {\n  address = \"10.91.1.1\"\n}\npbx \"main\" {\n  zone    = \"private\"\n  address = \"10.91.1.2\"\n}\n",
			wantErr: "No trunk defined", wantLine: 1, wantCol: 1},
		{name: "peer address is an advertised address", whole: true,
			hcl: `zone "private" {
  address = "10.91.1.1"
}
zone "public" {
  address   = "192.0.2.1"
  advertise = "203.0.113.1"
}
pbx "main" {
  zone    = "private"
  address = "10.91.1.2"
}
trunk "carrier" {
  zone    = "public"
  address = "203.0.113.1:5060"
}
`,
			wantErr: `is a SIP address of zone "public"`, wantLine: 14, wantCol: 13},
		{name: "default transport not in zone", whole: true,
			hcl: `zone "private" {
  address    = "10.91.1.1"
  transports = ["tcp"]
}
zone "public" {
  address = "203.0.113.1"
}
pbx "main" {
  zone    = "private"
  address = "10.91.1.2"
}
trunk "carrier" {
  zone    = "public"
  address = "203.0.113.2"
}
`,
			wantErr: `pbx "main" uses transport "udp" (the default) but zone "private" listens only on "tcp"`, wantLine: 8, wantCol: 1},
		{name: "sip port inside default media range", whole: true,
			hcl: `zone "private" {
  address  = "10.91.1.1"
  sip_port = 25060
}
zone "public" {
  address = "203.0.113.1"
}
pbx "main" {
  zone    = "private"
  address = "10.91.1.2"
}
trunk "carrier" {
  zone    = "public"
  address = "203.0.113.2"
}
`,
			wantErr: "inside media port_range 20000-29999", wantLine: 3, wantCol: 14},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src, line := base+tt.hcl, baseLines+tt.wantLine
			if tt.whole {
				src, line = tt.hcl, tt.wantLine
			}
			cfg, diags := Parse("test.hcl", []byte(src))
			if cfg != nil {
				t.Errorf("Parse returned a Config despite errors")
			}
			errs, want := errorsOf(diags), max(tt.wantErrs, 1)
			if len(errs) != want {
				t.Fatalf("got %d errors, want %d:\n%s", len(errs), want, render(diags))
			}
			d := errs[0]
			if got := d.Summary + ": " + d.Detail; !strings.Contains(got, tt.wantErr) {
				t.Errorf("error %q does not contain %q", got, tt.wantErr)
			}
			if d.Subject == nil {
				t.Fatalf("error %q has no Subject", d.Summary)
			}
			if d.Subject.Filename != "test.hcl" || d.Subject.Start.Line != line || d.Subject.Start.Column != tt.wantCol {
				t.Errorf("error at %s:%d:%d, want test.hcl:%d:%d\n%s", d.Subject.Filename,
					d.Subject.Start.Line, d.Subject.Start.Column, line, tt.wantCol, render(diags))
			}
		})
	}
}

// TestParseGathersAllErrors checks that one run reports every independent
// problem, in different blocks, instead of stopping at the first.
func TestParseGathersAllErrors(t *testing.T) {
	src := `zone "private" {
  address = "10.91.1"
  color   = "red"
}
pbx "main" {
  zone    = "nowhere"
  address = "10.91.1.2:5060"
}
trunk "carrier" {
  zone    = "private"
  address = "203.0.113.2:70000"
}
media {
  port_range = "1-2"
}
log {
  level = "loud"
}
`
	_, diags := Parse("all.hcl", []byte(src))
	want := []struct {
		line int
		text string
	}{
		{2, "Invalid IP address"},
		{3, "Unsupported argument"},
		{6, "Unknown zone"},
		{11, "invalid port"},
		{14, "Port out of range"},
		{17, "Invalid log level"},
	}
	errs := errorsOf(diags)
	if len(errs) != len(want) {
		t.Fatalf("got %d errors, want %d:\n%s", len(errs), len(want), render(diags))
	}
	for _, w := range want {
		found := false
		for _, d := range errs {
			if d.Subject != nil && d.Subject.Start.Line == w.line && strings.Contains(d.Summary+": "+d.Detail, w.text) {
				found = true
			}
		}
		if !found {
			t.Errorf("no error %q on line %d:\n%s", w.text, w.line, render(diags))
		}
	}
}

func TestParseDefaults(t *testing.T) {
	cfg, diags := Parse("base.hcl", []byte(base))
	if diags.HasErrors() {
		t.Fatalf("Parse: %s", render(diags))
	}
	want := &Config{
		Zones: []Zone{
			{
				Name:       "private",
				Address:    netip.MustParseAddr("10.91.1.1"),
				SIPPort:    5060,
				Networks:   []netip.Prefix{netip.MustParsePrefix("10.91.1.1/32"), netip.MustParsePrefix("10.91.1.2/32")},
				Transports: []string{"udp"},
			},
			{
				Name:       "public",
				Address:    netip.MustParseAddr("203.0.113.1"),
				SIPPort:    5060,
				Networks:   []netip.Prefix{netip.MustParsePrefix("203.0.113.1/32"), netip.MustParsePrefix("203.0.113.2/32")},
				Transports: []string{"udp"},
			},
		},
		Peers: []Peer{
			{
				Name:      "main",
				Kind:      PeerPBX,
				Zone:      "private",
				Address:   netip.MustParseAddrPort("10.91.1.2:5060"),
				Host:      "10.91.1.2",
				Transport: "udp",
				Sources:   []netip.Prefix{netip.MustParsePrefix("10.91.1.2/32")},

				SessionExpires: 1800 * time.Second,
				MinSE:          90 * time.Second,
				Refer:          "terminate",
				Offer:          "pass",
			},
			{
				Name:      "carrier",
				Kind:      PeerTrunk,
				Zone:      "public",
				Address:   netip.MustParseAddrPort("203.0.113.2:5060"),
				Host:      "203.0.113.2",
				Transport: "udp",
				Sources:   []netip.Prefix{netip.MustParsePrefix("203.0.113.2/32")},

				SessionExpires: 1800 * time.Second,
				MinSE:          90 * time.Second,
				Refer:          "terminate",
				Offer:          "pass",
			},
		},
		Media:    Media{PortMin: 20000, PortMax: 29999, Timeout: 60 * time.Second, Quarantine: 5 * time.Second, KernelOffload: true, PinholeZones: []string{"public"}},
		SIP:      SIP{UserAgent: "edgesbc", MaxMessageSize: 16384, InviteTimeout: 180 * time.Second, MaxCalls: 10000},
		Log:      Log{Level: "info"},
		Security: Security{StateDir: DefaultStateDir, IPv6Prefix: DefaultIPv6Prefix},
	}
	if !reflect.DeepEqual(cfg, want) {
		t.Errorf("Parse(base) =\n%+v\nwant\n%+v", cfg, want)
	}
}

// TestParseExplicit sets every key to a non-default value and checks each
// arrives in the Config, including the address forms a peer may use and the
// file order of interleaved pbx and trunk blocks.
func TestParseExplicit(t *testing.T) {
	src := `trunk "carrier-a" {
  zone         = "public"
  address      = "198.51.100.5"
  host         = "sip.carrier-a.example."
  transport    = "TCP"
  keep_headers = ["P-Asserted-Identity", "X-Account"]
  sources      = ["198.51.100.7/28", "198.51.100.64", "198.51.100.5"]
  session_expires = "10m"
  min_se          = "2m"
  refer           = "Pass"
  offer           = "Early"
  codecs          = ["pcma", "G722", "telephone-event"]
}
zone "private" {
  address    = "10.0.0.1"
  sip_port   = 5080
  networks   = ["10.0.0.0/16", "172.16.5.9"]
  transports = ["tcp", "udp"]
}
pbx "main" {
  zone    = "private"
  address = "[::ffff:10.0.0.5]:5090"
}
zone "public" {
  address    = "192.0.2.10"
  advertise  = "203.0.113.10"
  transports = ["udp", "tcp"]
}
trunk "carrier-v6" {
  zone    = "public6"
  address = "[2001:db8::5060]:5080"
}
pbx "backup" {
  zone    = "private"
  address = "2001:db8:1::5"
}
zone "public6" {
  address  = "2001:db8::1"
  sip_port = 5060
}
media {
  port_range = "30000-30003"
  timeout    = "2m"
  quarantine = "0s"
  kernel_offload = false
  pinhole_zones  = ["public6", "private"]
}
sip {
  user_agent       = "acme-sbc/1.0"
  max_message_size = 65535
  invite_timeout   = "90s"
  max_calls        = 250
}
log {
  level = "DEBUG"
}
`
	cfg, diags := Parse("explicit.hcl", []byte(src))
	if diags.HasErrors() {
		t.Fatalf("Parse: %s", render(diags))
	}

	var zones []string
	for _, z := range cfg.Zones {
		zones = append(zones, z.Name)
	}
	if got, want := strings.Join(zones, ","), "private,public,public6"; got != want {
		t.Errorf("zone order %s, want %s", got, want)
	}
	var peers []string
	for _, p := range cfg.Peers {
		peers = append(peers, string(p.Kind)+":"+p.Name)
	}
	if got, want := strings.Join(peers, ","), "trunk:carrier-a,pbx:main,trunk:carrier-v6,pbx:backup"; got != want {
		t.Errorf("peer order %s, want %s", got, want)
	}

	priv, _ := cfg.Zone("private")
	wantPriv := Zone{
		Name:       "private",
		Address:    netip.MustParseAddr("10.0.0.1"),
		SIPPort:    5080,
		Networks:   []netip.Prefix{netip.MustParsePrefix("10.0.0.0/16"), netip.MustParsePrefix("172.16.5.9/32")},
		Transports: []string{"tcp", "udp"},
	}
	if !reflect.DeepEqual(priv, wantPriv) {
		t.Errorf("zone private = %+v, want %+v", priv, wantPriv)
	}
	pub, _ := cfg.Zone("public")
	if pub.Advertise != netip.MustParseAddr("203.0.113.10") || pub.SIPPort != 5060 {
		t.Errorf("zone public = %+v, want advertise 203.0.113.10 and sip_port 5060", pub)
	}
	pub6, _ := cfg.Zone("public6")
	wantNet6 := []netip.Prefix{netip.MustParsePrefix("2001:db8::1/128"), netip.MustParsePrefix("2001:db8::5060/128")}
	if !reflect.DeepEqual(pub6.Networks, wantNet6) {
		t.Errorf("zone public6 networks = %v, want %v", pub6.Networks, wantNet6)
	}

	ca, _ := cfg.Peer("carrier-a")
	wantCA := Peer{
		Name:        "carrier-a",
		Kind:        PeerTrunk,
		Zone:        "public",
		Address:     netip.MustParseAddrPort("198.51.100.5:5060"),
		Host:        "sip.carrier-a.example.",
		Transport:   "tcp",
		KeepHeaders: []string{"P-Asserted-Identity", "X-Account"},
		Sources: []netip.Prefix{
			netip.MustParsePrefix("198.51.100.5/32"),
			netip.MustParsePrefix("198.51.100.0/28"),
			netip.MustParsePrefix("198.51.100.64/32"),
		},
		SessionExpires: 10 * time.Minute,
		MinSE:          2 * time.Minute,
		Refer:          "pass",
		Offer:          "early",
		Codecs:         []string{"PCMA", "G722", "telephone-event"},
	}
	if !reflect.DeepEqual(ca, wantCA) {
		t.Errorf("trunk carrier-a = %+v, want %+v", ca, wantCA)
	}
	if main, _ := cfg.Peer("main"); main.Address != netip.MustParseAddrPort("10.0.0.5:5090") {
		t.Errorf("pbx main address %v, want the IPv4-mapped address unmapped to 10.0.0.5:5090", main.Address)
	}
	if v6, _ := cfg.Peer("carrier-v6"); v6.Address != netip.MustParseAddrPort("[2001:db8::5060]:5080") || v6.Host != "2001:db8::5060" {
		t.Errorf("trunk carrier-v6 = %+v, want [2001:db8::5060]:5080 with host 2001:db8::5060", v6)
	}
	if b, _ := cfg.Peer("backup"); b.Address != netip.MustParseAddrPort("[2001:db8:1::5]:5060") {
		t.Errorf("pbx backup address %v, want [2001:db8:1::5]:5060", b.Address)
	}
	if _, ok := cfg.Peer("nobody"); ok {
		t.Errorf("Peer(nobody) found a peer")
	}

	wantMedia := Media{PortMin: 30000, PortMax: 30003, Timeout: 2 * time.Minute, Quarantine: 0, PinholeZones: []string{"public6", "private"}}
	if !reflect.DeepEqual(cfg.Media, wantMedia) {
		t.Errorf("media = %+v, want %+v", cfg.Media, wantMedia)
	}
	wantSIP := SIP{UserAgent: "acme-sbc/1.0", MaxMessageSize: 65535, InviteTimeout: 90 * time.Second, MaxCalls: 250}
	if cfg.SIP != wantSIP {
		t.Errorf("sip = %+v, want %+v", cfg.SIP, wantSIP)
	}
	if cfg.Log.Level != "debug" {
		t.Errorf("log level %q, want debug", cfg.Log.Level)
	}
}

// TestParseSameAddressOtherPort: zones and peers may share an IP when the
// ports differ, which single-host lab setups rely on.
func TestParseSameAddressOtherPort(t *testing.T) {
	src := `zone "private" {
  address  = "127.0.0.1"
  sip_port = 5060
}
zone "public" {
  address  = "127.0.0.1"
  sip_port = 5062
}
pbx "main" {
  zone    = "private"
  address = "127.0.0.1:5070"
}
trunk "carrier" {
  zone    = "public"
  address = "127.0.0.1:5072"
}
`
	if _, diags := Parse("lab.hcl", []byte(src)); diags.HasErrors() {
		t.Fatalf("Parse: %s", render(diags))
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "edgesbc.hcl")
	if err := os.WriteFile(path, []byte(base), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, files, diags := Load(path)
	if diags.HasErrors() {
		t.Fatalf("Load: %s", render(diags))
	}
	if len(cfg.Zones) != 2 || len(cfg.Peers) != 2 {
		t.Errorf("Load gave %d zones and %d peers, want 2 and 2", len(cfg.Zones), len(cfg.Peers))
	}
	if string(files[path]) != base {
		t.Errorf("files[%q] does not hold the source", path)
	}

	bad := filepath.Join(dir, "bad.hcl")
	if err := os.WriteFile(bad, []byte(base+"log {\n  level = \"loud\"\n}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, files, diags = Load(bad)
	if cfg != nil || !diags.HasErrors() {
		t.Fatalf("Load(bad) = %v, %v; want nil Config and errors", cfg, diags)
	}
	if d := diags[0]; d.Subject == nil || d.Subject.Filename != bad {
		t.Errorf("diagnostic subject %v, want file %s", d.Subject, bad)
	}
	if _, ok := files[bad]; !ok {
		t.Errorf("files lacks %s", bad)
	}

	missing := filepath.Join(dir, "missing.hcl")
	cfg, files, diags = Load(missing)
	if cfg != nil || len(diags) != 1 || diags[0].Subject != nil || len(files) != 0 {
		t.Fatalf("Load(missing) = %v, %v, %v; want one subject-less error", cfg, files, diags)
	}
	if !strings.Contains(diags[0].Detail, missing) {
		t.Errorf("detail %q does not name the file", diags[0].Detail)
	}
}

func TestPortPairs(t *testing.T) {
	tests := []struct{ lo, hi, want int }{
		{20000, 20001, 1},
		{20000, 20002, 1},
		{20000, 20003, 2},
		{20001, 20003, 1},
		{20001, 20004, 1},
		{20001, 20005, 2},
		{20000, 29999, 5000},
		{20001, 20002, 0},
		{5, 4, 0},
	}
	for _, tt := range tests {
		if got := portPairs(tt.lo, tt.hi); got != tt.want {
			t.Errorf("portPairs(%d, %d) = %d, want %d", tt.lo, tt.hi, got, tt.want)
		}
	}
}

func errorsOf(diags hcl.Diagnostics) hcl.Diagnostics {
	var out hcl.Diagnostics
	for _, d := range diags {
		if d.Severity == hcl.DiagError {
			out = append(out, d)
		}
	}
	return out
}

func render(diags hcl.Diagnostics) string {
	var b strings.Builder
	for _, d := range diags {
		if d.Subject != nil {
			b.WriteString(d.Subject.String() + ": ")
		}
		b.WriteString(d.Summary + ": " + d.Detail + "\n")
	}
	return b.String()
}

// TestParsePinholeZones: an empty list closes no zone; without the key
// every zone with a trunk is closed, and only those.
func TestParsePinholeZones(t *testing.T) {
	cfg, diags := Parse("test.hcl", []byte(base+"media {\n  pinhole_zones = []\n}\n"))
	if diags.HasErrors() {
		t.Fatalf("Parse: %s", render(diags))
	}
	if cfg.Media.PinholeZones == nil || len(cfg.Media.PinholeZones) != 0 {
		t.Errorf("pinhole_zones = [] gave %#v, want an empty list", cfg.Media.PinholeZones)
	}
	cfg, diags = Parse("test.hcl", []byte(base+"zone \"dmz\" {\n  address = \"198.51.100.1\"\n}\ntrunk \"b\" {\n  zone = \"dmz\"\n  address = \"198.51.100.9\"\n}\n"))
	if diags.HasErrors() {
		t.Fatalf("Parse: %s", render(diags))
	}
	if got := cfg.Media.PinholeZones; !reflect.DeepEqual(got, []string{"public", "dmz"}) {
		t.Errorf("default pinhole zones %v, want the two zones with trunks in file order", got)
	}
}

func TestZoneDevice(t *testing.T) {
	src := strings.Replace(base, "zone \"public\" {\n  address = \"203.0.113.1\"\n",
		"zone \"public\" {\n  address = \"203.0.113.1\"\n  device = \"wan0\"\n  mac = \"52:54:00:AB:00:02\"\n  prefix_length = 24\n  gateway = \"203.0.113.254\"\n", 1)
	src = strings.Replace(src, "zone \"private\" {\n  address = \"10.91.1.1\"\n",
		"zone \"private\" {\n  address = \"10.91.1.1\"\n  device = \"lan0\"\n", 1)
	cfg, diags := Parse("test.hcl", []byte(src))
	if diags.HasErrors() {
		t.Fatalf("parse: %v", diags)
	}
	priv, _ := cfg.Zone("private")
	pub, _ := cfg.Zone("public")
	if priv.Device != "lan0" || priv.MAC != nil || priv.PrefixLength != DefaultPrefixLength4 || priv.Gateway.IsValid() {
		t.Errorf("private zone device settings = %q %v /%d gw %v, want lan0, no mac, /24, no gateway",
			priv.Device, priv.MAC, priv.PrefixLength, priv.Gateway)
	}
	if pub.Device != "wan0" || pub.MAC.String() != "52:54:00:ab:00:02" || pub.PrefixLength != 24 || pub.Gateway != netip.MustParseAddr("203.0.113.254") {
		t.Errorf("public zone device settings = %q %v /%d gw %v", pub.Device, pub.MAC, pub.PrefixLength, pub.Gateway)
	}
	if !cfg.Devices() {
		t.Error("Devices() = false with two zones naming devices")
	}
	plain, diags := Parse("test.hcl", []byte(base))
	if diags.HasErrors() {
		t.Fatalf("parse base: %v", diags)
	}
	if plain.Devices() {
		t.Error("Devices() = true without any device")
	}
	if z, _ := plain.Zone("public"); z.PrefixLength != 0 {
		t.Errorf("prefix_length without device = %d, want 0 (unused)", z.PrefixLength)
	}
	v6, diags := Parse("test.hcl", []byte(strings.Replace(base, "zone \"private\" {\n  address = \"10.91.1.1\"\n",
		"zone \"private\" {\n  address = \"10.91.1.1\"\n}\nzone \"v6\" {\n  address = \"2001:db8::5\"\n  device = \"v6net\"\n", 1)))
	if diags.HasErrors() {
		t.Fatalf("parse v6: %v", diags)
	}
	if z, _ := v6.Zone("v6"); z.PrefixLength != DefaultPrefixLength6 {
		t.Errorf("IPv6 default prefix_length = %d, want %d", z.PrefixLength, DefaultPrefixLength6)
	}
}
