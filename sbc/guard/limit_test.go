package guard

import (
	"fmt"
	"net/netip"
	"testing"
	"time"
)

func publicLimit() RateLimit {
	return RateLimit{Name: "sip-public", Zone: "public", Rate: 50, Per: time.Second, Burst: 100}
}

func datagram(zone string) Request {
	return Request{Method: "INVITE", User: "100", Zone: zone, Metered: true}
}

func TestRateLimitBurstThenRate(t *testing.T) {
	g := New(Config{RateLimits: []RateLimit{publicLimit()}})
	passed := 0
	// 2,000 datagrams a second for three seconds: the burst of 100, then
	// 50 a second
	for i := range 6000 {
		at := t0.Add(time.Duration(i) * 500 * time.Microsecond)
		switch v := g.Check(at, attacker, datagram("public")); v.Action {
		case Allow:
			passed++
		case Drop:
			if v.Limited != "sip-public" {
				t.Fatalf("drop without naming the limit: %+v", v)
			}
		default:
			t.Fatalf("datagram %d: %v", i, v.Action)
		}
	}
	if want := 100 + 150; passed < want-1 || passed > want+1 {
		t.Fatalf("%d datagrams passed, want %d", passed, want)
	}
	if st := g.Stats(); st.RateLimited["sip-public"] != uint64(6000-passed) {
		t.Fatalf("rate_limited counter %v, want %d", st.RateLimited, 6000-passed)
	}
	// another source has its own bucket
	if v := g.Check(t0.Add(3*time.Second), netip.MustParseAddr("198.51.100.67"), datagram("public")); v.Action != Allow {
		t.Fatalf("second source: %v", v.Action)
	}
}

func TestRateLimitScope(t *testing.T) {
	g := New(Config{RateLimits: []RateLimit{{Name: "one", Zone: "public", Rate: 1, Per: time.Hour, Burst: 1}},
		Allow: []netip.Prefix{netip.PrefixFrom(carrier, 32)}})
	if v := g.Check(t0, attacker, datagram("public")); v.Action != Allow {
		t.Fatalf("first datagram: %v", v.Action)
	}
	if v := g.Check(t0, attacker, datagram("public")); v.Action != Drop {
		t.Fatalf("second datagram: %v", v.Action)
	}
	// another zone has no limit; a TCP message (not a datagram) is not
	// counted, as the kernel meters count UDP only
	if v := g.Check(t0, attacker, datagram("private")); v.Action != Allow {
		t.Fatalf("other zone: %v", v.Action)
	}
	if v := g.Check(t0, attacker, Request{Method: "OPTIONS", Zone: "public"}); v.Action != Allow {
		t.Fatalf("stream message: %v", v.Action)
	}
	// the allow list is exempt
	for range 10 {
		if v := g.Check(t0, carrier, datagram("public")); v.Action != Allow {
			t.Fatalf("allow-listed source limited: %v", v.Action)
		}
	}
	// a datagram that is no request counts too
	g2 := New(Config{RateLimits: []RateLimit{{Name: "one", Zone: "public", Rate: 1, Per: time.Hour, Burst: 1}}})
	g2.Check(t0, attacker, Request{Zone: "public", Metered: true})
	if v := g2.Check(t0, attacker, Request{Zone: "public", Metered: true}); v.Action != Drop {
		t.Fatalf("keepalive beyond the limit: %v", v.Action)
	}
}

// A rate-limited request never reaches the policies: like in the kernel,
// it is dropped before anything counts it.
func TestRateLimitBeforePolicies(t *testing.T) {
	g := New(Config{RateLimits: []RateLimit{{Name: "one", Zone: "public", Rate: 1, Per: time.Hour, Burst: 5}},
		Policies: []Policy{unsolicited()}})
	r := datagram("public")
	r.Unsolicited = true
	for i := range 100 {
		if v := g.Check(t0.Add(time.Duration(i)*time.Millisecond), attacker, r); v.Action == BanSource {
			t.Fatalf("request %d banned the source: only 5 passed the limit", i)
		}
	}
}

