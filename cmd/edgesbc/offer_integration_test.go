//go:build linux

package main_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/edgesbc/edgesbc/internal/testenv"
)

// earlyOfferConfig gives the carrier offer = "early".
const earlyOfferConfig = "testdata/early_offer.hcl"

// TestIntegrationEarlyOffer: the PBX calls with an INVITE without SDP
// (uac_late_offer.xml); the carrier (uas_expect_offer.xml) fails the call
// unless its INVITE carries an offer with PCMA and its ACK none. A second
// call's carrier (uas_expect_offer_183.xml) answers in a reliable 183 and
// sends its 200 without SDP; in a third the PBX re-INVITEs without SDP and
// the carrier (uas_expect_reoffer.xml) wants an offer in that too. The SBC
// offers itself toward the carrier, relays the carrier's answer to the PBX
// as the offer in the 200 and takes the PBX's answer from its ACK; the
// PBX's audio then crosses both links and comes back.
func TestIntegrationEarlyOffer(t *testing.T) {
	l := newLabConfig(t, earlyOfferConfig)
	base := l.daemon.Status(t)
	pair := scenarioPair{name: "early_offer", uac: "uac_late_offer.xml", uas: "uas_expect_offer.xml",
		uasArgs: []string{"-rtp_echo"}, rtp: true}

	t.Run("late_offer_from_pbx", func(t *testing.T) {
		pbxCapture := testenv.StartCapture(t, l.topo.PBX, l.topo.PBXIf, "udp")
		carrierCapture := testenv.StartCapture(t, l.topo.Carrier, l.topo.CarrierIf, "udp")
		l.call(t, outboundCall(pair))
		pbx := l.link(t, "pbx", pbxCapture, l.sbcPrivate.Addr(), l.pbx.addr)
		carrier := l.link(t, "carrier", carrierCapture, l.sbcPublic.Addr(), l.carrier.addr)
		for _, p := range checkEarlyOffer(flowWire{caller: pbx, callee: carrier, media: l.media}) {
			t.Error(p)
		}
	})

	// the carrier answers in a reliable 183 and its 200 has no SDP; the
	// PBX (no 100rel) gets the 183 without SDP and the offer in the 200
	pair183 := scenarioPair{name: "early_offer_183", uac: "uac_late_offer.xml", uas: "uas_expect_offer_183.xml",
		uasArgs: []string{"-rtp_echo"}, rtp: true}
	t.Run("answer_in_reliable_183", func(t *testing.T) {
		pbxCapture := testenv.StartCapture(t, l.topo.PBX, l.topo.PBXIf, "udp")
		carrierCapture := testenv.StartCapture(t, l.topo.Carrier, l.topo.CarrierIf, "udp")
		l.call(t, outboundCall(pair183))
		pbx := l.link(t, "pbx", pbxCapture, l.sbcPrivate.Addr(), l.pbx.addr)
		carrier := l.link(t, "carrier", carrierCapture, l.sbcPublic.Addr(), l.carrier.addr)
		fw := flowWire{caller: pbx, callee: carrier, media: l.media}
		problems := checkEarlyOffer(fw)
		problems = append(problems, checkAnswerIn183(fw)...)
		for _, p := range problems {
			t.Error(p)
		}
	})

	// the PBX's re-INVITE without SDP gets the SBC's own offer toward the
	// carrier; the carrier's answer is the PBX's offer in the 200
	reofferPair := scenarioPair{name: "early_offer_reinvite", uac: "uac_reinvite_nosdp.xml", uas: "uas_expect_reoffer.xml",
		service: dialogOutboundNumber, uasArgs: []string{"-rtp_echo"}, rtp: true}
	t.Run("reinvite_without_sdp", func(t *testing.T) {
		pbxCapture := testenv.StartCapture(t, l.topo.PBX, l.topo.PBXIf, "udp")
		carrierCapture := testenv.StartCapture(t, l.topo.Carrier, l.topo.CarrierIf, "udp")
		l.call(t, outboundCall(reofferPair))
		pbx := l.link(t, "pbx", pbxCapture, l.sbcPrivate.Addr(), l.pbx.addr)
		carrier := l.link(t, "carrier", carrierCapture, l.sbcPublic.Addr(), l.carrier.addr)
		for _, p := range checkReoffer(flowWire{caller: pbx, callee: carrier, media: l.media}) {
			t.Error(p)
		}
	})

	t.Run("daemon_back_to_idle", func(t *testing.T) { l.assertIdle(t, base) })
	carrierPkts, pbxPkts := l.stopCaptures(t)
	checkNoLeaks(t, l, carrierPkts, pbxPkts)
}

