package config

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestParseSecurity(t *testing.T) {
	src := base + `
state_dir = "/var/lib/edgesbc-test"
ipv6_prefix = 56
allow {
  addresses = ["203.0.113.0/28", "2001:db8::1"]
}
rate_limit "sip-public" {
  zone       = "public"
  per_source = "30/second"
  burst      = 60
}
rate_limit "sip-private" {
  zone       = "private"
  per_source = "600/minute"
}
ban_policy "scanners" {
  match_user_agent = ["friendly-scanner", "sipvicious"]
  ban_for          = "24h"
}
ban_policy "auth-failures" {
  failed_auth       = 5
  within            = "60s"
  ban_for           = "1h"
  repeat_multiplier = 4
  max_ban           = "7d"
  mode              = "log"
}
ban_policy "enumeration" {
  distinct_unknown_users  = 10
  unknown_source_requests = 20
  within                  = "2m"
  ban_for                 = "1d6h"
}
`
	cfg, diags := Parse("test.hcl", []byte(src))
	if diags.HasErrors() {
		t.Fatalf("Parse: %s", render(diags))
	}
	want := Security{
		StateDir:   "/var/lib/edgesbc-test",
		IPv6Prefix: 56,
		Allow:      []netip.Prefix{netip.MustParsePrefix("203.0.113.0/28"), netip.MustParsePrefix("2001:db8::1/128")},
		RateLimits: []RateLimit{
			{Name: "sip-public", Zone: "public", Rate: 30, Per: time.Second, Burst: 60},
			{Name: "sip-private", Zone: "private", Rate: 600, Per: time.Minute, Burst: 1200},
		},
		BanPolicies: []BanPolicy{
			{Name: "scanners", MatchUserAgent: []string{"friendly-scanner", "sipvicious"}, Within: time.Minute,
				BanFor: 24 * time.Hour, RepeatMultiplier: 1, MaxBan: 7 * 24 * time.Hour, Mode: BanEnforce},
			{Name: "auth-failures", FailedAuth: 5, Within: time.Minute, BanFor: time.Hour, RepeatMultiplier: 4,
				MaxBan: 7 * 24 * time.Hour, Mode: BanLog},
			{Name: "enumeration", DistinctUnknownUsers: 10, UnknownSourceRequests: 20, Within: 2 * time.Minute,
				BanFor: 30 * time.Hour, RepeatMultiplier: 1, MaxBan: 7 * 24 * time.Hour, Mode: BanEnforce},
		},
	}
	if !reflect.DeepEqual(cfg.Security, want) {
		t.Errorf("Security =\n%+v\nwant\n%+v", cfg.Security, want)
	}
}

