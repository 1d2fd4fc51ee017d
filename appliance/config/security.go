package config

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"net/netip"

	"github.com/hashicorp/hcl/v2"
)

// Defaults of the security keys.
const (
	DefaultStateDir         = "/var/lib/edgesbc"
	DefaultBanWithin        = 60 * time.Second
	DefaultBanFor           = time.Hour
	DefaultRepeatMultiplier = 1
	DefaultMaxBan           = 7 * 24 * time.Hour
	DefaultBanMode          = BanEnforce
	DefaultIPv6Prefix       = 64
)

// Limits of the security keys.
const (
	maxThreshold        = 1_000_000
	maxRepeatMultiplier = 1000
	maxRatePerSecond    = 10_000_000
	maxUserAgentPattern = 256
	minIPv6Prefix       = 32
)

// BanMode says whether a ban policy acts or only reports.
type BanMode string

// Ban modes.
const (
	// BanEnforce bans the offending source.
	BanEnforce BanMode = "enforce"
	// BanLog only reports the ban it would have made (a log line and a
	// counter), to trial a policy on live traffic.
	BanLog BanMode = "log"
)

var banModes = []string{string(BanEnforce), string(BanLog)}

// Security holds the allow list, the kernel rate limits and the ban
// policies.
type Security struct {
	// Allow are prefixes never banned nor rate limited, on top of the
	// implicit ones: the sources of every pbx and trunk. Default none.
	Allow []netip.Prefix
	// RateLimits are per-source packet rate limits on a zone's SIP port,
	// in file order.
	RateLimits []RateLimit
	// BanPolicies are the ban_policy blocks, in file order.
	BanPolicies []BanPolicy
	// StateDir is where bans are persisted across restarts. Default
	// /var/lib/edgesbc.
	StateDir string
	// IPv6Prefix is the prefix length by which IPv6 sources are counted,
	// rate limited and banned: every address of one prefix is one source.
	// Default 64; 128 treats each address alone.
	IPv6Prefix int
}

// RateLimit is a rate_limit block: packets per source to the SIP port of a
// zone above Rate per Per (with Burst packets of slack) are dropped in the
// kernel, or in userspace without nftables.
type RateLimit struct {
	Name string
	Zone string
	// Rate packets per Per (time.Second, time.Minute or time.Hour).
	Rate int
	Per  time.Duration
	// Burst is the packets allowed above the rate at once. Default twice
	// Rate.
	Burst int
}

// BanPolicy is a ban_policy block. Any of its detectors tripping bans the
// source; a detector with a zero threshold (or no user agents) is off.
type BanPolicy struct {
	Name string
	// MatchUserAgent are substrings matched against User-Agent,
	// case-insensitively. Default none.
	MatchUserAgent []string
	// FailedAuth counts 401, 403 and 407 outcomes to one source within
	// Within. Default 0 (off).
	FailedAuth int
	// DistinctUnknownUsers counts distinct users asked for by one source
	// within Within: users of out-of-dialog requests from non-peers, and
	// users answered 404 or 484. Default 0 (off).
	DistinctUnknownUsers int
	// UnknownSourceRequests counts requests out of dialog from a source
	// that is no peer, on the public side, within Within. Default 0 (off).
	UnknownSourceRequests int
	// Within is the counting window. Default 60s.
	Within time.Duration
	// BanFor is the first ban's length. Default 1h.
	BanFor time.Duration
	// RepeatMultiplier multiplies the ban for each repeat offence by the
	// same source, up to MaxBan. Default 1 (every ban lasts BanFor).
	RepeatMultiplier int
	// MaxBan bounds escalated bans. Default 7d (or BanFor when longer).
	MaxBan time.Duration
	// Mode is enforce or log. Default enforce.
	Mode BanMode
}

type rawAllow struct {
	DefRange  hcl.Range      `hcl:",def_range"`
	Addresses *hcl.Attribute `hcl:"addresses,optional"`
}

type rawRateLimit struct {
	Name      string         `hcl:"name,label"`
	NameRange hcl.Range      `hcl:"name,label_range"`
	DefRange  hcl.Range      `hcl:",def_range"`
	Zone      *hcl.Attribute `hcl:"zone,optional"`
	PerSource *hcl.Attribute `hcl:"per_source,optional"`
	Burst     *hcl.Attribute `hcl:"burst,optional"`
}

type rawBanPolicy struct {
	Name                  string         `hcl:"name,label"`
	NameRange             hcl.Range      `hcl:"name,label_range"`
	DefRange              hcl.Range      `hcl:",def_range"`
	MatchUserAgent        *hcl.Attribute `hcl:"match_user_agent,optional"`
	FailedAuth            *hcl.Attribute `hcl:"failed_auth,optional"`
	DistinctUnknownUsers  *hcl.Attribute `hcl:"distinct_unknown_users,optional"`
	UnknownSourceRequests *hcl.Attribute `hcl:"unknown_source_requests,optional"`
	Within                *hcl.Attribute `hcl:"within,optional"`
	BanFor                *hcl.Attribute `hcl:"ban_for,optional"`
	RepeatMultiplier      *hcl.Attribute `hcl:"repeat_multiplier,optional"`
	MaxBan                *hcl.Attribute `hcl:"max_ban,optional"`
	Mode                  *hcl.Attribute `hcl:"mode,optional"`
}

