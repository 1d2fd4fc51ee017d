package sbc

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
)

// withTimers turns session timers on toward both peers: the pbx with
// interval pbxSE, the carrier with carSE, both with a Min-SE of 2s.
func withTimers(pbxSE, carSE time.Duration) func(*Config) {
	return func(c *Config) {
		c.Peers[0].SessionExpires, c.Peers[0].MinSE = pbxSE, 2*time.Second
		c.Peers[1].SessionExpires, c.Peers[1].MinSE = carSE, 2*time.Second
	}
}

// addHeaders inserts header lines into a message built by the test.
func addHeaders(msg string, lines ...string) string {
	if len(lines) == 0 {
		return msg
	}
	i := strings.Index(msg, "Content-Length:")
	return msg[:i] + strings.Join(lines, "\n") + "\n" + msg[i:]
}

func header(m sip.Message, name string) string {
	if h := m.GetHeaders(name); len(h) > 0 {
		return h[0].Value()
	}
	return ""
}

// timerCall places a pbx call whose INVITE carries pbxHeaders and which
// the carrier answers with carHeaders; it returns the pbx's 200 and leg
// B's INVITE once both legs are confirmed.
func (r *rig) timerCall(callID string, pbxHeaders, carHeaders []string) (okA, invB sip.Message) {
	r.t.Helper()
	r.pbx.send(r.priv, addHeaders(r.pbxInvite(callID, "z9hG4bK-"+callID), pbxHeaders...))
	inv, _ := r.car.recv("INVITE", "SIP/2.0 100")
	r.car.send(r.pub, addHeaders(answer(inv, 200, "OK", "car-tag", fmt.Sprintf("<sip:carrier@%s>", r.car.addr), carrierSDP), carHeaders...))
	r.car.recv("ACK")
	ok, _ := r.pbx.recv("SIP/2.0 200", "SIP/2.0 100")
	r.pbx.send(r.priv, fmt.Sprintf("ACK sip:x@%s SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.3:%d;branch=z9hG4bK-a%s\nMax-Forwards: 70\nFrom: %s\nTo: %s\nCall-ID: %s\nCSeq: 10 ACK\nContent-Length: 0\n\n",
		r.priv, r.pbx.addr.Port(), callID, ok.From().Value(), ok.To().Value(), callID))
	return ok, inv
}

// carInDialog builds a request from the carrier within leg B's dialog.
func (r *rig) carInDialog(method string, seq int, invB sip.Message, extra []string, body string) string {
	ct := ""
	if body != "" {
		ct = "Content-Type: application/sdp\n"
	}
	msg := fmt.Sprintf("%s sip:x@%s SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.4:%d;branch=z9hG4bK-car-%s-%d;rport\nMax-Forwards: 70\nFrom: %s;tag=car-tag\nTo: %s\nCall-ID: %s\nCSeq: %d %s\nContact: <sip:carrier@%s>\n%sContent-Length: %%LEN%%\n\n%s",
		method, r.pub, r.car.addr.Port(), strings.ToLower(method), seq, invB.To().Value(), invB.From().Value(), invB.CallID().Value(), seq, method, r.car.addr, ct, body)
	if len(extra) > 0 {
		msg = addHeaders(msg, extra...)
	}
	return msg
}

