package sbc

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// TestInviteRetransmissionsOutliveTransaction: sipgo ends an answered
// INVITE's transaction acceptedLinger after the 2xx. The SBC still
// retransmits its 2xx until the ACK, over the INVITE's own connection, and
// a copy of the INVITE arriving after the transaction ended neither starts
// a second call nor reaches the carrier.
func TestInviteRetransmissionsOutliveTransaction(t *testing.T) {
	r := newRig(t, nil)
	const callID, branch = "rt-1", "z9hG4bK-rt1"
	r.pbx.send(r.priv, r.pbxInvite(callID, branch))
	inv, _ := r.car.recv("INVITE", "SIP/2.0 100")
	r.car.send(r.pub, answer(inv, 200, "OK", "car-tag", fmt.Sprintf("<sip:carrier@%s>", r.car.addr), carrierSDP))
	r.car.recv("ACK")

	// no ACK from the pbx: the 200 comes again at T1, 2×T1, 4×T1 after
	// the first; the third copy leaves long after the transaction ended
	first := time.Now()
	ok, _ := r.pbx.recv("SIP/2.0 200", "SIP/2.0 100")
	for i := 0; i < 3; i++ {
		again, _ := r.pbx.recv("SIP/2.0 200", "SIP/2.0 100")
		if again.To().Value() != ok.To().Value() {
			t.Fatalf("retransmitted 2xx differs: To %q, first %q", again.To().Value(), ok.To().Value())
		}
	}
	if since := time.Since(first); since < 2*acceptedLinger {
		t.Fatalf("3 retransmissions within %v: the test cannot tell the transaction's from the SBC's", since)
	}

	// the INVITE again, same transaction: absorbed
	r.pbx.send(r.priv, r.pbxInvite(callID, branch))
	r.car.expectNothing(700*time.Millisecond, "ACK")
	st := r.srv.Status()
	if st.Calls != 1 || st.CallsTotal != 1 || st.RetransAbsorbed != 1 {
		t.Fatalf("retransmitted INVITE not absorbed: %+v", st)
	}

	r.pbx.send(r.priv, fmt.Sprintf("ACK sip:x@%s SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.3:%d;branch=z9hG4bK-art1\nMax-Forwards: 70\nFrom: %s\nTo: %s\nCall-ID: %s\nCSeq: 10 ACK\nContent-Length: 0\n\n",
		r.priv, r.pbx.addr.Port(), ok.From().Value(), ok.To().Value(), callID))
	bye := r.pbxInDialog("BYE", 11, ok, callID, "", "")
	r.pbx.send(r.priv, bye)
	r.pbxByeAnswered()
	byeB, _ := r.car.recv("BYE", "ACK")
	r.car.send(r.pub, answer(byeB, 200, "OK", "", "", ""))
	r.waitIdle()

	// the BYE again, as if its 200 was lost: its transaction ended when
	// it was answered, the call is gone, and it still gets 200, not 481
	r.pbx.send(r.priv, bye)
	r.pbxByeAnswered()
	r.car.expectNothing(300 * time.Millisecond)
	if st := r.srv.Status(); st.RetransAbsorbed != 2 || st.NoDialog != 0 {
		t.Fatalf("retransmitted BYE not answered as before: %+v", st)
	}

	// a new transaction of the same dialog's caller is a new call
	r.pbx.send(r.priv, r.pbxInvite("rt-2", "z9hG4bK-rt2"))
	inv2, _ := r.car.recv("INVITE", "SIP/2.0 100")
	r.car.send(r.pub, answer(inv2, 486, "Busy Here", "car-tag2", "", ""))
	r.pbx.recv("SIP/2.0 486", "SIP/2.0 100")
	if st := r.srv.Status(); st.CallsTotal != 2 || st.RetransAbsorbed != 2 {
		t.Fatalf("a new INVITE was taken for a retransmission: %+v", st)
	}
}

