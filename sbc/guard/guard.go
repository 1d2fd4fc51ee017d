// Package guard decides which sources of SIP traffic to ban. It watches
// requests and the final responses they get, counts per source what the ban
// policies look for (scanner user agents, failed authentication, requests for
// users that do not exist, requests from strangers on the public side), and
// returns Verdicts. When the kernel cannot, it also holds each source to the
// per-zone packet rate limits. It enforces nothing, does no I/O and keeps no
// clock: the caller passes the time, acts on the Verdicts and persists the
// Bans.
//
// A source is an IPv4 address or an IPv6 prefix (a /64 by default): an
// attacker holding a /64 can send from any of its addresses, so they are
// counted, rate limited and banned as one.
//
// Allow-listed sources (the peers and the configured allow list) are never
// counted, rate limited nor banned, whatever a policy says.
package guard

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Mode says whether a policy bans or only reports.
type Mode int

const (
	// Enforce bans the offending source.
	Enforce Mode = iota
	// LogOnly reports the ban the policy would have made and bans nothing.
	LogOnly
)

func (m Mode) String() string {
	if m == LogOnly {
		return "log"
	}
	return "enforce"
}

// Policy is one ban policy. A detector with a zero threshold or no user
// agents is off; whichever detector trips first bans the source.
type Policy struct {
	Name string
	// UserAgents are lowercase-insensitive substrings of User-Agent; one
	// matching request trips the policy.
	UserAgents []string
	// FailedAuth is the number of 401/403/407 outcomes within Within.
	FailedAuth int
	// DistinctUnknownUsers is the number of distinct request users within
	// Within that do not exist for the source: each user of an out-of-dialog
	// request (Check; a guarded source is no peer, so no user exists for
	// it), and each user answered 404/484 (Outcome).
	DistinctUnknownUsers int
	// UnknownSourceRequests is the number of unsolicited requests within
	// Within.
	UnknownSourceRequests int
	Within                time.Duration
	// BanFor is the first ban's length; each repeat offence multiplies
	// the previous ban by RepeatMultiplier, up to MaxBan.
	BanFor           time.Duration
	RepeatMultiplier int
	MaxBan           time.Duration
	Mode             Mode
}

// Config is the guard's policy set.
type Config struct {
	// Allow are sources never counted nor banned: the explicit allow list
	// and every peer's sources.
	Allow    []netip.Prefix
	Policies []Policy
	// MaxSources bounds the sources tracked at once, by the policies and
	// by the rate limits each. 0 means 100000.
	MaxSources int
	// RateLimits are enforced by Check when set: one per zone at most.
	RateLimits []RateLimit
	// IPv6Prefix is the prefix length an IPv6 source is counted, rate
	// limited and banned by; 0 means 64, 128 means each address alone.
	IPv6Prefix int
}

// DefaultIPv6Prefix is the prefix length of an IPv6 source by default: a
// site's /64.
const DefaultIPv6Prefix = 64

// Request summarises one request from a source, as far as the policies
// care. The caller extracts it from the message; guard never parses SIP.
type Request struct {
	Method string
	// User is the user part of the Request-URI, or of the To URI when the
	// Request-URI has none (a REGISTER).
	User      string
	UserAgent string
	// Zone is the zone the request arrived on, for the rate limits.
	Zone string
	// Metered is set for what the rate limits count, as the kernel
	// meters count packets: a UDP datagram, a TCP connection accepted and
	// a message framed on one. Method may be empty then (a datagram that
	// is not a request, a connection).
	Metered bool
	// InDialog is set for a request whose To header carries a tag.
	InDialog bool
	// Unsolicited is set for a request outside any dialog from a source
	// that is no peer, arriving on the public side.
	Unsolicited bool
	// Relayed is set for a request the SBC hands to a peer that decides
	// about it (a phone's REGISTER in access mode, for its registrar):
	// its user is not unknown merely because a stranger asks, so it does
	// not count as an unknown user; the peer's 404 does (Outcome).
	Relayed bool
}

