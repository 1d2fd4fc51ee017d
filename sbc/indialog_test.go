package sbc

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
)

// pbxInDialog builds a request from the pbx within leg A's dialog.
func (r *rig) pbxInDialog(method string, seq int, okA sip.Message, callID, extra, body string) string {
	ct := ""
	if body != "" {
		ct = "Content-Type: application/sdp\n"
		if method == "INFO" {
			ct = "Content-Type: application/dtmf-relay\n"
		}
	}
	return fmt.Sprintf("%s sip:2001@%s SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.3:%d;branch=z9hG4bK-%s-%d;rport\nMax-Forwards: 70\nFrom: %s\nTo: %s\nCall-ID: %s\nCSeq: %d %s\nContact: <sip:2001@pbx01.corp.internal:%d>\n%s%sContent-Length: %%LEN%%\n\n%s",
		method, r.priv, r.pbx.addr.Port(), strings.ToLower(method), seq, okA.From().Value(), okA.To().Value(), callID, seq, method, r.pbx.addr.Port(), extra, ct, body)
}

// TestReinviteHoldAndResume: the pbx puts the call on hold and resumes it
// with re-INVITEs; each is re-anchored and relayed, and the carrier never
// sees the pbx's topology.
func TestReinviteHoldAndResume(t *testing.T) {
	r := newRig(t, nil)
	okA, _ := r.establish("ri-1")
	for i, dir := range []string{"sendonly", "sendrecv"} {
		seq := 20 + i
		offer := strings.Replace(pbxSDP, "a=sendrecv", "a="+dir, 1)
		r.pbx.send(r.priv, r.pbxInDialog("INVITE", seq, okA, "ri-1", "", offer))
		reinv, raw := r.car.recv("INVITE", "ACK", "SIP/2.0 200")
		assertHidden(t, raw)
		if !strings.Contains(string(reinv.Body()), "a="+dir) || !strings.Contains(string(reinv.Body()), "c=IN IP4 127.0.0.2") {
			t.Fatalf("re-INVITE SDP not relayed/anchored:\n%s", reinv.Body())
		}
		answerDir := map[string]string{"sendonly": "recvonly", "sendrecv": "sendrecv"}[dir]
		r.car.send(r.pub, answer(reinv, 200, "OK", "", fmt.Sprintf("<sip:carrier@%s>", r.car.addr), strings.Replace(carrierSDP, "a=sendrecv", "a="+answerDir, 1)))
		r.car.recv("ACK", "SIP/2.0 200")
		ok, _ := r.pbx.recv("SIP/2.0 200", "SIP/2.0 100", "BYE")
		if !strings.Contains(string(ok.Body()), "a="+answerDir) || !strings.Contains(string(ok.Body()), "c=IN IP4 127.0.0.1") {
			t.Fatalf("re-INVITE answer not relayed/anchored:\n%s", ok.Body())
		}
		r.pbx.send(r.priv, strings.Replace(r.pbxInDialog("ACK", seq, okA, "ri-1", "", ""), "Contact: <sip:2001@pbx01.corp.internal:"+fmt.Sprint(r.pbx.addr.Port())+">\n", "", 1))
	}
	if st := r.srv.Status(); st.Calls != 1 {
		t.Fatalf("call must survive hold/resume: %+v", st)
	}
}

