package sbc

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/emiago/sipgo/sip"
)

// The tests in this file make one party of a transfer go silent at each
// step and check that the call still ends, or goes on only with parties
// that answer, and that everything it held is released. The SBC's wait for
// the final response to a request it sends in a dialog (64*T1, 32 s) is
// shortened (withSilentWait); nothing here asserts how long anything took.

// TestReferPassRecipientSilent: refer = "pass"; the carrier never answers
// the relayed REFER. The referrer gets 408 once the REFER's transaction
// times out, and the call ends: the carrier's dialog is gone (RFC 3261
// §12.2.1.2), so both legs get BYE and the call's media and dialogs are
// released.
func TestReferPassRecipientSilent(t *testing.T) {
	r := newRig(t, withSilentWait(withRefer(ReferPass)))
	okA, invB := r.establish("rs-1")
	r.pbx.send(r.priv, r.pbxRefer(11, okA, "rs-1", "<sip:+15559999@pbx01.corp.internal;user=phone>"))
	r.car.recv("REFER", "SIP/2.0 100")
	r.pbx.recv("SIP/2.0 408", "SIP/2.0 100")
	_, bye := r.answerByes("SIP/2.0 100", "REFER")
	if bye.CallID().Value() != invB.CallID().Value() {
		t.Errorf("BYE on the wrong carrier dialog: %s", bye.CallID().Value())
	}
	r.waitIdle()
}

// TestReferPassReferrerSilent: refer = "pass"; the carrier accepts the
// relayed REFER and reports progress, but the pbx (the referrer) never
// answers the relayed NOTIFY. The carrier gets 408 for it and the call
// ends on both legs.
func TestReferPassReferrerSilent(t *testing.T) {
	r := newRig(t, withSilentWait(withRefer(ReferPass)))
	okA, _ := r.establish("rs-2")
	r.pbx.send(r.priv, r.pbxRefer(11, okA, "rs-2", "<sip:+15559999@pbx01.corp.internal;user=phone>"))
	ref, _ := r.car.recv("REFER", "SIP/2.0 100")
	r.car.send(r.pub, answer(ref, 202, "Accepted", "", "", ""))
	r.pbx.recv("SIP/2.0 202", "SIP/2.0 100")
	r.car.send(r.pub, r.carNotify(ref, 3, "active;expires=60", "SIP/2.0 100 Trying"))
	r.pbx.recv("NOTIFY")
	r.car.recv("SIP/2.0 408", "SIP/2.0 100")
	r.answerByes("NOTIFY", "SIP/2.0 100")
	r.waitIdle()
}

// TestReferReferrerSilentTargetBusy: the SBC performs the transfer; the
// pbx (the referrer) answers none of its NOTIFYs and the target is busy.
// The call is back to its two parties, one of which no longer answers: it
// ends with BYE on both legs instead of staying up.
func TestReferReferrerSilentTargetBusy(t *testing.T) {
	r := newRig(t, withSilentWait(nil))
	_, invB := r.pbxTransfers("rs-3")
	r.pbx.recv("NOTIFY") // 100 Trying, never answered
	invT, _ := r.car.recv("INVITE")
	r.car.send(r.pub, answer(invT, 486, "Busy Here", "tgt-tag", "", ""))
	r.car.recv("ACK")
	_, bye := r.answerByes("NOTIFY", "ACK")
	if bye.CallID().Value() != invB.CallID().Value() {
		t.Errorf("BYE on the wrong carrier dialog: %s", bye.CallID().Value())
	}
	r.waitIdle()
}

// TestReferReferrerSilentTransferDone: the referrer answers none of the
// NOTIFYs but the transfer succeeds: the call goes on between the target
// and the transferee, the referrer's leg is released with a BYE once its
// last NOTIFY went unanswered, and the call still ends normally later.
func TestReferReferrerSilentTransferDone(t *testing.T) {
	r := newRig(t, withSilentWait(nil))
	_, invB := r.pbxTransfers("rs-4")
	invT, _ := r.car.recv("INVITE")
	r.car.send(r.pub, answer(invT, 200, "OK", "tgt-tag", "<sip:target@"+r.car.addr.String()+">", transferSDP))
	reinv, _ := r.car.recv("INVITE", "SIP/2.0 100")
	r.car.send(r.pub, answer(reinv, 200, "OK", "", "<sip:carrier@"+r.car.addr.String()+">", carrierSDP))
	r.car.recv("ACK")
	r.car.recv("ACK")
	answerBye(t, r.pbx, r.priv, "rs-4", "NOTIFY", "SIP/2.0 100")
	if st := r.srv.Status(); st.Calls != 1 {
		t.Fatalf("transferred call must go on: %+v", st)
	}
	// the transferee hangs up: the BYE reaches the target
	r.car.send(r.pub, r.carInDialog("BYE", 5, invB, nil, ""))
	r.car.recv("SIP/2.0 200")
	answerBye(t, r.car, r.pub, invT.CallID().Value(), "SIP/2.0 200")
	r.waitIdle()
}

