package sbc

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
)

// reliable183 is the carrier's reliable 183 with SDP to leg B's INVITE.
func (r *rig) reliable183(inv sip.Message, rseq int, sdp string) string {
	return strings.Replace(answer(inv, 183, "Session Progress", "car-tag", fmt.Sprintf("<sip:carrier@%s>", r.car.addr), sdp),
		"Content-Type", fmt.Sprintf("Require: 100rel\nRSeq: %d\nContent-Type", rseq), 1)
}

// rseqOf returns the RSeq of a reliable provisional, failing the test
// when the response is not reliable.
func rseqOf(t *testing.T, res sip.Message, raw string) string {
	t.Helper()
	rs := res.GetHeaders("RSeq")
	if len(rs) != 1 || !hasOption(res, "Require", "100rel") {
		t.Fatalf("provisional must be reliable (Require: 100rel, RSeq):\n%s", raw)
	}
	return rs[0].Value()
}

// TestReliableProvisionalToCaller: a caller that supports 100rel gets the
// early media 183 reliably. It is retransmitted until PRACKed, a PRACK
// that does not match gets 481, and the 2xx waits for the PRACK (RFC 3262
// §3); leg B is PRACKed by the SBC on its own.
func TestReliableProvisionalToCaller(t *testing.T) {
	r := newRig(t, nil)
	r.pbx.send(r.priv, strings.Replace(r.pbxInvite("rp-1", "z9hG4bK-rp1"), "Subject: hello", "Supported: 100rel\nAllow: INVITE, ACK, BYE, CANCEL, PRACK, UPDATE", 1))
	inv, raw := r.car.recv("INVITE", "SIP/2.0 100")
	assertHidden(t, raw)
	r.car.send(r.pub, r.reliable183(inv, 7, carrierSDP))
	prackB, _ := r.car.recv("PRACK", "SIP/2.0 100")
	r.car.send(r.pub, answer(prackB, 200, "OK", "", "", ""))

	early, rawEarly := r.pbx.recv("SIP/2.0 183", "SIP/2.0 100")
	rseq := rseqOf(t, early, rawEarly)
	if !strings.Contains(string(early.Body()), "c=IN IP4 127.0.0.1") || strings.Contains(rawEarly, "127.0.0.4") {
		t.Fatalf("reliable 183 must carry the anchored answer and nothing of the carrier:\n%s", rawEarly)
	}
	// not PRACKed: retransmitted, same RSeq
	again, rawAgain := r.pbx.recv("SIP/2.0 183")
	if rseqOf(t, again, rawAgain) != rseq {
		t.Fatalf("retransmission with another RSeq:\n%s", rawAgain)
	}
	// the callee answers; the caller's 2xx waits for the PRACK
	r.car.send(r.pub, answer(inv, 200, "OK", "car-tag", fmt.Sprintf("<sip:carrier@%s>", r.car.addr), carrierSDP))
	r.car.recv("ACK", "SIP/2.0 200")
	r.pbx.expectNothing(700*time.Millisecond, "SIP/2.0 183")

	// a PRACK naming another RSeq does not match
	r.pbx.send(r.priv, r.pbxInDialog("PRACK", 11, early, "rp-1", fmt.Sprintf("RAck: 1%s 10 INVITE\n", rseq), ""))
	r.pbx.recv("SIP/2.0 481", "SIP/2.0 183")
	r.pbx.send(r.priv, r.pbxInDialog("PRACK", 12, early, "rp-1", fmt.Sprintf("RAck: %s 10 INVITE\n", rseq), ""))
	if res, raw := r.pbx.recv("SIP/2.0 200", "SIP/2.0 183"); res.CSeq().MethodName != sip.PRACK {
		t.Fatalf("want the PRACK's 200 first:\n%s", raw)
	}
	ok, rawOK := r.pbx.recv("SIP/2.0 200", "SIP/2.0 183")
	if ok.CSeq().MethodName != sip.INVITE || !strings.Contains(string(ok.Body()), "c=IN IP4 127.0.0.1") {
		t.Fatalf("want the INVITE's 2xx with the anchored answer after the PRACK:\n%s", rawOK)
	}
	r.pbx.send(r.priv, r.pbxInDialog("ACK", 10, ok, "rp-1", "", ""))
	// the same PRACK again is for nothing unacknowledged now
	r.pbx.send(r.priv, r.pbxInDialog("PRACK", 13, early, "rp-1", fmt.Sprintf("RAck: %s 10 INVITE\n", rseq), ""))
	r.pbx.recv("SIP/2.0 481", "SIP/2.0 200")
	r.pbx.send(r.priv, r.pbxInDialog("BYE", 14, ok, "rp-1", "", ""))
	bye, _ := r.car.recv("BYE", "ACK", "SIP/2.0 200")
	r.car.send(r.pub, answer(bye, 200, "OK", "", "", ""))
	r.pbx.recv("SIP/2.0 200", "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP pbx01")
	r.waitIdle()
}