// pbxByeAnswered waits for the 200 to the pbx's BYE; a 2xx retransmission
// of its INVITE sent before the ACK arrived may come first.
func (r *rig) pbxByeAnswered() {
	r.t.Helper()
	for {
		res, raw := r.pbx.recv("SIP/2.0")
		if res.CSeq().MethodName == "BYE" {
			if !strings.HasPrefix(raw, "SIP/2.0 200") {
				r.t.Fatalf("BYE answered:\n%s", raw)
			}
			return
		}
	}
}

// TestReinviteRetransmissionAbsorbed: a re-INVITE repeated after its
// transaction ended is not relayed a second time.
func TestReinviteRetransmissionAbsorbed(t *testing.T) {
	r := newRig(t, nil)
	okA, _ := r.establish("rt-3")
	reinvite := r.pbxInDialog("INVITE", 20, okA, "rt-3", "", strings.Replace(pbxSDP, "a=sendrecv", "a=sendonly", 1))
	r.pbx.send(r.priv, reinvite)
	reinv, _ := r.car.recv("INVITE", "ACK", "SIP/2.0 200")
	r.car.send(r.pub, answer(reinv, 200, "OK", "", fmt.Sprintf("<sip:carrier@%s>", r.car.addr), strings.Replace(carrierSDP, "a=sendrecv", "a=recvonly", 1)))
	r.car.recv("ACK", "SIP/2.0 200")
	r.pbx.recv("SIP/2.0 200", "SIP/2.0 100")
	r.pbx.send(r.priv, strings.Replace(r.pbxInDialog("ACK", 20, okA, "rt-3", "", ""), "Contact: <sip:2001@pbx01.corp.internal:"+fmt.Sprint(r.pbx.addr.Port())+">\n", "", 1))

	time.Sleep(acceptedLinger + 300*time.Millisecond) // the transaction has ended
	r.pbx.send(r.priv, reinvite)
	r.car.expectNothing(700*time.Millisecond, "ACK", "SIP/2.0 200")
	if st := r.srv.Status(); st.Calls != 1 || st.RetransAbsorbed != 1 {
		t.Fatalf("retransmitted re-INVITE not absorbed: %+v", st)
	}
}

func TestSeenSet(t *testing.T) {
	t0 := time.Unix(1000, 0)
	s := newSeenSet(10*time.Second, 100)
	if s.seen(1, t0) {
		t.Fatal("first sighting reported as seen")
	}
	if !s.seen(1, t0.Add(9*time.Second)) {
		t.Fatal("repeat within the window not seen")
	}
	// the window counts from the first sighting, not the last
	if s.seen(1, t0.Add(10*time.Second)) {
		t.Fatal("repeat after the window still seen")
	}
	if s.size() != 1 {
		t.Fatalf("size %d after expiry and re-insert, want 1", s.size())
	}

	// growth keeps arrival order across the ring's wrap
	s = newSeenSet(time.Hour, 1000)
	for i := uint64(0); i < 300; i++ {
		s.seen(i, t0.Add(time.Duration(i)*time.Second))
	}
	for i := uint64(0); i < 300; i++ {
		if !s.seen(i, t0.Add(300*time.Second)) {
			t.Fatalf("key %d lost while the ring grew", i)
		}
	}
	// past the window, the oldest go first and the rest stay
	now := t0.Add(time.Hour + 150*time.Second)
	if s.seen(10, now) {
		t.Fatal("key 10 still seen after its window")
	}
	if !s.seen(200, now) {
		t.Fatal("key 200 expired before its window")
	}

	// at capacity the oldest entry is forgotten first
	s = newSeenSet(time.Hour, 64)
	for i := uint64(0); i < 64; i++ {
		s.seen(i, t0)
	}
	s.seen(64, t0)
	if s.size() != 64 {
		t.Fatalf("size %d beyond the bound 64", s.size())
	}
	if s.seen(0, t0) {
		t.Fatal("oldest entry kept beyond the bound")
	}
	if !s.seen(63, t0) {
		t.Fatal("a newer entry was dropped instead of the oldest")
	}
}
