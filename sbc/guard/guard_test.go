package guard

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"
)

var (
	t0       = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	attacker = netip.MustParseAddr("198.51.100.66")
	carrier  = netip.MustParseAddr("203.0.113.2")
)

func scanners() Policy {
	return Policy{Name: "scanners", UserAgents: []string{"friendly-scanner", "SIPVicious"}, BanFor: 24 * time.Hour}
}

func authFailures() Policy {
	return Policy{Name: "auth-failures", FailedAuth: 5, Within: time.Minute, BanFor: time.Hour,
		RepeatMultiplier: 4, MaxBan: 7 * 24 * time.Hour}
}

func enumeration() Policy {
	return Policy{Name: "enumeration", DistinctUnknownUsers: 10, Within: time.Minute, BanFor: 6 * time.Hour}
}

func unsolicited() Policy {
	return Policy{Name: "unsolicited", UnknownSourceRequests: 20, Within: time.Minute, BanFor: time.Hour}
}

func invite(user string) Request {
	return Request{Method: "INVITE", User: user, UserAgent: "Linphone/5.0"}
}

func TestScannerUserAgent(t *testing.T) {
	tests := []struct {
		ua   string
		want Action
	}{
		{"friendly-scanner", BanSource},
		{"sipvicious 0.3.4", BanSource},
		{"Mozilla FRIENDLY-SCANNER/1.0", BanSource},
		{"Linphone/5.0", Allow},
		{"", Allow},
	}
	for _, tt := range tests {
		g := New(Config{Policies: []Policy{scanners()}})
		v := g.Check(t0, attacker, Request{Method: "OPTIONS", User: "100", UserAgent: tt.ua})
		if v.Action != tt.want {
			t.Errorf("UA %q: action %v, want %v", tt.ua, v.Action, tt.want)
			continue
		}
		if tt.want != BanSource {
			continue
		}
		b := v.Ban
		if b.Policy != "scanners" || b.Addr != attacker || !b.Expires.Equal(t0.Add(24*time.Hour)) ||
			b.Counters["user_agent_match"] != 1 || b.First.Request == "" || b.Last.Request != b.First.Request {
			t.Errorf("UA %q: ban %+v", tt.ua, b)
		}
		if !g.Banned(t0.Add(time.Hour), attacker) {
			t.Errorf("UA %q: source not banned an hour later", tt.ua)
		}
		if g.Banned(t0.Add(24*time.Hour), attacker) {
			t.Errorf("UA %q: source still banned when the ban expired", tt.ua)
		}
	}
}

func TestBannedSourceIsDropped(t *testing.T) {
	g := New(Config{Policies: []Policy{scanners()}})
	g.Check(t0, attacker, Request{Method: "OPTIONS", UserAgent: "friendly-scanner"})
	if v := g.Check(t0.Add(time.Second), attacker, invite("1")); v.Action != Drop {
		t.Fatalf("request from banned source: %v, want drop", v.Action)
	}
	if v := g.Outcome(t0.Add(time.Second), attacker, invite("1"), 403); v.Action != Drop {
		t.Fatalf("outcome to banned source: %v, want drop", v.Action)
	}
	if st := g.Stats(); st.Bans != 1 || st.Dropped != 2 || st.BannedNow != 1 {
		t.Errorf("stats %+v", st)
	}
}

