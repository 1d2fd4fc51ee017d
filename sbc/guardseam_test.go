package sbc

import (
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgesbc/edgesbc/sbc/guard"
)

func TestSummarize(t *testing.T) {
	tests := []struct {
		name     string
		msg      string
		want     guard.Request
		inDialog bool
	}{
		{name: "svmap options",
			msg:  "OPTIONS sip:100@198.51.100.1 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.9:5060;branch=z9hG4bK-1\r\nFrom: \"sipvicious\"<sip:100@1.1.1.1>;tag=6162\r\nTo: \"sipvicious\"<sip:100@1.1.1.1>\r\nUser-Agent: friendly-scanner\r\nCall-ID: 1\r\nCSeq: 1 OPTIONS\r\n\r\n",
			want: guard.Request{Method: "OPTIONS", User: "100", UserAgent: "friendly-scanner"}},
		{name: "in dialog, compact To, lowercase header",
			msg:      "BYE sip:host SIP/2.0\r\nt: <sip:a@b;tag=uri-param>;tag=abc\r\nuser-agent:  Phone 1.0 \r\n\r\n",
			want:     guard.Request{Method: "BYE", User: "a", UserAgent: "Phone 1.0"},
			inDialog: true},
		{name: "tag only inside the URI",
			msg:  "INVITE sip:200;user=phone@host SIP/2.0\nTo: <sip:a@b;tag=x>\n\n",
			want: guard.Request{Method: "INVITE", User: "200"}},
		{name: "User-Agent in the body is not read",
			msg:  "MESSAGE sip:1@h SIP/2.0\r\nTo: <sip:1@h>\r\n\r\nUser-Agent: friendly-scanner\r\n",
			want: guard.Request{Method: "MESSAGE", User: "1"}},
		{name: "REGISTER: the To user",
			msg:  "REGISTER sip:198.51.100.1 SIP/2.0\r\nFrom: <sip:100@h>;tag=1\r\nTo: \"a:b\" <sip:1234@198.51.100.1>\r\nUser-Agent: x\r\n\r\n",
			want: guard.Request{Method: "REGISTER", User: "1234", UserAgent: "x"}},
		{name: "bare To URI",
			msg:  "OPTIONS sip:h SIP/2.0\r\nTo: sip:77@h;tag=9\r\n\r\n",
			want: guard.Request{Method: "OPTIONS", User: "77"}, inDialog: true},
		{name: "response", msg: "SIP/2.0 200 OK\r\nUser-Agent: x\r\n\r\n"},
		{name: "keepalive", msg: "\r\n\r\n"},
		{name: "garbage", msg: "\x00\xff\xfe binary"},
		{name: "leading blank lines",
			msg:  "\r\n\r\nREGISTER sip:h SIP/2.0\r\nUser-Agent: sipcli/v1.8\r\n\r\n",
			want: guard.Request{Method: "REGISTER", UserAgent: "sipcli/v1.8"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, inDialog := summarize([]byte(tt.msg))
			if got != tt.want || inDialog != tt.inDialog {
				t.Errorf("summarize = %+v in-dialog %v, want %+v %v", got, inDialog, tt.want, tt.inDialog)
			}
		})
	}
	long := "INVITE sip:" + strings.Repeat("9", 500) + "@h SIP/2.0\r\nUser-Agent: " + strings.Repeat("u", 5000) + "\r\n\r\n"
	got, _ := summarize([]byte(long))
	if len(got.User) != maxSummaryUser || len(got.UserAgent) != maxSummaryUserAgent {
		t.Errorf("long fields not bounded: user %d ua %d", len(got.User), len(got.UserAgent))
	}
}

func FuzzSummarize(f *testing.F) {
	f.Add([]byte("OPTIONS sip:100@h SIP/2.0\r\nTo: <sip:a@b>;tag=1\r\nUser-Agent: friendly-scanner\r\n\r\n"))
	f.Add([]byte("SIP/2.0 200 OK\r\n\r\n"))
	f.Add([]byte(":\n:\r\n;tag"))
	f.Fuzz(func(t *testing.T, data []byte) {
		r, _ := summarize(data)
		if len(r.User) > maxSummaryUser || len(r.UserAgent) > maxSummaryUserAgent || len(r.Method) > maxSummaryMethod {
			t.Fatalf("unbounded summary %+v", r)
		}
		if r.Method == "" && (r.User != "" || r.UserAgent != "") {
			t.Fatalf("fields without a request: %+v", r)
		}
	})
}

// policyGuard adapts a real guard.Guard to the seam the way the appliance
// does, recording what reached it.
type policyGuard struct {
	g  *guard.Guard
	mu sync.Mutex
	in []netip.Addr
}