// TestCallerRequires100rel: a caller that requires 100rel gets every
// provisional reliably, one at a time, although the callee sends them
// unreliably (100rel is terminated per leg).
func TestCallerRequires100rel(t *testing.T) {
	r := newRig(t, nil)
	r.pbx.send(r.priv, strings.Replace(r.pbxInvite("rq-1", "z9hG4bK-rq1"), "Subject: hello", "Require: 100rel", 1))
	inv, _ := r.car.recv("INVITE", "SIP/2.0 100")
	if hasOption(inv, "Require", "100rel") {
		t.Fatal("the caller's Require must not reach the callee")
	}
	r.car.send(r.pub, answer(inv, 180, "Ringing", "car-tag", "", ""))
	ring, rawRing := r.pbx.recv("SIP/2.0 180", "SIP/2.0 100")
	rseq1 := rseqOf(t, ring, rawRing)
	r.car.send(r.pub, answer(inv, 183, "Session Progress", "car-tag", fmt.Sprintf("<sip:carrier@%s>", r.car.addr), carrierSDP))
	// the 183 waits for the 180's PRACK
	r.pbx.expectNothing(300*time.Millisecond, "SIP/2.0 180")
	r.pbx.send(r.priv, r.pbxInDialog("PRACK", 11, ring, "rq-1", fmt.Sprintf("RAck: %s 10 INVITE\n", rseq1), ""))
	r.pbx.recv("SIP/2.0 200", "SIP/2.0 180")
	early, rawEarly := r.pbx.recv("SIP/2.0 183", "SIP/2.0 180")
	rseq2 := rseqOf(t, early, rawEarly)
	if rseq1 == rseq2 || !strings.Contains(string(early.Body()), "c=IN IP4 127.0.0.1") {
		t.Fatalf("second reliable provisional: RSeq %s after %s, body:\n%s", rseq2, rseq1, rawEarly)
	}
	r.pbx.send(r.priv, r.pbxInDialog("PRACK", 12, early, "rq-1", fmt.Sprintf("RAck: %s 10 INVITE\n", rseq2), ""))
	r.pbx.recv("SIP/2.0 200", "SIP/2.0 183")
	r.car.expectNothing(200 * time.Millisecond) // nothing for the callee to acknowledge
	r.car.send(r.pub, answer(inv, 200, "OK", "car-tag", fmt.Sprintf("<sip:carrier@%s>", r.car.addr), carrierSDP))
	r.car.recv("ACK", "SIP/2.0 200")
	ok, _ := r.pbx.recv("SIP/2.0 200", "SIP/2.0 183")
	if ok.CSeq().MethodName != sip.INVITE {
		t.Fatalf("want the INVITE's 2xx, got %s", ok.CSeq().Value())
	}
}