// TestReinviteRejectedKeepsCall: a refused re-offer is relayed back and the
// call goes on; an INFO and an UPDATE are relayed both ways meanwhile.
func TestReinviteRejectedKeepsCall(t *testing.T) {
	r := newRig(t, nil)
	okA, invB := r.establish("rj-1")
	r.pbx.send(r.priv, r.pbxInDialog("INVITE", 30, okA, "rj-1", "", pbxSDP))
	reinv, _ := r.car.recv("INVITE", "ACK", "SIP/2.0 200")
	r.car.send(r.pub, answer(reinv, 488, "Not Here", "", "", ""))
	r.car.recv("ACK", "SIP/2.0 200")
	r.pbx.recv("SIP/2.0 488", "SIP/2.0 100", "SIP/2.0 200")

	// INFO with a DTMF body crosses with its body and type
	r.pbx.send(r.priv, r.pbxInDialog("INFO", 31, okA, "rj-1", "", "Signal=5\nDuration=160\n"))
	info, raw := r.car.recv("INFO", "SIP/2.0 200")
	assertHidden(t, raw)
	if string(info.Body()) != "Signal=5\r\nDuration=160\r\n" || info.GetHeaders("Content-Type")[0].Value() != "application/dtmf-relay" {
		t.Fatalf("INFO body or type lost:\n%s", raw)
	}
	r.car.send(r.pub, answer(info, 200, "OK", "", "", ""))
	r.pbx.recv("SIP/2.0 200")

	// the carrier refreshes the session with an UPDATE without SDP
	up := fmt.Sprintf("UPDATE sip:x@%s SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.4:%d;branch=z9hG4bK-up1;rport\nMax-Forwards: 70\nFrom: %s;tag=car-tag\nTo: %s\nCall-ID: %s\nCSeq: 5 UPDATE\nContact: <sip:carrier@%s>\nContent-Length: 0\n\n",
		r.pub, r.car.addr.Port(), invB.To().Value(), invB.From().Value(), invB.CallID().Value(), r.car.addr)
	r.car.send(r.pub, up)
	upA, _ := r.pbx.recv("UPDATE")
	if upA.CallID().Value() != "rj-1" {
		t.Fatalf("UPDATE relayed on the wrong dialog: %s", upA.CallID().Value())
	}
	r.pbx.send(r.priv, answer(upA, 200, "OK", "", "", ""))
	r.car.recv("SIP/2.0 200")
	if st := r.srv.Status(); st.Calls != 1 {
		t.Fatalf("call must survive: %+v", st)
	}
}

// TestReinviteGlare: while one re-INVITE is in progress, another one on the
// same call gets 491 (RFC 3261 §14.2).
func TestReinviteGlare(t *testing.T) {
	r := newRig(t, nil)
	okA, invB := r.establish("gl-1")
	r.pbx.send(r.priv, r.pbxInDialog("INVITE", 40, okA, "gl-1", "", pbxSDP))
	reinv, _ := r.car.recv("INVITE", "ACK", "SIP/2.0 200")
	// the carrier re-INVITEs at the same time
	cross := fmt.Sprintf("INVITE sip:x@%s SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.4:%d;branch=z9hG4bK-gl2;rport\nMax-Forwards: 70\nFrom: %s;tag=car-tag\nTo: %s\nCall-ID: %s\nCSeq: 7 INVITE\nContact: <sip:carrier@%s>\nContent-Type: application/sdp\nContent-Length: %%LEN%%\n\n",
		r.pub, r.car.addr.Port(), invB.To().Value(), invB.From().Value(), invB.CallID().Value(), r.car.addr) + carrierSDP
	r.car.send(r.pub, cross)
	r.car.recv("SIP/2.0 491", "SIP/2.0 100", "INVITE")
	r.car.send(r.pub, answer(reinv, 200, "OK", "", fmt.Sprintf("<sip:carrier@%s>", r.car.addr), carrierSDP))
	r.car.recv("ACK", "SIP/2.0 491", "SIP/2.0 200")
	r.pbx.recv("SIP/2.0 200", "SIP/2.0 100")
}

// TestLateOffer: an INVITE without SDP; the callee offers in its 2xx, the
// caller answers in the ACK, and that answer reaches the callee in leg B's
// ACK, anchored.
func TestLateOffer(t *testing.T) {
	r := newRig(t, nil)
	inv := r.pbxInvite("lo-1", "z9hG4bK-lo1")
	inv = inv[:strings.Index(inv, "Content-Type: application/sdp")] + "Content-Length: 0\n\n"
	r.pbx.send(r.priv, inv)
	invB, _ := r.car.recv("INVITE", "SIP/2.0 100")
	if len(invB.Body()) != 0 {
		t.Fatalf("late offer must stay late on leg B:\n%s", invB.Body())
	}
	r.car.send(r.pub, answer(invB, 200, "OK", "car-tag", fmt.Sprintf("<sip:carrier@%s>", r.car.addr), carrierSDP))
	okA, _ := r.pbx.recv("SIP/2.0 200", "SIP/2.0 100")
	if !strings.Contains(string(okA.Body()), "c=IN IP4 127.0.0.1") {
		t.Fatalf("offer in 2xx not anchored for the pbx:\n%s", okA.Body())
	}
	r.car.expectNothing(300*time.Millisecond, "SIP/2.0 200") // leg B's ACK waits for the answer
	ack := r.pbxInDialog("ACK", 10, okA, "lo-1", "", pbxSDP)
	r.pbx.send(r.priv, ack)
	ackB, raw := r.car.recv("ACK", "SIP/2.0 200")
	assertHidden(t, raw)
	if !strings.Contains(string(ackB.Body()), "c=IN IP4 127.0.0.2") || !strings.Contains(string(ackB.Body()), "a=fmtp:101 0-16") {
		t.Fatalf("answer in ACK not relayed and anchored:\n%s", raw)
	}
}

