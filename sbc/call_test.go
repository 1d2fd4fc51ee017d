package sbc

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
	"github.com/hashicorp/go-hclog"

	"github.com/edgesbc/edgesbc/media"
)

// The call tests run a real Server on loopback: the private zone on
// 127.0.0.1, the public zone on 127.0.0.2, the pbx at 127.0.0.3 and the
// carrier at 127.0.0.4 (Linux routes all of 127/8 to lo). The peers are
// raw UDP sockets driven by the test, so every byte on the wire is checked.

type phone struct {
	t    testing.TB
	conn *net.UDPConn
	addr netip.AddrPort
}

func newPhone(t testing.TB, ip string) *phone {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.ParseIP(ip)})
	if err != nil {
		t.Skipf("loopback address %s not usable here: %v", ip, err)
	}
	t.Cleanup(func() { c.Close() })
	return &phone{t: t, conn: c, addr: c.LocalAddr().(*net.UDPAddr).AddrPort()}
}

func (p *phone) send(to netip.AddrPort, msg string) {
	p.t.Helper()
	msg = strings.ReplaceAll(msg, "\n", "\r\n")
	if i := strings.Index(msg, "\r\n\r\n"); i >= 0 {
		body := msg[i+4:]
		msg = strings.Replace(msg[:i], "Content-Length: %LEN%", fmt.Sprintf("Content-Length: %d", len(body)), 1) + "\r\n\r\n" + body
	}
	if _, err := p.conn.WriteToUDPAddrPort([]byte(msg), to); err != nil {
		p.t.Fatalf("send: %v", err)
	}
}

// recv returns the next SIP message, skipping retransmissions of messages
// already seen and anything matching skip.
func (p *phone) recv(what string, skip ...string) (sip.Message, string) {
	p.t.Helper()
	buf := make([]byte, 65535)
	deadline := time.Now().Add(5 * time.Second)
	for {
		_ = p.conn.SetReadDeadline(deadline)
		n, _, err := p.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			p.t.Fatalf("%s: waiting for %s: %v", p.addr, what, err)
		}
		raw := string(buf[:n])
		first := raw[:strings.Index(raw, "\r\n")]
		skipped := false
		for _, s := range skip {
			if strings.HasPrefix(first, s) {
				skipped = true
			}
		}
		if skipped {
			continue
		}
		if !strings.HasPrefix(first, what) {
			p.t.Fatalf("%s: want %q, got:\n%s", p.addr, what, raw)
		}
		m, err := sip.ParseMessage(buf[:n])
		if err != nil {
			p.t.Fatalf("unparsable message from SBC: %v\n%s", err, raw)
		}
		return m, raw
	}
}

// expectNothing asserts no message (other than skip) arrives for d.
func (p *phone) expectNothing(d time.Duration, skip ...string) {
	p.t.Helper()
	buf := make([]byte, 65535)
	deadline := time.Now().Add(d)
	for {
		_ = p.conn.SetReadDeadline(deadline)
		n, _, err := p.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		raw := string(buf[:n])
		ok := false
		for _, s := range skip {
			if strings.HasPrefix(raw, s) {
				ok = true
			}
		}
		if !ok {
			p.t.Fatalf("%s: unexpected message:\n%s", p.addr, raw)
		}
	}
}

type rig struct {
	t        testing.TB
	srv      *Server
	relay    *media.Relay
	pbx, car *phone
	priv     netip.AddrPort // SBC private SIP address
	pub      netip.AddrPort // SBC public SIP address
}

func freePort(t testing.TB, ip string) int {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.ParseIP(ip)})
	if err != nil {
		t.Skipf("loopback address %s not usable here: %v", ip, err)
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).Port
}

func newRig(t testing.TB, tweak func(*Config)) *rig {
	t.Helper()
	return newRigTimeout(t, tweak, 0)
}

