package sbc

import (
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
)

const transferSDP = `v=0
o=carrier 77 1 IN IP4 127.0.0.4
s=-
c=IN IP4 127.0.0.4
t=0 0
m=audio 42000 RTP/AVP 8
a=rtpmap:8 PCMA/8000
a=sendrecv
`

func withRefer(mode ReferMode) func(*Config) {
	return func(c *Config) { c.Peers[0].Refer = mode }
}

// pbxRefer is a REFER from the pbx on leg A of call callID.
func (r *rig) pbxRefer(seq int, okA sip.Message, callID, referTo string) string {
	return r.pbxInDialog("REFER", seq, okA, callID, "Refer-To: "+referTo+"\nReferred-By: <sip:2001@corp.internal>\n", "")
}

// expectNotify receives a NOTIFY of the refer subscription on p, checks
// its sipfrag and state and answers it.
func expectNotify(t *testing.T, p *phone, to interface{ String() string }, frag, state string) sip.Message {
	t.Helper()
	n, raw := p.recv("NOTIFY", "SIP/2.0 100", "SIP/2.0 200", "SIP/2.0 202")
	if header(n, "Event") != "refer" || !strings.HasPrefix(header(n, "Subscription-State"), state) ||
		!strings.HasPrefix(header(n, "Content-Type"), "message/sipfrag") || !strings.HasPrefix(string(n.Body()), frag) {
		t.Fatalf("want NOTIFY %q (%s):\n%s", frag, state, raw)
	}
	p.send(mustAddrPort(to.String()), answer(n, 200, "OK", "", "", ""))
	return n
}

// TestReferTerminateBlind: the pbx transfers the carrier to another
// number. The SBC accepts the REFER, calls the target (routed like a call
// from the pbx: to the trunk), reports progress in NOTIFYs, bridges the
// target to the carrier's leg with a re-INVITE re-anchoring the media,
// then releases the pbx's leg. The transferred call then ends normally.
func TestReferTerminateBlind(t *testing.T) {
	r := newRig(t, nil)
	_, invB := r.pbxTransfers("rf-1")
	expectNotify(t, r.pbx, r.priv, "SIP/2.0 100 Trying", "active")

	invT, raw := r.car.recv("INVITE")
	assertHidden(t, raw)
	reqT := invT.(*sip.Request)
	if reqT.Recipient.User != "+15559999" || invT.CallID().Value() == invB.CallID().Value() || len(invT.Body()) != 0 {
		t.Fatalf("new leg must call the target in a new dialog without an offer:\n%s", raw)
	}
	if invT.From().Address.User != "+15551234" {
		t.Errorf("the target must see the transferee as caller: %s", invT.From().Value())
	}
	r.car.send(r.pub, answer(invT, 180, "Ringing", "tgt-tag", "", ""))
	expectNotify(t, r.pbx, r.priv, "SIP/2.0 180 Ringing", "active")
	r.car.send(r.pub, answer(invT, 200, "OK", "tgt-tag", fmt.Sprintf("<sip:target@%s>", r.car.addr), transferSDP))

	reinv, raw := r.car.recv("INVITE", "SIP/2.0 100")
	assertHidden(t, raw)
	if reinv.CallID().Value() != invB.CallID().Value() || !strings.Contains(string(reinv.Body()), "c=IN IP4 127.0.0.2") ||
		strings.Contains(string(reinv.Body()), "42000") {
		t.Fatalf("remaining leg must get the target's offer re-anchored:\n%s", raw)
	}
	r.car.send(r.pub, answer(reinv, 200, "OK", "", fmt.Sprintf("<sip:carrier@%s>", r.car.addr), carrierSDP))
	acks := map[string]sip.Message{}
	for range 2 {
		ack, _ := r.car.recv("ACK", "SIP/2.0 100")
		acks[ack.CallID().Value()] = ack
	}
	ackT := acks[invT.CallID().Value()]
	if ackT == nil || acks[invB.CallID().Value()] == nil {
		t.Fatalf("want ACKs on both carrier dialogs, got %v", acks)
	}
	if !strings.Contains(string(ackT.Body()), "c=IN IP4 127.0.0.2") || strings.Contains(string(ackT.Body()), "41000") {
		t.Fatalf("target must get the remaining party's answer re-anchored:\n%s", ackT.Body())
	}
	expectNotify(t, r.pbx, r.priv, "SIP/2.0 200 OK", "terminated")
	bye, _ := r.pbx.recv("BYE", "SIP/2.0 200")
	r.pbx.send(r.priv, answer(bye, 200, "OK", "", "", ""))
	if st := r.srv.Status(); st.Calls != 1 {
		t.Fatalf("transferred call must go on: %+v", st)
	}

	// the target hangs up: the BYE reaches the transferee's leg
	r.car.send(r.pub, fmt.Sprintf("BYE sip:x@%s SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.4:%d;branch=z9hG4bK-tbye\nMax-Forwards: 70\nFrom: %s;tag=tgt-tag\nTo: %s\nCall-ID: %s\nCSeq: 2 BYE\nContent-Length: 0\n\n",
		r.pub, r.car.addr.Port(), invT.To().Value(), invT.From().Value(), invT.CallID().Value()))
	r.car.recv("SIP/2.0 200")
	answerBye(t, r.car, r.pub, invB.CallID().Value(), "SIP/2.0 200")
	r.pbx.expectNothing(200 * time.Millisecond)
	r.waitIdle()
}