// ParseLongDuration parses a Go duration that may also use days ("7d",
// "1d12h"), as ban lengths are commonly written.
func ParseLongDuration(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	var days int64
	if i := strings.IndexByte(s, 'd'); i >= 0 {
		n, err := strconv.ParseInt(s[:i], 10, 32)
		if err != nil || n < 0 || n > 100*365 {
			return 0, fmt.Errorf("invalid day count in %q", s)
		}
		days, s = n, s[i+1:]
		if s == "" {
			return time.Duration(days) * 24 * time.Hour, nil
		}
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, err
	}
	return time.Duration(days)*24*time.Hour + d, nil
}

// decodeLongDuration decodes a duration that may use days; it must be
// greater than zero.
func decodeLongDuration(attr *hcl.Attribute) (time.Duration, hcl.Diagnostics) {
	s, diags := decodeString(attr)
	if diags.HasErrors() {
		return 0, diags
	}
	d, err := ParseLongDuration(s)
	if err != nil {
		return 0, hcl.Diagnostics{errorAt(attr.Expr.Range(), "Invalid duration",
			fmt.Sprintf("%s: %v. Write a number with a unit, such as \"60s\", \"6h\" or \"7d\".", attr.Name, err))}
	}
	if d <= 0 {
		return 0, hcl.Diagnostics{errorAt(attr.Expr.Range(), "Duration out of range",
			fmt.Sprintf("%s must be greater than zero.", attr.Name))}
	}
	return d, nil
}

// parseRate parses "N/second", "N/minute" or "N/hour" (also "N/s", "N/m",
// "N/h").
func parseRate(s string) (int, time.Duration, error) {
	num, unit, ok := strings.Cut(strings.TrimSpace(s), "/")
	if !ok {
		return 0, 0, fmt.Errorf("%q is not \"N/second\", \"N/minute\" or \"N/hour\"", s)
	}
	n, err := strconv.Atoi(strings.TrimSpace(num))
	if err != nil || n < 1 || n > maxRatePerSecond {
		return 0, 0, fmt.Errorf("rate in %q must be a whole number between 1 and %d", s, maxRatePerSecond)
	}
	switch strings.ToLower(strings.TrimSpace(unit)) {
	case "second", "s", "sec":
		return n, time.Second, nil
	case "minute", "m", "min":
		return n, time.Minute, nil
	case "hour", "h":
		return n, time.Hour, nil
	}
	return 0, 0, fmt.Errorf("unit in %q must be second, minute or hour", s)
}

func (b *builder) allow(raws []*rawAllow) []netip.Prefix {
	var out []netip.Prefix
	for i, ra := range raws {
		if ra == nil {
			continue
		}
		if i > 0 {
			b.errorf(ra.DefRange, "Duplicate allow block",
				"Only one allow block is allowed; the first is at %s.", at(raws[0].DefRange))
			continue
		}
		if ra.Addresses == nil {
			b.errorf(ra.DefRange, "Missing required argument",
				"allow needs addresses = [\"<ip or ip/bits>\", ...].")
			continue
		}
		ps, diags := decodePrefixList(ra.Addresses)
		if b.add(diags) {
			out = ps
		}
	}
	return out
}

func (b *builder) rateLimits(raws []*rawRateLimit, zones []*zoneDef) []RateLimit {
	var out []RateLimit
	blocks := newPerZoneBlocks("rate_limit", "a rate_limit", "Duplicate rate limit for zone", "name of a zone block", zones)
	for _, r := range raws {
		if r == nil {
			continue
		}
		rl := RateLimit{Name: r.Name}
		var ok bool
		rl.Zone, ok = blocks.check(b, r.Name, r.NameRange, r.DefRange, r.Zone)
		if r.PerSource == nil {
			b.errorf(r.DefRange, "Missing required argument",
				"rate_limit %q needs per_source = \"<packets>/second\".", r.Name)
			ok = false
		} else if s, diags := decodeString(r.PerSource); b.add(diags) {
			n, per, err := parseRate(s)
			if err != nil {
				b.errorf(r.PerSource.Expr.Range(), "Invalid rate", "per_source: %v.", err)
				ok = false
			}
			rl.Rate, rl.Per = n, per
		} else {
			ok = false
		}
		rl.Burst = 2 * rl.Rate
		if r.Burst != nil {
			n, diags := decodeInt(r.Burst, 1, maxRatePerSecond, "Burst out of range")
			if b.add(diags) {
				rl.Burst = n
			} else {
				ok = false
			}
		}
		if ok {
			out = append(out, rl)
		}
	}
	return out
}