// TestSessionTimerNegotiation: each leg negotiates its own timer. The pbx
// supports timers and is left as its leg's refresher; the carrier does not
// support them, so the SBC refreshes the carrier leg itself, with UPDATE
// (the carrier allows it) at half the interval, and nothing crosses to
// the pbx.
func TestSessionTimerNegotiation(t *testing.T) {
	r := newRig(t, withTimers(20*time.Second, 3*time.Second))
	r.pbx.send(r.priv, addHeaders(r.pbxInvite("st-1", "z9hG4bK-st1"), "Supported: timer", "Session-Expires: 60", "Min-SE: 5"))
	inv, raw := r.car.recv("INVITE", "SIP/2.0 100")
	assertHidden(t, raw)
	if !hasOption(inv, "Supported", "timer") || header(inv, "Session-Expires") != "3" || header(inv, "Min-SE") != "2" {
		t.Fatalf("leg B INVITE must ask for the carrier's own interval:\n%s", raw)
	}
	r.car.send(r.pub, addHeaders(answer(inv, 200, "OK", "car-tag", fmt.Sprintf("<sip:carrier@%s>", r.car.addr), carrierSDP), "Allow: INVITE, ACK, BYE, CANCEL, UPDATE"))
	r.car.recv("ACK")
	okA, rawOK := r.pbx.recv("SIP/2.0 200", "SIP/2.0 100")
	// the pbx asked for 60s; the SBC lowers it to its 20s and lets the pbx refresh
	if se := header(okA, "Session-Expires"); se != "20;refresher=uac" || !hasOption(okA, "Require", "timer") {
		t.Fatalf("leg A 200 must carry its own timer with the pbx as refresher:\n%s", rawOK)
	}
	r.pbx.send(r.priv, fmt.Sprintf("ACK sip:x@%s SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.3:%d;branch=z9hG4bK-ast1\nMax-Forwards: 70\nFrom: %s\nTo: %s\nCall-ID: st-1\nCSeq: 10 ACK\nContent-Length: 0\n\n",
		r.priv, r.pbx.addr.Port(), okA.From().Value(), okA.To().Value()))

	for i := range 2 {
		start := time.Now()
		up, rawUp := r.car.recv("UPDATE")
		if d := time.Since(start); i == 1 && (d < 1200*time.Millisecond || d > 2500*time.Millisecond) {
			t.Errorf("refresh %d after %v, want about half of 3s", i, d)
		}
		assertHidden(t, rawUp)
		if len(up.Body()) != 0 || header(up, "Session-Expires") != "3;refresher=uac" {
			t.Fatalf("refresh must be an UPDATE without SDP naming the SBC refresher:\n%s", rawUp)
		}
		if up.CallID().Value() != inv.CallID().Value() || up.(*sip.Request).Recipient.User != "carrier" {
			t.Fatalf("refresh outside leg B's dialog:\n%s", rawUp)
		}
		r.car.send(r.pub, answer(up, 200, "OK", "", "", ""))
	}
	r.pbx.expectNothing(200 * time.Millisecond)
	if st := r.srv.Status(); st.Calls != 1 {
		t.Fatalf("refreshed call must stay up: %+v", st)
	}
}

// TestSessionTimerExpirySilentPeer: the pbx promised to refresh and never
// does; before its session expires (RFC 4028 §10) the SBC ends the call
// with BYE on both legs.
func TestSessionTimerExpirySilentPeer(t *testing.T) {
	r := newRig(t, withTimers(3*time.Second, 30*time.Second))
	start := time.Now()
	r.timerCall("st-2", []string{"Supported: timer", "Session-Expires: 3;refresher=uac"},
		[]string{"Session-Expires: 30;refresher=uas", "Supported: timer", "Require: timer"})
	byeA, _ := r.pbx.recv("BYE", "SIP/2.0 200")
	if d := time.Since(start); d < 1500*time.Millisecond || d > 3*time.Second {
		t.Errorf("BYE after %v, want at 3s minus a third", d)
	}
	byeB, _ := r.car.recv("BYE", "SIP/2.0 200", "ACK")
	r.pbx.send(r.priv, answer(byeA, 200, "OK", "", "", ""))
	r.car.send(r.pub, answer(byeB, 200, "OK", "", "", ""))
	r.waitIdle()
}