// String renders a request as a one-line summary for ban records and logs.
func (r Request) String() string {
	ua := r.UserAgent
	if len(ua) > 64 {
		ua = ua[:64]
	}
	return fmt.Sprintf("%s user=%q ua=%q", r.Method, r.User, ua)
}

// Offence is one offending request of a Ban.
type Offence struct {
	At      time.Time `json:"at"`
	Request string    `json:"request"`
	Code    int       `json:"code,omitempty"` // the outcome, for outcome detectors
}

// Ban is a decision to drop every packet from Addr until Expires. It
// records why, for operators: the policy, the detector, the counters at the
// time and the first and last offending request.
type Ban struct {
	// Addr is the banned address: the offender, or any address in Prefix.
	Addr netip.Addr `json:"addr"`
	// Prefix is the range the ban covers when wider than Addr: the IPv6
	// prefix of the source (Config.IPv6Prefix).
	Prefix   netip.Prefix   `json:"prefix,omitzero"`
	Policy   string         `json:"policy"`
	Reason   string         `json:"reason"`
	Counters map[string]int `json:"counters,omitempty"`
	First    Offence        `json:"first"`
	Last     Offence        `json:"last"`
	Start    time.Time      `json:"start"`
	Expires  time.Time      `json:"expires"`
	// Repeat is the number of earlier bans of Addr by the same policy that
	// this one escalates (0 for a first offence).
	Repeat int `json:"repeat,omitempty"`
}

// Remaining is how long the ban still runs at now (0 once expired).
func (b Ban) Remaining(now time.Time) time.Duration {
	return max(b.Expires.Sub(now), 0)
}

// Action is what the caller does with the traffic of a source.
type Action int

const (
	// Allow passes the request on.
	Allow Action = iota
	// Drop discards it: the source is banned already, or over its rate
	// limit (Verdict.Limited).
	Drop
	// BanSource bans the source (Verdict.Ban) and discards the request.
	BanSource
	// WouldBan reports a ban a log-mode policy would have made
	// (Verdict.Ban); the request passes on.
	WouldBan
)

func (a Action) String() string {
	switch a {
	case Drop:
		return "drop"
	case BanSource:
		return "ban"
	case WouldBan:
		return "would-ban"
	}
	return "allow"
}

// Verdict is the guard's decision about one request or outcome.
type Verdict struct {
	Action Action
	// Ban is set for BanSource and WouldBan.
	Ban *Ban
	// Reports are the bans log-mode policies would have made on this
	// event; they may accompany any Action but Drop.
	Reports []Ban
	// Limited names the rate limit that dropped the request.
	Limited string
}

// Guard holds per-source counters and the ban list. It is safe for
// concurrent use; mu guards every field below it.
type Guard struct {
	mu       sync.Mutex
	cfg      Config
	policies []policy
	sources  map[netip.Addr]*source // by key
	bans     map[netip.Addr]Ban     // by key
	limits   limiter
	// history remembers earlier bans per source and policy, for
	// escalation; an entry is forgotten MaxBan after its ban ended.
	history map[historyKey]history
	// would remembers log-mode trips until the ban they stand for would
	// have ended, so a trial policy reports each would-be ban once.
	would map[historyKey]time.Time
	stats Stats
}

// Stats are the guard's counters.
type Stats struct {
	Bans    uint64 `json:"bans"`
	Dropped uint64 `json:"dropped"`
	// RateLimited counts the requests dropped in userspace by each rate
	// limit, by name.
	RateLimited map[string]uint64 `json:"rate_limited,omitempty"`
	WouldBan    map[string]uint64 `json:"would_ban,omitempty"` // per log-mode policy
	BannedNow   int               `json:"banned_now"`
	Tracked     int               `json:"tracked_sources"`
}

type policy struct {
	Policy
	agents []string // lowercase
}

type historyKey struct {
	addr   netip.Addr
	policy string
}

type history struct {
	repeat int // bans so far
	last   time.Duration
	until  time.Time // when the latest ban ends
}

// source is what the guard counts about one address.
type source struct {
	seen     time.Time
	counters []counters // one per policy, same index
}