func TestFailedAuthThresholdAndWindow(t *testing.T) {
	g := New(Config{Policies: []Policy{authFailures()}})
	// four failures, then a pause longer than the window: no ban
	for i := range 4 {
		if v := g.Outcome(t0.Add(time.Duration(i)*time.Second), attacker, invite("100"), 401); v.Action != Allow {
			t.Fatalf("failure %d: %v", i+1, v.Action)
		}
	}
	now := t0.Add(61 * time.Second)
	// failures 2-4 have aged out at 61s+; four more stay below the threshold
	// only if the window slides: 1s..3s are older than 60s at 64s
	for i := range 4 {
		at := now.Add(time.Duration(i) * time.Second)
		if v := g.Outcome(at, attacker, invite("100"), 407); v.Action != Allow {
			t.Fatalf("failure %d after the pause: %v", i+1, v.Action)
		}
	}
	// not an auth outcome: ignored
	if v := g.Outcome(now.Add(5*time.Second), attacker, invite("100"), 486); v.Action != Allow {
		t.Fatalf("486 counted as a failure: %v", v.Action)
	}
	v := g.Outcome(now.Add(5*time.Second), attacker, invite("100"), 403)
	if v.Action != BanSource {
		t.Fatalf("fifth failure within the window: %v, want ban", v.Action)
	}
	b := v.Ban
	if b.Counters["failed_auth"] != 5 || b.Reason != "failed authentication" || b.Last.Code != 403 ||
		b.First.Code != 407 || !b.First.At.Equal(now) || !b.Expires.Equal(now.Add(5*time.Second+time.Hour)) {
		t.Errorf("ban %+v", b)
	}
}

func TestEscalation(t *testing.T) {
	g := New(Config{Policies: []Policy{authFailures()}})
	now := t0
	offend := func() *Ban {
		t.Helper()
		for range 4 {
			g.Outcome(now, attacker, invite("1"), 401)
		}
		v := g.Outcome(now, attacker, invite("1"), 401)
		if v.Action != BanSource {
			t.Fatalf("at %v: %v, want ban", now.Sub(t0), v.Action)
		}
		return v.Ban
	}
	want := []time.Duration{time.Hour, 4 * time.Hour, 16 * time.Hour, 64 * time.Hour, 7 * 24 * time.Hour, 7 * 24 * time.Hour}
	for i, d := range want {
		b := offend()
		if got := b.Expires.Sub(b.Start); got != d || b.Repeat != i {
			t.Fatalf("offence %d: ban for %v repeat %d, want %v repeat %d", i+1, got, b.Repeat, d, i)
		}
		now = b.Expires.Add(time.Minute)
	}
	// a source that behaves for longer than max_ban starts over
	now = now.Add(8 * 24 * time.Hour)
	g.Sweep(now)
	if b := offend(); b.Expires.Sub(b.Start) != time.Hour || b.Repeat != 0 {
		t.Fatalf("after a quiet period: ban for %v repeat %d, want 1h repeat 0", b.Expires.Sub(b.Start), b.Repeat)
	}
}

func TestDistinctUnknownUsers(t *testing.T) {
	g := New(Config{Policies: []Policy{enumeration()}})
	// the same user over and over is a retrying phone, not enumeration
	for i := range 50 {
		if v := g.Outcome(t0.Add(time.Duration(i)*time.Millisecond), attacker, invite("100"), 404); v.Action != Allow {
			t.Fatalf("repeated user: %v", v.Action)
		}
	}
	for i := 1; i < 9; i++ {
		if v := g.Outcome(t0.Add(time.Second), attacker, invite(fmt.Sprint(100+i)), 484); v.Action != Allow {
			t.Fatalf("user %d: %v", i, v.Action)
		}
	}
	// an auth outcome does not count as an unknown user
	if v := g.Outcome(t0.Add(time.Second), attacker, invite("999"), 401); v.Action != Allow {
		t.Fatalf("401 counted as unknown user: %v", v.Action)
	}
	v := g.Outcome(t0.Add(2*time.Second), attacker, invite("200"), 404)
	if v.Action != BanSource || v.Ban.Counters["distinct_unknown_users"] != 10 || v.Ban.Policy != "enumeration" {
		t.Fatalf("tenth distinct user: %+v", v)
	}
}

func TestDistinctUnknownUsersWindow(t *testing.T) {
	g := New(Config{Policies: []Policy{enumeration()}})
	// one new user every 7 seconds: never 10 within a minute
	for i := range 100 {
		at := t0.Add(time.Duration(i) * 7 * time.Second)
		if v := g.Outcome(at, attacker, invite(fmt.Sprint(i)), 404); v.Action != Allow {
			t.Fatalf("user %d at %v: %v", i, at.Sub(t0), v.Action)
		}
	}
}