// newRigTimeout is newRig with a media timeout (0: the default).
func newRigTimeout(t testing.TB, tweak func(*Config), mediaTimeout time.Duration) *rig {
	t.Helper()
	r := &rig{t: t}
	r.pbx = newPhone(t, "127.0.0.3")
	r.car = newPhone(t, "127.0.0.4")
	privPort, pubPort := freePort(t, "127.0.0.1"), freePort(t, "127.0.0.2")
	r.priv = netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(privPort))
	r.pub = netip.AddrPortFrom(netip.MustParseAddr("127.0.0.2"), uint16(pubPort))
	cfg := Config{
		Zones: []ZoneConfig{
			{Name: "private", Address: r.priv.Addr(), SIPPort: privPort},
			{Name: "public", Address: r.pub.Addr(), SIPPort: pubPort},
		},
		Peers: []PeerConfig{
			{Name: "main", Kind: PBX, Zone: "private", Address: r.pbx.addr},
			{Name: "carrier", Kind: Trunk, Zone: "public", Address: r.car.addr, KeepHeaders: []string{"P-Asserted-Identity"}},
		},
		InviteTimeout: 3 * time.Second,
		DrainTimeout:  time.Second,
	}
	if tweak != nil {
		tweak(&cfg)
	}
	log := hclog.New(&hclog.LoggerOptions{Level: testLogLevel, Output: testWriter{t}})
	var srv *Server
	relay, err := media.NewRelay(media.Config{
		PortMin: 26000 + 2*(privPort%2950), PortMax: 26000 + 2*(privPort%2950) + 99,
		Quarantine: 50 * time.Millisecond, Timeout: mediaTimeout,
		OnTimeout: func(id media.SessionID) { srv.OnMediaTimeout(id) },
	}, log)
	if err != nil {
		t.Fatal(err)
	}
	r.relay = relay
	srv, err = NewServer(cfg, relay, Hooks{}, log, testSlog(t))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	if err := srv.Start(ctx); err != nil {
		t.Fatal(err)
	}
	r.srv = srv
	t.Cleanup(func() {
		srv.Shutdown(context.Background())
		cancel()
		relay.Shutdown()
	})
	return r
}

// silentWait stands for 64*T1 in tests of peers that stop answering.
const silentWait = 300 * time.Millisecond

// withSilentWait shortens the SBC's in-dialog wait to silentWait, then
// applies tweak (if any).
func withSilentWait(tweak func(*Config)) func(*Config) {
	return func(c *Config) {
		c.inDialogWait = silentWait
		if tweak != nil {
			tweak(c)
		}
	}
}

// answerByes receives a BYE on each phone (skipping what skip lists on
// either), answers both with 200 and returns them.
func (r *rig) answerByes(skip ...string) (pbxBye, carBye sip.Message) {
	r.t.Helper()
	pbxBye, _ = r.pbx.recv("BYE", skip...)
	carBye, _ = r.car.recv("BYE", skip...)
	r.pbx.send(r.priv, answer(pbxBye, 200, "OK", "", "", ""))
	r.car.send(r.pub, answer(carBye, 200, "OK", "", "", ""))
	return pbxBye, carBye
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}

const pbxSDP = `v=0
o=corp 123 1 IN IP4 127.0.0.3
s=CorpPBX pbx01.corp.internal
c=IN IP4 127.0.0.3
t=0 0
m=audio 40000 RTP/AVP 8 101
a=rtpmap:8 PCMA/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-16
a=sendrecv
`

const carrierSDP = `v=0
o=carrier 9 1 IN IP4 127.0.0.4
s=-
c=IN IP4 127.0.0.4
t=0 0
m=audio 41000 RTP/AVP 8 101
a=rtpmap:8 PCMA/8000
a=rtpmap:101 telephone-event/8000
a=sendrecv
`

func (r *rig) pbxInvite(callID, branch string) string {
	return fmt.Sprintf(`INVITE sip:+15551234@%s SIP/2.0
Via: SIP/2.0/UDP pbx01.corp.internal:%d;branch=%s;rport
Max-Forwards: 70
From: "Alice Corp" <sip:2001@corp.internal>;tag=pbx-tag-1
To: <sip:+15551234@%s>
Call-ID: %s
CSeq: 10 INVITE
Contact: <sip:2001@pbx01.corp.internal:%d>
Record-Route: <sip:pbx01.corp.internal;lr>
User-Agent: CorpPBX 4.2 pbx01.corp.internal
X-Internal-Host: pbx01.corp.internal
P-Internal-Addr: 127.0.0.3
P-Asserted-Identity: <sip:2001@corp.internal>
Subject: hello
Content-Type: application/sdp
Content-Length: %%LEN%%

`, r.priv, r.pbx.addr.Port(), branch, r.priv, callID, r.pbx.addr.Port()) + pbxSDP
}

