package sbc

import (
	"fmt"
	"net/netip"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"

	"github.com/edgesbc/edgesbc/sbc/guard"
)

// The access tests put a remote phone on 127.0.0.5 (the public side of the
// call rig) registering with the rig's pbx through the SBC.

const accessDomain = "pbx.example.test"

func accessRig(t testing.TB, tweak func(*AccessConfig)) *rig {
	t.Helper()
	return newRig(t, func(c *Config) {
		ac := AccessConfig{Name: "phones", Zone: "public", PBX: "main", Domain: accessDomain, Expires: 60 * time.Second, PBXExpires: time.Hour}
		if tweak != nil {
			tweak(&ac)
		}
		c.Access = []AccessConfig{ac}
	})
}

// phoneRegister is a REGISTER as a phone behind a NAT sends it: its Via and
// Contact name its private LAN address, which must reach nobody.
func phoneRegister(r *rig, ph *phone, callID string, cseq int, expires string, extra string) string {
	return fmt.Sprintf(`REGISTER sip:%s SIP/2.0
Via: SIP/2.0/UDP 192.168.77.10:5062;branch=z9hG4bK-reg-%s-%d;rport
Max-Forwards: 70
From: "Desk 1001" <sip:1001@%s>;tag=ph-tag-1
To: "Desk 1001" <sip:1001@%s>
Call-ID: %s
CSeq: %d REGISTER
Contact: <sip:1001@192.168.77.10:5062;line=abc>
Expires: %s
User-Agent: DeskPhone 9.1 192.168.77.10
%sContent-Length: 0

`, accessDomain, callID, cseq, accessDomain, accessDomain, callID, cseq, expires, extra)
}

// pbxAnswer is the pbx's response to the SBC's REGISTER.
func pbxAnswer(req sip.Message, code int, reason string, extra string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "SIP/2.0 %d %s\n", code, reason)
	for _, h := range req.GetHeaders("Via") {
		fmt.Fprintf(&b, "Via: %s\n", h.Value())
	}
	fmt.Fprintf(&b, "From: %s\nTo: %s;tag=pbx-reg\nCall-ID: %s\nCSeq: %s\n%sContent-Length: 0\n\n",
		req.From().Value(), req.To().Value(), req.CallID().Value(), req.CSeq().Value(), extra)
	return b.String()
}

const testChallenge = `Digest realm="pbx.example.test", nonce="5f1e2d3c4b5a", algorithm=MD5`

// assertPhoneHidden checks that nothing of the phone reached the pbx.
func assertPhoneHidden(t *testing.T, raw string, ph *phone) {
	t.Helper()
	for _, bad := range []string{"192.168.77.10", "127.0.0.5", fmt.Sprint(ph.addr.Port()), "DeskPhone", "ph-tag-1", "line=abc", "127.0.0.2"} {
		if strings.Contains(raw, bad) {
			t.Errorf("%q of the phone's side reached the pbx:\n%s", bad, raw)
		}
	}
}

func TestAccessRegisterRelay(t *testing.T) {
	r := accessRig(t, nil)
	ph := newPhone(t, "127.0.0.5")

	// 1. no credentials: the pbx challenges, the phone gets the challenge
	ph.send(r.pub, phoneRegister(r, ph, "ph-call-1", 1, "3600", ""))
	up1, raw1 := r.pbx.recv("REGISTER")
	assertPhoneHidden(t, raw1, ph)
	if got := up1.(*sip.Request).Recipient.String(); got != "sip:"+accessDomain {
		t.Errorf("Request-URI toward the pbx %q, want the phone's", got)
	}
	if up1.CallID().Value() == "ph-call-1" {
		t.Error("the phone's Call-ID reached the pbx")
	}
	ct := msgContact(up1)
	if ct == nil || ct.Address.Host != r.priv.Addr().String() || ct.Address.Port != int(r.priv.Port()) || len(ct.Address.User) < 16 {
		t.Fatalf("Contact toward the pbx %v, want a token at the SBC's private address", ct)
	}
	token := ct.Address.User
	if up1.From().Address.User != "1001" || up1.To().Address.User != "1001" || up1.To().Address.Host != accessDomain {
		t.Errorf("From/To toward the pbx: %s / %s", up1.From().Value(), up1.To().Value())
	}
	if e := header(up1, "Expires"); e != "3600" {
		t.Errorf("Expires toward the pbx %v, want pbx_expires 3600", e)
	}
	r.pbx.send(r.priv, pbxAnswer(up1, 401, "Unauthorized", "WWW-Authenticate: "+testChallenge+"\n"))
	res, rawRes := ph.recv("SIP/2.0 401")
	if h := header(res, "WWW-Authenticate"); h != testChallenge {
		t.Errorf("challenge toward the phone %v, want %q", h, testChallenge)
	}
	if res.CallID().Value() != "ph-call-1" || !strings.Contains(res.From().Value(), "ph-tag-1") {
		t.Errorf("401 not in the phone's dialog:\n%s", rawRes)
	}
	if v := res.Via(); v == nil || v.Params.GetOr("received", "") != "127.0.0.5" {
		t.Errorf("Via toward the phone lacks received: %v", v)
	}
	for _, bad := range []string{r.priv.Addr().String(), "127.0.0.3", token, "pbx-reg"} {
		if strings.Contains(rawRes, bad) {
			t.Errorf("%q of the pbx's side reached the phone:\n%s", bad, rawRes)
		}
	}

	// 2. with credentials: the same registration toward the pbx, the
	// Authorization unchanged, and the phone's own Contact in the 200
	auth := `Authorization: Digest username="1001", realm="pbx.example.test", nonce="5f1e2d3c4b5a", uri="sip:pbx.example.test", response="0123456789abcdef0123456789abcdef", algorithm=MD5` + "\n"
	ph.send(r.pub, phoneRegister(r, ph, "ph-call-1", 2, "3600", auth))
	up2, raw2 := r.pbx.recv("REGISTER")
	assertPhoneHidden(t, raw2, ph)
	if up2.CallID().Value() != up1.CallID().Value() || up2.CSeq().SeqNo != up1.CSeq().SeqNo+1 || msgContact(up2).Address.User != token {
		t.Errorf("second REGISTER is not the same registration:\n%s\n%s", raw1, raw2)
	}
	if h := header(up2, "Authorization"); "Authorization: "+h+"\n" != auth {
		t.Errorf("Authorization toward the pbx %v, want it unchanged", h)
	}
	r.pbx.send(r.priv, pbxAnswer(up2, 200, "OK", fmt.Sprintf("Contact: <sip:%s@%s>;expires=3600\nContact: <sip:othertoken@%s>;expires=100\n", token, r.priv, r.priv)))
	ok, rawOK := ph.recv("SIP/2.0 200")
	cts := ok.GetHeaders("Contact")
	if len(cts) != 1 || !strings.Contains(cts[0].Value(), "sip:1001@192.168.77.10:5062;line=abc") || !strings.Contains(cts[0].Value(), "expires=60") {
		t.Errorf("200 toward the phone: want only its own Contact with expires=60:\n%s", rawOK)
	}
	if strings.Contains(rawOK, "othertoken") || strings.Contains(rawOK, r.priv.Addr().String()) {
		t.Errorf("200 toward the phone shows the pbx side:\n%s", rawOK)
	}
	if st := r.srv.Status(); st.Registrations != 1 || st.RegistrationsPending != 0 {
		t.Errorf("after the 200: %+v", st)
	}

	// 3. unregister: Expires 0 reaches the pbx, the binding goes
	ph.send(r.pub, phoneRegister(r, ph, "ph-call-1", 3, "0", auth))
	up3, _ := r.pbx.recv("REGISTER")
	if e := header(up3, "Expires"); e != "0" || msgContact(up3).Address.User != token {
		t.Errorf("unregister toward the pbx: Expires %v Contact %v", e, msgContact(up3))
	}
	r.pbx.send(r.priv, pbxAnswer(up3, 200, "OK", ""))
	ph.recv("SIP/2.0 200")
	if st := r.srv.Status(); st.Registrations != 0 || st.RegistrationsPending != 0 || st.LeakGuardFired != 0 {
		t.Errorf("after the unregister: %+v", st)
	}
}