// An SBC drops or refuses strangers before routing, so 404s are rare: the
// requests themselves count, each for a user that does not exist for a
// source that is no peer, on either zone.
func TestDistinctUnknownUsersByRequest(t *testing.T) {
	g := New(Config{Policies: []Policy{enumeration()}})
	reg := func(user string) Request {
		return Request{Method: "REGISTER", User: user, UserAgent: "Phone/1.0", Zone: "public", Metered: true, Unsolicited: true}
	}
	// not counted: in-dialog requests, ACKs, requests without a user,
	// repeats of one user
	for i := range 20 {
		at := t0.Add(time.Duration(i) * time.Millisecond)
		for _, r := range []Request{
			{Method: "BYE", User: fmt.Sprint(i), InDialog: true},
			{Method: "ACK", User: fmt.Sprint(i)},
			{Method: "OPTIONS"},
			reg("100"),
		} {
			if v := g.Check(at, attacker, r); v.Action != Allow {
				t.Fatalf("%+v: %v", r, v.Action)
			}
		}
	}
	// a request and a 404 for the same user count once
	g.Outcome(t0.Add(time.Second), attacker, invite("100"), 404)
	for i := 1; i < 9; i++ {
		if v := g.Check(t0.Add(time.Second), attacker, reg(fmt.Sprint(100+i))); v.Action != Allow {
			t.Fatalf("user %d: %v", 100+i, v.Action)
		}
	}
	v := g.Check(t0.Add(2*time.Second), attacker, reg("200"))
	if v.Action != BanSource || v.Ban.Policy != "enumeration" || v.Ban.Counters["distinct_unknown_users"] != 10 ||
		!strings.Contains(v.Ban.First.Request, `user="100"`) || !strings.Contains(v.Ban.Last.Request, `user="200"`) {
		t.Fatalf("tenth distinct user: %+v", v)
	}
	// a private-side stranger counts the same way
	g = New(Config{Policies: []Policy{enumeration()}})
	for i := range 10 {
		v = g.Check(t0, attacker, Request{Method: "INVITE", User: fmt.Sprint(i), Zone: "private"})
	}
	if v.Action != BanSource {
		t.Fatalf("private side: %v", v.Action)
	}
}

func TestUnsolicited(t *testing.T) {
	g := New(Config{Policies: []Policy{unsolicited()}})
	r := Request{Method: "REGISTER", User: "100", Unsolicited: true}
	for i := range 19 {
		if v := g.Check(t0.Add(time.Duration(i)*time.Second), attacker, r); v.Action != Allow {
			t.Fatalf("request %d: %v", i+1, v.Action)
		}
	}
	// solicited traffic (in a dialog, or on the private side) is not counted
	if v := g.Check(t0.Add(20*time.Second), attacker, invite("1")); v.Action != Allow {
		t.Fatalf("solicited request: %v", v.Action)
	}
	v := g.Check(t0.Add(20*time.Second), attacker, r)
	if v.Action != BanSource || v.Ban.Counters["unknown_source_requests"] != 20 || !v.Ban.First.At.Equal(t0) {
		t.Fatalf("20th request: %+v", v)
	}
}