// ringing places a pbx call that the carrier answers with 180, and
// returns leg B's INVITE.
func (r *rig) ringing(callID, branch string) sip.Message {
	r.t.Helper()
	r.pbx.send(r.priv, r.pbxInvite(callID, branch))
	inv, _ := r.car.recv("INVITE", "SIP/2.0 100")
	r.car.send(r.pub, answer(inv, 180, "Ringing", "car-tag", "", ""))
	r.pbx.recv("SIP/2.0 180", "SIP/2.0 100", "SIP/2.0 486")
	return inv
}

// pbxCancel cancels the pbxInvite with the same Call-ID and branch.
func (r *rig) pbxCancel(callID, branch string) string {
	return fmt.Sprintf(`CANCEL sip:+15551234@%s SIP/2.0
Via: SIP/2.0/UDP pbx01.corp.internal:%d;branch=%s;rport
Max-Forwards: 70
From: "Alice Corp" <sip:2001@corp.internal>;tag=pbx-tag-1
To: <sip:+15551234@%s>
Call-ID: %s
CSeq: 10 CANCEL
Content-Length: 0

`, r.priv, r.pbx.addr.Port(), branch, r.priv, callID)
}

// answer builds a response to req from the phone's side.
func answer(req sip.Message, code int, reason, toTag, contact string, body string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "SIP/2.0 %d %s\n", code, reason)
	for _, h := range req.GetHeaders("Via") {
		fmt.Fprintf(&b, "Via: %s\n", h.Value())
	}
	fmt.Fprintf(&b, "From: %s\n", req.From().Value())
	to := req.To().Value()
	if toTag != "" && !strings.Contains(to, "tag=") {
		to += ";tag=" + toTag
	}
	fmt.Fprintf(&b, "To: %s\nCall-ID: %s\nCSeq: %s\n", to, req.CallID().Value(), req.CSeq().Value())
	if contact != "" {
		fmt.Fprintf(&b, "Contact: %s\n", contact)
	}
	if body != "" {
		b.WriteString("Content-Type: application/sdp\n")
	}
	b.WriteString("Content-Length: %LEN%\n\n")
	b.WriteString(body)
	return b.String()
}

// assertHidden checks that nothing of the private side is in raw.
func assertHidden(t *testing.T, raw string) {
	t.Helper()
	for _, bad := range []string{"127.0.0.1", "127.0.0.3", "corp.internal", "CorpPBX", "pbx-tag-1", "X-Internal", "P-Internal", "pbx-call-1"} {
		if strings.Contains(raw, bad) {
			t.Errorf("private topology %q reached the carrier:\n%s", bad, raw)
		}
	}
}