// TestLateOfferReliableOffer: an INVITE without SDP; the callee's reliable
// 183 carries the offer, the caller answers it in its PRACK, and that
// answer reaches the callee, anchored, in leg B's PRACK (RFC 3262 §5). The
// 2xx and the ACKs then carry no new offer/answer.
func TestLateOfferReliableOffer(t *testing.T) {
	r := newRig(t, nil)
	inv := r.pbxInvite("lr-1", "z9hG4bK-lr1")
	inv = inv[:strings.Index(inv, "Content-Type: application/sdp")] + "Content-Length: 0\n\n"
	r.pbx.send(r.priv, strings.Replace(inv, "Subject: hello", "Supported: 100rel", 1))
	invB, _ := r.car.recv("INVITE", "SIP/2.0 100")
	r.car.send(r.pub, r.reliable183(invB, 3, carrierSDP))
	early, rawEarly := r.pbx.recv("SIP/2.0 183", "SIP/2.0 100")
	rseq := rseqOf(t, early, rawEarly)
	if !strings.Contains(string(early.Body()), "c=IN IP4 127.0.0.1") {
		t.Fatalf("the offer must reach the caller anchored:\n%s", rawEarly)
	}
	// leg B's PRACK waits for the caller's answer
	r.car.expectNothing(300*time.Millisecond, "SIP/2.0 100")
	r.pbx.send(r.priv, r.pbxInDialog("PRACK", 11, early, "lr-1", fmt.Sprintf("RAck: %s 10 INVITE\n", rseq), pbxSDP))
	r.pbx.recv("SIP/2.0 200", "SIP/2.0 183")
	prackB, rawPrack := r.car.recv("PRACK", "SIP/2.0 100")
	assertHidden(t, rawPrack)
	if ra := prackB.GetHeaders("RAck"); len(ra) != 1 || ra[0].Value() != fmt.Sprintf("3 %d INVITE", invB.CSeq().SeqNo) {
		t.Fatalf("RAck %v", ra)
	}
	if !strings.Contains(string(prackB.Body()), "c=IN IP4 127.0.0.2") || !strings.Contains(string(prackB.Body()), "a=fmtp:101 0-16") {
		t.Fatalf("the caller's answer must reach the callee in the PRACK, anchored:\n%s", rawPrack)
	}
	r.car.send(r.pub, answer(prackB, 200, "OK", "", "", ""))
	r.car.send(r.pub, answer(invB, 200, "OK", "car-tag", fmt.Sprintf("<sip:carrier@%s>", r.car.addr), carrierSDP))
	ackB, _ := r.car.recv("ACK", "SIP/2.0 200")
	if len(ackB.Body()) != 0 {
		t.Fatalf("leg B's ACK must carry no answer after the early offer/answer:\n%s", ackB.Body())
	}
	ok, _ := r.pbx.recv("SIP/2.0 200", "SIP/2.0 183")
	if string(ok.Body()) != string(early.Body()) {
		t.Errorf("the 2xx must repeat the early offer unchanged:\n%s\nvs\n%s", ok.Body(), early.Body())
	}
	r.pbx.send(r.priv, r.pbxInDialog("ACK", 10, ok, "lr-1", "", ""))
	r.car.expectNothing(300*time.Millisecond, "SIP/2.0 200", "ACK")
	if st := r.srv.Status(); st.Calls != 1 {
		t.Fatalf("call must be up: %+v", st)
	}
}

// TestNoPrackRefusesCall: a reliable provisional never PRACKed ends the
// INVITE with 500 after 64*T1, and the callee is cancelled (RFC 3262 §3).
func TestNoPrackRefusesCall(t *testing.T) {
	if testing.Short() {
		t.Skip("waits 64*T1")
	}
	r := newRig(t, func(c *Config) { c.InviteTimeout = time.Minute })
	r.pbx.send(r.priv, strings.Replace(r.pbxInvite("np-1", "z9hG4bK-np1"), "Subject: hello", "Require: 100rel", 1))
	inv, _ := r.car.recv("INVITE", "SIP/2.0 100")
	r.car.send(r.pub, answer(inv, 180, "Ringing", "car-tag", "", ""))
	// 64*T1 is 32 s; the retransmission gaps grow past recv's bound
	buf := make([]byte, 65535)
	_ = r.pbx.conn.SetReadDeadline(time.Now().Add(40 * time.Second))
	rseqs := map[string]bool{}
	for retrans := 0; ; retrans++ {
		n, _, err := r.pbx.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			t.Fatalf("waiting for 500: %v", err)
		}
		raw := string(buf[:n])
		if strings.HasPrefix(raw, "SIP/2.0 500") {
			if retrans < 5 {
				t.Errorf("500 after %d messages, want the 180 retransmitted first", retrans)
			}
			break
		}
		if strings.HasPrefix(raw, "SIP/2.0 100") {
			continue
		}
		m, err := sip.ParseMessage(buf[:n])
		if err != nil || !strings.HasPrefix(raw, "SIP/2.0 180") {
			t.Fatalf("want 180 retransmissions, then 500:\n%s", raw)
		}
		rseqs[rseqOf(t, m, raw)] = true
	}
	if len(rseqs) != 1 {
		t.Errorf("retransmissions must repeat one RSeq: %v", rseqs)
	}
	cancel, _ := r.car.recv("CANCEL", "INVITE")
	r.car.send(r.pub, answer(cancel, 200, "OK", "car-tag", "", ""))
	r.car.send(r.pub, answer(inv, 487, "Request Terminated", "car-tag", "", ""))
	r.car.recv("ACK", "CANCEL")
	r.waitIdle()
}