func TestAllowListWins(t *testing.T) {
	g := New(Config{
		Allow:    []netip.Prefix{netip.MustParsePrefix("203.0.113.0/28")},
		Policies: []Policy{scanners(), authFailures(), enumeration(), unsolicited()},
	})
	for i := range 1000 {
		at := t0.Add(time.Duration(i) * time.Millisecond)
		if v := g.Check(at, carrier, Request{Method: "INVITE", User: fmt.Sprint(i), UserAgent: "friendly-scanner", Unsolicited: true}); v.Action != Allow {
			t.Fatalf("allow-listed request %d: %v", i, v.Action)
		}
		if v := g.Outcome(at, carrier, invite(fmt.Sprint(i)), 401+3*(i%2)); v.Action != Allow {
			t.Fatalf("allow-listed outcome %d: %v", i, v.Action)
		}
	}
	if err := g.Add(Ban{Addr: carrier, Expires: t0.Add(time.Hour)}); err == nil {
		t.Fatal("manual ban of an allow-listed source accepted")
	}
	if st := g.Stats(); st.Tracked != 0 || st.BannedNow != 0 {
		t.Errorf("allow-listed source tracked: %+v", st)
	}
	// IPv4-mapped IPv6 is the same source
	mapped := netip.AddrFrom16(carrier.As16())
	if !g.Allowed(mapped) {
		t.Error("IPv4-mapped form of an allowed address is not allowed")
	}
}

func TestLogMode(t *testing.T) {
	p := scanners()
	p.Mode = LogOnly
	g := New(Config{Policies: []Policy{p}})
	r := Request{Method: "OPTIONS", UserAgent: "friendly-scanner"}
	v := g.Check(t0, attacker, r)
	if v.Action != WouldBan || v.Ban == nil || v.Ban.Policy != "scanners" {
		t.Fatalf("log mode: %+v, want would-ban", v)
	}
	// reported once per would-be ban, and never enforced
	for i := 1; i < 10; i++ {
		if v := g.Check(t0.Add(time.Duration(i)*time.Minute), attacker, r); v.Action != Allow {
			t.Fatalf("log mode repeat %d: %v", i, v.Action)
		}
	}
	if g.Banned(t0.Add(time.Minute), attacker) {
		t.Fatal("log-mode policy banned the source")
	}
	if v := g.Check(t0.Add(25*time.Hour), attacker, r); v.Action != WouldBan {
		t.Fatalf("after the would-be ban ended: %v, want would-ban", v.Action)
	}
	if st := g.Stats(); st.WouldBan["scanners"] != 2 || st.Bans != 0 {
		t.Errorf("stats %+v", st)
	}
}

func TestLogModeAndEnforceTogether(t *testing.T) {
	trial := authFailures()
	trial.Name, trial.FailedAuth, trial.Mode = "trial", 2, LogOnly
	g := New(Config{Policies: []Policy{trial, authFailures()}})
	var actions []Action
	for i := range 5 {
		actions = append(actions, g.Outcome(t0.Add(time.Duration(i)*time.Second), attacker, invite("1"), 401).Action)
	}
	want := []Action{Allow, WouldBan, Allow, Allow, BanSource}
	if fmt.Sprint(actions) != fmt.Sprint(want) {
		t.Fatalf("actions %v, want %v", actions, want)
	}
}