func TestAccessRefusals(t *testing.T) {
	r := accessRig(t, nil)
	ph := newPhone(t, "127.0.0.5")
	// a Request-URI outside the domain: 404 from the SBC, nothing to the pbx
	ph.send(r.pub, strings.Replace(phoneRegister(r, ph, "ph-x", 1, "60", ""), "REGISTER sip:"+accessDomain, "REGISTER sip:"+r.pub.Addr().String(), 1))
	ph.recv("SIP/2.0 404")
	// Contact * without Expires 0: 400
	ph.send(r.pub, strings.Replace(phoneRegister(r, ph, "ph-y", 1, "60", ""), "Contact: <sip:1001@192.168.77.10:5062;line=abc>", "Contact: *", 1))
	ph.recv("SIP/2.0 400")
	// other requests from strangers stay unanswered on the public side
	ph.send(r.pub, fmt.Sprintf("OPTIONS sip:%s SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.5;branch=z9hG4bK-o;rport\nMax-Forwards: 70\nFrom: <sip:a@b>;tag=1\nTo: <sip:c@d>\nCall-ID: o1\nCSeq: 1 OPTIONS\nContent-Length: 0\n\n", r.pub))
	ph.expectNothing(300*time.Millisecond, "SIP/2.0 404", "SIP/2.0 400")
	r.pbx.expectNothing(100 * time.Millisecond)
	// the pbx never answers: the phone gets 408 once Timer F fires
	// (not waited for here); the attempt is pending meanwhile
	ph.send(r.pub, phoneRegister(r, ph, "ph-z", 1, "60", ""))
	r.pbx.recv("REGISTER")
	if st := r.srv.Status(); st.RegistrationsPending != 1 {
		t.Errorf("pending attempts: %+v", st)
	}
}

// TestAccessOff: without an access block a REGISTER from a stranger on the
// public side is dropped unanswered, as before.
func TestAccessOff(t *testing.T) {
	r := newRig(t, nil)
	ph := newPhone(t, "127.0.0.5")
	ph.send(r.pub, phoneRegister(r, ph, "off-1", 1, "60", ""))
	ph.expectNothing(300 * time.Millisecond)
	r.pbx.expectNothing(100 * time.Millisecond)
	if r.srv.Status().UnknownSource == 0 {
		t.Error("dropped REGISTER not counted")
	}
}

