package sbc

import (
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
)

// earlyOfferRig is a rig whose carrier wants an offer in every INVITE.
func earlyOfferRig(t *testing.T, codecs ...string) *rig {
	return newRig(t, func(c *Config) {
		for i := range c.Peers {
			if c.Peers[i].Kind == Trunk {
				c.Peers[i].Offer = OfferEarly
				c.Peers[i].Codecs = codecs
			}
		}
	})
}

// lateInvite is the pbx's INVITE without SDP.
func (r *rig) lateInvite(callID string) string {
	inv := r.pbxInvite(callID, "z9hG4bK-"+callID)
	return inv[:strings.Index(inv, "Content-Type: application/sdp")] + "Content-Length: 0\n\n"
}

// TestEarlyOfferInterworking: the pbx's INVITE has no SDP; toward a
// carrier with offer = "early" the SBC offers itself (anchored on the
// public side, the configured codecs), ACKs the carrier's answer at once,
// relays that answer to the pbx as the offer in the 200, and takes the
// pbx's answer from its ACK: media then flows both ways.
func TestEarlyOfferInterworking(t *testing.T) {
	r := earlyOfferRig(t, "PCMA", "PCMU", "telephone-event")
	r.pbx.send(r.priv, r.lateInvite("eo-1"))
	invB, raw := r.car.recv("INVITE", "SIP/2.0 100")
	assertHidden(t, raw)
	offer := string(invB.Body())
	for _, want := range []string{"c=IN IP4 127.0.0.2", "m=audio ", " RTP/AVP 8 0 101", "a=rtpmap:8 PCMA/8000",
		"a=rtpmap:0 PCMU/8000", "a=rtpmap:101 telephone-event/8000", "a=sendrecv"} {
		if !strings.Contains(offer, want) {
			t.Fatalf("own offer toward the carrier lacks %q:\n%s", want, offer)
		}
	}
	if ct := invB.GetHeaders("Content-Type"); len(ct) != 1 || ct[0].Value() != "application/sdp" {
		t.Errorf("own offer Content-Type %v", ct)
	}
	r.car.send(r.pub, answer(invB, 200, "OK", "car-tag", fmt.Sprintf("<sip:carrier@%s>", r.car.addr), carrierSDP))
	ackB, _ := r.car.recv("ACK", "SIP/2.0 200")
	if len(ackB.Body()) != 0 {
		t.Errorf("leg B's ACK must carry nothing, its offer/answer is complete:\n%s", ackB.Body())
	}
	okA, _ := r.pbx.recv("SIP/2.0 200", "SIP/2.0 100")
	body := string(okA.Body())
	if !strings.Contains(body, "c=IN IP4 127.0.0.1") || !strings.Contains(body, "RTP/AVP 8 101") {
		t.Fatalf("carrier's answer not relayed to the pbx as its offer, anchored:\n%s", body)
	}
	r.pbx.send(r.priv, r.pbxInDialog("ACK", 10, okA, "eo-1", "", pbxSDP))
	r.car.expectNothing(300*time.Millisecond, "SIP/2.0 200") // nothing more for the carrier

	// RTP both ways through the anchors (the phones listen where their
	// SDP says)
	pbxMedia, carMedia := listenUDP(t, "127.0.0.3:40000"), listenUDP(t, "127.0.0.4:41000")
	toCarrierSide := sdpAnchor(t, offer)
	toPBXSide := sdpAnchor(t, body)
	pkt := rtpTestPacket()
	for range 3 { // the first packet latches
		if _, err := pbxMedia.WriteToUDPAddrPort(pkt, toPBXSide); err != nil {
			t.Fatal(err)
		}
		if _, err := carMedia.WriteToUDPAddrPort(pkt, toCarrierSide); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range []struct {
		name string
		conn interface {
			SetReadDeadline(time.Time) error
			Read([]byte) (int, error)
		}
	}{{"to the carrier", carMedia}, {"to the pbx", pbxMedia}} {
		_ = c.conn.SetReadDeadline(time.Now().Add(2 * time.Second))
		if _, err := c.conn.Read(make([]byte, 1500)); err != nil {
			t.Errorf("RTP %s: %v", c.name, err)
		}
	}
	if st := r.srv.Status(); st.Calls != 1 {
		t.Fatalf("call must be up: %+v", st)
	}
	r.pbx.send(r.priv, r.pbxInDialog("BYE", 11, okA, "eo-1", "", ""))
	bye, _ := r.car.recv("BYE", "ACK")
	r.car.send(r.pub, answer(bye, 200, "OK", "", "", ""))
	r.pbx.recv("SIP/2.0 200", "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP pbx01")
	r.waitIdle()
}

// rtpBothWays sends RTP from the pbx (127.0.0.3:40000) to toPBXSide and
// from the carrier (127.0.0.4:41000) to toCarrierSide, and checks that
// each arrives on the other side.
func rtpBothWays(t *testing.T, toPBXSide, toCarrierSide netip.AddrPort) {
	t.Helper()
	rtpBetween(t, "127.0.0.3:40000", toPBXSide, "127.0.0.4:41000", toCarrierSide)
}

// rtpBetween sends RTP from media address p1 to the SBC's anchor to1 and
// from p2 to to2, and checks that each reaches the other.
func rtpBetween(t *testing.T, p1 string, to1 netip.AddrPort, p2 string, to2 netip.AddrPort) {
	t.Helper()
	// closed on return: a later rtpBetween of the same test listens on
	// the same media addresses again
	c1, c2 := listenUDP(t, p1), listenUDP(t, p2)
	defer c1.Close()
	defer c2.Close()
	pkt := rtpTestPacket()
	for range 3 { // the first packet latches
		if _, err := c1.WriteToUDPAddrPort(pkt, to1); err != nil {
			t.Fatal(err)
		}
		if _, err := c2.WriteToUDPAddrPort(pkt, to2); err != nil {
			t.Fatal(err)
		}
	}
	for name, conn := range map[string]*net.UDPConn{"to " + p2: c2, "to " + p1: c1} {
		_ = conn.SetReadDeadline(time.Now().Add(2 * time.Second))
		if _, err := conn.Read(make([]byte, 1500)); err != nil {
			t.Errorf("RTP %s: %v", name, err)
		}
	}
}

// TestEarlyOfferTransferTarget: the pbx transfers the carrier to a number
// behind the same carrier, which has offer = "early". The target's INVITE
// carries the SBC's own offer, anchored apart while the original call's
// media goes on; the target's answer reaches the remaining party as the
// offer of the bridging re-INVITE, the target is ACKed at once, and the
// remaining party's answer completes the media between the two.
func TestEarlyOfferTransferTarget(t *testing.T) {
	r := earlyOfferRig(t, "PCMA", "telephone-event")
	okA, invB := r.establish("eo-8")
	r.pbx.send(r.priv, r.pbxRefer(11, okA, "eo-8", "<sip:+15559999@127.0.0.1>"))
	r.pbx.recv("SIP/2.0 202", "SIP/2.0 100")
	expectNotify(t, r.pbx, r.priv, "SIP/2.0 100 Trying", "active")
	invT, raw := r.car.recv("INVITE")
	assertHidden(t, raw)
	offerT := string(invT.Body())
	if !strings.Contains(offerT, "c=IN IP4 127.0.0.2") || !strings.Contains(offerT, " RTP/AVP 8 101") {
		t.Fatalf("the transfer target must get the SBC's offer:\n%s", raw)
	}
	if sdpAnchor(t, offerT) == sdpAnchor(t, string(invB.Body())) {
		t.Fatalf("the target's offer must not reuse the original call's anchor:\n%s", offerT)
	}
	// the original call's media is untouched while the target rings
	rtpBothWays(t, sdpAnchor(t, string(okA.Body())), sdpAnchor(t, string(invB.Body())))

	r.car.send(r.pub, answer(invT, 200, "OK", "tgt-tag", fmt.Sprintf("<sip:target@%s>", r.car.addr), transferSDP))
	ackT, _ := r.car.recv("ACK", "SIP/2.0 100")
	if ackT.CallID().Value() != invT.CallID().Value() || len(ackT.Body()) != 0 {
		t.Fatalf("the target is ACKed at once and without SDP: %s\n%s", ackT.CallID().Value(), ackT.Body())
	}
	reinv, raw := r.car.recv("INVITE", "SIP/2.0 100")
	body := string(reinv.Body())
	if reinv.CallID().Value() != invB.CallID().Value() || !strings.Contains(body, "c=IN IP4 127.0.0.2") ||
		!strings.Contains(body, "RTP/AVP 8") || strings.Contains(body, "42000") {
		t.Fatalf("the remaining leg must get the target's answer as its offer, anchored:\n%s", raw)
	}
	r.car.send(r.pub, answer(reinv, 200, "OK", "", fmt.Sprintf("<sip:carrier@%s>", r.car.addr), strings.Replace(carrierSDP, "RTP/AVP 8 101", "RTP/AVP 8", 1)))
	ackY, _ := r.car.recv("ACK", "SIP/2.0 100")
	if ackY.CallID().Value() != invB.CallID().Value() {
		t.Fatalf("ACK on the wrong dialog: %s", ackY.CallID().Value())
	}
	expectNotify(t, r.pbx, r.priv, "SIP/2.0 200 OK", "terminated")
	bye, _ := r.pbx.recv("BYE", "SIP/2.0 200")
	r.pbx.send(r.priv, answer(bye, 200, "OK", "", "", ""))
	r.car.expectNothing(200*time.Millisecond, "SIP/2.0 200")
	if st := r.srv.Status(); st.Calls != 1 {
		t.Fatalf("transferred call must go on: %+v", st)
	}
	// the target (42000) and the remaining party (41000) talk
	rtpBetween(t, "127.0.0.4:42000", sdpAnchor(t, offerT), "127.0.0.4:41000", sdpAnchor(t, body))
	if got := r.relay.Sessions(); got != 1 {
		t.Errorf("media sessions after the transfer: %d, want 1", got)
	}
}

// TestEarlyOfferTransferTargetBusy: the target refuses; its spare media
// session is closed and the original call goes on.
func TestEarlyOfferTransferTargetBusy(t *testing.T) {
	r := earlyOfferRig(t)
	okA, invB := r.establish("eo-9")
	r.pbx.send(r.priv, r.pbxRefer(11, okA, "eo-9", "<sip:+15559999@127.0.0.1>"))
	r.pbx.recv("SIP/2.0 202", "SIP/2.0 100")
	expectNotify(t, r.pbx, r.priv, "SIP/2.0 100 Trying", "active")
	invT, _ := r.car.recv("INVITE")
	if len(invT.Body()) == 0 || r.relay.Sessions() != 2 {
		t.Fatalf("target offer anchored apart: %d sessions\n%s", r.relay.Sessions(), invT.Body())
	}
	r.car.send(r.pub, answer(invT, 486, "Busy Here", "tgt-tag", "", ""))
	r.car.recv("ACK")
	expectNotify(t, r.pbx, r.priv, "SIP/2.0 486 Busy Here", "terminated")
	if got := r.relay.Sessions(); got != 1 {
		t.Errorf("media sessions after the failed transfer: %d, want 1", got)
	}
	rtpBothWays(t, sdpAnchor(t, string(okA.Body())), sdpAnchor(t, string(invB.Body())))
}

// TestEarlyOfferAnsweredReliably: the carrier answers the SBC's offer in
// a reliable 183 and sends its 200 without SDP. The pbx does not support
// 100rel, so its 183 carries no SDP (an offer may go only in a reliable
// response); the 200 brings it the carrier's answer as the offer, and its
// answer in the ACK completes the media.
func TestEarlyOfferAnsweredReliably(t *testing.T) {
	r := earlyOfferRig(t, "PCMA", "telephone-event")
	r.pbx.send(r.priv, r.lateInvite("eo-4"))
	invB, _ := r.car.recv("INVITE", "SIP/2.0 100")
	offer := string(invB.Body())
	r.car.send(r.pub, r.reliable183(invB, 5, carrierSDP))
	prackB, _ := r.car.recv("PRACK", "SIP/2.0 100")
	if len(prackB.Body()) != 0 {
		t.Errorf("the PRACK of an answer carries nothing:\n%s", prackB.Body())
	}
	r.car.send(r.pub, answer(prackB, 200, "OK", "", "", ""))
	early, rawEarly := r.pbx.recv("SIP/2.0 183", "SIP/2.0 100")
	if len(early.Body()) != 0 || len(early.GetHeaders("RSeq")) != 0 {
		t.Fatalf("a caller without 100rel gets the 183 unreliably and without SDP:\n%s", rawEarly)
	}
	r.car.send(r.pub, answer(invB, 200, "OK", "car-tag", fmt.Sprintf("<sip:carrier@%s>", r.car.addr), ""))
	ackB, _ := r.car.recv("ACK", "SIP/2.0 200")
	if len(ackB.Body()) != 0 {
		t.Errorf("leg B's ACK must carry nothing:\n%s", ackB.Body())
	}
	okA, rawOK := r.pbx.recv("SIP/2.0 200", "SIP/2.0 100", "SIP/2.0 183")
	body := string(okA.Body())
	if !strings.Contains(body, "c=IN IP4 127.0.0.1") || !strings.Contains(body, "RTP/AVP 8 101") {
		t.Fatalf("the answer of the reliable 183 must reach the pbx as the offer in the 200:\n%s", rawOK)
	}
	r.pbx.send(r.priv, r.pbxInDialog("ACK", 10, okA, "eo-4", "", pbxSDP))
	r.car.expectNothing(300*time.Millisecond, "SIP/2.0 200")
	rtpBothWays(t, sdpAnchor(t, body), sdpAnchor(t, offer))
	if st := r.srv.Status(); st.Calls != 1 {
		t.Fatalf("call must be up: %+v", st)
	}
	r.pbx.send(r.priv, r.pbxInDialog("BYE", 11, okA, "eo-4", "", ""))
	bye, _ := r.car.recv("BYE", "ACK", "SIP/2.0 200")
	r.car.send(r.pub, answer(bye, 200, "OK", "", "", ""))
	r.waitIdle()
}

// TestEarlyOfferEarlyMedia: the carrier answers the SBC's offer in an
// unreliable 183 (early media). A pbx that supports 100rel gets that
// answer as the offer in a reliable 183 and answers it in its PRACK, so
// early media flows before the 200; the 200 repeats the offer unchanged
// and the ACK carries nothing.
func TestEarlyOfferEarlyMedia(t *testing.T) {
	r := earlyOfferRig(t, "PCMA", "telephone-event")
	r.pbx.send(r.priv, strings.Replace(r.lateInvite("eo-5"), "Subject: hello", "Supported: 100rel", 1))
	invB, _ := r.car.recv("INVITE", "SIP/2.0 100")
	offer := string(invB.Body())
	r.car.send(r.pub, answer(invB, 183, "Session Progress", "car-tag", fmt.Sprintf("<sip:carrier@%s>", r.car.addr), carrierSDP))
	early, rawEarly := r.pbx.recv("SIP/2.0 183", "SIP/2.0 100")
	rseq := rseqOf(t, early, rawEarly)
	body := string(early.Body())
	if !strings.Contains(body, "c=IN IP4 127.0.0.1") || !strings.Contains(body, "RTP/AVP 8 101") {
		t.Fatalf("the carrier's early answer must reach the pbx as an offer:\n%s", rawEarly)
	}
	r.pbx.send(r.priv, r.pbxInDialog("PRACK", 11, early, "eo-5", fmt.Sprintf("RAck: %s 10 INVITE\n", rseq), pbxSDP))
	r.pbx.recv("SIP/2.0 200", "SIP/2.0 183")
	r.car.expectNothing(300*time.Millisecond, "SIP/2.0 100") // the carrier's 183 was not reliable
	rtpBothWays(t, sdpAnchor(t, body), sdpAnchor(t, offer))

	r.car.send(r.pub, answer(invB, 200, "OK", "car-tag", fmt.Sprintf("<sip:carrier@%s>", r.car.addr), ""))
	r.car.recv("ACK", "SIP/2.0 200")
	okA, _ := r.pbx.recv("SIP/2.0 200", "SIP/2.0 183")
	if string(okA.Body()) != body {
		t.Errorf("the 200 must repeat the offer of the 183 unchanged:\n%s\nvs\n%s", okA.Body(), body)
	}
	r.pbx.send(r.priv, r.pbxInDialog("ACK", 10, okA, "eo-5", "", ""))
	r.car.expectNothing(300*time.Millisecond, "SIP/2.0 200")
	if st := r.srv.Status(); st.Calls != 1 {
		t.Fatalf("call must be up after an ACK without SDP: %+v", st)
	}
	r.pbx.send(r.priv, r.pbxInDialog("BYE", 12, okA, "eo-5", "", ""))
	bye, _ := r.car.recv("BYE", "ACK", "SIP/2.0 200")
	r.car.send(r.pub, answer(bye, 200, "OK", "", "", ""))
	r.waitIdle()
}

// TestEarlyOfferBadEarlyAnswer: the pbx answers the offer of the reliable
// 183 in its PRACK with a codec that was not offered: 488 to the PRACK,
// and the call is refused and the carrier cancelled.
func TestEarlyOfferBadEarlyAnswer(t *testing.T) {
	r := earlyOfferRig(t, "PCMA", "telephone-event")
	r.pbx.send(r.priv, strings.Replace(r.lateInvite("eo-6"), "Subject: hello", "Supported: 100rel", 1))
	invB, _ := r.car.recv("INVITE", "SIP/2.0 100")
	r.car.send(r.pub, answer(invB, 183, "Session Progress", "car-tag", fmt.Sprintf("<sip:carrier@%s>", r.car.addr), carrierSDP))
	early, rawEarly := r.pbx.recv("SIP/2.0 183", "SIP/2.0 100")
	rseq := rseqOf(t, early, rawEarly)
	g729 := strings.NewReplacer("RTP/AVP 8 101", "RTP/AVP 18", "a=rtpmap:8 PCMA/8000", "a=rtpmap:18 G729/8000").Replace(pbxSDP)
	r.pbx.send(r.priv, r.pbxInDialog("PRACK", 11, early, "eo-6", fmt.Sprintf("RAck: %s 10 INVITE\n", rseq), g729))
	r.pbx.recv("SIP/2.0 488", "SIP/2.0 183")
	r.pbx.recv("SIP/2.0 488", "SIP/2.0 183")
	cancel, _ := r.car.recv("CANCEL", "SIP/2.0 100")
	r.car.send(r.pub, answer(cancel, 200, "OK", "", "", ""))
	r.car.send(r.pub, answer(invB, 487, "Request Terminated", "car-tag", "", ""))
	r.car.recv("ACK", "SIP/2.0 200")
	r.waitIdle()
}

// establishEarlyOffer sets up a late-offer call from the pbx to a carrier
// with offer = "early"; it returns the pbx's 200, the SBC's INVITE to the
// carrier and the SDP bodies of both.
func (r *rig) establishEarlyOffer(callID string) (okA, invB sip.Message) {
	r.t.Helper()
	r.pbx.send(r.priv, r.lateInvite(callID))
	invB, _ = r.car.recv("INVITE", "SIP/2.0 100")
	r.car.send(r.pub, answer(invB, 200, "OK", "car-tag", fmt.Sprintf("<sip:carrier@%s>", r.car.addr), carrierSDP))
	r.car.recv("ACK", "SIP/2.0 200")
	okA, _ = r.pbx.recv("SIP/2.0 200", "SIP/2.0 100")
	r.pbx.send(r.priv, r.pbxInDialog("ACK", 10, okA, callID, "", pbxSDP))
	return okA, invB
}

// TestEarlyOfferReinvite: a re-INVITE without SDP from the pbx toward the
// carrier with offer = "early" gets the SBC's own offer (the same codecs
// and anchor as the initial one); the carrier's answer goes to the pbx as
// the offer in the 200, the carrier is ACKed at once, and the pbx's answer
// in its ACK completes the media. An answer that does not fit ends the
// call.
func TestEarlyOfferReinvite(t *testing.T) {
	r := earlyOfferRig(t, "PCMA", "PCMU", "telephone-event")
	okA, invB := r.establishEarlyOffer("eo-7")
	r.car.expectNothing(200*time.Millisecond, "SIP/2.0 200")
	r.pbx.send(r.priv, r.pbxInDialog("INVITE", 11, okA, "eo-7", "", ""))
	reinv, raw := r.car.recv("INVITE", "SIP/2.0 100")
	assertHidden(t, raw)
	offer := string(reinv.Body())
	if !strings.Contains(offer, " RTP/AVP 8 0 101") || sdpAnchor(t, offer) != sdpAnchor(t, string(invB.Body())) {
		t.Fatalf("re-INVITE toward the carrier must carry the SBC's offer on the same anchor:\n%s\nfirst offer:\n%s", raw, invB.Body())
	}
	moved := strings.ReplaceAll(carrierSDP, "41000", "41002")
	r.car.send(r.pub, answer(reinv, 200, "OK", "", fmt.Sprintf("<sip:carrier@%s>", r.car.addr), moved))
	ackB, _ := r.car.recv("ACK", "SIP/2.0 200")
	if len(ackB.Body()) != 0 {
		t.Errorf("the carrier's ACK carries nothing, it answered already:\n%s", ackB.Body())
	}
	ok2, rawOK := r.pbx.recv("SIP/2.0 200", "SIP/2.0 100")
	if ok2.CSeq().MethodName != sip.INVITE || !strings.Contains(string(ok2.Body()), "RTP/AVP 8 101") ||
		sdpAnchor(t, string(ok2.Body())) != sdpAnchor(t, string(okA.Body())) {
		t.Fatalf("the carrier's answer must reach the pbx as the offer in the 200, same anchor:\n%s", rawOK)
	}
	r.pbx.send(r.priv, r.pbxInDialog("ACK", 11, okA, "eo-7", "", pbxSDP))
	r.car.expectNothing(300*time.Millisecond, "SIP/2.0 200")
	if st := r.srv.Status(); st.Calls != 1 {
		t.Fatalf("call must be up: %+v", st)
	}

	// again, answered with a codec that was not offered
	r.pbx.send(r.priv, r.pbxInDialog("INVITE", 12, okA, "eo-7", "", ""))
	reinv, _ = r.car.recv("INVITE", "SIP/2.0 100")
	r.car.send(r.pub, answer(reinv, 200, "OK", "", fmt.Sprintf("<sip:carrier@%s>", r.car.addr), moved))
	r.car.recv("ACK", "SIP/2.0 200")
	r.pbx.recv("SIP/2.0 200", "SIP/2.0 100")
	g729 := strings.NewReplacer("RTP/AVP 8 101", "RTP/AVP 18", "a=rtpmap:8 PCMA/8000", "a=rtpmap:18 G729/8000").Replace(pbxSDP)
	r.pbx.send(r.priv, r.pbxInDialog("ACK", 12, okA, "eo-7", "", g729))
	bye, _ := r.car.recv("BYE", "SIP/2.0 200", "ACK")
	r.car.send(r.pub, answer(bye, 200, "OK", "", "", ""))
	byeA, _ := r.pbx.recv("BYE", "SIP/2.0 200")
	r.pbx.send(r.priv, answer(byeA, 200, "OK", "", "", ""))
	r.waitIdle()
}

// TestEarlyOfferIncompatibleAnswer: the pbx answers the relayed offer with
// a codec that was not in it; the SBC ends the call with BYE on both legs.
func TestEarlyOfferIncompatibleAnswer(t *testing.T) {
	r := earlyOfferRig(t)
	r.pbx.send(r.priv, r.lateInvite("eo-2"))
	invB, _ := r.car.recv("INVITE", "SIP/2.0 100")
	if !strings.Contains(string(invB.Body()), "RTP/AVP 0 8 101") {
		t.Fatalf("default codecs are PCMU, PCMA, telephone-event:\n%s", invB.Body())
	}
	r.car.send(r.pub, answer(invB, 200, "OK", "car-tag", fmt.Sprintf("<sip:carrier@%s>", r.car.addr), carrierSDP))
	r.car.recv("ACK", "SIP/2.0 200")
	okA, _ := r.pbx.recv("SIP/2.0 200", "SIP/2.0 100")
	g729 := strings.NewReplacer("RTP/AVP 8 101", "RTP/AVP 18", "a=rtpmap:8 PCMA/8000", "a=rtpmap:18 G729/8000").Replace(pbxSDP)
	r.pbx.send(r.priv, r.pbxInDialog("ACK", 10, okA, "eo-2", "", g729))
	bye, _ := r.car.recv("BYE", "ACK", "SIP/2.0 200")
	r.car.send(r.pub, answer(bye, 200, "OK", "", "", ""))
	byeA, _ := r.pbx.recv("BYE", "SIP/2.0 200")
	r.pbx.send(r.priv, answer(byeA, 200, "OK", "", "", ""))
	r.waitIdle()
}

// TestEarlyOfferOnlyWhenLate: an INVITE with SDP toward the same carrier
// goes out with the caller's offer, not the SBC's.
func TestEarlyOfferOnlyWhenLate(t *testing.T) {
	r := earlyOfferRig(t, "PCMU")
	r.pbx.send(r.priv, r.pbxInvite("eo-3", "z9hG4bK-eo3"))
	invB, _ := r.car.recv("INVITE", "SIP/2.0 100")
	if body := string(invB.Body()); !strings.Contains(body, "RTP/AVP 8 101") || strings.Contains(body, "PCMU") {
		t.Fatalf("the caller's own offer must pass:\n%s", body)
	}
	r.car.send(r.pub, answer(invB, 486, "Busy Here", "car-tag", "", ""))
	r.car.recv("ACK", "SIP/2.0 486")
	r.pbx.recv("SIP/2.0 486", "SIP/2.0 100")
	r.waitIdle()
}

func TestAnswerFits(t *testing.T) {
	offer := "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0 8 101\r\nm=video 0 RTP/AVP 96\r\n"
	mk := func(ms ...string) []byte {
		return []byte("v=0\r\no=- 2 1 IN IP4 192.0.2.2\r\ns=-\r\nc=IN IP4 192.0.2.2\r\nt=0 0\r\n" + strings.Join(ms, ""))
	}
	for _, tt := range []struct {
		name   string
		answer []byte
		want   string // "" fits
	}{
		{"one codec", mk("m=audio 5000 RTP/AVP 8 101\r\n", "m=video 0 RTP/AVP 96\r\n"), ""},
		{"no common codec", mk("m=audio 5000 RTP/AVP 18\r\n", "m=video 0 RTP/AVP 96\r\n"), "no payload type"},
		{"stream count", mk("m=audio 5000 RTP/AVP 0\r\n"), "m= lines"},
		{"disabled accepted", mk("m=audio 5000 RTP/AVP 0\r\n", "m=video 5002 RTP/AVP 96\r\n"), "disabled"},
		{"all rejected", mk("m=audio 0 RTP/AVP 0\r\n", "m=video 0 RTP/AVP 96\r\n"), "no stream"},
		{"other kind", mk("m=image 5000 udptl t38\r\n", "m=video 0 RTP/AVP 96\r\n"), "for an offer of"},
		{"garbage", []byte("hello"), "parse answer"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			err := answerFits([]byte(offer), tt.answer)
			switch {
			case tt.want == "" && err != nil:
				t.Errorf("fits, got %v", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Errorf("error %v, want one containing %q", err, tt.want)
			}
		})
	}
}

func TestOfferTemplate(t *testing.T) {
	addr := netip.MustParseAddr("192.0.2.1")
	got, err := offerTemplate([]string{"pcma", "G729", "PCMA", "telephone-event"}, addr)
	if err != nil {
		t.Fatal(err)
	}
	want := "v=0\r\no=- 0 0 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n" +
		"m=audio 9 RTP/AVP 8 18 101\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:18 G729/8000\r\na=fmtp:18 annexb=no\r\n" +
		"a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\na=sendrecv\r\n"
	if string(got) != want {
		t.Errorf("template:\n%q\nwant\n%q", got, want)
	}
	if got, err := offerTemplate(nil, netip.MustParseAddr("2001:db8::1")); err != nil ||
		!strings.Contains(string(got), "c=IN IP6 2001:db8::1") || !strings.Contains(string(got), "RTP/AVP 0 8 101") {
		t.Errorf("default codecs over IPv6: %v\n%s", err, got)
	}
	for _, bad := range [][]string{{"telephone-event"}, {"PCMU", "speex"}} {
		if _, err := offerTemplate(bad, addr); err == nil {
			t.Errorf("codecs %v must be refused", bad)
		}
	}
	for _, name := range DefaultCodecs {
		if !KnownCodec(name) {
			t.Errorf("default codec %q unknown", name)
		}
	}
}

func listenUDP(t *testing.T, addr string) *net.UDPConn {
	t.Helper()
	c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.MustParseAddrPort(addr)))
	if err != nil {
		t.Skipf("media address %s not usable here: %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// sdpAnchor returns the c= address and first m= port of body.
func sdpAnchor(t *testing.T, body string) netip.AddrPort {
	t.Helper()
	var addr netip.Addr
	port := 0
	for line := range strings.Lines(body) {
		line = strings.TrimSpace(line)
		if f := strings.Fields(line); strings.HasPrefix(line, "c=") && len(f) == 3 {
			addr, _ = netip.ParseAddr(f[2])
		}
		if f := strings.Fields(line); strings.HasPrefix(line, "m=") && port == 0 && len(f) > 1 {
			port, _ = strconv.Atoi(f[1])
		}
	}
	if !addr.IsValid() || port == 0 {
		t.Fatalf("no anchor in:\n%s", body)
	}
	return netip.AddrPortFrom(addr, uint16(port))
}

// rtpTestPacket is one PCMA RTP packet.
func rtpTestPacket() []byte {
	pkt := make([]byte, 12+160)
	pkt[0], pkt[1] = 0x80, 8
	pkt[3] = 1
	pkt[11] = 0x42
	return pkt
}

// FuzzAnswerFits: any caller answer is judged without a panic, and one
// judged fitting really shares a payload type with the offer.
func FuzzAnswerFits(f *testing.F) {
	offer, err := offerTemplate(nil, netip.MustParseAddr("192.0.2.1"))
	if err != nil {
		f.Fatal(err)
	}
	f.Add([]byte(pbxSDP))
	f.Add([]byte(strings.ReplaceAll(pbxSDP, "RTP/AVP 8 101", "RTP/AVP 18")))
	f.Add([]byte("v=0\r\nm=audio 0 RTP/AVP 0\r\n"))
	f.Fuzz(func(t *testing.T, answer []byte) {
		if answerFits(offer, answer) != nil {
			return
		}
		if !strings.Contains(string(answer), "m=") {
			t.Errorf("answer without m= lines judged fitting:\n%q", answer)
		}
	})
}

// carrierOffer is a callee's offer with several codecs and a video stream.
const carrierOffer = `v=0
o=carrier 9 1 IN IP4 127.0.0.4
s=-
c=IN IP4 127.0.0.4
t=0 0
m=audio 41000 RTP/AVP 18 8 101
a=rtpmap:18 G729/8000
a=fmtp:18 annexb=no
a=rtpmap:8 PCMA/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-15
a=sendrecv
m=video 41002 RTP/AVP 96
a=rtpmap:96 H264/90000
`

// TestLateOfferAnsweredBySBC: an INVITE without SDP from a pbx without
// 100rel; the carrier offers in a reliable 183. The SBC answers in its
// PRACK (RFC 3262 §5) with one codec of the offer the pbx's peer lists
// (PCMA, not the carrier's first, G729) and telephone-event, video
// rejected; the pbx gets a 183 without SDP, then the carrier's offer
// narrowed to that answer in the 200, and its answer in the ACK completes
// the media. The carrier's ACK carries nothing.
func TestLateOfferAnsweredBySBC(t *testing.T) {
	r := newRig(t, nil)
	r.pbx.send(r.priv, r.lateInvite("lo-5"))
	invB, _ := r.car.recv("INVITE", "SIP/2.0 100")
	if len(invB.Body()) != 0 {
		t.Fatalf("late offer must stay late toward a pass peer:\n%s", invB.Body())
	}
	r.car.send(r.pub, r.reliable183(invB, 9, carrierOffer))
	prackB, rawPrack := r.car.recv("PRACK", "SIP/2.0 100")
	assertHidden(t, rawPrack)
	ans := string(prackB.Body())
	for _, want := range []string{"c=IN IP4 127.0.0.2", " RTP/AVP 8 101\r\n", "a=rtpmap:8 PCMA/8000", "a=fmtp:101 0-15", "a=sendrecv", "m=video 0 RTP/AVP 96"} {
		if !strings.Contains(ans, want) {
			t.Fatalf("the SBC's answer in the PRACK lacks %q:\n%s", want, rawPrack)
		}
	}
	if strings.Contains(ans, "G729") {
		t.Fatalf("the answer must keep one codec:\n%s", ans)
	}
	r.car.send(r.pub, answer(prackB, 200, "OK", "", "", ""))
	early, rawEarly := r.pbx.recv("SIP/2.0 183", "SIP/2.0 100")
	if len(early.Body()) != 0 {
		t.Fatalf("no SDP in an unreliable 183 to a caller that made no offer:\n%s", rawEarly)
	}
	r.car.send(r.pub, answer(invB, 200, "OK", "car-tag", fmt.Sprintf("<sip:carrier@%s>", r.car.addr), carrierOffer))
	ackB, _ := r.car.recv("ACK", "SIP/2.0 200")
	if len(ackB.Body()) != 0 {
		t.Errorf("the carrier's offer/answer is done; its ACK carries nothing:\n%s", ackB.Body())
	}
	okA, rawOK := r.pbx.recv("SIP/2.0 200", "SIP/2.0 100", "SIP/2.0 183")
	offerA := string(okA.Body())
	if !strings.Contains(offerA, "c=IN IP4 127.0.0.1") || !strings.Contains(offerA, " RTP/AVP 8 101\r\n") ||
		!strings.Contains(offerA, "m=video 0 ") || strings.Contains(offerA, "G729") {
		t.Fatalf("the pbx must be offered the carrier's offer narrowed to the SBC's answer:\n%s", rawOK)
	}
	r.pbx.send(r.priv, r.pbxInDialog("ACK", 10, okA, "lo-5", "", pbxSDP+"m=video 0 RTP/AVP 96\n"))
	r.car.expectNothing(300*time.Millisecond, "SIP/2.0 200")
	rtpBothWays(t, sdpAnchor(t, offerA), sdpAnchor(t, ans))
	if st := r.srv.Status(); st.Calls != 1 {
		t.Fatalf("call must be up: %+v", st)
	}
	r.pbx.send(r.priv, r.pbxInDialog("BYE", 11, okA, "lo-5", "", ""))
	bye, _ := r.car.recv("BYE", "ACK", "SIP/2.0 200")
	r.car.send(r.pub, answer(bye, 200, "OK", "", "", ""))
	r.waitIdle()
}

func TestNarrowOffer(t *testing.T) {
	addr := netip.MustParseAddr("192.0.2.1")
	for _, tt := range []struct {
		name, offer string
		prefs       []string
		want        string // m= line of the answer template, "" for an error
	}{
		{"preferred codec", carrierOffer, nil, "m=audio 9 RTP/AVP 8 101"},
		{"static without rtpmap", "v=0\r\no=- 1 1 IN IP4 192.0.2.9\r\ns=-\r\nc=IN IP4 192.0.2.9\r\nt=0 0\r\nm=audio 5000 RTP/AVP 18 0\r\na=sendonly\r\n", []string{"PCMU"}, "m=audio 9 RTP/AVP 0"},
		{"none preferred: the offer's first", carrierOffer, []string{"opus"}, "m=audio 9 RTP/AVP 18"},
		{"no audio", "v=0\r\no=- 1 1 IN IP4 192.0.2.9\r\ns=-\r\nc=IN IP4 192.0.2.9\r\nt=0 0\r\nm=video 5000 RTP/AVP 96\r\n", nil, ""},
		{"only events", "v=0\r\no=- 1 1 IN IP4 192.0.2.9\r\ns=-\r\nc=IN IP4 192.0.2.9\r\nt=0 0\r\nm=audio 5000 RTP/AVP 101\r\na=rtpmap:101 telephone-event/8000\r\n", nil, ""},
		{"garbage", "hello", nil, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			narrowed, tmpl, err := narrowOffer([]byte(tt.offer), tt.prefs, addr)
			if tt.want == "" {
				if err == nil {
					t.Fatalf("want an error, got\n%s", tmpl)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(string(tmpl), tt.want+"\r\n") {
				t.Errorf("template lacks %q:\n%s", tt.want, tmpl)
			}
			if err := answerFits(narrowed, tmpl); err != nil {
				t.Errorf("template does not answer the narrowed offer: %v\n%s\n%s", err, narrowed, tmpl)
			}
		})
	}
	_, tmpl, _ := narrowOffer([]byte("v=0\r\no=- 1 1 IN IP4 192.0.2.9\r\ns=-\r\nc=IN IP4 192.0.2.9\r\nt=0 0\r\nm=audio 5000 RTP/AVP 0\r\na=sendonly\r\n"), nil, addr)
	if !strings.Contains(string(tmpl), "a=recvonly") {
		t.Errorf("a sendonly offer is answered recvonly:\n%s", tmpl)
	}
}

// FuzzNarrowOffer: any callee offer is narrowed without a panic, and what
// comes out is an answer that fits the narrowed offer.
func FuzzNarrowOffer(f *testing.F) {
	f.Add([]byte(carrierOffer))
	f.Add([]byte(carrierSDP))
	f.Add([]byte("v=0\r\nm=audio 1 RTP/AVP\r\n"))
	addr := netip.MustParseAddr("192.0.2.1")
	f.Fuzz(func(t *testing.T, offer []byte) {
		narrowed, tmpl, err := narrowOffer(offer, nil, addr)
		if err != nil {
			return
		}
		if err := answerFits(narrowed, tmpl); err != nil {
			t.Errorf("template does not fit: %v\n%q\n%q", err, narrowed, tmpl)
		}
	})
}

// TestEarlyOfferAttendedTransfer: an attended transfer whose taken-over
// dialog is with a carrier with offer = "early": the re-INVITE in that
// dialog carries the SBC's own offer instead of none, the carrier's answer
// is ACKed at once and bridged to the remaining party as its offer, and
// the two carrier parties then talk through the SBC.
func TestEarlyOfferAttendedTransfer(t *testing.T) {
	r := earlyOfferRig(t)
	okA, invB := r.establish("eo-10")
	okA2, invB2 := r.establish("eo-11")
	time.Sleep(50 * time.Millisecond) // the second call's ACK first
	replaces := url.QueryEscape(fmt.Sprintf("eo-11;to-tag=%s;from-tag=pbx-tag-1", okA2.To().Params.GetOr("tag", "")))
	r.pbx.send(r.priv, r.pbxRefer(11, okA, "eo-10", fmt.Sprintf("<sip:x@127.0.0.1?Replaces=%s>", replaces)))
	r.pbx.recv("SIP/2.0 202", "SIP/2.0 100")
	for got := map[string]bool{}; !got["BYE"] || !got["NOTIFY"]; {
		m, raw := r.pbx.recv("", "SIP/2.0")
		switch req := m.(*sip.Request); {
		case req.Method == sip.BYE && m.CallID().Value() == "eo-11":
			got["BYE"] = true
		case req.Method == sip.NOTIFY && strings.HasPrefix(string(m.Body()), "SIP/2.0 100"):
			got["NOTIFY"] = true
		default:
			t.Fatalf("unexpected at the pbx:\n%s", raw)
		}
		r.pbx.send(r.priv, answer(m, 200, "OK", "", "", ""))
	}

	offerReq, raw := r.car.recv("INVITE", "SIP/2.0 100")
	offerT := string(offerReq.Body())
	if offerReq.CallID().Value() != invB2.CallID().Value() || !strings.Contains(offerT, "c=IN IP4 127.0.0.2") ||
		!strings.Contains(offerT, " RTP/AVP 0 8 101") {
		t.Fatalf("want a re-INVITE with the SBC's offer on the second carrier dialog:\n%s", raw)
	}
	r.car.send(r.pub, answer(offerReq, 200, "OK", "", fmt.Sprintf("<sip:carrier@%s>", r.car.addr), transferSDP))
	ackT, _ := r.car.recv("ACK", "SIP/2.0 100")
	if ackT.CallID().Value() != invB2.CallID().Value() || len(ackT.Body()) != 0 {
		t.Fatalf("the taken-over dialog is ACKed at once, without SDP: %s\n%s", ackT.CallID().Value(), ackT.Body())
	}
	bridge, raw := r.car.recv("INVITE", "SIP/2.0 100")
	assertHidden(t, raw)
	body := string(bridge.Body())
	if bridge.CallID().Value() != invB.CallID().Value() || !strings.Contains(body, "c=IN IP4 127.0.0.2") || strings.Contains(body, "42000") {
		t.Fatalf("want the target's answer as the offer on the first carrier dialog:\n%s", raw)
	}
	r.car.send(r.pub, answer(bridge, 200, "OK", "", fmt.Sprintf("<sip:carrier@%s>", r.car.addr), carrierSDP))
	if ack, _ := r.car.recv("ACK", "SIP/2.0 100"); ack.CallID().Value() != invB.CallID().Value() {
		t.Fatalf("ACK on the wrong dialog: %s", ack.CallID().Value())
	}
	expectNotify(t, r.pbx, r.priv, "SIP/2.0 200 OK", "terminated")
	bye, _ := r.pbx.recv("BYE", "SIP/2.0 200")
	r.pbx.send(r.priv, answer(bye, 200, "OK", "", "", ""))
	if st := r.srv.Status(); st.Calls != 1 {
		t.Fatalf("one bridged call must remain: %+v", st)
	}
	rtpBetween(t, "127.0.0.4:42000", sdpAnchor(t, offerT), "127.0.0.4:41000", sdpAnchor(t, body))
}