func TestManualBans(t *testing.T) {
	g := New(Config{Policies: []Policy{authFailures()}})
	v6 := netip.MustParseAddr("2001:db8::66")
	if err := g.Add(Ban{Addr: v6, Policy: "manual", Start: t0, Expires: t0.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	if err := g.Add(Ban{Addr: attacker, Policy: "manual", Start: t0, Expires: t0.Add(2 * time.Hour)}); err != nil {
		t.Fatal(err)
	}
	if err := g.Add(Ban{}); err == nil {
		t.Fatal("ban without address accepted")
	}
	bans := g.Bans(t0)
	if len(bans) != 2 || bans[0].Addr != attacker || bans[1].Addr != v6 {
		t.Fatalf("bans %+v", bans)
	}
	if b, ok := g.Get(t0, v6); !ok || b.Remaining(t0.Add(30*time.Minute)) != 30*time.Minute {
		t.Fatalf("get %v: %+v %v", v6, b, ok)
	}
	if _, ok := g.Remove(v6); !ok {
		t.Fatal("remove found no ban")
	}
	if g.Banned(t0, v6) {
		t.Fatal("removed ban still in force")
	}
	if _, ok := g.Remove(v6); ok {
		t.Fatal("second remove found a ban")
	}
	expired := g.Sweep(t0.Add(3 * time.Hour))
	if len(expired) != 1 || expired[0].Addr != attacker || len(g.Bans(t0)) != 0 {
		t.Fatalf("sweep expired %+v", expired)
	}
}

func TestReloadKeepsBans(t *testing.T) {
	g := New(Config{Policies: []Policy{scanners(), authFailures()}})
	g.Check(t0, attacker, Request{UserAgent: "friendly-scanner"})
	other := netip.MustParseAddr("198.51.100.7")
	for range 4 {
		g.Outcome(t0, other, invite("1"), 401)
	}
	lifted := g.Reload(Config{
		Allow:    []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")},
		Policies: []Policy{authFailures()},
	})
	if len(lifted) != 1 || lifted[0].Addr != attacker {
		t.Fatalf("reload lifted %+v, want the ban of the now allow-listed %v", lifted, attacker)
	}
	g.Reload(Config{Policies: []Policy{authFailures()}})
	// counters started afresh: one more failure does not ban
	if v := g.Outcome(t0, other, invite("1"), 401); v.Action != Allow {
		t.Fatalf("counters survived reload: %v", v.Action)
	}
	g2 := New(Config{Policies: []Policy{scanners()}})
	g2.Check(t0, attacker, Request{UserAgent: "friendly-scanner"})
	g2.Reload(Config{})
	if !g2.Banned(t0.Add(time.Minute), attacker) {
		t.Fatal("reload dropped a ban")
	}
}

func TestSourceTableBounded(t *testing.T) {
	g := New(Config{Policies: []Policy{unsolicited()}, MaxSources: 100})
	for i := range 10000 {
		a := netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
		g.Check(t0.Add(time.Duration(i)*time.Microsecond), a, Request{Method: "OPTIONS", Unsolicited: true})
	}
	if st := g.Stats(); st.Tracked > 100 {
		t.Fatalf("tracking %d sources, bound 100", st.Tracked)
	}
	g.Sweep(t0.Add(time.Hour))
	if st := g.Stats(); st.Tracked != 0 {
		t.Fatalf("idle sources kept after sweep: %d", st.Tracked)
	}
}

// BenchmarkCheckSpoofedFlood is a flood from ever new addresses against a
// full source table: each request must stay cheap.
func BenchmarkCheckSpoofedFlood(b *testing.B) {
	g := New(Config{Policies: []Policy{unsolicited()}, MaxSources: 100000})
	r := Request{Method: "INVITE", Unsolicited: true}
	now := t0
	for i := 0; b.Loop(); i++ {
		a := netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
		g.Check(now, a, r)
	}
}

func BenchmarkCheckUnsolicited(b *testing.B) {
	g := New(Config{Policies: []Policy{scanners(), unsolicited()}})
	r := Request{Method: "INVITE", User: "100", UserAgent: "Linphone", Unsolicited: true}
	now := t0
	for i := 0; b.Loop(); i++ {
		a := netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)})
		now = now.Add(time.Millisecond)
		g.Check(now, a, r)
	}
}

// A relayed request (a phone's REGISTER in access mode) is no probe for an
// unknown user: its registrar decides, and only the registrar's 404 counts.
func TestRelayedRequestsAreNoProbes(t *testing.T) {
	g := New(Config{Policies: []Policy{enumeration()}})
	for i := range 30 {
		r := Request{Method: "REGISTER", User: fmt.Sprint(100 + i), Zone: "public", Metered: true, Relayed: true}
		if v := g.Check(t0, attacker, r); v.Action != Allow {
			t.Fatalf("relayed REGISTER %d: %v", i, v.Action)
		}
	}
	var v Verdict
	for i := range 10 {
		v = g.Outcome(t0.Add(time.Second), attacker, Request{Method: "REGISTER", User: fmt.Sprint(100 + i), Relayed: true}, 404)
	}
	if v.Action != BanSource || v.Ban.Policy != "enumeration" || v.Ban.Counters["distinct_unknown_users"] != 10 {
		t.Fatalf("ten 404s from the registrar: %+v", v)
	}
}