type counters struct {
	failed      window
	unsolicited window
	users       map[string]event // user → its first request or 404/484 in the window
}

// window is a sliding count of events: it keeps the latest events, at most
// the threshold, so it is exact and bounded.
type window struct {
	events []event
}

// event is one counted request. The summary text is made only when a ban
// is, so counting costs no formatting.
type event struct {
	at   time.Time
	req  Request
	code int
}

func (e event) offence() Offence {
	return Offence{At: e.at, Request: e.req.String(), Code: e.code}
}

// add records an event and reports the events within d of it, capped at
// limit.
func (w *window) add(o event, d time.Duration, limit int) int {
	cut := 0
	for cut < len(w.events) && o.at.Sub(w.events[cut].at) >= d {
		cut++
	}
	w.events = append(w.events[:0], w.events[cut:]...)
	if len(w.events) >= limit {
		w.events = w.events[len(w.events)-limit+1:]
	}
	w.events = append(w.events, o)
	return len(w.events)
}

// first is the oldest event in the window.
func (w *window) first() event {
	if len(w.events) == 0 {
		return event{}
	}
	return w.events[0]
}

// New builds a guard with no bans.
func New(cfg Config) *Guard {
	g := &Guard{
		sources: map[netip.Addr]*source{},
		bans:    map[netip.Addr]Ban{},
		history: map[historyKey]history{},
		would:   map[historyKey]time.Time{},
		stats:   Stats{WouldBan: map[string]uint64{}, RateLimited: map[string]uint64{}},
	}
	g.setConfig(cfg)
	return g
}

func (g *Guard) setConfig(cfg Config) {
	if cfg.MaxSources <= 0 {
		cfg.MaxSources = 100000
	}
	if cfg.IPv6Prefix <= 0 || cfg.IPv6Prefix > 128 {
		cfg.IPv6Prefix = DefaultIPv6Prefix
	}
	g.cfg = cfg
	g.limits = newLimiter(cfg.RateLimits, cfg.MaxSources)
	g.policies = g.policies[:0]
	for _, p := range cfg.Policies {
		if p.RepeatMultiplier < 1 {
			p.RepeatMultiplier = 1
		}
		if p.MaxBan < p.BanFor {
			p.MaxBan = p.BanFor
		}
		cp := policy{Policy: p}
		for _, a := range p.UserAgents {
			if a = strings.ToLower(strings.TrimSpace(a)); a != "" {
				cp.agents = append(cp.agents, a)
			}
		}
		g.policies = append(g.policies, cp)
	}
}

// Reload replaces the policies, the rate limits and the allow list. Bans
// and escalation history stay; the counters start afresh, since their
// meaning may have changed. Bans of sources that are now allow-listed are
// lifted and returned, so the caller can withdraw them. IPv6Prefix keeps
// the value the guard was built with: the bans in force are keyed by it.
func (g *Guard) Reload(cfg Config) []Ban {
	g.mu.Lock()
	defer g.mu.Unlock()
	cfg.IPv6Prefix = g.cfg.IPv6Prefix
	g.setConfig(cfg)
	g.sources = map[netip.Addr]*source{}
	g.would = map[historyKey]time.Time{}
	var lifted []Ban
	for k, b := range g.bans {
		if g.allowed(b.Addr) {
			delete(g.bans, k)
			lifted = append(lifted, b)
		}
	}
	return lifted
}

// Key is the address src is counted and banned by: src itself for IPv4,
// the first address of its prefix for IPv6.
func (g *Guard) Key(src netip.Addr) netip.Addr {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.key(src.Unmap())
}

func (g *Guard) key(src netip.Addr) netip.Addr {
	if p := g.prefix(src); p.IsValid() {
		return p.Addr()
	}
	return src
}

// prefix is the range a ban of src covers, when wider than src.
func (g *Guard) prefix(src netip.Addr) netip.Prefix {
	if !src.Is6() || g.cfg.IPv6Prefix >= 128 {
		return netip.Prefix{}
	}
	return netip.PrefixFrom(src.WithZone(""), g.cfg.IPv6Prefix).Masked()
}