func TestAccessBindingTable(t *testing.T) {
	a := newAccess(AccessConfig{Domain: accessDomain, MaxBindings: 10}, &zone{cfg: ZoneConfig{Name: "public"}}, nil, nil)
	src := netip.MustParseAddrPort("198.51.100.9:5060")
	key := func(user string, port uint16) bindingKey {
		return bindingKey{src: netip.AddrPortFrom(src.Addr(), port), transport: "udp", user: user}
	}
	// take and give the turn back, as one relayed REGISTER does
	take := func(k bindingKey) (binding, refusal) {
		b, c, why := a.take(k)
		if why == admitted {
			a.done(b)
		}
		return c, why
	}
	// one source holds at most maxPendingPerSource attempts
	for i := range maxPendingPerSource {
		if _, why := take(key(fmt.Sprint(i), 5060)); why != admitted {
			t.Fatalf("attempt %d refused", i)
		}
	}
	if _, why := take(key("x", 5060)); why != tableFull {
		t.Errorf("attempt beyond the per-source bound: %v, want tableFull", why)
	}
	// the same binding again is no new attempt, and keeps its identity
	b1, _ := take(key("0", 5060))
	b2, why := take(key("0", 5060))
	if why != admitted || b1.token != b2.token || b1.callID != b2.callID || b2.cseq != b1.cseq+1 {
		t.Errorf("same binding taken twice: %+v %+v", b1, b2)
	}
	// registering it frees its pending slot
	now := time.Now()
	ct := &sip.ContactHeader{Address: sip.Uri{Scheme: "sip", User: "0", Host: "192.168.1.2"}}
	a.settle(key("0", 5060), b2.token, ct, 60, false, now)
	if _, why := take(key("y", 5060)); why != admitted {
		t.Errorf("attempt after a registration refused: %v", why)
	}
	// the table bound holds across sources
	other := netip.MustParseAddrPort("198.51.100.10:5060")
	if _, why := take(bindingKey{src: other, transport: "udp", user: "1"}); why != admitted {
		t.Errorf("tenth binding refused: %v", why)
	}
	if _, why := take(bindingKey{src: other, transport: "udp", user: "2"}); why != tableFull {
		t.Errorf("binding beyond max_bindings: %v, want tableFull", why)
	}
	// attempts expire after one transaction, registrations at their expiry
	if n := a.reap(time.Now().Add(pendingLife)); n != 9 {
		t.Errorf("reaped %d attempts, want 9", n)
	}
	if reg, pend := a.count(); reg != 1 || pend != 0 || len(a.pending) != 0 {
		t.Errorf("after reaping attempts: %d registered, %d pending, %v", reg, pend, a.pending)
	}
	if n := a.reap(now.Add(60 * time.Second)); n != 1 || len(a.tokens) != 0 || len(a.bindings) != 0 {
		t.Errorf("registration not reaped at its expiry: %d", n)
	}
}

func TestParseRegister(t *testing.T) {
	base := "REGISTER sip:pbx.example.test SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.9:5060;branch=z9hG4bK-1\r\nFrom: <sip:1001@pbx.example.test>;tag=1\r\nTo: <sip:1001@pbx.example.test>\r\nCall-ID: c\r\nCSeq: 1 REGISTER\r\n"
	tests := []struct {
		name    string
		msg     string
		code    int
		expires int
		contact bool
	}{
		{name: "plain", msg: base + "Contact: <sip:1001@10.0.0.9>\r\nExpires: 120\r\n", expires: 120, contact: true},
		{name: "contact expires wins", msg: base + "Contact: <sip:1001@10.0.0.9>;expires=30\r\nExpires: 120\r\n", expires: 30, contact: true},
		{name: "no expires", msg: base + "Contact: <sip:1001@10.0.0.9>\r\n", expires: -1, contact: true},
		{name: "query", msg: base, expires: -1},
		{name: "wildcard", msg: base + "Contact: *\r\nExpires: 0\r\n", expires: 0},
		{name: "wildcard with expires", msg: base + "Contact: *\r\nExpires: 60\r\n", code: 400},
		{name: "bad expires", msg: base + "Contact: <sip:1001@10.0.0.9>\r\nExpires: soon\r\n", code: 400},
		{name: "tel contact", msg: base + "Contact: <tel:+1555>\r\n", code: 400},
		{name: "other domain", msg: strings.Replace(base, "REGISTER sip:pbx.example.test", "REGISTER sip:203.0.113.1", 1), code: 404},
		{name: "user in request uri", msg: strings.Replace(base, "REGISTER sip:pbx", "REGISTER sip:1001@pbx", 1), code: 404},
		{name: "odd user", msg: strings.Replace(base, "To: <sip:1001@", "To: <sip:10%2001@", 1), code: 404},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := sip.ParseMessage([]byte(tt.msg + "Content-Length: 0\r\n\r\n"))
			if err != nil {
				t.Fatal(err)
			}
			reg, code := parseRegister(m.(*sip.Request), accessDomain)
			if code != tt.code {
				t.Fatalf("code %d, want %d", code, tt.code)
			}
			if code == 0 && (reg.expires != tt.expires || (reg.contact != nil) != tt.contact || reg.user != "1001") {
				t.Errorf("parsed %+v", reg)
			}
		})
	}
}

// FuzzAccessRegister runs arbitrary messages through the REGISTER handling
// of the access mode: parsing, the binding table and the PBX's REGISTER
// built from it. Whatever the phone sent, the PBX's REGISTER parses back,
// names the SBC's private address as its only Contact and never carries
// the phone's source address.
func FuzzAccessRegister(f *testing.F) {
	r := &rig{pub: netip.MustParseAddrPort("127.0.0.2:5060"), priv: netip.MustParseAddrPort("127.0.0.1:5060")}
	ph := &phone{addr: netip.MustParseAddrPort("127.0.0.5:5062")}
	f.Add([]byte(strings.ReplaceAll(phoneRegister(r, ph, "fz-1", 1, "60", ""), "\n", "\r\n")))
	f.Add([]byte(strings.ReplaceAll(phoneRegister(r, ph, "fz-2", 2, "0", "Authorization: Digest username=\"1001\", uri=\"sip:pbx.example.test\"\n"), "\n", "\r\n")))
	f.Add([]byte("REGISTER sip:pbx.example.test SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK-1\r\nFrom: <sip:1@pbx.example.test>;tag=1\r\nTo: <sip:1@pbx.example.test>\r\nCall-ID: c\r\nCSeq: 1 REGISTER\r\nContact: *\r\nExpires: 0\r\n\r\n"))
	srv, err := NewServer(Config{
		Zones:  []ZoneConfig{{Name: "private", Address: r.priv.Addr(), SIPPort: 5060}, {Name: "public", Address: r.pub.Addr(), SIPPort: 5060}},
		Peers:  []PeerConfig{{Name: "main", Kind: PBX, Zone: "private", Address: netip.MustParseAddrPort("127.0.0.3:5060")}},
		Access: []AccessConfig{{Name: "phones", Zone: "public", PBX: "main", Domain: accessDomain, MaxBindings: 50}},
	}, nil, Hooks{}, nil, nil)
	if err != nil {
		f.Fatal(err)
	}
	a := srv.zones[1].access
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := sip.ParseMessage(data)
		if err != nil {
			return
		}
		req, ok := m.(*sip.Request)
		if !ok || req.Method != sip.REGISTER {
			return
		}
		req.SetSource(ph.addr.String())
		reg, code := parseRegister(req, a.domain)
		if code != 0 {
			return
		}
		k := bindingKey{src: ph.addr, transport: "udp", user: reg.user}
		held, b, why := a.take(k)
		if why != admitted {
			a.reap(time.Now().Add(time.Hour))
			return
		}
		defer a.done(held)
		up := srv.upstreamRegister(a, &b, req, reg)
		out := up.String()
		back, err := sip.ParseMessage([]byte(out))
		if err != nil {
			t.Fatalf("the PBX's REGISTER does not parse: %v\n%s", err, out)
		}
		cts := back.GetHeaders("Contact")
		switch {
		case reg.wildcard:
			if len(cts) != 1 || cts[0].Value() != "*" {
				t.Fatalf("wildcard lost:\n%s", out)
			}
		case reg.contact != nil:
			c, ok := cts[0].(*sip.ContactHeader)
			if len(cts) != 1 || !ok || c.Address.User != b.token || c.Address.Host != r.priv.Addr().String() {
				t.Fatalf("Contact toward the pbx:\n%s", out)
			}
		case len(cts) != 0:
			t.Fatalf("a query got a Contact:\n%s", out)
		}
		if strings.Contains(out, ph.addr.Addr().String()) {
			t.Fatalf("the phone's address reached the pbx:\n%s", out)
		}
		a.settle(k, b.token, reg.contact, 60, reg.expires == 0, time.Now())
	})
}