// TestReinviteCancelled: the sender cancels its re-INVITE; the relayed one
// is cancelled too and the call goes on.
func TestReinviteCancelled(t *testing.T) {
	r := newRig(t, nil)
	okA, _ := r.establish("rc-1")
	reinvite := r.pbxInDialog("INVITE", 50, okA, "rc-1", "", pbxSDP)
	r.pbx.send(r.priv, reinvite)
	reinv, _ := r.car.recv("INVITE", "ACK", "SIP/2.0 200")
	branch := "z9hG4bK-invite-50"
	r.pbx.send(r.priv, fmt.Sprintf("CANCEL sip:2001@%s SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.3:%d;branch=%s;rport\nMax-Forwards: 70\nFrom: %s\nTo: %s\nCall-ID: rc-1\nCSeq: 50 CANCEL\nContent-Length: 0\n\n",
		r.priv, r.pbx.addr.Port(), branch, okA.From().Value(), okA.To().Value()))
	r.pbx.recv("SIP/2.0 200", "SIP/2.0 100")
	r.pbx.recv("SIP/2.0 487", "SIP/2.0 200")
	r.carrierCancelled(reinv)
	if st := r.srv.Status(); st.Calls != 1 {
		t.Fatalf("call must survive a cancelled re-INVITE: %+v", st)
	}
	// sipgo's transaction ACKs the 487 before the call has seen it; a
	// re-INVITE arriving in between would rightly get 491
	r.waitNoUpdate()
	// and a new re-INVITE works afterwards
	r.pbx.send(r.priv, r.pbxInDialog("INVITE", 51, okA, "rc-1", "", pbxSDP))
	reinv2, _ := r.car.recv("INVITE", "ACK", "SIP/2.0 200", "SIP/2.0 487")
	r.car.send(r.pub, answer(reinv2, 200, "OK", "", fmt.Sprintf("<sip:carrier@%s>", r.car.addr), carrierSDP))
	r.car.recv("ACK", "SIP/2.0 200")
	r.pbx.recv("SIP/2.0 200", "SIP/2.0 100", "SIP/2.0 487")
}

// TestReinviteCancelledSilent: the pbx cancels a re-INVITE that the
// carrier answered only with 100 Trying, and the carrier then answers
// neither the CANCEL nor the re-INVITE. The re-INVITE's final response is
// due within 64*T1 of the CANCEL (RFC 3261 §9.1; shortened here); without
// it the carrier's dialog is gone and the call ends on both legs, instead
// of keeping its offer/answer slot taken for good.
func TestReinviteCancelledSilent(t *testing.T) {
	r := newRig(t, withSilentWait(nil))
	okA, _ := r.establish("rc-2")
	r.pbx.send(r.priv, r.pbxInDialog("INVITE", 50, okA, "rc-2", "", pbxSDP))
	reinv, _ := r.car.recv("INVITE", "ACK", "SIP/2.0 200")
	r.car.send(r.pub, answer(reinv, 100, "Trying", "", "", ""))
	r.pbx.send(r.priv, fmt.Sprintf("CANCEL sip:2001@%s SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.3:%d;branch=z9hG4bK-invite-50;rport\nMax-Forwards: 70\nFrom: %s\nTo: %s\nCall-ID: rc-2\nCSeq: 50 CANCEL\nContent-Length: 0\n\n",
		r.priv, r.pbx.addr.Port(), okA.From().Value(), okA.To().Value()))
	r.pbx.recv("SIP/2.0 200", "SIP/2.0 100")
	r.pbx.recv("SIP/2.0 487", "SIP/2.0 200")
	r.car.recv("CANCEL", "INVITE")
	r.answerByes("SIP/2.0", "CANCEL", "INVITE")
	r.waitIdle()
}