func (p *policyGuard) Inbound(src netip.Addr, r guard.Request) bool {
	p.mu.Lock()
	p.in = append(p.in, src)
	p.mu.Unlock()
	v := p.g.Check(time.Now(), src, r)
	return v.Action != guard.Drop && v.Action != guard.BanSource
}

func (p *policyGuard) Outcome(src netip.Addr, r guard.Request, code int) {
	p.g.Outcome(time.Now(), src, r, code)
}

func (p *policyGuard) saw(a netip.Addr) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, x := range p.in {
		if x == a {
			return true
		}
	}
	return false
}

func TestGuardSeam(t *testing.T) {
	r := newRig(t, nil)
	pg := &policyGuard{g: guard.New(guard.Config{Policies: []guard.Policy{
		{Name: "scanners", UserAgents: []string{"friendly-scanner"}, BanFor: time.Hour},
		{Name: "auth", FailedAuth: 3, Within: time.Minute, BanFor: time.Hour},
	}})}
	r.srv.SetGuard(pg)

	// A stranger on the private side gets 403 for each INVITE; the third
	// 403 bans it and the fourth INVITE gets no answer at all.
	stranger := newPhone(t, "127.0.0.5")
	for i := range 3 {
		stranger.send(r.priv, r.pbxInvite(fmt.Sprintf("auth-%d", i), fmt.Sprintf("z9hG4bK-auth%d", i)))
		stranger.recv("SIP/2.0 403", "SIP/2.0 100")
	}
	if !waitBanned(pg.g, stranger.addr.Addr()) {
		t.Fatalf("three 403s did not ban %v", stranger.addr.Addr())
	}
	stranger.send(r.priv, r.pbxInvite("auth-4", "z9hG4bK-auth4"))
	stranger.expectNothing(500*time.Millisecond, "SIP/2.0 403")

	// A scanner on the public side is banned on its first request.
	scanner := newPhone(t, "127.0.0.6")
	scan := fmt.Sprintf("OPTIONS sip:100@%s SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.6;branch=z9hG4bK-sc1;rport\nMax-Forwards: 70\nFrom: <sip:100@x>;tag=1\nTo: <sip:100@x>\nCall-ID: sc1\nCSeq: 1 OPTIONS\nUser-Agent: friendly-scanner\nContent-Length: 0\n\n", r.pub)
	scanner.send(r.pub, scan)
	waitBanned(pg.g, scanner.addr.Addr())
	b, ok := pg.g.Get(time.Now(), scanner.addr.Addr())
	if !ok || b.Policy != "scanners" || !strings.Contains(b.First.Request, "OPTIONS") {
		t.Fatalf("scanner not banned: %+v %v", b, ok)
	}

	// A peer never reaches the guard, whatever its User-Agent, and its
	// keepalive is answered.
	r.car.send(r.pub, strings.Replace(strings.Replace(scan, "127.0.0.6", "127.0.0.4", 1), "Call-ID: sc1", "Call-ID: ka-peer", 1))
	r.car.recv("SIP/2.0 200")
	if pg.saw(r.car.addr.Addr()) {
		t.Error("the carrier's datagram reached the guard")
	}
	r.srv.SetGuard(nil)
	r.waitIdle()
}

// waitBanned waits up to two seconds for src to be banned: the outcome of a
// response is reported after it is sent.
func waitBanned(g *guard.Guard, src netip.Addr) bool {
	for range 200 {
		if _, ok := g.Get(time.Now(), src); ok {
			return true
		}
		time.Sleep(10 * time.Millisecond)
	}
	return false
}