// TestSessionTimerRefreshAbsorbed: the pbx's refreshes (an UPDATE without
// SDP, a re-INVITE repeating its SDP) are answered on leg A and never reach
// the carrier; they keep the call past its interval.
func TestSessionTimerRefreshAbsorbed(t *testing.T) {
	r := newRig(t, withTimers(3*time.Second, 30*time.Second))
	okA, _ := r.timerCall("st-3", []string{"Supported: timer", "Session-Expires: 3;refresher=uac"},
		[]string{"Session-Expires: 30;refresher=uas", "Supported: timer"})
	time.Sleep(1200 * time.Millisecond)
	r.pbx.send(r.priv, r.pbxInDialog("UPDATE", 11, okA, "st-3", "Session-Expires: 3;refresher=uac\nSupported: timer\n", ""))
	ok, raw := r.pbx.recv("SIP/2.0 200", "SIP/2.0 100")
	if header(ok, "Session-Expires") != "3;refresher=uac" || len(ok.Body()) != 0 {
		t.Fatalf("UPDATE refresh answered wrong:\n%s", raw)
	}
	time.Sleep(1200 * time.Millisecond)
	r.pbx.send(r.priv, r.pbxInDialog("INVITE", 12, okA, "st-3", "Session-Expires: 3;refresher=uac\nSupported: timer\n", pbxSDP))
	ok, raw = r.pbx.recv("SIP/2.0 200", "SIP/2.0 100")
	if header(ok, "Session-Expires") != "3;refresher=uac" || string(ok.Body()) != string(okA.Body()) {
		t.Fatalf("re-INVITE refresh must get the unchanged SDP back:\n%s\nfirst answer:\n%s", raw, okA.Body())
	}
	r.pbx.send(r.priv, r.pbxInDialog("ACK", 12, okA, "st-3", "", ""))
	time.Sleep(1200 * time.Millisecond)
	r.car.expectNothing(100 * time.Millisecond)
	r.pbx.expectNothing(100*time.Millisecond, "SIP/2.0 200")
	if st := r.srv.Status(); st.Calls != 1 {
		t.Fatalf("refreshed call must stay up after 3.6s of a 3s interval: %+v", st)
	}
	// a real re-offer (new SDP version) still crosses
	r.pbx.send(r.priv, r.pbxInDialog("INVITE", 13, okA, "st-3", "", strings.Replace(pbxSDP, "123 1", "123 2", 1)))
	reinv, _ := r.car.recv("INVITE", "SIP/2.0 100")
	if header(reinv, "Session-Expires") != "30;refresher=uas" {
		t.Errorf("relayed re-INVITE must carry leg B's own timer: %q", header(reinv, "Session-Expires"))
	}
}

// TestSessionTimer422: an interval below the pbx's Min-SE gets 422 with
// Min-SE; a 422 from the carrier makes the SBC send the INVITE again with
// the carrier's Min-SE, same Call-ID and From tag, higher CSeq.
func TestSessionTimer422(t *testing.T) {
	r := newRig(t, withTimers(20*time.Second, 3*time.Second))
	r.pbx.send(r.priv, addHeaders(r.pbxInvite("st-4", "z9hG4bK-st4a"), "Supported: timer", "Session-Expires: 1"))
	res, raw := r.pbx.recv("SIP/2.0 422", "SIP/2.0 100")
	if header(res, "Min-SE") != "2" {
		t.Fatalf("422 must name the pbx's Min-SE:\n%s", raw)
	}
	r.pbx.send(r.priv, addHeaders(r.pbxInvite("st-4b", "z9hG4bK-st4b"), "Supported: timer", "Session-Expires: 2"))
	inv, _ := r.car.recv("INVITE", "SIP/2.0 100")
	r.car.send(r.pub, addHeaders(answer(inv, 422, "Session Interval Too Small", "car-tag", "", ""), "Min-SE: 8"))
	r.car.recv("ACK")
	inv2, raw2 := r.car.recv("INVITE", "ACK")
	if header(inv2, "Session-Expires") != "8" || header(inv2, "Min-SE") != "8" {
		t.Fatalf("retry must ask for the carrier's Min-SE:\n%s", raw2)
	}
	if inv2.CallID().Value() != inv.CallID().Value() || inv2.From().Value() != inv.From().Value() || inv2.CSeq().SeqNo <= inv.CSeq().SeqNo {
		t.Fatalf("retry must keep Call-ID and From and raise CSeq:\n%s", raw2)
	}
	r.pbx.expectNothing(100*time.Millisecond, "SIP/2.0 100")
	r.car.send(r.pub, addHeaders(answer(inv2, 200, "OK", "car-tag2", fmt.Sprintf("<sip:carrier@%s>", r.car.addr), carrierSDP), "Session-Expires: 8;refresher=uac"))
	r.car.recv("ACK")
	okA, _ := r.pbx.recv("SIP/2.0 200", "SIP/2.0 100")
	if header(okA, "Session-Expires") != "2;refresher=uac" {
		t.Errorf("leg A keeps its own interval: %q", header(okA, "Session-Expires"))
	}
}