// TestReinviteRingingTimeout: the carrier answers a relayed re-INVITE
// with 180 Ringing and then nothing, and the pbx never cancels it. A
// provisional stops Timer B, so the invite timeout (shortened here) bounds
// the wait: the carrier gets a CANCEL, its 487 goes to the pbx, and the
// call and its session stay as they were (RFC 3261 §14.1): a later
// re-INVITE works and a BYE ends the call normally.
func TestReinviteRingingTimeout(t *testing.T) {
	r := newRig(t, func(c *Config) { c.InviteTimeout = 300 * time.Millisecond })
	okA, _ := r.establish("rt-1")
	r.pbx.send(r.priv, r.pbxInDialog("INVITE", 50, okA, "rt-1", "", pbxSDP))
	reinv, _ := r.car.recv("INVITE", "ACK", "SIP/2.0 200")
	r.car.send(r.pub, answer(reinv, 180, "Ringing", "", "", ""))
	r.pbx.recv("SIP/2.0 180", "SIP/2.0 100")
	r.carrierCancelled(reinv)
	final, _ := r.pbx.recv("SIP/2.0 487", "SIP/2.0 100", "SIP/2.0 180")
	if final.CSeq().SeqNo != 50 {
		t.Fatalf("487 for CSeq %d, want the re-INVITE's 50", final.CSeq().SeqNo)
	}
	r.waitNoUpdate()
	if st := r.srv.Status(); st.Calls != 1 {
		t.Fatalf("call must survive an unanswered re-INVITE: %+v", st)
	}
	// the offer/answer slot is free again and the session goes on
	r.pbx.send(r.priv, r.pbxInDialog("INVITE", 51, okA, "rt-1", "", pbxSDP))
	reinv2, _ := r.car.recv("INVITE", "ACK", "SIP/2.0 200", "CANCEL")
	r.car.send(r.pub, answer(reinv2, 200, "OK", "", fmt.Sprintf("<sip:carrier@%s>", r.car.addr), carrierSDP))
	r.car.recv("ACK", "SIP/2.0 200", "CANCEL")
	r.pbx.recv("SIP/2.0 200", "SIP/2.0 100", "SIP/2.0 487")
	r.pbx.send(r.priv, r.pbxInDialog("ACK", 51, okA, "rt-1", "", ""))
	r.waitNoUpdate()
	r.pbx.send(r.priv, r.pbxInDialog("BYE", 52, okA, "rt-1", "", ""))
	bye, _ := r.car.recv("BYE", "ACK", "SIP/2.0 200", "CANCEL")
	r.car.send(r.pub, answer(bye, 200, "OK", "", "", ""))
	for i := 0; ; i++ { // skipping a 200 for the re-INVITE sent before its ACK came
		res, _ := r.pbx.recv("SIP/2.0 200", "SIP/2.0 100", "SIP/2.0 487")
		if res.CSeq().MethodName == sip.BYE {
			break
		}
		if i == 3 {
			t.Fatalf("no 200 for the BYE, last:\n%s", res)
		}
	}
	r.waitIdle()
}

// TestReinviteRingingTimeoutSilent: as TestReinviteRingingTimeout, but the
// carrier answers neither the CANCEL nor the re-INVITE: 64*T1 after the
// CANCEL (shortened here) the pbx gets 408 and the call ends on both legs,
// as for any relayed request that times out.
func TestReinviteRingingTimeoutSilent(t *testing.T) {
	r := newRig(t, withSilentWait(func(c *Config) { c.InviteTimeout = 300 * time.Millisecond }))
	okA, _ := r.establish("rt-2")
	r.pbx.send(r.priv, r.pbxInDialog("INVITE", 50, okA, "rt-2", "", pbxSDP))
	reinv, _ := r.car.recv("INVITE", "ACK", "SIP/2.0 200")
	r.car.send(r.pub, answer(reinv, 100, "Trying", "", "", ""))
	r.car.recv("CANCEL", "INVITE")
	r.pbx.recv("SIP/2.0 408", "SIP/2.0 100", "SIP/2.0 200")
	r.answerByes("SIP/2.0", "CANCEL", "INVITE")
	r.waitIdle()
}