// TestGuardSeamUserspaceLimits drives the two checks the entry path makes
// for the guard before parsing, over real sockets: the per-zone rate limit
// on datagrams (a stranger on the private side gets its burst answered,
// then nothing), and the enumeration of users by a stranger with a neutral
// User-Agent on the public side, which is never answered but banned.
func TestGuardSeamUserspaceLimits(t *testing.T) {
	r := newRig(t, nil)
	g := guard.New(guard.Config{
		RateLimits: []guard.RateLimit{{Name: "sip-private", Zone: "private", Rate: 1, Per: time.Hour, Burst: 3}},
		Policies:   []guard.Policy{{Name: "enumeration", DistinctUnknownUsers: 5, Within: time.Minute, BanFor: time.Hour}},
	})
	r.srv.SetGuard(&policyGuard{g: g})

	stranger := newPhone(t, "127.0.0.7")
	options := func(to netip.AddrPort, src *phone, user, id string) string {
		return fmt.Sprintf("OPTIONS sip:%s SIP/2.0\nVia: SIP/2.0/UDP %s;branch=z9hG4bK-%s;rport\nMax-Forwards: 70\nFrom: <sip:x@x>;tag=1\nTo: <sip:%s@%s>\nCall-ID: %s\nCSeq: 1 OPTIONS\nUser-Agent: Phone/1.0\nContent-Length: 0\n\n",
			to.Addr(), src.addr, id, user, to.Addr(), id)
	}
	for i := range 3 {
		stranger.send(r.priv, options(r.priv, stranger, "100", fmt.Sprintf("rl%d", i)))
		stranger.recv("SIP/2.0 403")
	}
	for i := 3; i < 6; i++ {
		stranger.send(r.priv, options(r.priv, stranger, "100", fmt.Sprintf("rl%d", i)))
	}
	stranger.expectNothing(500 * time.Millisecond)
	if st := g.Stats(); st.RateLimited["sip-private"] != 3 || st.Bans != 0 {
		t.Errorf("after 6 datagrams against a burst of 3: %+v", st)
	}

	// Five users asked for, To users of Request-URIs without one, as a
	// REGISTER sweep sends them: banned by the enumeration policy.
	prober := newPhone(t, "127.0.0.8")
	for i := range 5 {
		prober.send(r.pub, options(r.pub, prober, fmt.Sprint(200+i), fmt.Sprintf("en%d", i)))
	}
	if !waitBanned(g, prober.addr.Addr()) {
		t.Fatalf("five distinct users did not ban %v", prober.addr.Addr())
	}
	b, _ := g.Get(time.Now(), prober.addr.Addr())
	if b.Policy != "enumeration" || b.Counters["distinct_unknown_users"] != 5 || !strings.Contains(b.First.Request, `user="200"`) {
		t.Errorf("enumeration ban: %+v", b)
	}
	prober.expectNothing(200 * time.Millisecond)
	r.srv.SetGuard(nil)
	r.waitIdle()
}

// TestGuardSeamAccess: in access mode a phone's REGISTERs are neither
// unsolicited nor probes, a first challenge to a REGISTER without
// credentials counts for nothing, and a challenge to one with credentials,
// or any 403, is a failed authentication.
func TestGuardSeamAccess(t *testing.T) {
	r := accessRig(t, nil)
	g := guard.New(guard.Config{Policies: []guard.Policy{
		{Name: "unsolicited", UnknownSourceRequests: 2, Within: time.Minute, BanFor: time.Hour},
		{Name: "enumeration", DistinctUnknownUsers: 2, Within: time.Minute, BanFor: time.Hour},
		{Name: "auth-failures", FailedAuth: 3, Within: time.Minute, BanFor: time.Hour},
	}})
	r.srv.SetGuard(&policyGuard{g: g})
	ph := newPhone(t, "127.0.0.5")
	challenge := func(id string, cseq int, extra string, code int) {
		t.Helper()
		req := phoneRegister(r, ph, id, cseq, "60", extra)
		if extra == "" {
			req = strings.Replace(req, "sip:1001@", fmt.Sprintf("sip:%d@", 1000+cseq), 2)
		}
		ph.send(r.pub, req)
		up, _ := r.pbx.recv("REGISTER")
		hdr := "WWW-Authenticate: " + testChallenge + "\n"
		if code == 403 {
			hdr = ""
		}
		r.pbx.send(r.priv, pbxAnswer(up, code, reasonPhrase(code), hdr))
		ph.recv(fmt.Sprintf("SIP/2.0 %d", code))
	}
	// five first challenges for five users: nothing counts
	for i := range 5 {
		challenge(fmt.Sprintf("g-%d", i), i+1, "", 401)
	}
	if st := g.Stats(); st.Bans != 0 {
		t.Fatalf("first challenges banned the phone: %+v", st)
	}
	if _, ok := g.Get(time.Now(), ph.addr.Addr()); ok {
		t.Fatal("phone banned")
	}
	// wrong credentials twice, then a 403: banned by auth-failures
	auth := "Authorization: Digest username=\"1001\", realm=\"pbx.example.test\", nonce=\"n\", uri=\"sip:pbx.example.test\", response=\"00\"\n"
	challenge("g-a", 10, auth, 401)
	challenge("g-a", 11, auth, 401)
	if _, ok := g.Get(time.Now(), ph.addr.Addr()); ok {
		t.Fatal("banned after two failures")
	}
	challenge("g-a", 12, auth, 403)
	if !waitBanned(g, ph.addr.Addr()) {
		t.Fatal("three failed authentications did not ban the phone")
	}
	b, _ := g.Get(time.Now(), ph.addr.Addr())
	if b.Policy != "auth-failures" || b.Counters["failed_auth"] != 3 || !strings.Contains(b.First.Request, "REGISTER") {
		t.Errorf("ban: %+v", b)
	}
	// banned: its next REGISTER reaches nobody
	ph.send(r.pub, phoneRegister(r, ph, "g-b", 1, "60", auth))
	ph.expectNothing(300 * time.Millisecond)
	r.pbx.expectNothing(100 * time.Millisecond)
	r.srv.SetGuard(nil)
}