// TestReferTargetBusy: the target refuses; the referrer hears it in the
// final NOTIFY and the original call goes on untouched.
func TestReferTargetBusy(t *testing.T) {
	r := newRig(t, nil)
	okA, _ := r.establish("rf-2")
	r.pbx.send(r.priv, r.pbxRefer(11, okA, "rf-2", "<sip:+15559999@127.0.0.1>"))
	r.pbx.recv("SIP/2.0 202", "SIP/2.0 100")
	expectNotify(t, r.pbx, r.priv, "SIP/2.0 100 Trying", "active")
	invT, _ := r.car.recv("INVITE")
	r.car.send(r.pub, answer(invT, 486, "Busy Here", "tgt-tag", "", ""))
	r.car.recv("ACK")
	expectNotify(t, r.pbx, r.priv, "SIP/2.0 486 Busy Here", "terminated")
	r.car.expectNothing(200 * time.Millisecond)
	// the call is as it was: a re-INVITE from the pbx still crosses
	r.pbx.send(r.priv, r.pbxInDialog("INVITE", 12, okA, "rf-2", "", strings.Replace(pbxSDP, "123 1", "123 2", 1)))
	reinv, _ := r.car.recv("INVITE", "SIP/2.0 100")
	r.car.send(r.pub, answer(reinv, 200, "OK", "", fmt.Sprintf("<sip:carrier@%s>", r.car.addr), carrierSDP))
	r.car.recv("ACK")
	r.pbx.recv("SIP/2.0 200", "SIP/2.0 100")
}

// TestReferReferrerLeavesThenTargetFails: the referrer hangs up right after
// the 202, as transferors do; the transfer goes on, and when the target
// does not answer the remaining party is hung up.
func TestReferReferrerLeavesThenTargetFails(t *testing.T) {
	r := newRig(t, nil)
	okA, invB := r.pbxTransfers("rf-3")
	r.pbx.send(r.priv, r.pbxInDialog("BYE", 12, okA, "rf-3", "", ""))
	r.pbx.recv("SIP/2.0 200", "NOTIFY")
	invT, _ := r.car.recv("INVITE")
	r.car.send(r.pub, answer(invT, 404, "Not Found", "tgt-tag", "", ""))
	answerBye(t, r.car, r.pub, invB.CallID().Value(), "ACK")
	r.pbx.expectNothing(200*time.Millisecond, "NOTIFY")
	r.waitIdle()
}

// TestReferRemainingPartyHangsUpWhileTargetRings: the transferee leaves
// during the transfer; the ringing target is cancelled and everything is
// released.
func TestReferRemainingPartyHangsUpWhileTargetRings(t *testing.T) {
	r := newRig(t, nil)
	_, invB := r.pbxTransfers("rf-4")
	invT, _ := r.car.recv("INVITE")
	r.car.send(r.pub, answer(invT, 180, "Ringing", "tgt-tag", "", ""))
	r.car.send(r.pub, r.carInDialog("BYE", 5, invB, nil, ""))
	r.car.recv("SIP/2.0 200", "SIP/2.0 100")
	cancel, _ := r.car.recv("CANCEL", "SIP/2.0 200")
	r.car.send(r.pub, answer(cancel, 200, "OK", "", "", ""))
	r.car.send(r.pub, answer(invT, 487, "Request Terminated", "tgt-tag", "", ""))
	bye, _ := r.pbx.recv("BYE", "NOTIFY", "SIP/2.0 200")
	r.pbx.send(r.priv, answer(bye, 200, "OK", "", "", ""))
	r.waitIdle()
}