// checkReoffer: the PBX's re-INVITE has no body; the one relayed to the
// carrier carries the SBC's own offer and the carrier's ACK none; the 200
// to the PBX carries the carrier's answer as the offer, anchored, and the
// PBX's ACK the answer; audio flows.
func checkReoffer(fw flowWire) []string {
	var p flowProblems
	if re, ok := p.one("re-INVITEs from the PBX", fw.caller, fw.caller.fromPeer(isReInvite)); ok {
		p.noBody("PBX's re-INVITE", fw.caller, re)
		if res, ok := p.final("PBX's re-INVITE", fw.caller, re, 200); ok {
			p.sdp("offer in the re-INVITE's 200", fw.caller, fw.media, res)
		}
		if ack, ok := p.ack("PBX's re-INVITE", fw.caller, re); ok && !strings.Contains(ack.Body, "m=audio") {
			p.addf("pbx link: ACK %v carries no answer", ack)
		}
	}
	if re, ok := p.one("re-INVITEs to the carrier", fw.callee, fw.callee.fromSBC(isReInvite)); ok {
		p.sdp("SBC's own re-offer", fw.callee, fw.media, re, "a=rtpmap:8 PCMA/8000")
		if ack, ok := p.ack("carrier's re-INVITE", fw.callee, re); ok {
			p.noBody("ACK of the re-INVITE to the carrier", fw.callee, ack)
		}
	}
	p.rtp(fw)
	return p
}

// checkEarlyOffer: the PBX's INVITE has no body; the SBC's INVITE to the
// carrier carries the SBC's own offer (its address, its ports, PCMU, PCMA
// and telephone-event) and the ACK to the carrier none; the 200 to the PBX
// carries the offer, anchored, and the PBX's ACK the answer; RTP crosses
// both links.
func checkEarlyOffer(fw flowWire) []string {
	var p flowProblems
	pbx, carrier := fw.caller, fw.callee
	if inv, ok := p.one("INVITEs from the PBX", pbx, pbx.fromPeer(isInitialInvite)); ok {
		p.noBody("PBX's INVITE", pbx, inv)
		if ok, found := p.final("PBX's INVITE", pbx, inv, 200); found {
			p.sdp("offer in the 200 to the PBX", pbx, fw.media, ok)
		}
		if ack, found := p.ack("PBX", pbx, inv); found && !strings.Contains(ack.Body, "m=audio") {
			p.addf("pbx link: ACK %v carries no answer", ack)
		}
	}
	if inv, ok := p.one("INVITEs from the SBC", carrier, carrier.fromSBC(isInitialInvite)); ok {
		p.sdp("SBC's own offer", carrier, fw.media, inv,
			"a=rtpmap:0 PCMU/8000", "a=rtpmap:8 PCMA/8000", "a=rtpmap:101 telephone-event/8000")
		if m := mLine(inv.Body); !strings.HasSuffix(m, " RTP/AVP 0 8 101") {
			p.addf("carrier link: SBC's own offer has %q, want the default codecs 0 8 101 in order", m)
		}
		if ack, found := p.ack("carrier", carrier, inv); found {
			p.noBody("ACK to the carrier", carrier, ack)
		}
	}
	p.rtp(fw)
	return p
}