// registerPhone registers 1001 from ph through the SBC (the pbx answers the
// first REGISTER with 200 at once) and returns the token the pbx sees.
func registerPhone(t *testing.T, r *rig, ph *phone) string {
	t.Helper()
	ph.send(r.pub, phoneRegister(r, ph, "reg-"+ph.addr.String(), 1, "3600", ""))
	up, _ := r.pbx.recv("REGISTER")
	token := msgContact(up).Address.User
	r.pbx.send(r.priv, pbxAnswer(up, 200, "OK", fmt.Sprintf("Contact: <sip:%s@%s>;expires=3600\n", token, r.priv)))
	ph.recv("SIP/2.0 200")
	return token
}

// phoneSDP is a NATed phone's offer: its private LAN address.
const phoneSDP = `v=0
o=desk 1 1 IN IP4 192.168.77.10
s=-
c=IN IP4 192.168.77.10
t=0 0
m=audio 40010 RTP/AVP 8
a=rtpmap:8 PCMA/8000
a=sendrecv
`

func phoneInvite(r *rig, ph *phone, callID string, cseq int, extra string) string {
	return fmt.Sprintf(`INVITE sip:2000@%s SIP/2.0
Via: SIP/2.0/UDP 192.168.77.10:5062;branch=z9hG4bK-inv-%s-%d;rport
Max-Forwards: 70
From: "Desk 1001" <sip:1001@%s>;tag=ph-inv-tag
To: <sip:2000@%s>
Call-ID: %s
CSeq: %d INVITE
Contact: <sip:1001@192.168.77.10:5062>
User-Agent: DeskPhone 9.1 192.168.77.10
%sContent-Type: application/sdp
Content-Length: %%LEN%%

`, accessDomain, callID, cseq, accessDomain, accessDomain, callID, cseq, extra) + phoneSDP
}