// TestReferReject: refer = "reject" answers 603 and the call goes on.
func TestReferReject(t *testing.T) {
	r := newRig(t, withRefer(ReferReject))
	okA, _ := r.establish("rf-5")
	r.pbx.send(r.priv, r.pbxRefer(11, okA, "rf-5", "<sip:+15559999@127.0.0.1>"))
	r.pbx.recv("SIP/2.0 603", "SIP/2.0 100")
	r.car.expectNothing(200 * time.Millisecond)
	if st := r.srv.Status(); st.Calls != 1 {
		t.Fatalf("call must go on: %+v", st)
	}
}

// TestReferPass: refer = "pass" relays the REFER with its Refer-To pointing
// at the SBC in the carrier's zone, Referred-By reduced to the number, a
// Replaces naming another call the SBC knows mapped to that call's carrier
// dialog; the carrier's NOTIFYs come back to the pbx.
func TestReferPass(t *testing.T) {
	r := newRig(t, withRefer(ReferPass))
	okA, _ := r.establish("rf-6")
	okA2, invB2 := r.establish("rf-7")
	replaces := url.QueryEscape(fmt.Sprintf("rf-7;to-tag=%s;from-tag=pbx-tag-1", okA2.To().Params.GetOr("tag", "")))
	r.pbx.send(r.priv, r.pbxRefer(11, okA, "rf-6", fmt.Sprintf("<sip:+15559999@pbx01.corp.internal:5060;user=phone?Replaces=%s>", replaces)))
	ref, raw := r.car.recv("REFER", "SIP/2.0 100")
	assertHidden(t, raw)
	var uri sip.Uri
	params := sip.NewParams()
	if _, err := sip.ParseAddressValue(header(ref, "Refer-To"), &uri, &params); err != nil {
		t.Fatalf("relayed Refer-To unparsable: %v\n%s", err, raw)
	}
	if uri.User != "+15559999" || uri.Host != "127.0.0.2" || uri.Port != int(r.pub.Port()) {
		t.Errorf("Refer-To must point at the SBC's public address: %s", uri.String())
	}
	rep, _ := uri.Headers.Get("Replaces")
	rep, _ = url.QueryUnescape(rep)
	want := fmt.Sprintf("%s;to-tag=%s;from-tag=car-tag", invB2.CallID().Value(), invB2.From().Params.GetOr("tag", ""))
	if rep != want {
		t.Errorf("Replaces %q, want the carrier dialog of the replaced call %q", rep, want)
	}
	if rb := header(ref, "Referred-By"); !strings.Contains(rb, "2001@127.0.0.2") {
		t.Errorf("Referred-By %q: want the number at the SBC's host", rb)
	}
	r.car.send(r.pub, answer(ref, 202, "Accepted", "", "", ""))
	r.pbx.recv("SIP/2.0 202", "SIP/2.0 100")
	inv := ref.(*sip.Request)
	notify := fmt.Sprintf("NOTIFY sip:x@%s SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.4:%d;branch=z9hG4bK-nt1\nMax-Forwards: 70\nFrom: %s\nTo: %s\nCall-ID: %s\nCSeq: 3 NOTIFY\nEvent: refer\nSubscription-State: terminated;reason=noresource\nContent-Type: message/sipfrag;version=2.0\nContent-Length: %%LEN%%\n\nSIP/2.0 200 OK\n",
		r.pub, r.car.addr.Port(), inv.To().Value(), inv.From().Value(), inv.CallID().Value())
	r.car.send(r.pub, notify)
	n, rawN := r.pbx.recv("NOTIFY")
	if !strings.HasPrefix(string(n.Body()), "SIP/2.0 200 OK") || header(n, "Event") != "refer" {
		t.Fatalf("NOTIFY not relayed with its sipfrag:\n%s", rawN)
	}
	r.pbx.send(r.priv, answer(n, 200, "OK", "", "", ""))
	r.car.recv("SIP/2.0 200")

	// a Replaces naming a dialog the SBC does not know is dropped
	r.pbx.send(r.priv, r.pbxRefer(12, okA, "rf-6", "<sip:+15559999@127.0.0.1?Replaces=nope%3Bto-tag%3D1%3Bfrom-tag%3D2>"))
	ref2, raw2 := r.car.recv("REFER", "SIP/2.0 100")
	if strings.Contains(header(ref2, "Refer-To"), "Replaces") {
		t.Errorf("unknown Replaces must be dropped:\n%s", raw2)
	}
	r.car.send(r.pub, answer(ref2, 202, "Accepted", "", "", ""))
	r.pbx.recv("SIP/2.0 202", "SIP/2.0 100")
}