// TestReliableProvisional: the callee sends a reliable 183 with SDP; the
// SBC PRACKs it on leg B itself and relays it to the caller unreliably,
// anchored (RFC 3262, terminated per leg).
func TestReliableProvisional(t *testing.T) {
	r := newRig(t, nil)
	r.pbx.send(r.priv, r.pbxInvite("rel-1", "z9hG4bK-rel1"))
	inv, _ := r.car.recv("INVITE", "SIP/2.0 100")
	if s := inv.GetHeaders("Supported"); len(s) == 0 || !strings.Contains(s[0].Value(), "100rel") {
		t.Fatalf("leg B must offer 100rel: %v", s)
	}
	rel := strings.Replace(answer(inv, 183, "Session Progress", "car-tag", fmt.Sprintf("<sip:carrier@%s>", r.car.addr), carrierSDP),
		"Content-Type", "Require: 100rel\nRSeq: 7\nContent-Type", 1)
	r.car.send(r.pub, rel)
	prack, _ := r.car.recv("PRACK", "SIP/2.0 100")
	if ra := prack.GetHeaders("RAck"); len(ra) != 1 || ra[0].Value() != fmt.Sprintf("7 %d INVITE", inv.CSeq().SeqNo) {
		t.Fatalf("RAck %v", ra)
	}
	if prack.(*sip.Request).Recipient.User != "carrier" {
		t.Errorf("PRACK must target the early dialog's Contact: %s", prack.(*sip.Request).Recipient.String())
	}
	r.car.send(r.pub, answer(prack, 200, "OK", "", "", ""))
	early, raw := r.pbx.recv("SIP/2.0 183", "SIP/2.0 100")
	if strings.Contains(raw, "100rel") || len(early.GetHeaders("RSeq")) != 0 || !strings.Contains(string(early.Body()), "c=IN IP4 127.0.0.1") {
		t.Fatalf("183 to the caller must be unreliable and anchored:\n%s", raw)
	}
	// a retransmission of the same reliable 183 is not PRACKed or relayed twice
	r.car.send(r.pub, rel)
	r.car.expectNothing(300*time.Millisecond, "SIP/2.0 200")
	r.car.send(r.pub, answer(inv, 200, "OK", "car-tag", fmt.Sprintf("<sip:carrier@%s>", r.car.addr), carrierSDP))
	r.car.recv("ACK", "SIP/2.0 200")
	r.pbx.recv("SIP/2.0 200", "SIP/2.0 183", "SIP/2.0 100")
}

// waitNoUpdate waits until no call has an offer/answer in progress.
func (r *rig) waitNoUpdate() {
	r.t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		// the call lock is never taken under the server's (end takes
		// them the other way round)
		r.srv.mu.RLock()
		calls := make([]*Call, 0, len(r.srv.calls))
		for _, c := range r.srv.calls {
			calls = append(calls, c)
		}
		r.srv.mu.RUnlock()
		busy := false
		for _, c := range calls {
			c.mu.Lock()
			busy = busy || c.update != nil
			c.mu.Unlock()
		}
		if !busy {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	r.t.Fatal("offer/answer still in progress")
}

// carrierCancelled has the carrier take the CANCEL of the relayed
// re-INVITE reinv (on its branch), answer it 200 and the re-INVITE 487,
// and take the ACK of the 487.
func (r *rig) carrierCancelled(reinv sip.Message) {
	r.t.Helper()
	cancel, _ := r.car.recv("CANCEL", "INVITE")
	if cancel.Via().Params.GetOr("branch", "") != reinv.Via().Params.GetOr("branch", "x") {
		r.t.Error("CANCEL must carry the relayed re-INVITE's branch")
	}
	r.car.send(r.pub, answer(cancel, 200, "OK", "", "", ""))
	r.car.send(r.pub, answer(reinv, 487, "Request Terminated", "", "", ""))
	r.car.recv("ACK", "SIP/2.0 200", "CANCEL")
}