// TestReferReferrerSilentWhileTargetRings: the referrer stops answering
// while the target rings. Its leg is released with a BYE and the transfer
// goes on without it, as when a referrer hangs up after the 202; when the
// target then refuses, nobody is left to go back to and the transferee
// gets BYE too.
func TestReferReferrerSilentWhileTargetRings(t *testing.T) {
	r := newRig(t, withSilentWait(nil))
	_, invB := r.pbxTransfers("rs-5")
	invT, _ := r.car.recv("INVITE")
	r.car.send(r.pub, answer(invT, 180, "Ringing", "tgt-tag", "", ""))
	bye, _ := r.pbx.recv("BYE", "NOTIFY")
	r.pbx.send(r.priv, answer(bye, 200, "OK", "", "", ""))
	if st := r.srv.Status(); st.Calls != 1 {
		t.Fatalf("the transfer must go on without the referrer: %+v", st)
	}
	r.car.send(r.pub, answer(invT, 486, "Busy Here", "tgt-tag", "", ""))
	answerBye(t, r.car, r.pub, invB.CallID().Value(), "ACK")
	r.waitIdle()
}

// TestReferTransfereeSilent: the target answers, but the transferee (the
// remaining party) sends 100 Trying to the bridging re-INVITE and then
// nothing, which stops the stack's Timer B. The SBC gives up on it all
// the same: the referrer hears 500, and every leg gets BYE.
func TestReferTransfereeSilent(t *testing.T) {
	r := newRig(t, withSilentWait(nil))
	_, invB := r.pbxTransfers("rs-6")
	expectNotify(t, r.pbx, r.priv, "SIP/2.0 100 Trying", "active")
	invT, _ := r.car.recv("INVITE")
	r.car.send(r.pub, answer(invT, 200, "OK", "tgt-tag", "<sip:target@"+r.car.addr.String()+">", transferSDP))
	reinv, _ := r.car.recv("INVITE", "SIP/2.0 100")
	if reinv.CallID().Value() != invB.CallID().Value() {
		t.Fatalf("bridging re-INVITE on the wrong dialog: %s", reinv.CallID().Value())
	}
	r.car.send(r.pub, answer(reinv, 100, "Trying", "", "", ""))

	// the final NOTIFY and the BYE run in transactions of their own and
	// may reach the referrer in either order
	for got := map[string]bool{}; !got["NOTIFY"] || !got["BYE"]; {
		m, raw := r.pbx.recv("", "SIP/2.0")
		switch m.(*sip.Request).Method {
		case sip.NOTIFY:
			if !strings.HasPrefix(string(m.Body()), "SIP/2.0 500") {
				if strings.HasPrefix(string(m.Body()), "SIP/2.0 100") {
					continue // a retransmission of the first
				}
				t.Fatalf("want the final NOTIFY with 500:\n%s", raw)
			}
			got["NOTIFY"] = true
		case sip.BYE:
			got["BYE"] = true
		default:
			t.Fatalf("unexpected at the referrer:\n%s", raw)
		}
		r.pbx.send(r.priv, answer(m, 200, "OK", "", "", ""))
	}
	byes := map[string]bool{}
	for len(byes) < 2 {
		m, _ := r.car.recv("BYE", "ACK")
		byes[m.CallID().Value()] = true
		r.car.send(r.pub, answer(m, 200, "OK", "", "", ""))
	}
	if !byes[invB.CallID().Value()] || !byes[invT.CallID().Value()] {
		t.Fatalf("want BYE on the transferee's and the target's dialogs, got %v", byes)
	}
	r.waitIdle()
}

// answerBye takes the next BYE at p (skipping the messages named in skip),
// checks that it is on dialog callID and answers it 200 from p to the SBC
// at sbc.
func answerBye(t *testing.T, p *phone, sbc netip.AddrPort, callID string, skip ...string) {
	t.Helper()
	bye, _ := p.recv("BYE", skip...)
	if got := bye.CallID().Value(); got != callID {
		t.Fatalf("BYE on the wrong dialog: %s, want %s", got, callID)
	}
	p.send(sbc, answer(bye, 200, "OK", "", "", ""))
}

// pbxTransfers sets up call id and has the pbx ask for a blind transfer of
// it to +15559999, which the SBC accepts with 202. It returns the call's
// 200 at the pbx and its INVITE at the carrier.
func (r *rig) pbxTransfers(id string) (okA, invB sip.Message) {
	r.t.Helper()
	okA, invB = r.establish(id)
	r.pbx.send(r.priv, r.pbxRefer(11, okA, id, "<sip:+15559999@127.0.0.1>"))
	r.pbx.recv("SIP/2.0 202", "SIP/2.0 100")
	return okA, invB
}
