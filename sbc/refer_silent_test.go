package sbc

import (
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
)

// The tests in this file make one party of a transfer go silent at each
// step and check that the call still ends, or goes on only with parties
// that answer, and that everything it held is released. The SBC's wait for
// the final response to a request it sends in a dialog (64*T1, 32 s) is
// shortened to silentWait; nothing here asserts how long anything took.

// silentWait stands for 64*T1 in these tests.
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