// TestSessionTimerRefreshByReinvite: toward a carrier that does not allow
// UPDATE the SBC refreshes with a re-INVITE repeating its last SDP; a
// refresh answered 481 ends the call on both legs.
func TestSessionTimerRefreshByReinvite(t *testing.T) {
	r := newRig(t, withTimers(20*time.Second, 2*time.Second))
	_, invB := r.timerCall("st-5", nil, nil)
	reinv, raw := r.car.recv("INVITE")
	assertHidden(t, raw)
	if string(reinv.Body()) != string(invB.Body()) || header(reinv, "Session-Expires") != "2;refresher=uac" {
		t.Fatalf("refresh re-INVITE must repeat leg B's SDP:\n%s\noriginal:\n%s", raw, invB.Body())
	}
	r.car.send(r.pub, answer(reinv, 200, "OK", "", fmt.Sprintf("<sip:carrier@%s>", r.car.addr), carrierSDP))
	ack, _ := r.car.recv("ACK")
	if ack.CSeq().SeqNo != reinv.CSeq().SeqNo {
		t.Fatalf("ACK CSeq %d for re-INVITE %d", ack.CSeq().SeqNo, reinv.CSeq().SeqNo)
	}
	reinv2, _ := r.car.recv("INVITE", "ACK")
	r.car.send(r.pub, answer(reinv2, 481, "Call Does Not Exist", "", "", ""))
	r.car.recv("ACK")
	byeA, _ := r.pbx.recv("BYE", "SIP/2.0 200")
	r.pbx.send(r.priv, answer(byeA, 200, "OK", "", "", ""))
	byeB, _ := r.car.recv("BYE", "ACK")
	r.car.send(r.pub, answer(byeB, 200, "OK", "", "", ""))
	r.waitIdle()
}

// TestSessionTimerRefreshSilentAfterTrying: the carrier answers the SBC's
// refresh re-INVITE with 100 Trying and then nothing, which stops the
// stack's Timer B. The refresh still fails after 64*T1 (shortened here),
// as a timeout (RFC 3261 §12.2.1.2), and the call ends on both legs
// instead of keeping its offer/answer slot taken and its timer stopped.
func TestSessionTimerRefreshSilentAfterTrying(t *testing.T) {
	r := newRig(t, withSilentWait(withTimers(20*time.Second, 2*time.Second)))
	r.timerCall("st-7", nil, nil)
	reinv, _ := r.car.recv("INVITE")
	r.car.send(r.pub, answer(reinv, 100, "Trying", "", "", ""))
	r.answerByes("SIP/2.0 200", "INVITE")
	r.waitIdle()
}

// TestSessionTimerPeerRefreshTooShort: a refresh asking for less than the
// peer's Min-SE is refused with 422 on its own leg.
func TestSessionTimerPeerRefreshTooShort(t *testing.T) {
	r := newRig(t, withTimers(20*time.Second, 30*time.Second))
	_, invB := r.timerCall("st-6", nil, []string{"Supported: timer", "Session-Expires: 30;refresher=uas"})
	r.car.send(r.pub, r.carInDialog("UPDATE", 3, invB, []string{"Supported: timer", "Session-Expires: 1"}, ""))
	res, raw := r.car.recv("SIP/2.0 422")
	if header(res, "Min-SE") != "2" {
		t.Fatalf("422 without the Min-SE:\n%s", raw)
	}
	r.car.send(r.pub, r.carInDialog("UPDATE", 4, invB, []string{"Supported: timer", "Session-Expires: 10;refresher=uac"}, ""))
	ok, _ := r.car.recv("SIP/2.0 200")
	if header(ok, "Session-Expires") != "10;refresher=uac" {
		t.Errorf("refresh answered with %q", header(ok, "Session-Expires"))
	}
	r.pbx.expectNothing(100 * time.Millisecond)
}

func TestReadTimer(t *testing.T) {
	for _, tt := range []struct {
		hdrs string
		want timerRequest
	}{
		{"Session-Expires: 1800;refresher=uac\nSupported: 100rel, timer\nMin-SE: 90\n", timerRequest{se: 1800 * time.Second, refresher: "uac", minSE: 90 * time.Second, supported: true}},
		{"x: 600 ; Refresher = UAS\nk: timer\n", timerRequest{se: 600 * time.Second, refresher: "uas", supported: true}},
		{"Session-Expires: soon\nMin-SE: -1\n", timerRequest{}},
		{"", timerRequest{}},
	} {
		msg, err := sip.ParseMessage([]byte("OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK-1\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:b@c>\r\nCall-ID: x\r\nCSeq: 1 OPTIONS\r\n" +
			strings.ReplaceAll(tt.hdrs, "\n", "\r\n") + "Content-Length: 0\r\n\r\n"))
		if err != nil {
			t.Fatal(err)
		}
		if got := readTimer(msg); got != tt.want {
			t.Errorf("%q: got %+v, want %+v", tt.hdrs, got, tt.want)
		}
	}
}