func TestRateLimitBounded(t *testing.T) {
	g := New(Config{MaxSources: 1000, RateLimits: []RateLimit{publicLimit()}})
	for i := range 20000 {
		a := netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
		g.Check(t0, a, datagram("public"))
		if n := len(g.limits.buckets); n > 1000 {
			t.Fatalf("%d buckets after %d sources, bound 1000", n, i+1)
		}
	}
	// idle sources refill and are forgotten by the sweep
	g.Sweep(t0.Add(3 * time.Second))
	if n := len(g.limits.buckets); n != 0 {
		t.Fatalf("%d buckets left after every source went idle", n)
	}
}

func TestIPv6Prefix(t *testing.T) {
	a1 := netip.MustParseAddr("2001:db8:1:2::66")
	a2 := netip.MustParseAddr("2001:db8:1:2:ffff::1")
	other := netip.MustParseAddr("2001:db8:1:3::66")

	g := New(Config{Policies: []Policy{enumeration()}, RateLimits: []RateLimit{{Name: "one", Zone: "public", Rate: 1, Per: time.Hour, Burst: 2}}})
	// the rate limit is shared by the /64
	g.Check(t0, a1, datagram("public"))
	g.Check(t0, a2, datagram("public"))
	if v := g.Check(t0, a1, datagram("public")); v.Action != Drop {
		t.Fatalf("third datagram from the /64: %v", v.Action)
	}
	if v := g.Check(t0, other, datagram("public")); v.Action != Allow {
		t.Fatalf("the next /64: %v", v.Action)
	}
	// counters are shared: ten users from ten addresses of one /64
	var v Verdict
	for i := range 10 {
		src := netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 2, 15: byte(i + 1)})
		v = g.Outcome(t0, src, invite(fmt.Sprint(100+i)), 404)
	}
	if v.Action != BanSource || v.Ban.Prefix != netip.MustParsePrefix("2001:db8:1:2::/64") {
		t.Fatalf("ten users from one /64: %+v", v)
	}
	for _, a := range []netip.Addr{a1, a2} {
		if !g.Banned(t0, a) {
			t.Errorf("%v not banned with its /64", a)
		}
		if b, ok := g.Get(t0, a); !ok || b.Policy != "enumeration" {
			t.Errorf("Get(%v) = %+v %v", a, b, ok)
		}
	}
	if g.Banned(t0, other) {
		t.Error("the next /64 is banned")
	}
	if g.Key(a2) != netip.MustParseAddr("2001:db8:1:2::") || g.Key(attacker) != attacker {
		t.Errorf("keys: %v %v", g.Key(a2), g.Key(attacker))
	}
	// lifting by any address of the prefix
	if _, ok := g.Remove(a2); !ok || g.Banned(t0, a1) {
		t.Error("remove by another address of the /64 failed")
	}

	// 128: each address alone
	g = New(Config{IPv6Prefix: 128, Policies: []Policy{scanners()}})
	g.Check(t0, a1, Request{Method: "OPTIONS", UserAgent: "friendly-scanner"})
	if !g.Banned(t0, a1) || g.Banned(t0, a2) {
		t.Error("with prefix 128 the ban is not per address")
	}
	if b, _ := g.Get(t0, a1); b.Prefix.IsValid() {
		t.Errorf("per-address ban has a prefix: %v", b.Prefix)
	}

	// a manual ban of one address bans its prefix; the allow list still
	// wins inside it
	peer := netip.MustParseAddr("2001:db8:1:2::2")
	g = New(Config{Allow: []netip.Prefix{netip.PrefixFrom(peer, 128)}})
	if err := g.Add(Ban{Addr: a1, Policy: "manual", Start: t0, Expires: t0.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	if !g.Banned(t0, a2) {
		t.Error("manual ban did not cover the /64")
	}
	if v := g.Check(t0, peer, invite("1")); v.Action != Allow {
		t.Errorf("allow-listed address inside a banned prefix: %v", v.Action)
	}
	// reload keeps the prefix the bans are keyed by
	g.Reload(Config{IPv6Prefix: 128})
	if !g.Banned(t0, a2) {
		t.Error("reload changed the prefix of bans in force")
	}
}