// TestAccessPhoneCall: a registered phone calls through its registrar. The
// pbx's 407 reaches the phone with its challenge, the phone's credentials
// reach the pbx unchanged with the phone's Request-URI, a failed one counts
// as a failed authentication, and the answered call's media latches on
// what the phone's NAT sends, not on the private address it announced.
func TestAccessPhoneCall(t *testing.T) {
	r := accessRig(t, nil)
	g := guard.New(guard.Config{Policies: []guard.Policy{
		{Name: "auth-failures", FailedAuth: 5, Within: time.Minute, BanFor: time.Hour},
		{Name: "unsolicited", UnknownSourceRequests: 2, Within: time.Minute, BanFor: time.Hour},
	}})
	r.srv.SetGuard(&policyGuard{g: g})
	ph := newPhone(t, "127.0.0.5")
	// not registered yet: the call is dropped unanswered
	ph.send(r.pub, phoneInvite(r, ph, "pc-0", 1, ""))
	ph.expectNothing(300 * time.Millisecond)
	r.pbx.expectNothing(50 * time.Millisecond)
	registerPhone(t, r, ph)

	// 1. no credentials: the pbx's 407 reaches the phone
	ph.send(r.pub, phoneInvite(r, ph, "pc-1", 1, ""))
	inv, raw := r.pbx.recv("INVITE")
	assertPhoneHidden(t, raw, ph)
	if got := inv.(*sip.Request).Recipient.String(); got != "sip:2000@"+accessDomain {
		t.Errorf("Request-URI toward the pbx %q, want the phone's", got)
	}
	if !strings.Contains(inv.From().Value(), "sip:1001@"+accessDomain) {
		t.Errorf("From toward the pbx: %s", inv.From().Value())
	}
	const challenge = `Digest realm="pbx.example.test", nonce="abc123"`
	r.pbx.send(r.priv, strings.Replace(answer(inv, 407, "Proxy Authentication Required", "pbx-t1", "", ""), "Content-Length", "Proxy-Authenticate: "+challenge+"\nContent-Length", 1))
	res, _ := ph.recv("SIP/2.0 407", "SIP/2.0 100")
	if h := header(res, "Proxy-Authenticate"); h != challenge {
		t.Errorf("challenge toward the phone %q, want %q", h, challenge)
	}
	r.pbx.recv("ACK")
	ph.send(r.pub, phoneAck(r, res, 1))

	// 2. wrong credentials: unchanged toward the pbx, its 407 counts
	auth := `Proxy-Authorization: Digest username="1001", realm="pbx.example.test", nonce="abc123", uri="sip:2000@pbx.example.test", response="00112233445566778899aabbccddeeff"` + "\n"
	ph.send(r.pub, phoneInvite(r, ph, "pc-1", 2, auth))
	inv2, raw2 := r.pbx.recv("INVITE")
	assertPhoneHidden(t, raw2, ph)
	if h := header(inv2, "Proxy-Authorization"); "Proxy-Authorization: "+h+"\n" != auth {
		t.Errorf("credentials toward the pbx %q, want them unchanged", h)
	}
	r.pbx.send(r.priv, strings.Replace(answer(inv2, 407, "Proxy Authentication Required", "pbx-t2", "", ""), "Content-Length", "Proxy-Authenticate: "+challenge+"\nContent-Length", 1))
	res2, _ := ph.recv("SIP/2.0 407", "SIP/2.0 100")
	if h := header(res2, "Proxy-Authenticate"); h != challenge {
		t.Errorf("challenge toward the phone %q, want %q", h, challenge)
	}
	r.pbx.recv("ACK")
	ph.send(r.pub, phoneAck(r, res2, 2))

	// 3. the pbx answers: media latches on the phone's NAT address
	ph.send(r.pub, phoneInvite(r, ph, "pc-1", 3, auth))
	inv3, raw3 := r.pbx.recv("INVITE")
	assertPhoneHidden(t, raw3, ph)
	r.pbx.send(r.priv, answer(inv3, 200, "OK", "pbx-t3", fmt.Sprintf("<sip:2000@%s>", r.pbx.addr), pbxSDP))
	ok, _ := ph.recv("SIP/2.0 200", "SIP/2.0 100")
	phoneAnchor := sdpAnchor(t, string(ok.Body()))
	pbxAnchor := sdpAnchor(t, string(inv3.Body()))
	ph.send(r.pub, fmt.Sprintf("ACK sip:2000@%s SIP/2.0\nVia: SIP/2.0/UDP 192.168.77.10:5062;branch=z9hG4bK-ack3;rport\nMax-Forwards: 70\nFrom: \"Desk 1001\" <sip:1001@%s>;tag=ph-inv-tag\nTo: %s\nCall-ID: pc-1\nCSeq: 3 ACK\nContent-Length: 0\n\n",
		r.pub, accessDomain, ok.To().Value()))
	r.pbx.recv("ACK")
	// the phone's NAT sends from a port of its own: its first packet
	// latches the phone's side, then audio flows both ways
	nat, pbxMedia := listenUDP(t, "127.0.0.5:45678"), listenUDP(t, "127.0.0.3:40000")
	pkt := rtpTestPacket()
	if _, err := nat.WriteToUDPAddrPort(pkt, phoneAnchor); err != nil {
		t.Fatal(err)
	}
	_ = pbxMedia.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := pbxMedia.Read(make([]byte, 1500)); err != nil {
		t.Fatalf("RTP from the phone's NAT address did not reach the pbx: %v", err)
	}
	if _, err := pbxMedia.WriteToUDPAddrPort(pkt, pbxAnchor); err != nil {
		t.Fatal(err)
	}
	_ = nat.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := nat.Read(make([]byte, 1500)); err != nil {
		t.Fatalf("RTP from the pbx did not reach the phone's NAT address: %v", err)
	}

	// the phone hangs up
	ph.send(r.pub, fmt.Sprintf("BYE sip:2000@%s SIP/2.0\nVia: SIP/2.0/UDP 192.168.77.10:5062;branch=z9hG4bK-bye;rport\nMax-Forwards: 70\nFrom: \"Desk 1001\" <sip:1001@%s>;tag=ph-inv-tag\nTo: %s\nCall-ID: pc-1\nCSeq: 4 BYE\nContent-Length: 0\n\n",
		r.pub, accessDomain, ok.To().Value()))
	bye, _ := r.pbx.recv("BYE")
	r.pbx.send(r.priv, answer(bye, 200, "OK", "", "", ""))
	ph.recv("SIP/2.0 200")
	if st := r.srv.Status(); st.LeakGuardFired != 0 || st.UnknownSource != 1 {
		t.Errorf("status: %+v", st)
	}
	// no request of the registered phone was unsolicited
	if _, ok := g.Get(time.Now(), ph.addr.Addr()); ok || g.Stats().Bans != 0 {
		t.Errorf("phone banned: %+v", g.Stats())
	}
	// four more wrong credentials: with the one before, five failed
	// authentications ban the phone; first challenges never counted
	for i := range 4 {
		id := fmt.Sprintf("pc-w%d", i)
		ph.send(r.pub, phoneInvite(r, ph, id, 1, auth))
		inv, _ := r.pbx.recv("INVITE")
		r.pbx.send(r.priv, answer(inv, 407, "Proxy Authentication Required", "pbx-w", "", ""))
		res, _ := ph.recv("SIP/2.0 407", "SIP/2.0 100")
		r.pbx.recv("ACK")
		ph.send(r.pub, phoneAck(r, res, 1))
	}
	if !waitBanned(g, ph.addr.Addr()) {
		t.Fatal("five failed authentications of INVITEs did not ban the phone")
	}
	if b, _ := g.Get(time.Now(), ph.addr.Addr()); b.Policy != "auth-failures" || b.Counters["failed_auth"] != 5 || !strings.Contains(b.First.Request, "INVITE") {
		t.Errorf("ban: %+v", b)
	}
	r.srv.SetGuard(nil)
	r.waitIdle()
}

// phoneAck is the phone's ACK for a non-2xx final response to its INVITE
// (RFC 3261 §17.1.1.3: the INVITE's branch, the response's To).
func phoneAck(r *rig, res sip.Message, cseq int) string {
	return fmt.Sprintf("ACK sip:2000@%s SIP/2.0\nVia: %s\nMax-Forwards: 70\nFrom: %s\nTo: %s\nCall-ID: %s\nCSeq: %d ACK\nContent-Length: 0\n\n",
		accessDomain, res.Via().Value(), res.From().Value(), res.To().Value(), res.CallID().Value(), cseq)
}