// TestEarlyUpdate: the callee changes its early media with an UPDATE
// before answering. It reaches the caller, anchored, on the early dialog
// of the reliable 183, and the caller's answer goes back (RFC 3311).
func TestEarlyUpdate(t *testing.T) {
	r := newRig(t, nil)
	r.pbx.send(r.priv, strings.Replace(r.pbxInvite("eu-1", "z9hG4bK-eu1"), "Subject: hello", "Supported: 100rel\nAllow: INVITE, ACK, BYE, CANCEL, PRACK, UPDATE", 1))
	inv, _ := r.car.recv("INVITE", "SIP/2.0 100")
	r.car.send(r.pub, r.reliable183(inv, 7, carrierSDP))
	prackB, _ := r.car.recv("PRACK", "SIP/2.0 100")
	r.car.send(r.pub, answer(prackB, 200, "OK", "", "", ""))
	early, rawEarly := r.pbx.recv("SIP/2.0 183", "SIP/2.0 100")
	r.pbx.send(r.priv, r.pbxInDialog("PRACK", 11, early, "eu-1", fmt.Sprintf("RAck: %s 10 INVITE\n", rseqOf(t, early, rawEarly)), ""))
	r.pbx.recv("SIP/2.0 200", "SIP/2.0 183")

	moved := strings.Replace(strings.Replace(carrierSDP, "41000", "41002", 1), "o=carrier 9 1", "o=carrier 9 2", 1)
	up := fmt.Sprintf("UPDATE sip:x@%s SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.4:%d;branch=z9hG4bK-eu-up;rport\nMax-Forwards: 70\nFrom: %s;tag=car-tag\nTo: %s\nCall-ID: %s\nCSeq: 2 UPDATE\nContact: <sip:carrier@%s>\nContent-Type: application/sdp\nContent-Length: %%LEN%%\n\n",
		r.pub, r.car.addr.Port(), inv.To().Value(), inv.From().Value(), inv.CallID().Value(), r.car.addr) + moved
	r.car.send(r.pub, up)
	upA, rawUp := r.pbx.recv("UPDATE", "SIP/2.0 183")
	if upA.CallID().Value() != "eu-1" || !strings.Contains(string(upA.Body()), "c=IN IP4 127.0.0.1") || strings.Contains(rawUp, "127.0.0.4") {
		t.Fatalf("UPDATE must reach the caller's early dialog, anchored:\n%s", rawUp)
	}
	if tag, _ := upA.From().Params.Get("tag"); tag == "" || !strings.Contains(early.To().Value(), tag) {
		t.Fatalf("UPDATE must be in the early dialog of the 183: From %s, 183 To %s", upA.From().Value(), early.To().Value())
	}
	r.pbx.send(r.priv, answer(upA, 200, "OK", "", fmt.Sprintf("<sip:2001@pbx01.corp.internal:%d>", r.pbx.addr.Port()), pbxSDP))
	okUp, rawOKUp := r.car.recv("SIP/2.0 200", "SIP/2.0 100")
	assertHidden(t, rawOKUp)
	if okUp.CSeq().MethodName != sip.UPDATE || !strings.Contains(string(okUp.Body()), "c=IN IP4 127.0.0.2") {
		t.Fatalf("the caller's answer must reach the callee, anchored:\n%s", rawOKUp)
	}
	// an UPDATE without SDP from the caller is relayed too
	r.pbx.send(r.priv, r.pbxInDialog("UPDATE", 12, early, "eu-1", "", ""))
	upB, _ := r.car.recv("UPDATE", "SIP/2.0 200")
	if upB.CallID().Value() != inv.CallID().Value() || len(upB.Body()) != 0 {
		t.Fatalf("caller's UPDATE must reach leg B's early dialog without a body:\n%v", upB)
	}
	r.car.send(r.pub, answer(upB, 200, "OK", "", "", ""))
	r.pbx.recv("SIP/2.0 200", "SIP/2.0 183")
	// and one with an offer, re-anchored both ways
	offer := strings.Replace(pbxSDP, "o=corp 123 1", "o=corp 123 2", 1)
	r.pbx.send(r.priv, r.pbxInDialog("UPDATE", 13, early, "eu-1", "", offer))
	upB, rawUpB := r.car.recv("UPDATE", "SIP/2.0 200")
	assertHidden(t, rawUpB)
	if !strings.Contains(string(upB.Body()), "c=IN IP4 127.0.0.2") {
		t.Fatalf("caller's offer must reach leg B anchored:\n%s", rawUpB)
	}
	r.car.send(r.pub, answer(upB, 200, "OK", "", "", moved))
	okOffer, _ := r.pbx.recv("SIP/2.0 200", "SIP/2.0 183")
	if okOffer.CSeq().MethodName != sip.UPDATE || !strings.Contains(string(okOffer.Body()), "c=IN IP4 127.0.0.1") {
		t.Fatalf("callee's answer must reach the caller anchored:\n%s", okOffer.Body())
	}

	r.car.send(r.pub, answer(inv, 200, "OK", "car-tag", fmt.Sprintf("<sip:carrier@%s>", r.car.addr), ""))
	r.car.recv("ACK", "SIP/2.0 200")
	ok, _ := r.pbx.recv("SIP/2.0 200", "SIP/2.0 183")
	if ok.CSeq().MethodName != sip.INVITE || !strings.Contains(string(ok.Body()), "c=IN IP4 127.0.0.1") {
		t.Fatalf("2xx without SDP from the callee: the caller gets the SDP of the session as updated:\n%s", ok.Body())
	}
}

