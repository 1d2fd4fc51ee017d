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
			want:     guard.Request{Method: "BYE", UserAgent: "Phone 1.0"},
			inDialog: true},
		{name: "tag only inside the URI",
			msg:  "INVITE sip:200;user=phone@host SIP/2.0\nTo: <sip:a@b;tag=x>\n\n",
			want: guard.Request{Method: "INVITE", User: "200"}},
		{name: "User-Agent in the body is not read",
			msg:  "MESSAGE sip:1@h SIP/2.0\r\nTo: <sip:1@h>\r\n\r\nUser-Agent: friendly-scanner\r\n",
			want: guard.Request{Method: "MESSAGE", User: "1"}},
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