// Allowed reports whether src is allow-listed.
func (g *Guard) Allowed(src netip.Addr) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.allowed(src.Unmap())
}

func (g *Guard) allowed(src netip.Addr) bool {
	for _, p := range g.cfg.Allow {
		if p.Contains(src) {
			return true
		}
	}
	return false
}

// Banned reports whether src is banned at now, and counts a drop if so.
func (g *Guard) Banned(now time.Time, src netip.Addr) bool {
	src = src.Unmap()
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.banned(now, src)
}

func (g *Guard) banned(now time.Time, src netip.Addr) bool {
	k := g.key(src)
	b, ok := g.bans[k]
	if !ok {
		return false
	}
	if !now.Before(b.Expires) {
		delete(g.bans, k)
		return false
	}
	g.stats.Dropped++
	return true
}

// Check decides about one request (or, with an empty Method, one
// datagram) from src: allow-listed, banned, over its rate limit, or
// counted by the policies. Apart from updating its counters it has no side
// effects; the caller enforces the Verdict.
func (g *Guard) Check(now time.Time, src netip.Addr, r Request) Verdict {
	src = src.Unmap()
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.allowed(src) {
		return Verdict{Action: Allow}
	}
	if g.banned(now, src) {
		return Verdict{Action: Drop}
	}
	key := g.key(src)
	if r.Metered {
		if name, over := g.limits.over(now, r.Zone, key); over {
			g.stats.RateLimited[name]++
			return Verdict{Action: Drop, Limited: name}
		}
	}
	var (
		s   *source
		out verdicts
		off = event{at: now, req: r}
		ua  = strings.ToLower(r.UserAgent)
		// a request that names a user, outside a dialog: the user does
		// not exist for a source that is no peer
		probe = r.User != "" && !r.InDialog && r.Method != "ACK" && !r.Relayed
	)
	for i := range g.policies {
		p := &g.policies[i]
		if ua != "" {
			for _, a := range p.agents {
				if strings.Contains(ua, a) {
					if out.add(g.trip(now, src, p, "user-agent matches "+strconv.Quote(a), map[string]int{"user_agent_match": 1}, off, off)) {
						return out.v
					}
					break
				}
			}
		}
		if p.UnknownSourceRequests > 0 && r.Unsolicited {
			if s == nil {
				s = g.source(now, key)
			}
			c := &s.counters[i]
			if n := c.unsolicited.add(off, p.Within, p.UnknownSourceRequests); n >= p.UnknownSourceRequests {
				first := c.unsolicited.first()
				c.unsolicited = window{}
				if out.add(g.trip(now, src, p, "unsolicited requests", map[string]int{"unknown_source_requests": n}, first, off)) {
					return out.v
				}
			}
		}
		if p.DistinctUnknownUsers > 0 && probe {
			if s == nil {
				s = g.source(now, key)
			}
			if out.add(g.unknownUser(now, src, p, &s.counters[i], off)) {
				return out.v
			}
		}
	}
	return out.v
}

// Outcome records the final response code sent to src for request r and
// decides whether that trips a policy.
func (g *Guard) Outcome(now time.Time, src netip.Addr, r Request, code int) Verdict {
	auth := code == 401 || code == 403 || code == 407
	unknown := code == 404 || code == 484
	if !auth && !unknown {
		return Verdict{Action: Allow}
	}
	src = src.Unmap()
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.allowed(src) {
		return Verdict{Action: Allow}
	}
	if g.banned(now, src) {
		return Verdict{Action: Drop}
	}
	var (
		s   *source
		out verdicts
		off = event{at: now, req: r, code: code}
		key = g.key(src)
	)
	for i := range g.policies {
		p := &g.policies[i]
		switch {
		case auth && p.FailedAuth > 0:
			if s == nil {
				s = g.source(now, key)
			}
			c := &s.counters[i]
			if n := c.failed.add(off, p.Within, p.FailedAuth); n >= p.FailedAuth {
				first := c.failed.first()
				c.failed = window{}
				if out.add(g.trip(now, src, p, "failed authentication", map[string]int{"failed_auth": n}, first, off)) {
					return out.v
				}
			}
		case unknown && p.DistinctUnknownUsers > 0:
			if s == nil {
				s = g.source(now, key)
			}
			if out.add(g.unknownUser(now, src, p, &s.counters[i], off)) {
				return out.v
			}
		}
	}
	return out.v
}