// TestEarlyUpdateAnsweredLocally: the caller has no early dialog to take
// an UPDATE (it did not offer 100rel), so the SBC answers the callee's
// UPDATE itself and the call goes on. An offer before the initial
// offer/answer is complete gets 500 with Retry-After (RFC 3311 §5.2).
func TestEarlyUpdateAnsweredLocally(t *testing.T) {
	r := newRig(t, nil)
	r.pbx.send(r.priv, r.pbxInvite("el-1", "z9hG4bK-el1"))
	inv, _ := r.car.recv("INVITE", "SIP/2.0 100")
	r.car.send(r.pub, answer(inv, 180, "Ringing", "car-tag", fmt.Sprintf("<sip:carrier@%s>", r.car.addr), ""))
	r.pbx.recv("SIP/2.0 180", "SIP/2.0 100")
	update := func(seq int, sdp string) string {
		ct := ""
		if sdp != "" {
			ct = "Content-Type: application/sdp\n"
		}
		return fmt.Sprintf("UPDATE sip:x@%s SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.4:%d;branch=z9hG4bK-el-%d;rport\nMax-Forwards: 70\nFrom: %s;tag=car-tag\nTo: %s\nCall-ID: %s\nCSeq: %d UPDATE\nContact: <sip:carrier@%s>\n%sContent-Length: %%LEN%%\n\n",
			r.pub, r.car.addr.Port(), seq, inv.To().Value(), inv.From().Value(), inv.CallID().Value(), seq, r.car.addr, ct) + sdp
	}
	r.car.send(r.pub, update(2, carrierSDP))
	res, _ := r.car.recv("SIP/2.0 500", "SIP/2.0 100")
	if len(res.GetHeaders("Retry-After")) != 1 {
		t.Error("500 to an early offer needs Retry-After")
	}
	r.car.send(r.pub, answer(inv, 183, "Session Progress", "car-tag", fmt.Sprintf("<sip:carrier@%s>", r.car.addr), carrierSDP))
	r.pbx.recv("SIP/2.0 183", "SIP/2.0 180")
	r.car.send(r.pub, update(3, strings.Replace(carrierSDP, "41000", "41002", 1)))
	ok, raw := r.car.recv("SIP/2.0 200", "SIP/2.0 100", "SIP/2.0 500")
	assertHidden(t, raw)
	if !strings.Contains(string(ok.Body()), "c=IN IP4 127.0.0.2") || !strings.Contains(string(ok.Body()), "PCMA") {
		t.Fatalf("local answer must be the SBC's public side of the session:\n%s", raw)
	}
	r.car.send(r.pub, update(4, ""))
	r.car.recv("SIP/2.0 200", "SIP/2.0 100")
	r.pbx.expectNothing(300*time.Millisecond, "SIP/2.0 183", "SIP/2.0 180")
	r.car.send(r.pub, answer(inv, 200, "OK", "car-tag", fmt.Sprintf("<sip:carrier@%s>", r.car.addr), strings.Replace(carrierSDP, "41000", "41002", 1)))
	r.car.recv("ACK", "SIP/2.0 200")
	r.pbx.recv("SIP/2.0 200", "SIP/2.0 183", "SIP/2.0 180")
}