// TestReferMalformed: a REFER without a usable Refer-To gets 400.
func TestReferMalformed(t *testing.T) {
	r := newRig(t, nil)
	okA, _ := r.establish("rf-8")
	r.pbx.send(r.priv, r.pbxRefer(11, okA, "rf-8", "<tel:+15559999>"))
	r.pbx.recv("SIP/2.0 400", "SIP/2.0 100")
	r.car.expectNothing(200 * time.Millisecond)
}

// TestReferAttended: the pbx has two calls to the carrier and connects
// their far ends with a REFER whose Refer-To replaces its second call. The
// SBC takes the second call's carrier leg over, asks it for an offer with a
// re-INVITE without SDP, bridges it to the first call's carrier leg, ends
// both pbx legs and reports success to the referrer.
func TestReferAttended(t *testing.T) {
	r := newRig(t, nil)
	okA, invB := r.establish("at-1")
	okA2, invB2 := r.establish("at-2")
	time.Sleep(50 * time.Millisecond) // the second call's ACK first
	replaces := url.QueryEscape(fmt.Sprintf("at-2;to-tag=%s;from-tag=pbx-tag-1", okA2.To().Params.GetOr("tag", "")))
	r.pbx.send(r.priv, r.pbxRefer(11, okA, "at-1", fmt.Sprintf("<sip:x@127.0.0.1?Replaces=%s>", replaces)))
	r.pbx.recv("SIP/2.0 202", "SIP/2.0 100")

	// the second call's pbx leg is released at once, the referrer hears 100
	for got := map[string]bool{}; !got["BYE"] || !got["NOTIFY"]; {
		m, raw := r.pbx.recv("", "SIP/2.0")
		req := m.(*sip.Request)
		switch {
		case req.Method == sip.BYE && m.CallID().Value() == "at-2":
			got["BYE"] = true
		case req.Method == sip.NOTIFY && strings.HasPrefix(string(m.Body()), "SIP/2.0 100"):
			got["NOTIFY"] = true
		default:
			t.Fatalf("unexpected at the pbx:\n%s", raw)
		}
		r.pbx.send(r.priv, answer(m, 200, "OK", "", "", ""))
	}

	offerReq, raw := r.car.recv("INVITE", "SIP/2.0 100")
	if offerReq.CallID().Value() != invB2.CallID().Value() || len(offerReq.Body()) != 0 {
		t.Fatalf("want a re-INVITE without SDP on the second carrier dialog:\n%s", raw)
	}
	r.car.send(r.pub, answer(offerReq, 200, "OK", "", fmt.Sprintf("<sip:carrier@%s>", r.car.addr), transferSDP))
	bridge, raw := r.car.recv("INVITE", "SIP/2.0 100")
	assertHidden(t, raw)
	if bridge.CallID().Value() != invB.CallID().Value() || !strings.Contains(string(bridge.Body()), "c=IN IP4 127.0.0.2") {
		t.Fatalf("want the offer re-anchored on the first carrier dialog:\n%s", raw)
	}
	r.car.send(r.pub, answer(bridge, 200, "OK", "", fmt.Sprintf("<sip:carrier@%s>", r.car.addr), carrierSDP))
	acks := map[string]sip.Message{}
	for range 2 {
		ack, _ := r.car.recv("ACK", "SIP/2.0 100")
		acks[ack.CallID().Value()] = ack
	}
	if a := acks[invB2.CallID().Value()]; a == nil || !strings.Contains(string(a.Body()), "c=IN IP4 127.0.0.2") {
		t.Fatalf("the taken-over dialog must get the answer in its ACK: %v", acks)
	}
	expectNotify(t, r.pbx, r.priv, "SIP/2.0 200 OK", "terminated")
	answerBye(t, r.pbx, r.priv, "at-1", "SIP/2.0 200")
	if st := r.srv.Status(); st.Calls != 1 {
		t.Fatalf("one bridged call must remain: %+v", st)
	}

	// the taken-over party hangs up: the BYE reaches the other carrier leg
	r.car.send(r.pub, fmt.Sprintf("BYE sip:x@%s SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.4:%d;branch=z9hG4bK-atbye\nMax-Forwards: 70\nFrom: %s;tag=car-tag\nTo: %s\nCall-ID: %s\nCSeq: 9 BYE\nContent-Length: 0\n\n",
		r.pub, r.car.addr.Port(), invB2.To().Value(), invB2.From().Value(), invB2.CallID().Value()))
	r.car.recv("SIP/2.0 200")
	answerBye(t, r.car, r.pub, invB.CallID().Value(), "SIP/2.0 200")
	r.waitIdle()
}