// mLine returns the first m= line of an SDP body.
func mLine(body string) string {
	for line := range strings.Lines(body) {
		if line = strings.TrimSpace(line); strings.HasPrefix(line, "m=") {
			return line
		}
	}
	return ""
}

// checkAnswerIn183: the SBC PRACKs the carrier's reliable 183 without a
// body (the 183 held an answer), and the PBX, which does not do 100rel,
// gets no reliable 183 and no SDP before the 200.
func checkAnswerIn183(fw flowWire) []string {
	var p flowProblems
	if prack, ok := p.one("PRACKs from the SBC", fw.callee, fw.callee.fromSBC(isRequest("PRACK"))); ok {
		p.noBody("PRACK of an answer", fw.callee, prack)
		p.final("PRACK from the SBC", fw.callee, prack, 200)
	}
	if n := len(fw.caller.fromSBC(isReliable183)); n != 0 {
		p.addf("pbx link: %d reliable 183s to a caller without 100rel", n)
	}
	for _, m := range fw.caller.fromSBC(func(m sipMessage) bool { return m.Status > 100 && m.Status < 200 }) {
		p.noBody("provisional to a caller that made no offer", fw.caller, m)
	}
	return p
}

// TestIntegrationTransferEarlyOffer: a blind transfer the SBC performs
// toward a carrier with offer = "early". The carrier's transferee calls
// the PBX, which REFERs it back out to the carrier; the target
// (uas_transfer_target_offer.xml) fails unless its INVITE carries an offer
// with PCMA and its ACK none. The target's answer reaches the transferee
// in the bridging re-INVITE, and audio flows between the two through the
// SBC.
func TestIntegrationTransferEarlyOffer(t *testing.T) {
	l := newLabConfig(t, earlyOfferConfig)
	base := l.daemon.Status(t)
	blindTransfer(t, l, "uas_transfer_target_offer.xml")

	t.Run("daemon_back_to_idle", func(t *testing.T) { l.assertIdle(t, base) })
	carrierPkts, pbxPkts := l.stopCaptures(t)
	carrier := wireLink{name: "carrier", sbc: l.sbcPublic.Addr(), peer: l.carrier.addr, pkts: carrierPkts, sip: sipMessages(carrierPkts)}

	t.Run("target_offered_and_bridged", func(t *testing.T) {
		var p flowProblems
		toTarget := func(m sipMessage) bool { return isInitialInvite(m) && m.Dst.Port() == sipPort }
		if inv, ok := p.one("INVITEs to the transfer target", carrier, carrier.fromSBC(toTarget)); ok {
			p.sdp("SBC's own offer to the target", carrier, l.media, inv, "a=rtpmap:8 PCMA/8000")
			if ack, ok := p.ack("target", carrier, inv); ok {
				p.noBody("ACK to the target", carrier, ack)
			}
		}
		toTransferee := func(m sipMessage) bool { return isReInvite(m) && m.Dst.Port() == transfereePort }
		if re, ok := p.one("re-INVITEs to the transferee", carrier, carrier.fromSBC(toTransferee)); ok {
			p.sdp("bridging re-INVITE with the target's answer", carrier, l.media, re, "a=rtpmap:8 PCMA/8000")
		}
		for _, problem := range p {
			t.Error(problem)
		}
	})
	t.Run("media_follows_the_transfer", func(t *testing.T) {
		counts := rtpByPeerPort(t, carrier, l.media)
		for _, k := range []string{"to 6000", "from 6000", fmt.Sprintf("to %d", transfereeMedia), fmt.Sprintf("from %d", transfereeMedia)} {
			if counts[k] < minRTP {
				t.Errorf("RTP %s: %d packets, want at least %d (all: %v)", k, counts[k], minRTP, counts)
			}
		}
	})
	checkNoLeaks(t, l, carrierPkts, pbxPkts)
}