// FuzzDialogHeaders feeds arbitrary Session-Expires, Min-SE and Refer-To
// values through the session timer negotiation and the REFER rewriting:
// nothing may panic, a negotiated interval never falls below the peer's
// Min-SE, and a rewritten Refer-To only ever names the SBC.
func FuzzDialogHeaders(f *testing.F) {
	f.Add("1800;refresher=uac", "90", "<sip:+15559999@10.0.0.1;user=phone?Replaces=a%40b%3Bto-tag%3D1%3Bfrom-tag%3D2>")
	f.Add("1;refresher=uas", "", "sip:2002@pbx.corp.internal")
	f.Add("99999999999999999999", "-5", "<tel:+1555>")
	f.Add(";;;refresher", "4294967295", "<sip:@>;x=1")
	f.Fuzz(func(t *testing.T, se, minSE, referTo string) {
		raw := "REFER sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK-1\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:b@c>;tag=2\r\nCall-ID: x\r\nCSeq: 1 REFER\r\n" +
			"Supported: timer\r\nSession-Expires: " + se + "\r\nMin-SE: " + minSE + "\r\nRefer-To: " + referTo + "\r\nContent-Length: 0\r\n\r\n"
		msg, err := sip.ParseMessage([]byte(raw))
		if err != nil {
			return
		}
		req, ok := msg.(*sip.Request)
		if !ok {
			return
		}
		z := &zone{host: "203.0.113.1", port: 5060}
		p := &peer{cfg: PeerConfig{SessionExpires: 1800 * time.Second, MinSE: 90 * time.Second}, zone: z}
		if st, code := uasTimer(p, readTimer(req)); st != nil && (st.interval < p.minSE() || code != 0) {
			t.Fatalf("negotiated %+v (code %d) below Min-SE %v", st, code, p.minSE())
		}
		_ = uacTimer(p, 1800*time.Second, &sip.Response{})
		s := &Server{dialogs: map[dialogKey]legRef{}}
		h, err := s.rewriteReferTo(req, &zone{host: "10.0.0.1"}, z)
		if err != nil {
			return
		}
		var uri sip.Uri
		params := sip.NewParams()
		if _, err := sip.ParseAddressValue(h.Value(), &uri, &params); err != nil || uri.Host != z.host {
			t.Fatalf("rewritten Refer-To %q (%v) does not name the SBC", h.Value(), err)
		}
	})
}

// TestSessionTimerRelayed422: a re-INVITE relayed to the carrier is
// answered 422; the SBC sends it again with the carrier's Min-SE and the
// pbx only ever sees the 200.
func TestSessionTimerRelayed422(t *testing.T) {
	r := newRig(t, withTimers(20*time.Second, 30*time.Second))
	okA, _ := r.timerCall("st-7", nil, []string{"Supported: timer", "Session-Expires: 30;refresher=uas"})
	r.pbx.send(r.priv, r.pbxInDialog("INVITE", 11, okA, "st-7", "", strings.Replace(pbxSDP, "123 1", "123 2", 1)))
	reinv, _ := r.car.recv("INVITE", "SIP/2.0 100")
	r.car.send(r.pub, addHeaders(answer(reinv, 422, "Session Interval Too Small", "", "", ""), "Min-SE: 40"))
	r.car.recv("ACK")
	retry, raw := r.car.recv("INVITE", "ACK")
	if header(retry, "Session-Expires") != "40;refresher=uas" || header(retry, "Min-SE") != "40" ||
		retry.CSeq().SeqNo <= reinv.CSeq().SeqNo || string(retry.Body()) != string(reinv.Body()) {
		t.Fatalf("retry must carry the carrier's Min-SE, a new CSeq and the same offer:\n%s", raw)
	}
	r.car.send(r.pub, addHeaders(answer(retry, 200, "OK", "", fmt.Sprintf("<sip:carrier@%s>", r.car.addr), carrierSDP), "Session-Expires: 40;refresher=uas"))
	r.car.recv("ACK")
	ok, rawOK := r.pbx.recv("SIP/2.0 200", "SIP/2.0 100")
	if ok.CSeq().SeqNo != 11 || !strings.Contains(string(ok.Body()), "c=IN IP4 127.0.0.1") {
		t.Fatalf("the pbx must get the re-INVITE's 200:\n%s", rawOK)
	}
}