func (b *builder) banPolicies(raws []*rawBanPolicy) []BanPolicy {
	var out []BanPolicy
	first := map[string]hcl.Range{}
	for _, r := range raws {
		if r == nil {
			continue
		}
		n := len(b.diags.Errs())
		p := BanPolicy{
			Name:             r.Name,
			Within:           DefaultBanWithin,
			BanFor:           DefaultBanFor,
			RepeatMultiplier: DefaultRepeatMultiplier,
			Mode:             DefaultBanMode,
		}
		if !validName(r.Name) {
			b.errorf(r.NameRange, "Invalid ban_policy name",
				"Name %q must start with a letter or digit and contain only letters, digits, '.', '_' or '-' (at most 64).", r.Name)
		}
		if f, dup := first[r.Name]; dup {
			b.errorf(r.NameRange, "Duplicate ban_policy name",
				"A ban_policy named %q is already defined at %s.", r.Name, at(f))
		} else {
			first[r.Name] = r.NameRange
		}
		if r.MatchUserAgent != nil {
			if items, diags := decodeStringList(r.MatchUserAgent); b.add(diags) {
				for _, it := range items {
					s := strings.TrimSpace(it.s)
					switch {
					case s == "":
						b.errorf(it.rng, "Invalid user agent pattern", "match_user_agent entries must not be empty: an empty pattern would match every request.")
					case len(s) > maxUserAgentPattern || !validText(s):
						b.errorf(it.rng, "Invalid user agent pattern",
							"match_user_agent entries are printable text of at most %d bytes.", maxUserAgentPattern)
					default:
						p.MatchUserAgent = append(p.MatchUserAgent, s)
					}
				}
			}
		}
		threshold := func(attr *hcl.Attribute, dst *int) {
			if attr == nil {
				return
			}
			if v, diags := decodeInt(attr, 1, maxThreshold, "Threshold out of range"); b.add(diags) {
				*dst = v
			}
		}
		threshold(r.FailedAuth, &p.FailedAuth)
		threshold(r.DistinctUnknownUsers, &p.DistinctUnknownUsers)
		threshold(r.UnknownSourceRequests, &p.UnknownSourceRequests)
		if r.Within != nil {
			if d, diags := decodeLongDuration(r.Within); b.add(diags) {
				p.Within = d
			}
		}
		if r.BanFor != nil {
			if d, diags := decodeLongDuration(r.BanFor); b.add(diags) {
				p.BanFor = d
			}
		}
		if r.RepeatMultiplier != nil {
			if v, diags := decodeInt(r.RepeatMultiplier, 1, maxRepeatMultiplier, "Multiplier out of range"); b.add(diags) {
				p.RepeatMultiplier = v
			}
		}
		p.MaxBan = max(DefaultMaxBan, p.BanFor)
		if r.MaxBan != nil {
			if d, diags := decodeLongDuration(r.MaxBan); b.add(diags) {
				p.MaxBan = d
				if d < p.BanFor {
					b.errorf(r.MaxBan.Expr.Range(), "Duration out of range",
						"max_ban %v is shorter than ban_for %v.", d, p.BanFor)
				}
			}
		}
		if r.Mode != nil {
			if m, diags := decodeString(r.Mode); b.add(diags) {
				m = strings.ToLower(strings.TrimSpace(m))
				if slices.Contains(banModes, m) {
					p.Mode = BanMode(m)
				} else {
					b.errorf(r.Mode.Expr.Range(), "Invalid mode", "mode %q is not one of %s.", m, quoteList(banModes))
				}
			}
		}
		if r.MatchUserAgent == nil && r.FailedAuth == nil && r.DistinctUnknownUsers == nil && r.UnknownSourceRequests == nil {
			b.errorf(r.DefRange, "Ban policy detects nothing",
				"ban_policy %q needs at least one of match_user_agent, failed_auth, distinct_unknown_users or unknown_source_requests.", r.Name)
		}
		if len(b.diags.Errs()) == n {
			out = append(out, p)
		}
	}
	return out
}

// stateDir decodes the top-level state_dir.
func (b *builder) stateDir(attr *hcl.Attribute) string {
	if attr == nil {
		return DefaultStateDir
	}
	s, diags := decodeString(attr)
	if !b.add(diags) {
		return DefaultStateDir
	}
	if !strings.HasPrefix(s, "/") || strings.ContainsRune(s, 0) {
		b.errorf(attr.Expr.Range(), "Invalid state directory", "state_dir must be an absolute path, got %q.", s)
		return DefaultStateDir
	}
	return s
}

// ipv6Prefix decodes the top-level ipv6_prefix.
func (b *builder) ipv6Prefix(attr *hcl.Attribute) int {
	if attr == nil {
		return DefaultIPv6Prefix
	}
	n, diags := decodeInt(attr, minIPv6Prefix, 128, "Prefix length out of range")
	if !b.add(diags) {
		return DefaultIPv6Prefix
	}
	return n
}