// TestAccessCallToPhone: the pbx calls a registered phone at the Contact
// the SBC gave it. The INVITE goes to the source the phone registered from
// (its NAT), with the phone's own Contact as Request-URI and its AOR in To;
// the answered call's media latches on the phone's NAT. A token the SBC
// does not know gets 480 and never reaches a trunk.
func TestAccessCallToPhone(t *testing.T) {
	r := accessRig(t, nil)
	ph := newPhone(t, "127.0.0.5")
	token := registerPhone(t, r, ph)
	pbxInvite := func(user, callID string) string {
		return strings.Replace(strings.Replace(r.pbxInvite(callID, "z9hG4bK-"+callID), "INVITE sip:+15551234@", "INVITE sip:"+user+"@", 1),
			"To: <sip:+15551234@", "To: <sip:"+user+"@", 1)
	}
	r.pbx.send(r.priv, pbxInvite(token, "tp-1"))
	inv, raw := ph.recv("INVITE")
	assertHidden(t, raw)
	if strings.Contains(raw, token) {
		t.Errorf("the token reached the phone:\n%s", raw)
	}
	if got := inv.(*sip.Request).Recipient.String(); got != "sip:1001@192.168.77.10:5062;line=abc" {
		t.Errorf("Request-URI toward the phone %q, want its Contact", got)
	}
	if !strings.Contains(inv.To().Value(), "sip:1001@"+accessDomain) {
		t.Errorf("To toward the phone: %s", inv.To().Value())
	}
	answerSDP := strings.Replace(phoneSDP, "40010", "40020", 1)
	ph.send(r.pub, answer(inv, 200, "OK", "ph-t", "<sip:1001@192.168.77.10:5062>", answerSDP))
	ok, rawOK := r.pbx.recv("SIP/2.0 200", "SIP/2.0 100")
	assertPhoneHidden(t, rawOK, ph)
	r.pbx.send(r.priv, fmt.Sprintf("ACK %s SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.3:%d;branch=z9hG4bK-tpack;rport\nMax-Forwards: 70\nFrom: %s\nTo: %s\nCall-ID: tp-1\nCSeq: 10 ACK\nContent-Length: 0\n\n",
		msgContact(ok).Address.String(), r.pbx.addr.Port(), ok.From().Value(), ok.To().Value()))
	ph.recv("ACK")

	// media through the phone's NAT, which sends from a port of its own
	nat, pbxMedia := listenUDP(t, "127.0.0.5:45680"), listenUDP(t, "127.0.0.3:40000")
	pkt := rtpTestPacket()
	if _, err := nat.WriteToUDPAddrPort(pkt, sdpAnchor(t, string(inv.Body()))); err != nil {
		t.Fatal(err)
	}
	_ = pbxMedia.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := pbxMedia.Read(make([]byte, 1500)); err != nil {
		t.Fatalf("RTP from the phone's NAT address did not reach the pbx: %v", err)
	}
	if _, err := pbxMedia.WriteToUDPAddrPort(pkt, sdpAnchor(t, string(ok.Body()))); err != nil {
		t.Fatal(err)
	}
	_ = nat.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := nat.Read(make([]byte, 1500)); err != nil {
		t.Fatalf("RTP from the pbx did not reach the phone's NAT address: %v", err)
	}

	// the pbx hangs up
	r.pbx.send(r.priv, fmt.Sprintf("BYE %s SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.3:%d;branch=z9hG4bK-tpbye;rport\nMax-Forwards: 70\nFrom: %s\nTo: %s\nCall-ID: tp-1\nCSeq: 11 BYE\nContent-Length: 0\n\n",
		msgContact(ok).Address.String(), r.pbx.addr.Port(), ok.From().Value(), ok.To().Value()))
	bye, _ := ph.recv("BYE")
	ph.send(r.pub, answer(bye, 200, "OK", "", "", ""))
	r.pbx.recv("SIP/2.0 200")

	// a token the SBC does not know: 480, and nothing reaches the carrier
	r.pbx.send(r.priv, pbxInvite("r0123456789abcdef01234567", "tp-2"))
	r.pbx.recv("SIP/2.0 480", "SIP/2.0 100")
	r.car.expectNothing(200 * time.Millisecond)
	if st := r.srv.Status(); st.LeakGuardFired != 0 {
		t.Errorf("leak guard fired: %+v", st)
	}
	r.waitIdle()
}

// FuzzRewriteConnection: the NAT rewrite of a phone's SDP never panics,
// keeps every line, and leaves no c= line of the family naming another
// address than the phone's source or the hold address.
func FuzzRewriteConnection(f *testing.F) {
	f.Add([]byte(strings.ReplaceAll(phoneSDP, "\n", "\r\n")))
	f.Add([]byte("c=IN IP4 0.0.0.0\nc=IN IP6 ::1\nc=IN IP4\n"))
	src := netip.MustParseAddr("198.51.100.7")
	f.Fuzz(func(t *testing.T, sdp []byte) {
		out := rewriteConnection(sdp, src)
		if got, want := strings.Count(string(out), "\n"), strings.Count(string(sdp), "\n"); got != want {
			t.Fatalf("%d lines became %d", want, got)
		}
		for _, line := range strings.Split(string(out), "\n") {
			line = strings.TrimRight(line, "\r")
			if strings.HasPrefix(line, "c=IN IP4 ") && line != "c=IN IP4 198.51.100.7" && line != "c=IN IP4 0.0.0.0" {
				t.Fatalf("c= line left: %q", line)
			}
		}
	})
}

// The serialization tests: REGISTERs of one binding reach the pbx one at a
// time (RFC 3261 §10.2), each after the final response to the one before.