func (r *rig) waitIdle() {
	r.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		st := r.srv.Status()
		if st.Calls == 0 && st.Dialogs == 0 && r.relay.Sessions() == 0 {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	r.t.Fatalf("calls not released: %+v sessions=%d", r.srv.Status(), r.relay.Sessions())
}

func TestCallPBXToCarrier(t *testing.T) {
	r := newRig(t, nil)
	r.pbx.send(r.priv, r.pbxInvite("pbx-call-1", "z9hG4bK-inv1"))

	inv, raw := r.car.recv("INVITE", "SIP/2.0 100")
	assertHidden(t, raw)
	req := inv.(*sip.Request)
	if req.Recipient.User != "+15551234" || req.Recipient.Host != "127.0.0.4" {
		t.Errorf("request-uri %s: number must be kept, host must be the trunk", req.Recipient.String())
	}
	if v := req.Via(); v.Host != "127.0.0.2" || len(req.GetHeaders("Via")) != 1 {
		t.Errorf("via %v: must be exactly the SBC's public address", req.GetHeaders("Via"))
	}
	if c := msgContact(req); c == nil || c.Address.Host != "127.0.0.2" {
		t.Errorf("contact %v: must be the SBC's public address", c)
	}
	if req.CallID().Value() == "pbx-call-1" || req.GetHeaders("Record-Route") != nil {
		t.Error("call-id or record-route carried over")
	}
	if ua := req.GetHeaders("User-Agent"); len(ua) != 1 || ua[0].Value() != "edgesbc" {
		t.Errorf("user-agent %v", ua)
	}
	if pai := req.GetHeaders("P-Asserted-Identity"); len(pai) != 1 || pai[0].Value() != "<sip:2001@127.0.0.2>" {
		// kept by keep_headers, re-homed to the SBC's public address
		t.Errorf("P-Asserted-Identity must pass with the number kept and our host: %v", pai)
	}
	if s := req.GetHeaders("Subject"); len(s) != 1 || s[0].Value() != "hello" {
		t.Errorf("subject not passed: %v", s)
	}
	if req.From().DisplayName != "Alice Corp" || req.From().Address.User != "2001" || req.From().Address.Host != "127.0.0.2" {
		t.Errorf("from %s", req.From().Value())
	}
	body := string(req.Body())
	if !strings.Contains(body, "c=IN IP4 127.0.0.2") || !strings.Contains(body, "a=fmtp:101 0-16") {
		t.Errorf("sdp not anchored or telephone-event lost:\n%s", body)
	}
	if n := r.srv.Status().LeakGuardFired; n != 0 {
		t.Errorf("leak guard fired %d times in a normal call: the messages must be clean by construction", n)
	}

	r.car.send(r.pub, answer(inv, 180, "Ringing", "car-tag", "", ""))
	ring, _ := r.pbx.recv("SIP/2.0 180", "SIP/2.0 100")
	aTag, _ := ring.To().Params.Get("tag")
	if aTag == "" || aTag == "car-tag" {
		t.Fatalf("leg A To tag %q: must be ours", aTag)
	}
	r.car.send(r.pub, answer(inv, 200, "OK", "car-tag", fmt.Sprintf("<sip:carrier@%s>", r.car.addr), carrierSDP))
	ack, _ := r.car.recv("ACK")
	if ack.CallID().Value() != inv.CallID().Value() {
		t.Error("ACK on leg B has the wrong Call-ID")
	}
	ok, rawOK := r.pbx.recv("SIP/2.0 200", "SIP/2.0 180")
	if strings.Contains(rawOK, "127.0.0.4") || strings.Contains(rawOK, "car-tag") || strings.Contains(rawOK, "carrier@") {
		t.Errorf("carrier topology reached the pbx:\n%s", rawOK)
	}
	if !strings.Contains(string(ok.Body()), "c=IN IP4 127.0.0.1") {
		t.Errorf("answer not anchored on the private side:\n%s", ok.Body())
	}
	r.pbx.send(r.priv, fmt.Sprintf(`ACK sip:x@%s SIP/2.0
Via: SIP/2.0/UDP 127.0.0.3:%d;branch=z9hG4bK-ack1
Max-Forwards: 70
From: "Alice Corp" <sip:2001@corp.internal>;tag=pbx-tag-1
To: %s
Call-ID: pbx-call-1
CSeq: 10 ACK
Content-Length: 0

`, r.priv, r.pbx.addr.Port(), ok.To().Value()))
	r.pbx.expectNothing(1200*time.Millisecond, "SIP/2.0 200") // 2xx retransmission stops after ACK at the latest
	r.pbx.send(r.priv, fmt.Sprintf(`BYE sip:x@%s SIP/2.0
Via: SIP/2.0/UDP 127.0.0.3:%d;branch=z9hG4bK-bye1
Max-Forwards: 70
From: "Alice Corp" <sip:2001@corp.internal>;tag=pbx-tag-1
To: %s
Call-ID: pbx-call-1
CSeq: 11 BYE
Content-Length: 0

`, r.priv, r.pbx.addr.Port(), ok.To().Value()))
	bye, rawBye := r.car.recv("BYE", "SIP/2.0 200", "ACK")
	assertHidden(t, rawBye)
	if bye.(*sip.Request).Recipient.User != "carrier" {
		t.Errorf("BYE must target the carrier's Contact, got %s", bye.(*sip.Request).Recipient.String())
	}
	r.pbx.recv("SIP/2.0 200", "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP pbx01")
	r.car.send(r.pub, answer(bye, 200, "OK", "", "", ""))
	r.waitIdle()
}

func TestCallCarrierToPBXCalleeHangsUp(t *testing.T) {
	r := newRig(t, nil)
	r.car.send(r.pub, fmt.Sprintf(`INVITE sip:2001@%s SIP/2.0
Via: SIP/2.0/UDP 127.0.0.4:%d;branch=z9hG4bK-c1
Max-Forwards: 69
From: <sip:+15550000@carrier.example>;tag=ctag
To: <sip:2001@%s>
Call-ID: car-call-1@carrier.example
CSeq: 1 INVITE
Contact: <sip:gw@127.0.0.4:%d>
Content-Type: application/sdp
Content-Length: %%LEN%%

`, r.pub, r.car.addr.Port(), r.pub, r.car.addr.Port())+carrierSDP)
	inv, raw := r.pbx.recv("INVITE", "SIP/2.0 100")
	if strings.Contains(raw, "127.0.0.4") || strings.Contains(raw, "carrier.example") {
		t.Errorf("carrier topology reached the pbx:\n%s", raw)
	}
	if mf := inv.(*sip.Request).MaxForwards(); mf == nil || mf.Val() != 68 {
		t.Errorf("Max-Forwards must be decremented: %v", mf)
	}
	r.pbx.send(r.priv, answer(inv, 200, "OK", "ptag", fmt.Sprintf("<sip:2001@pbx01.corp.internal:%d>", r.pbx.addr.Port()), pbxSDP))
	r.pbx.recv("ACK")
	ok, rawOK := r.car.recv("SIP/2.0 200", "SIP/2.0 100")
	assertHidden(t, rawOK)
	r.car.send(r.pub, fmt.Sprintf(`ACK sip:x@%s SIP/2.0
Via: SIP/2.0/UDP 127.0.0.4:%d;branch=z9hG4bK-c2
Max-Forwards: 70
From: <sip:+15550000@carrier.example>;tag=ctag
To: %s
Call-ID: car-call-1@carrier.example
CSeq: 1 ACK
Content-Length: 0

`, r.pub, r.car.addr.Port(), ok.To().Value()))
	time.Sleep(100 * time.Millisecond)
	// the PBX hangs up: its BYE has an unresolvable Contact host, so the SBC
	// must send on leg A to the carrier's source address
	r.pbx.send(r.priv, fmt.Sprintf(`BYE sip:x@%s SIP/2.0
Via: SIP/2.0/UDP 127.0.0.3:%d;branch=z9hG4bK-pb
Max-Forwards: 70
From: %s
To: %s
Call-ID: %s
CSeq: 5 BYE
Content-Length: 0

`, r.priv, r.pbx.addr.Port(), inv.To().Value()+";tag=ptag", inv.From().Value(), inv.CallID().Value()))
	r.pbx.recv("SIP/2.0 200", "ACK")
	bye, _ := r.car.recv("BYE", "SIP/2.0 200")
	if bye.CallID().Value() != "car-call-1@carrier.example" {
		t.Errorf("BYE on leg A has Call-ID %s", bye.CallID().Value())
	}
	r.car.send(r.pub, answer(bye, 200, "OK", "", "", ""))
	r.waitIdle()
}

func TestCallCancel(t *testing.T) {
	r := newRig(t, nil)
	inv := r.ringing("pbx-call-1", "z9hG4bK-inv2")
	r.pbx.send(r.priv, r.pbxCancel("pbx-call-1", "z9hG4bK-inv2"))
	r.pbx.recv("SIP/2.0 200")
	r.pbx.recv("SIP/2.0 487")
	cancel, raw := r.car.recv("CANCEL")
	assertHidden(t, raw)
	if cancel.CallID().Value() != inv.CallID().Value() || cancel.Via().Params.GetOr("branch", "") != inv.Via().Params.GetOr("branch", "x") {
		t.Error("CANCEL must match the INVITE's Call-ID and branch")
	}
	r.car.send(r.pub, answer(cancel, 200, "OK", "car-tag", "", ""))
	r.car.send(r.pub, answer(inv, 487, "Request Terminated", "car-tag", "", ""))
	r.car.recv("ACK")
	r.waitIdle()
}

// TestCallCancel200Race: the callee answers after the caller cancelled. The
// SBC must confirm that dialog with ACK and end it with BYE.
func TestCallCancel200Race(t *testing.T) {
	r := newRig(t, nil)
	inv := r.ringing("pbx-call-1", "z9hG4bK-inv3")
	r.pbx.send(r.priv, r.pbxCancel("pbx-call-1", "z9hG4bK-inv3"))
	r.car.recv("CANCEL")
	// the 200 to the INVITE crosses the CANCEL
	r.car.send(r.pub, answer(inv, 200, "OK", "car-tag", fmt.Sprintf("<sip:carrier@%s>", r.car.addr), carrierSDP))
	r.car.recv("ACK")
	bye, _ := r.car.recv("BYE")
	r.car.send(r.pub, answer(bye, 200, "OK", "", "", ""))
	r.pbx.recv("SIP/2.0 200")
	r.pbx.recv("SIP/2.0 487")
	r.waitIdle()
}

func TestCallRejectedAndTimeout(t *testing.T) {
	r := newRig(t, nil)
	r.pbx.send(r.priv, r.pbxInvite("pbx-call-1", "z9hG4bK-inv4"))
	inv, _ := r.car.recv("INVITE", "SIP/2.0 100")
	r.car.send(r.pub, strings.Replace(answer(inv, 486, "Busy Here from carrier-sw-7", "car-tag", "", ""), "Content-Length", "Retry-After: 30\nWarning: 399 carrier-sw-7 \"busy\"\nContent-Length", 1))
	r.car.recv("ACK")
	res, raw := r.pbx.recv("SIP/2.0 486", "SIP/2.0 100")
	if strings.Contains(raw, "carrier-sw-7") {
		t.Errorf("reason phrase or Warning of the far side relayed:\n%s", raw)
	}
	if ra := res.GetHeaders("Retry-After"); len(ra) != 1 {
		t.Error("Retry-After lost")
	}
	r.waitIdle()

	// a callee that never answers: 408 to the caller after invite_timeout,
	// CANCEL to the callee
	inv = r.ringing("pbx-call-2", "z9hG4bK-inv5")
	r.pbx.recv("SIP/2.0 408", "SIP/2.0 180", "SIP/2.0 486")
	cancel, _ := r.car.recv("CANCEL", "INVITE")
	r.car.send(r.pub, answer(cancel, 200, "OK", "car-tag", "", ""))
	r.car.send(r.pub, answer(inv, 487, "Request Terminated", "car-tag", "", ""))
	r.car.recv("ACK")
	r.waitIdle()
}

func TestRequestsOutsideCalls(t *testing.T) {
	r := newRig(t, nil)
	stranger := newPhone(t, "127.0.0.5")
	// an unknown source on the private side gets 403
	inv := r.pbxInvite("s-1", "z9hG4bK-s1")
	stranger.send(r.priv, inv)
	stranger.recv("SIP/2.0 403", "SIP/2.0 100")
	// on the public side, silence
	stranger.send(r.pub, strings.Replace(inv, r.priv.String(), r.pub.String(), -1))
	stranger.expectNothing(700*time.Millisecond, "SIP/2.0 403") // retransmissions of the first answer only
	if r.srv.Status().UnknownSource < 2 {
		t.Errorf("unknown sources not counted: %+v", r.srv.Status())
	}
	// BYE for an unknown dialog: 481
	r.pbx.send(r.priv, fmt.Sprintf("BYE sip:x@%s SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.3;branch=z9hG4bK-b9;rport\nMax-Forwards: 70\nFrom: <sip:a@b>;tag=1\nTo: <sip:c@d>;tag=2\nCall-ID: nope\nCSeq: 2 BYE\nContent-Length: 0\n\n", r.priv))
	r.pbx.recv("SIP/2.0 481")
	// missing Call-ID: 400, stateless
	r.pbx.send(r.priv, fmt.Sprintf("OPTIONS sip:x@%s SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.3;branch=z9hG4bK-o1\nMax-Forwards: 70\nFrom: <sip:a@b>;tag=1\nTo: <sip:c@d>\nCSeq: 2 OPTIONS\nContent-Length: 0\n\n", r.priv))
	r.pbx.recv("SIP/2.0 400")
	// keepalive OPTIONS from a peer: 200
	r.car.send(r.pub, fmt.Sprintf("OPTIONS sip:%s SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.4;branch=z9hG4bK-o2;rport\nMax-Forwards: 70\nFrom: <sip:a@b>;tag=1\nTo: <sip:c@d>\nCall-ID: ka1\nCSeq: 2 OPTIONS\nContent-Length: 0\n\n", r.pub))
	r.car.recv("SIP/2.0 200")
	// an unsupported Require: 420 with Unsupported
	r.pbx.send(r.priv, strings.Replace(r.pbxInvite("r-1", "z9hG4bK-r1"), "Subject: hello", "Require: foo-ext", 1))
	res, _ := r.pbx.recv("SIP/2.0 420", "SIP/2.0 100")
	if u := res.GetHeaders("Unsupported"); len(u) != 1 || u[0].Value() != "foo-ext" {
		t.Errorf("Unsupported header: %v", u)
	}
	r.car.expectNothing(300*time.Millisecond, "SIP/2.0 200")
	r.waitIdle()
}

// TestCallsLeaveNothingBehind runs calls to completion and checks that no
// goroutine, dialog, media session or port of them remains.
func TestCallsLeaveNothingBehind(t *testing.T) {
	r := newRig(t, nil)
	time.Sleep(100 * time.Millisecond)
	base := runtime.NumGoroutine()
	for i := 0; i < 5; i++ {
		id := fmt.Sprintf("pbx-call-%d", 100+i)
		r.pbx.send(r.priv, r.pbxInvite(id, fmt.Sprintf("z9hG4bK-l%d", i)))
		inv, _ := r.car.recv("INVITE", "SIP/2.0 100")
		r.car.send(r.pub, answer(inv, 486, "Busy", "car-tag", "", ""))
		r.car.recv("ACK")
		r.pbx.recv("SIP/2.0 486", "SIP/2.0 100")
	}
	r.waitIdle()
	deadline := time.Now().Add(60 * time.Second)
	for {
		n := runtime.NumGoroutine()
		if n <= base+2 && r.relay.PortsInUse() == 0 {
			break
		}
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("goroutines %d (baseline %d), ports in use %d\n%s", n, base, r.relay.PortsInUse(), buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(100 * time.Millisecond)
	}
}

var testLogLevel = hclog.Warn

func testSlog(t testing.TB) *slog.Logger {
	if testLogLevel > hclog.Debug {
		return nil
	}
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// establish places an answered, confirmed call from the pbx to the carrier
// and returns leg A's 200 and leg B's INVITE.
func (r *rig) establish(callID string) (okA, invB sip.Message) {
	r.t.Helper()
	r.pbx.send(r.priv, r.pbxInvite(callID, "z9hG4bK-"+callID))
	inv, _ := r.car.recv("INVITE", "SIP/2.0 100")
	r.car.send(r.pub, answer(inv, 200, "OK", "car-tag", fmt.Sprintf("<sip:carrier@%s>", r.car.addr), carrierSDP))
	r.car.recv("ACK")
	ok, _ := r.pbx.recv("SIP/2.0 200", "SIP/2.0 100")
	r.pbx.send(r.priv, fmt.Sprintf("ACK sip:x@%s SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.3:%d;branch=z9hG4bK-a%s\nMax-Forwards: 70\nFrom: %s\nTo: %s\nCall-ID: %s\nCSeq: 10 ACK\nContent-Length: 0\n\n",
		r.priv, r.pbx.addr.Port(), callID, ok.From().Value(), ok.To().Value(), callID))
	return ok, inv
}

// TestShutdownEndsCalls: a graceful stop sends BYE on both legs of an
// answered call and refuses new calls with 503.
func TestShutdownEndsCalls(t *testing.T) {
	r := newRig(t, nil)
	r.establish("sd-1")
	done := make(chan struct{})
	go func() {
		r.srv.Shutdown(context.Background())
		close(done)
	}()
	byeA, _ := r.pbx.recv("BYE", "SIP/2.0 200")
	byeB, _ := r.car.recv("BYE", "ACK")
	r.pbx.send(r.priv, answer(byeA, 200, "OK", "", "", ""))
	r.car.send(r.pub, answer(byeB, 200, "OK", "", "", ""))
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("shutdown did not finish after both BYEs were answered")
	}
	if st := r.srv.Status(); st.Calls != 0 || st.Dialogs != 0 {
		t.Errorf("calls left after shutdown: %+v", st)
	}
}

// TestMediaTimeoutEndsCall: no RTP in either direction for media.timeout
// ends the call with BYE on both legs.
func TestMediaTimeoutEndsCall(t *testing.T) {
	r := newRigTimeout(t, nil, 700*time.Millisecond)
	r.establish("mt-1")
	byeA, _ := r.pbx.recv("BYE", "SIP/2.0 200")
	byeB, _ := r.car.recv("BYE", "ACK")
	r.pbx.send(r.priv, answer(byeA, 200, "OK", "", "", ""))
	r.car.send(r.pub, answer(byeB, 200, "OK", "", "", ""))
	r.waitIdle()
}

// TestCallCancelAfterTrying: a callee that has only sent 100 Trying still
// gets the CANCEL (any provisional allows it, RFC 3261 §9.1); one that has
// sent nothing gets it as soon as its 100 arrives.
func TestCallCancelAfterTrying(t *testing.T) {
	r := newRig(t, nil)
	for i, trying := range []bool{true, false} {
		id := fmt.Sprintf("pbx-call-t%d", i)
		branch := fmt.Sprintf("z9hG4bK-t%d", i)
		r.pbx.send(r.priv, r.pbxInvite(id, branch))
		inv, _ := r.car.recv("INVITE", "SIP/2.0 100")
		if trying {
			r.car.send(r.pub, answer(inv, 100, "Trying", "", "", ""))
		}
		r.pbx.send(r.priv, r.pbxCancel(id, branch))
		r.pbx.recv("SIP/2.0 200", "SIP/2.0 100")
		r.pbx.recv("SIP/2.0 487")
		if !trying {
			r.car.expectNothing(300*time.Millisecond, "INVITE")
			r.car.send(r.pub, answer(inv, 100, "Trying", "", "", ""))
		}
		cancel, _ := r.car.recv("CANCEL", "INVITE")
		r.car.send(r.pub, answer(cancel, 200, "OK", "car-tag", "", ""))
		r.car.send(r.pub, answer(inv, 487, "Request Terminated", "car-tag", "", ""))
		r.car.recv("ACK", "INVITE")
		r.waitIdle()
	}
}

// TestMaxCalls: beyond sip.max_calls a new INVITE gets 503 with
// Retry-After and creates nothing; the call already up is unaffected.
func TestMaxCalls(t *testing.T) {
	r := newRig(t, func(c *Config) { c.MaxCalls = 1 })
	r.establish("mc-1")
	r.pbx.send(r.priv, r.pbxInvite("mc-2", "z9hG4bK-mc2"))
	res, _ := r.pbx.recv("SIP/2.0 503", "SIP/2.0 200")
	if ra := res.GetHeaders("Retry-After"); len(ra) != 1 {
		t.Errorf("503 without Retry-After")
	}
	r.car.expectNothing(300*time.Millisecond, "ACK")
	if st := r.srv.Status(); st.Calls != 1 || st.Overload != 1 {
		t.Errorf("status %+v: want the first call up and one overload refusal", st)
	}
}

// TestAdvertisedAddress: behind a 1:1 NAT the public zone announces its
// advertise address in Via, Contact and SDP, while it still binds and sends
// from its local address.
func TestAdvertisedAddress(t *testing.T) {
	r := newRig(t, func(c *Config) { c.Zones[1].Advertise = netip.MustParseAddr("198.51.100.7") })
	r.pbx.send(r.priv, r.pbxInvite("adv-1", "z9hG4bK-adv1"))
	inv, raw := r.car.recv("INVITE", "SIP/2.0 100")
	req := inv.(*sip.Request)
	if req.Via().Host != "198.51.100.7" || msgContact(req).Address.Host != "198.51.100.7" || req.From().Address.Host != "198.51.100.7" {
		t.Errorf("Via/Contact/From must carry the advertised address:\n%s", raw)
	}
	if !strings.Contains(string(req.Body()), "c=IN IP4 198.51.100.7") || strings.Contains(raw, "127.0.0.2") {
		t.Errorf("SDP must announce the advertised address, never the local one:\n%s", raw)
	}
	r.car.send(r.pub, answer(inv, 486, "Busy", "car-tag", "", ""))
	r.car.recv("ACK")
	r.pbx.recv("SIP/2.0 486", "SIP/2.0 100")
	r.waitIdle()
}

// TestUnusableOfferRefused: an offer the relay cannot anchor (here a media
// address of the other family than the SBC's address in that zone) is
// the caller's fault: 488, and nothing reaches the callee.
func TestUnusableOfferRefused(t *testing.T) {
	r := newRig(t, nil)
	inv := strings.Replace(r.pbxInvite("pbx-call-bad-sdp", "z9hG4bK-bad-sdp"), "c=IN IP4 127.0.0.3", "c=IN IP6 2001:db8::3", 1)
	r.pbx.send(r.priv, inv)
	r.pbx.recv("SIP/2.0 488", "SIP/2.0 100")
	r.car.expectNothing(200*time.Millisecond, "INVITE")
	r.waitIdle()
}