func TestParseSecurityErrors(t *testing.T) {
	tests := []struct {
		name     string
		hcl      string
		wantErr  string
		wantLine int
		wantCol  int
	}{
		{name: "bad allow prefix", hcl: "allow {\n  addresses = [\"10.0.0.0/8\", \"10.0.0/8\"]\n}\n",
			wantErr: "Invalid address prefix", wantLine: 2, wantCol: 30},
		{name: "allow without addresses", hcl: "allow {\n}\n",
			wantErr: "allow needs addresses", wantLine: 1, wantCol: 1},
		{name: "two allow blocks", hcl: "allow {\n  addresses = []\n}\nallow {\n  addresses = []\n}\n",
			wantErr: "Duplicate allow block", wantLine: 4, wantCol: 1},
		{name: "rate limit unknown zone", hcl: "rate_limit \"x\" {\n  zone = \"dmz\"\n  per_source = \"30/second\"\n}\n",
			wantErr: `No zone block is named "dmz"`, wantLine: 2, wantCol: 10},
		{name: "rate limit bad rate", hcl: "rate_limit \"x\" {\n  zone = \"public\"\n  per_source = \"30 per second\"\n}\n",
			wantErr: "Invalid rate", wantLine: 3, wantCol: 16},
		{name: "rate limit bad unit", hcl: "rate_limit \"x\" {\n  zone = \"public\"\n  per_source = \"30/day\"\n}\n",
			wantErr: "must be second, minute or hour", wantLine: 3, wantCol: 16},
		{name: "rate limit zero rate", hcl: "rate_limit \"x\" {\n  zone = \"public\"\n  per_source = \"0/second\"\n}\n",
			wantErr: "between 1 and", wantLine: 3, wantCol: 16},
		{name: "rate limit missing per_source", hcl: "rate_limit \"x\" {\n  zone = \"public\"\n}\n",
			wantErr: "needs per_source", wantLine: 1, wantCol: 1},
		{name: "rate limit zero burst", hcl: "rate_limit \"x\" {\n  zone = \"public\"\n  per_source = \"30/second\"\n  burst = 0\n}\n",
			wantErr: "Burst out of range", wantLine: 4, wantCol: 11},
		{name: "two rate limits for a zone", hcl: "rate_limit \"x\" {\n  zone = \"public\"\n  per_source = \"30/second\"\n}\nrate_limit \"y\" {\n  zone = \"public\"\n  per_source = \"30/second\"\n}\n",
			wantErr: "Duplicate rate limit for zone", wantLine: 6, wantCol: 10},
		{name: "duplicate ban policy", hcl: "ban_policy \"a\" {\n  failed_auth = 3\n}\nban_policy \"a\" {\n  failed_auth = 3\n}\n",
			wantErr: "Duplicate ban_policy name", wantLine: 4, wantCol: 12},
		{name: "ban policy detects nothing", hcl: "ban_policy \"a\" {\n  ban_for = \"1h\"\n}\n",
			wantErr: "needs at least one of", wantLine: 1, wantCol: 1},
		{name: "ban policy bad duration", hcl: "ban_policy \"a\" {\n  failed_auth = 3\n  ban_for = \"forever\"\n}\n",
			wantErr: "Invalid duration", wantLine: 3, wantCol: 13},
		{name: "ban policy bad day count", hcl: "ban_policy \"a\" {\n  failed_auth = 3\n  max_ban = \"xd\"\n}\n",
			wantErr: "Invalid duration", wantLine: 3, wantCol: 13},
		{name: "ban policy zero window", hcl: "ban_policy \"a\" {\n  failed_auth = 3\n  within = \"0s\"\n}\n",
			wantErr: "within must be greater than zero", wantLine: 3, wantCol: 12},
		{name: "ban policy zero threshold", hcl: "ban_policy \"a\" {\n  failed_auth = 0\n}\n",
			wantErr: "Threshold out of range", wantLine: 2, wantCol: 17},
		{name: "ban policy bad mode", hcl: "ban_policy \"a\" {\n  failed_auth = 3\n  mode = \"dry-run\"\n}\n",
			wantErr: `mode "dry-run" is not one of "enforce" or "log"`, wantLine: 3, wantCol: 10},
		{name: "ban policy max below ban", hcl: "ban_policy \"a\" {\n  failed_auth = 3\n  ban_for = \"2d\"\n  max_ban = \"1d\"\n}\n",
			wantErr: "shorter than ban_for", wantLine: 4, wantCol: 13},
		{name: "ban policy multiplier", hcl: "ban_policy \"a\" {\n  failed_auth = 3\n  repeat_multiplier = 0\n}\n",
			wantErr: "Multiplier out of range", wantLine: 3, wantCol: 23},
		{name: "ban policy empty user agent", hcl: "ban_policy \"a\" {\n  match_user_agent = [\"x\", \" \"]\n}\n",
			wantErr: "must not be empty", wantLine: 2, wantCol: 28},
		{name: "ban policy unknown key", hcl: "ban_policy \"a\" {\n  failed_auth = 3\n  ban_forever = true\n}\n",
			wantErr: `argument named "ban_forever" is not expected`, wantLine: 3, wantCol: 3},
		{name: "ipv6 prefix too short", hcl: "ipv6_prefix = 16\n",
			wantErr: "ipv6_prefix must be between 32 and 128, got 16", wantLine: 1, wantCol: 15},
		{name: "relative state dir", hcl: "state_dir = \"var/lib\"\n",
			wantErr: "state_dir must be an absolute path", wantLine: 1, wantCol: 13},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, diags := Parse("test.hcl", []byte(base+tt.hcl))
			if cfg != nil {
				t.Errorf("Parse returned a Config despite errors")
			}
			errs := errorsOf(diags)
			if len(errs) != 1 {
				t.Fatalf("got %d errors, want 1:\n%s", len(errs), render(diags))
			}
			d := errs[0]
			if got := d.Summary + ": " + d.Detail; !strings.Contains(got, tt.wantErr) {
				t.Errorf("error %q does not contain %q", got, tt.wantErr)
			}
			if d.Subject == nil {
				t.Fatalf("error %q has no Subject", d.Summary)
			}
			line := baseLines + tt.wantLine
			if d.Subject.Start.Line != line || d.Subject.Start.Column != tt.wantCol {
				t.Errorf("error at %d:%d, want %d:%d\n%s", d.Subject.Start.Line, d.Subject.Start.Column, line, tt.wantCol, render(diags))
			}
		})
	}
}

func TestParseLongDuration(t *testing.T) {
	for in, want := range map[string]time.Duration{
		"7d": 7 * 24 * time.Hour, "1d12h": 36 * time.Hour, "90s": 90 * time.Second, " 2h ": 2 * time.Hour,
	} {
		if got, err := ParseLongDuration(in); err != nil || got != want {
			t.Errorf("ParseLongDuration(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "d", "-1d", "1d-", "1.5d", "7days", "99999999d"} {
		if got, err := ParseLongDuration(in); err == nil {
			t.Errorf("ParseLongDuration(%q) = %v, want an error", in, got)
		}
	}
}