// TestGlareWait: the retry wait after a 491 follows RFC 3261 §14.1.
func TestGlareWait(t *testing.T) {
	for i := 0; i < 200; i++ {
		if d := glareWait(true); d < 2100*time.Millisecond || d > 4*time.Second || d%(10*time.Millisecond) != 0 {
			t.Fatalf("owner of the Call-ID waits %v", d)
		}
		if d := glareWait(false); d < 0 || d > 2*time.Second || d%(10*time.Millisecond) != 0 {
			t.Fatalf("other side waits %v", d)
		}
	}
}

// TestPrackWithOffer: an offer in the caller's PRACK is refused with 488,
// but the PRACK still acknowledges the provisional, so the held 2xx goes.
func TestPrackWithOffer(t *testing.T) {
	r := newRig(t, nil)
	r.pbx.send(r.priv, strings.Replace(r.pbxInvite("po-1", "z9hG4bK-po1"), "Subject: hello", "Supported: 100rel", 1))
	inv, _ := r.car.recv("INVITE", "SIP/2.0 100")
	r.car.send(r.pub, answer(inv, 183, "Session Progress", "car-tag", fmt.Sprintf("<sip:carrier@%s>", r.car.addr), carrierSDP))
	early, rawEarly := r.pbx.recv("SIP/2.0 183", "SIP/2.0 100")
	rseq := rseqOf(t, early, rawEarly)
	r.car.send(r.pub, answer(inv, 200, "OK", "car-tag", fmt.Sprintf("<sip:carrier@%s>", r.car.addr), carrierSDP))
	r.car.recv("ACK", "SIP/2.0 200")
	r.pbx.send(r.priv, r.pbxInDialog("PRACK", 11, early, "po-1", fmt.Sprintf("RAck: %s 10 INVITE\n", rseq), pbxSDP))
	r.pbx.recv("SIP/2.0 488", "SIP/2.0 183")
	ok, raw := r.pbx.recv("SIP/2.0 200", "SIP/2.0 183")
	if ok.CSeq().MethodName != sip.INVITE {
		t.Fatalf("want the INVITE's 2xx:\n%s", raw)
	}
}

// TestReferBridgeGlare: the remaining party answers the SBC's bridging
// re-INVITE with 491 (its own re-INVITE crossed it). The SBC sends it again
// after the RFC 3261 §14.1 wait, as a new transaction, and the transfer
// completes.
func TestReferBridgeGlare(t *testing.T) {
	r := newRig(t, nil)
	okA, invB := r.establish("bg-1")
	r.pbx.send(r.priv, r.pbxRefer(11, okA, "bg-1", "<sip:+15559999@127.0.0.1>"))
	r.pbx.recv("SIP/2.0 202", "SIP/2.0 100")
	expectNotify(t, r.pbx, r.priv, "SIP/2.0 100 Trying", "active")
	invT, _ := r.car.recv("INVITE")
	r.car.send(r.pub, answer(invT, 200, "OK", "tgt-tag", fmt.Sprintf("<sip:target@%s>", r.car.addr), transferSDP))
	reinv, _ := r.car.recv("INVITE", "SIP/2.0 100")
	if reinv.CallID().Value() != invB.CallID().Value() {
		t.Fatalf("bridging re-INVITE on the wrong dialog: %s", reinv.CallID().Value())
	}
	r.car.send(r.pub, answer(reinv, 491, "Request Pending", "", "", ""))
	ack, _ := r.car.recv("ACK", "SIP/2.0 100")
	if ack.CallID().Value() != invB.CallID().Value() || ack.Via().Params.GetOr("branch", "") != reinv.Via().Params.GetOr("branch", "x") {
		t.Fatalf("the 491 must be ACKed in its transaction:\n%v", ack)
	}
	again, raw := r.car.recv("INVITE", "ACK")
	if again.CallID().Value() != invB.CallID().Value() || again.CSeq().SeqNo <= reinv.CSeq().SeqNo ||
		again.Via().Params.GetOr("branch", "") == reinv.Via().Params.GetOr("branch", "") || string(again.Body()) != string(reinv.Body()) {
		t.Fatalf("want the same offer again in a new transaction with a higher CSeq:\n%s", raw)
	}
	r.car.send(r.pub, answer(again, 200, "OK", "", fmt.Sprintf("<sip:carrier@%s>", r.car.addr), carrierSDP))
	acks := map[string]bool{}
	for range 2 {
		ack, _ := r.car.recv("ACK", "SIP/2.0 100")
		acks[ack.CallID().Value()] = true
	}
	if !acks[invT.CallID().Value()] || !acks[invB.CallID().Value()] {
		t.Fatalf("want ACKs on both carrier dialogs, got %v", acks)
	}
	expectNotify(t, r.pbx, r.priv, "SIP/2.0 200 OK", "terminated")
	bye, _ := r.pbx.recv("BYE", "SIP/2.0 200")
	r.pbx.send(r.priv, answer(bye, 200, "OK", "", "", ""))
	if st := r.srv.Status(); st.Calls != 1 {
		t.Fatalf("transferred call must go on: %+v", st)
	}
}