// accessOf is the access mode of the rig's public zone.
func accessOf(t *testing.T, r *rig) *access {
	t.Helper()
	for _, z := range r.srv.zones {
		if z.access != nil {
			return z.access
		}
	}
	t.Fatal("no access mode")
	return nil
}

// waitWaiting waits until n REGISTERs of the phone's binding of 1001 wait
// for their turn: they reached the SBC and hold no turn.
func waitWaiting(t *testing.T, a *access, ph *phone, n int) {
	t.Helper()
	k := bindingKey{src: ph.addr, transport: TransportUDP, user: "1001"}
	deadline := time.Now().Add(5 * time.Second)
	for {
		a.mu.Lock()
		got := -1
		if b := a.bindings[k]; b != nil {
			got = b.waiting
		}
		a.mu.Unlock()
		if got == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d REGISTERs of the binding waiting, want %d", got, n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// serialRig is the setup of the REGISTER serialization tests: an access
// rig, its access, one phone, and the goroutine count once they settled.
func serialRig(t *testing.T) (*rig, *access, *phone, int) {
	t.Helper()
	r := accessRig(t, nil)
	a := accessOf(t, r)
	ph := newPhone(t, "127.0.0.5")
	time.Sleep(100 * time.Millisecond)
	return r, a, ph, runtime.NumGoroutine()
}

// goroutinesBack waits until the goroutines are back to base: nothing of
// the REGISTERs outlives them. sipgo's transactions end by their timers
// (Timer K, T4 = 5 s, for the client transactions toward the pbx).
func goroutinesBack(t *testing.T, base int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for runtime.NumGoroutine() > base && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > base {
		buf := make([]byte, 1<<20)
		t.Fatalf("goroutines %d, baseline %d\n%s", n, base, buf[:runtime.Stack(buf, true)])
	}
}

// TestAccessRegisterOneAtATime: a phone's second REGISTER, sent while the
// pbx has not answered its first, reaches the pbx only after the first's
// final response, with the next CSeq of the same registration.
func TestAccessRegisterOneAtATime(t *testing.T) {
	r, a, ph, base := serialRig(t)

	ph.send(r.pub, phoneRegister(r, ph, "one-1", 1, "3600", ""))
	up1, _ := r.pbx.recv("REGISTER")
	auth := `Authorization: Digest username="1001", realm="pbx.example.test", nonce="5f1e2d3c4b5a", uri="sip:pbx.example.test", response="0123456789abcdef0123456789abcdef", algorithm=MD5` + "\n"
	ph.send(r.pub, phoneRegister(r, ph, "one-1", 2, "3600", auth))
	// the first is still open: the second must not reach the pbx
	r.pbx.expectNothing(300 * time.Millisecond)
	waitWaiting(t, a, ph, 1)
	r.pbx.expectNothing(50 * time.Millisecond)

	r.pbx.send(r.priv, pbxAnswer(up1, 401, "Unauthorized", "WWW-Authenticate: "+testChallenge+"\n"))
	if res, _ := ph.recv("SIP/2.0 401"); res.CSeq().SeqNo != 1 {
		t.Errorf("401 for CSeq %d, want the first REGISTER's", res.CSeq().SeqNo)
	}
	up2, raw2 := r.pbx.recv("REGISTER")
	if up2.CallID().Value() != up1.CallID().Value() || up2.CSeq().SeqNo != up1.CSeq().SeqNo+1 || header(up2, "Authorization") == "" {
		t.Errorf("second REGISTER toward the pbx is not the next of the registration (CSeq %d after %d):\n%s", up2.CSeq().SeqNo, up1.CSeq().SeqNo, raw2)
	}
	token := msgContact(up2).Address.User
	r.pbx.send(r.priv, pbxAnswer(up2, 200, "OK", fmt.Sprintf("Contact: <sip:%s@%s>;expires=3600\n", token, r.priv)))
	if res, _ := ph.recv("SIP/2.0 200"); res.CSeq().SeqNo != 2 {
		t.Errorf("200 for CSeq %d, want the second REGISTER's", res.CSeq().SeqNo)
	}
	if st := r.srv.Status(); st.Registrations != 1 || st.RegistrationsPending != 0 {
		t.Errorf("status: %+v", st)
	}
	goroutinesBack(t, base)
}

// TestAccessRegisterWaitersBounded: while one REGISTER of a binding is at
// the pbx, maxRegisterWaiters more wait and the next gets a local 503 with
// Retry-After; the waiting ones then go to the pbx one by one, their CSeqs
// rising in the order they are sent.
func TestAccessRegisterWaitersBounded(t *testing.T) {
	r, a, ph, base := serialRig(t)

	ph.send(r.pub, phoneRegister(r, ph, "cap-1", 1, "3600", ""))
	up, _ := r.pbx.recv("REGISTER")
	for i := range maxRegisterWaiters {
		ph.send(r.pub, phoneRegister(r, ph, "cap-1", 2+i, "3600", ""))
	}
	waitWaiting(t, a, ph, maxRegisterWaiters)
	over := 2 + maxRegisterWaiters
	ph.send(r.pub, phoneRegister(r, ph, "cap-1", over, "3600", ""))
	res, raw := ph.recv("SIP/2.0 503")
	if int(res.CSeq().SeqNo) != over || header(res, "Retry-After") != registerRetryAfter {
		t.Errorf("local 503 for the REGISTER beyond the bound:\n%s", raw)
	}
	r.pbx.expectNothing(100 * time.Millisecond)

	answered := map[uint32]bool{}
	for i := range 1 + maxRegisterWaiters {
		r.pbx.send(r.priv, pbxAnswer(up, 401, "Unauthorized", "WWW-Authenticate: "+testChallenge+"\n"))
		res, _ := ph.recv("SIP/2.0 401")
		answered[res.CSeq().SeqNo] = true
		if i == maxRegisterWaiters {
			break
		}
		next, raw := r.pbx.recv("REGISTER")
		if next.CallID().Value() != up.CallID().Value() || next.CSeq().SeqNo != up.CSeq().SeqNo+1 {
			t.Fatalf("REGISTER %d toward the pbx: CSeq %d after %d:\n%s", i+2, next.CSeq().SeqNo, up.CSeq().SeqNo, raw)
		}
		up = next
	}
	if len(answered) != 1+maxRegisterWaiters || answered[uint32(over)] {
		t.Errorf("answered CSeqs %v, want 1..%d", answered, 1+maxRegisterWaiters)
	}
	r.pbx.expectNothing(100 * time.Millisecond)
	goroutinesBack(t, base)
}

// TestAccessRegisterWaiterBindingDropped: a REGISTER waiting while its
// binding goes (the one before unregistered it, or the reaper dropped
// it) is relayed on a binding of its own: a new registration, whose 200
// counts.
func TestAccessRegisterWaiterBindingDropped(t *testing.T) {
	r, a, ph, base := serialRig(t)

	// the first REGISTER unregisters: its 200 drops the binding
	ph.send(r.pub, phoneRegister(r, ph, "drop-1", 1, "0", ""))
	up1, _ := r.pbx.recv("REGISTER")
	ph.send(r.pub, phoneRegister(r, ph, "drop-1", 2, "3600", ""))
	waitWaiting(t, a, ph, 1)
	r.pbx.send(r.priv, pbxAnswer(up1, 200, "OK", ""))
	ph.recv("SIP/2.0 200")
	up2, _ := r.pbx.recv("REGISTER")
	if up2.CallID().Value() == up1.CallID().Value() || msgContact(up2).Address.User == msgContact(up1).Address.User {
		t.Errorf("REGISTER after the unregister is not a new registration: Call-ID %s, Contact %v", up2.CallID().Value(), msgContact(up2))
	}

	// the reaper drops the binding while the next one waits
	ph.send(r.pub, phoneRegister(r, ph, "drop-1", 3, "3600", ""))
	waitWaiting(t, a, ph, 1)
	if n := a.reap(time.Now().Add(time.Hour)); n != 1 {
		t.Fatalf("reaped %d bindings, want 1", n)
	}
	r.pbx.send(r.priv, pbxAnswer(up2, 200, "OK", fmt.Sprintf("Contact: <sip:%s@%s>;expires=3600\n", msgContact(up2).Address.User, r.priv)))
	ph.recv("SIP/2.0 200")
	up3, _ := r.pbx.recv("REGISTER")
	if up3.CallID().Value() == up2.CallID().Value() {
		t.Errorf("REGISTER after the reaper is not a new registration: Call-ID %s", up3.CallID().Value())
	}
	token := msgContact(up3).Address.User
	r.pbx.send(r.priv, pbxAnswer(up3, 200, "OK", fmt.Sprintf("Contact: <sip:%s@%s>;expires=3600\n", token, r.priv)))
	ph.recv("SIP/2.0 200")
	if st := r.srv.Status(); st.Registrations != 1 || st.RegistrationsPending != 0 {
		t.Errorf("status: %+v", st)
	}
	if _, _, _, ok := a.callee(token); !ok {
		t.Error("the last registration's token does not reach the phone")
	}
	goroutinesBack(t, base)
}

// TestAccessRegisterWaitEnds: a REGISTER whose turn does not come within
// registerWait gets a local 503 and never reaches the pbx, while the one
// before it still completes.
func TestAccessRegisterWaitEnds(t *testing.T) {
	old := registerWait
	registerWait = 200 * time.Millisecond
	t.Cleanup(func() { registerWait = old })
	r, a, ph, base := serialRig(t)

	ph.send(r.pub, phoneRegister(r, ph, "wait-1", 1, "3600", ""))
	up1, _ := r.pbx.recv("REGISTER")
	ph.send(r.pub, phoneRegister(r, ph, "wait-1", 2, "3600", ""))
	res, raw := ph.recv("SIP/2.0 503")
	if res.CSeq().SeqNo != 2 || header(res, "Retry-After") != registerRetryAfter {
		t.Errorf("local 503 for the REGISTER that waited too long:\n%s", raw)
	}
	waitWaiting(t, a, ph, 0)
	r.pbx.send(r.priv, pbxAnswer(up1, 401, "Unauthorized", "WWW-Authenticate: "+testChallenge+"\n"))
	if res, _ := ph.recv("SIP/2.0 401"); res.CSeq().SeqNo != 1 {
		t.Errorf("401 for CSeq %d, want the first REGISTER's", res.CSeq().SeqNo)
	}
	r.pbx.expectNothing(100 * time.Millisecond)
	goroutinesBack(t, base)
}

// TestAccessRegisterStopsAtShutdown: once the server stops, a REGISTER the
// pbx has not answered and one waiting for its turn both get 503 with
// Retry-After at once, instead of lasting a transaction timeout past it.
func TestAccessRegisterStopsAtShutdown(t *testing.T) {
	r, a, ph, base := serialRig(t)

	ph.send(r.pub, phoneRegister(r, ph, "quit-1", 1, "3600", ""))
	r.pbx.recv("REGISTER")
	ph.send(r.pub, phoneRegister(r, ph, "quit-1", 2, "3600", ""))
	waitWaiting(t, a, ph, 1)

	// what Shutdown and Detach do first; the listeners stay up here so
	// the phone hears the answers
	r.srv.stopWaiting()
	got := map[uint32]bool{}
	for range 2 {
		res, raw := ph.recv("SIP/2.0 503")
		if header(res, "Retry-After") != registerRetryAfter {
			t.Errorf("503 without Retry-After %s:\n%s", registerRetryAfter, raw)
		}
		got[res.CSeq().SeqNo] = true
	}
	if !got[1] || !got[2] {
		t.Errorf("503s for CSeqs %v, want 1 and 2", got)
	}
	r.pbx.expectNothing(100 * time.Millisecond)
	goroutinesBack(t, base)
}