// TestReferAttendedUnknownDialog: a Replaces naming no dialog of the SBC
// gets 481 and the call goes on.
func TestReferAttendedUnknownDialog(t *testing.T) {
	r := newRig(t, nil)
	okA, _ := r.establish("at-3")
	r.pbx.send(r.priv, r.pbxRefer(11, okA, "at-3", "<sip:x@127.0.0.1?Replaces=nope%3Bto-tag%3D1%3Bfrom-tag%3D2>"))
	r.pbx.recv("SIP/2.0 481", "SIP/2.0 100")
	r.car.expectNothing(200 * time.Millisecond)
}

// carNotify is a NOTIFY of the refer subscription that the REFER ref,
// relayed to the carrier, created: sent back by the carrier in ref's
// dialog with sipfrag frag and Subscription-State state.
func (r *rig) carNotify(ref sip.Message, seq int, state, frag string) string {
	return fmt.Sprintf("NOTIFY sip:x@%s SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.4:%d;branch=z9hG4bK-nt-%d\nMax-Forwards: 70\nFrom: %s\nTo: %s\nCall-ID: %s\nCSeq: %d NOTIFY\nEvent: refer\nSubscription-State: %s\nContent-Type: message/sipfrag;version=2.0\nContent-Length: %%LEN%%\n\n%s\n",
		r.pub, r.car.addr.Port(), seq, ref.To().Value(), ref.From().Value(), ref.CallID().Value(), seq, state, frag)
}

// TestReferPassNotifyAfterAccepted: the recipient of a relayed REFER may
// send its first NOTIFY before its 202 reaches the SBC (RFC 6665
// §4.1.2.4), and even when the two arrive in order the SBC handles them
// in separate goroutines. The referrer still gets the 202 first, then the
// NOTIFY: a NOTIFY of the refer subscription waits for the final response
// to the REFER relayed onto its leg. Referrers that expect that order
// (SIPp's scenarios among them) drop the call otherwise.
func TestReferPassNotifyAfterAccepted(t *testing.T) {
	r := newRig(t, withRefer(ReferPass))
	okA, _ := r.establish("rp-1")
	r.pbx.send(r.priv, r.pbxRefer(11, okA, "rp-1", "<sip:+15559999@pbx01.corp.internal;user=phone>"))
	ref, _ := r.car.recv("REFER", "SIP/2.0 100")
	r.car.send(r.pub, r.carNotify(ref, 3, "active;expires=60", "SIP/2.0 100 Trying"))
	// not an assertion: time for an SBC that relays the NOTIFY at once to
	// do so, so that the order checked below is not left to chance
	time.Sleep(100 * time.Millisecond)
	r.car.send(r.pub, answer(ref, 202, "Accepted", "", "", ""))
	r.pbx.recv("SIP/2.0 202", "SIP/2.0 100")
	n, raw := r.pbx.recv("NOTIFY", "SIP/2.0 100")
	if !strings.HasPrefix(string(n.Body()), "SIP/2.0 100 Trying") || header(n, "Event") != "refer" {
		t.Fatalf("NOTIFY not relayed with its sipfrag:\n%s", raw)
	}
	r.pbx.send(r.priv, answer(n, 200, "OK", "", "", ""))
	r.car.recv("SIP/2.0 200")
	if st := r.srv.Status(); st.Calls != 1 {
		t.Fatalf("call must go on: %+v", st)
	}
}
