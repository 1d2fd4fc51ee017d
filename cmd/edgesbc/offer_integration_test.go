//go:build linux

package main_test

import (
	"strings"
	"testing"

	"github.com/edgesbc/edgesbc/internal/testenv"
)

// earlyOfferConfig gives the carrier offer = "early".
const earlyOfferConfig = "testdata/early_offer.hcl"

// TestIntegrationEarlyOffer: the PBX calls with an INVITE without SDP
// (uac_late_offer.xml); the carrier (uas_expect_offer.xml) fails the call
// unless its INVITE carries an offer with PCMA and its ACK none. The SBC
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

	t.Run("daemon_back_to_idle", func(t *testing.T) { l.assertIdle(t, base) })
	carrierPkts, pbxPkts := l.stopCaptures(t)
	checkNoLeaks(t, l, carrierPkts, pbxPkts)
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