// unknownUser counts the user of one request for a user that does not
// exist (an out-of-dialog request from a stranger, or a 404/484) and trips
// p when the window holds enough distinct users. A user counts once per
// window, whether it came as a request, an outcome or both.
func (g *Guard) unknownUser(now time.Time, src netip.Addr, p *policy, c *counters, off event) Verdict {
	if c.users == nil {
		c.users = map[string]event{}
	}
	first := off
	for u, o := range c.users {
		if now.Sub(o.at) >= p.Within {
			delete(c.users, u)
		} else if o.at.Before(first.at) {
			first = o
		}
	}
	if _, seen := c.users[off.req.User]; !seen && len(c.users) < p.DistinctUnknownUsers {
		c.users[off.req.User] = off
	}
	n := len(c.users)
	if n < p.DistinctUnknownUsers {
		return Verdict{Action: Allow}
	}
	c.users = nil
	return g.trip(now, src, p, "unknown users", map[string]int{"distinct_unknown_users": n}, first, off)
}

// verdicts merges the trips of several policies on one event: a ban ends
// the evaluation, log-mode reports accumulate.
type verdicts struct{ v Verdict }

// add merges v and reports whether the source is now banned.
func (m *verdicts) add(v Verdict) bool {
	switch v.Action {
	case BanSource:
		v.Reports = m.v.Reports
		m.v = v
		return true
	case WouldBan:
		m.v.Action = WouldBan
		m.v.Reports = append(m.v.Reports, *v.Ban)
		if m.v.Ban == nil {
			m.v.Ban = v.Ban
		}
	}
	return false
}

// trip makes the ban p calls for. In log mode the ban is only returned
// (once per would-be ban length); in enforce mode it is also recorded.
func (g *Guard) trip(now time.Time, src netip.Addr, p *policy, reason string, cnt map[string]int, firstEvent, lastEvent event) Verdict {
	addr := g.key(src)
	key := historyKey{addr, p.Name}
	if until, ok := g.would[key]; ok && p.Mode == LogOnly && now.Before(until) {
		return Verdict{Action: Allow} // reported already
	}
	first, last := firstEvent.offence(), lastEvent.offence()
	h, seen := g.history[key]
	if seen && now.After(h.until.Add(p.MaxBan)) {
		h, seen = history{}, false
	}
	d := p.BanFor
	if seen {
		d = min(time.Duration(float64(h.last)*float64(p.RepeatMultiplier)), p.MaxBan)
	}
	b := &Ban{Addr: src, Prefix: g.prefix(src), Policy: p.Name, Reason: reason, Counters: cnt, First: first, Last: last,
		Start: now, Expires: now.Add(d), Repeat: h.repeat}
	if p.Mode == LogOnly {
		g.would[key] = b.Expires
		g.stats.WouldBan[p.Name]++
		return Verdict{Action: WouldBan, Ban: b}
	}
	g.history[key] = history{repeat: h.repeat + 1, last: d, until: b.Expires}
	g.bans[addr] = *b
	g.stats.Bans++
	delete(g.sources, addr)
	return Verdict{Action: BanSource, Ban: b}
}

// source returns the counters of the source keyed key, creating them. When the table is
// full a sixteenth of it is forgotten at once, picked by map order, which
// is effectively random: finding the least recently seen source would cost
// a scan of the table per new source, which a flood from spoofed addresses
// would turn into the bottleneck.
func (g *Guard) source(now time.Time, key netip.Addr) *source {
	s, ok := g.sources[key]
	if !ok {
		if len(g.sources) >= g.cfg.MaxSources {
			g.evictSome(max(g.cfg.MaxSources/16, 1))
		}
		s = &source{counters: make([]counters, len(g.policies))}
		g.sources[key] = s
	}
	s.seen = now
	return s
}