// FuzzParseRAck: any RAck value parses without panic, and what parses
// names a method and two numbers that print back to the same fields.
func FuzzParseRAck(f *testing.F) {
	for _, s := range []string{"1 10 INVITE", " 776656 1 INVITE", "1 2", "4294967296 1 INVITE", "-1 1 INVITE", "1\t1\tINVITE", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		req := sip.NewRequest(sip.PRACK, sip.Uri{Scheme: "sip", Host: "127.0.0.1"})
		req.AppendHeader(sip.NewHeader("RAck", v))
		rseq, cseq, method, ok := parseRAck(req)
		if !ok {
			return
		}
		f := strings.Fields(v)
		if len(f) != 3 || fmt.Sprint(rseq) != strings.TrimLeft(f[0], "+0") && rseq != 0 || method != f[2] {
			t.Fatalf("RAck %q parsed as %d %d %q", v, rseq, cseq, method)
		}
	})
}

// TestCancelWhileAnswerHeld: the callee answered, but the caller cancels
// before PRACKing the reliable 183 its 2xx waits for. The caller gets 487
// and the callee, whose dialog is confirmed, a BYE.
func TestCancelWhileAnswerHeld(t *testing.T) {
	r := newRig(t, nil)
	r.pbx.send(r.priv, strings.Replace(r.pbxInvite("ch-1", "z9hG4bK-ch1"), "Subject: hello", "Supported: 100rel", 1))
	inv, _ := r.car.recv("INVITE", "SIP/2.0 100")
	r.car.send(r.pub, answer(inv, 183, "Session Progress", "car-tag", fmt.Sprintf("<sip:carrier@%s>", r.car.addr), carrierSDP))
	early, rawEarly := r.pbx.recv("SIP/2.0 183", "SIP/2.0 100")
	rseqOf(t, early, rawEarly)
	r.car.send(r.pub, answer(inv, 200, "OK", "car-tag", fmt.Sprintf("<sip:carrier@%s>", r.car.addr), carrierSDP))
	r.car.recv("ACK", "SIP/2.0 200")
	r.pbx.send(r.priv, r.pbxCancel("ch-1", "z9hG4bK-ch1"))
	r.pbx.recv("SIP/2.0 200", "SIP/2.0 183")
	r.pbx.recv("SIP/2.0 487", "SIP/2.0 183")
	bye, _ := r.car.recv("BYE", "ACK", "SIP/2.0 200")
	if bye.CallID().Value() != inv.CallID().Value() {
		t.Fatalf("BYE on the wrong dialog: %s", bye.CallID().Value())
	}
	r.car.send(r.pub, answer(bye, 200, "OK", "", "", ""))
	r.pbx.expectNothing(1200*time.Millisecond, "SIP/2.0 487") // no reliable 183 after the final response
	r.waitIdle()
}