func (g *Guard) evictSome(n int) {
	for a := range g.sources {
		if n == 0 {
			return
		}
		delete(g.sources, a)
		n--
	}
}

// Sweep forgets expired bans, idle counters and stale history. Call it
// periodically; it returns the bans that expired.
func (g *Guard) Sweep(now time.Time) []Ban {
	g.mu.Lock()
	defer g.mu.Unlock()
	var window time.Duration
	for _, p := range g.policies {
		window = max(window, p.Within)
	}
	for a, s := range g.sources {
		if now.Sub(s.seen) >= window {
			delete(g.sources, a)
		}
	}
	g.limits.sweep(now)
	var expired []Ban
	for a, b := range g.bans {
		if !now.Before(b.Expires) {
			delete(g.bans, a)
			expired = append(expired, b)
		}
	}
	maxBan := map[string]time.Duration{}
	for _, p := range g.policies {
		maxBan[p.Name] = p.MaxBan
	}
	for k, h := range g.history {
		if mb, ok := maxBan[k.policy]; !ok || now.After(h.until.Add(mb)) {
			delete(g.history, k)
		}
	}
	for k, until := range g.would {
		if !now.Before(until) {
			delete(g.would, k)
		}
	}
	return expired
}

// Add bans a source by hand (an operator, or a ban restored at start): an
// IPv6 address bans its prefix. A ban of an allow-listed source is refused;
// allow-listed addresses inside a banned prefix stay allowed, since the
// allow list is looked at first. An existing ban is replaced.
func (g *Guard) Add(b Ban) error {
	b.Addr = b.Addr.Unmap()
	if !b.Addr.IsValid() {
		return fmt.Errorf("guard: ban without an address")
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.allowed(b.Addr) {
		return fmt.Errorf("guard: %v is allow-listed and cannot be banned", b.Addr)
	}
	k := g.key(b.Addr)
	b.Prefix = g.prefix(b.Addr)
	g.bans[k] = b
	if b.Policy != "" {
		key := historyKey{k, b.Policy}
		if h := g.history[key]; h.until.Before(b.Expires) {
			g.history[key] = history{repeat: max(h.repeat, b.Repeat+1), last: b.Expires.Sub(b.Start), until: b.Expires}
		}
	}
	return nil
}

// Remove lifts the ban of src and reports whether there was one. The
// escalation history stays: a source banned again soon gets a longer ban.
func (g *Guard) Remove(src netip.Addr) (Ban, bool) {
	src = src.Unmap()
	g.mu.Lock()
	defer g.mu.Unlock()
	k := g.key(src)
	b, ok := g.bans[k]
	delete(g.bans, k)
	return b, ok
}

// Get returns the ban of src, if any is in force at now.
func (g *Guard) Get(now time.Time, src netip.Addr) (Ban, bool) {
	src = src.Unmap()
	g.mu.Lock()
	defer g.mu.Unlock()
	b, ok := g.bans[g.key(src)]
	if !ok || !now.Before(b.Expires) {
		return Ban{}, false
	}
	return b, true
}

// Bans lists the bans in force at now, ordered by address.
func (g *Guard) Bans(now time.Time) []Ban {
	g.mu.Lock()
	defer g.mu.Unlock()
	out := make([]Ban, 0, len(g.bans))
	for _, b := range g.bans {
		if now.Before(b.Expires) {
			out = append(out, b)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Addr.Less(out[j].Addr) })
	return out
}

// Stats returns a snapshot of the counters.
func (g *Guard) Stats() Stats {
	g.mu.Lock()
	defer g.mu.Unlock()
	st := g.stats
	st.WouldBan = maps.Clone(g.stats.WouldBan)
	st.RateLimited = maps.Clone(g.stats.RateLimited)
	st.BannedNow = len(g.bans)
	st.Tracked = len(g.sources)
	return st
}

// PolicyNames lists the configured policies, for logs.
func (g *Guard) PolicyNames() []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	var out []string
	for _, p := range g.policies {
		out = append(out, p.Name)
	}
	return slices.Clip(out)
}
