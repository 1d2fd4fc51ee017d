//go:build linux

package main_test

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/edgesbc/edgesbc/internal/testenv"
)

// This file runs the early dialog flows between real SIPp peers: reliable
// provisionals (RFC 3262) on both legs, each terminated by the SBC, an
// UPDATE in the early dialog (RFC 3311), and re-INVITE glare (RFC 3261
// §14.1). The scenarios expect what only the SBC sends (its own PRACK, its
// 491), so they run through the SBC only.

var (
	reliablePair = scenarioPair{name: "reliable_183", uac: "uac_100rel.xml", uas: "uas_100rel.xml",
		service: dialogOutboundNumber, uasArgs: []string{"-rtp_echo"}, rtp: true}
	earlyUpdatePair = scenarioPair{name: "early_update", uac: "uac_early_update.xml", uas: "uas_early_update.xml",
		service: dialogOutboundNumber, uasArgs: []string{"-rtp_echo"}, rtp: true}
	glarePair = scenarioPair{name: "reinvite_glare", uac: "uac_glare.xml", uas: "uas_glare.xml",
		service: dialogOutboundNumber}
	offer183Pair = scenarioPair{name: "late_offer_in_183", uac: "uac_late_offer.xml", uas: "uas_offer_183.xml",
		service: dialogOutboundNumber, uasArgs: []string{"-rtp_echo"}, rtp: true}
)

func init() {
	sbcOnlyScenarios = append(sbcOnlyScenarios, "uac_100rel.xml", "uas_100rel.xml",
		"uac_early_update.xml", "uas_early_update.xml", "uac_glare.xml", "uas_glare.xml",
		"uas_offer_183.xml", "uas_expect_offer_183.xml")
}

var earlyFlows = []dialogFlow{
	{"reliable_183_both_legs", outboundCall(reliablePair), checkReliable},
	{"early_update_from_carrier", outboundCall(earlyUpdatePair), checkEarlyUpdate},
	{"reinvite_glare", outboundCall(glarePair), checkGlare},
	{"late_offer_in_183_answered_by_sbc", outboundCall(offer183Pair), checkOfferIn183},
}

// TestIntegrationEarlyDialogs runs each early dialog flow through one
// daemon with captures of its own on both links, then checks the whole
// run's carrier link for inside topology and the daemon for leftovers.
func TestIntegrationEarlyDialogs(t *testing.T) {
	l := newLab(t)
	base := l.daemon.Status(t)
	for _, f := range earlyFlows {
		t.Run(f.name, func(t *testing.T) {
			pbxCapture := testenv.StartCapture(t, l.topo.PBX, l.topo.PBXIf, "udp")
			carrierCapture := testenv.StartCapture(t, l.topo.Carrier, l.topo.CarrierIf, "udp")
			l.call(t, f.sbcCase)
			pbx := l.link(t, "pbx", pbxCapture, l.sbcPrivate.Addr(), l.pbx.addr)
			carrier := l.link(t, "carrier", carrierCapture, l.sbcPublic.Addr(), l.carrier.addr)
			for _, p := range f.check(flowWire{caller: pbx, callee: carrier, media: l.media}) {
				t.Error(p)
			}
		})
	}
	t.Run("daemon_back_to_idle", func(t *testing.T) { l.assertIdle(t, base) })
	carrierPkts, pbxPkts := l.stopCaptures(t)
	t.Run("no_inside_topology_on_carrier_link", func(t *testing.T) {
		if len(sipMessages(carrierPkts)) == 0 {
			t.Fatal("no SIP captured on the carrier link")
		}
		for _, leak := range findLeaks(carrierPkts, l.topo.PBXAddr.Masked(), forbiddenOnCarrier) {
			t.Error(leak)
		}
	})
	t.Run("no_carrier_topology_on_pbx_link", func(t *testing.T) {
		for _, leak := range findLeaks(pbxPkts, netip.PrefixFrom(l.carrier.addr, 32), []string{l.carrier.addr.String()}) {
			t.Error(leak)
		}
	})
}

// isReliable183 matches a 183 sent reliably: Require: 100rel and an RSeq.
func isReliable183(m sipMessage) bool {
	return m.Status == 183 && m.header("rseq") != "" && m.header("require") == "100rel"
}

// checkReliable: the carrier's reliable 183 is PRACKed by the SBC on the
// carrier link, the pbx gets a reliable 183 of the SBC's own (its RSeq, an
// anchored answer) and its PRACK is answered 200 on the pbx link; neither
// PRACK crosses; the 2xx reaches the pbx only after its PRACK; audio flows.
func checkReliable(fw flowWire) []string {
	var p flowProblems
	if early, ok := p.one("reliable 183s to the caller", fw.caller, fw.caller.fromSBC(isReliable183)); ok {
		p.sdp("reliable 183", fw.caller, fw.media, early)
	}
	if prack, ok := p.one("PRACKs from the caller", fw.caller, fw.caller.fromPeer(isRequest("PRACK"))); ok {
		if res, ok := p.final("PRACK", fw.caller, prack, 200); ok {
			// the INVITE's 2xx must not precede the PRACK's answer
			for _, m := range fw.caller.sip {
				if m.Status == 200 && m.CSeqMethod == "INVITE" {
					p.addf("pbx link: the INVITE's 200 went out before the PRACK's 200 (%v)", m)
					break
				}
				if m.Status == res.Status && m.CSeqMethod == "PRACK" {
					break
				}
			}
		}
	}
	if n := len(fw.caller.fromSBC(isRequest("PRACK"))); n != 0 {
		p.addf("pbx link: %d PRACKs from the SBC, want none (the pbx's 183 came from the SBC)", n)
	}
	if prack, ok := p.one("PRACKs from the SBC", fw.callee, fw.callee.fromSBC(isRequest("PRACK"))); ok {
		if ra := prack.header("rack"); len(ra) < 2 || ra[:2] != "1 " {
			p.addf("carrier link: PRACK with RAck %q, want RSeq 1 of the carrier's 183", ra)
		}
		p.final("PRACK from the SBC", fw.callee, prack, 200)
	}
	if n := len(fw.callee.fromPeer(isRequest("PRACK"))); n != 0 {
		p.addf("carrier link: %d PRACKs from the carrier, want none", n)
	}
	p.rtp(fw)
	return p
}

// checkEarlyUpdate: the carrier's UPDATE in the early dialog reaches the
// pbx re-anchored, the pbx's answer goes back re-anchored, and once the
// call is up the audio goes to the port the UPDATE moved to, not the one of
// the 183.
func checkEarlyUpdate(fw flowWire) []string {
	var p flowProblems
	sent, ok1 := p.one("UPDATEs from the callee", fw.callee, fw.callee.fromPeer(isRequest("UPDATE")))
	relayed, ok2 := p.one("UPDATEs relayed to the caller", fw.caller, fw.caller.fromSBC(isRequest("UPDATE")))
	if ok1 && ok2 {
		p.sdp("UPDATE", fw.caller, fw.media, relayed)
		if res, ok := p.final("UPDATE from the SBC", fw.caller, relayed, 200); ok && res.Body == "" {
			p.addf("pbx link: the UPDATE's 200 has no answer")
		}
		if res, ok := p.final("UPDATE", fw.callee, sent, 200); ok {
			p.sdp("UPDATE's 200", fw.callee, fw.media, res)
		}
		for _, m := range fw.caller.sip {
			if m.Status == 200 && m.CSeqMethod == "INVITE" {
				break
			}
			if m.Method == "UPDATE" {
				goto early
			}
		}
		p.addf("pbx link: the UPDATE arrived after the INVITE's 200, want it in the early dialog")
	early:
	}
	moved, stale := 0, 0
	for _, pk := range fw.callee.pkts {
		if pk.Src.Addr() != fw.callee.sbc || pk.Dst.Addr() != fw.callee.peer || pk.Dst.Port() == sipPort {
			continue
		}
		switch pk.Dst.Port() {
		case sippMediaPort:
			moved++
		case 6010:
			stale++
		}
	}
	if moved < minRTP || stale != 0 {
		p.addf("carrier link: %d RTP packets to the port of the UPDATE, %d to the port of the 183; want at least %d and none",
			moved, stale, minRTP)
	}
	p.rtp(fw)
	return p
}

// checkGlare: the carrier's re-INVITE, crossing the pbx's, gets 491 from
// the SBC; the carrier refuses the pbx's with 491, which reaches the pbx;
// both retries then succeed, each relayed once, and the call ends with BYE.
func checkGlare(fw flowWire) []string {
	var p flowProblems
	fromCarrier := fw.callee.fromPeer(isReInvite)
	toCarrier := fw.callee.fromSBC(isReInvite)
	fromPBX := fw.caller.fromPeer(isReInvite)
	toPBX := fw.caller.fromSBC(isReInvite)
	if len(fromCarrier) != 2 || len(toCarrier) != 2 || len(fromPBX) != 2 || len(toPBX) != 1 {
		p.addf("re-INVITEs: carrier sent %d and got %d, pbx sent %d and got %d; want 2, 2, 2, 1",
			len(fromCarrier), len(toCarrier), len(fromPBX), len(toPBX))
		return p
	}
	if _, ok := p.final("carrier's crossing re-INVITE", fw.callee, fromCarrier[0], 491); ok {
		if n := len(fw.caller.fromSBC(isReInvite)); n != 1 {
			p.addf("pbx link: the refused re-INVITE must not be relayed")
		}
	}
	p.final("pbx's re-INVITE relayed", fw.callee, toCarrier[0], 491)
	if res, ok := p.final("pbx's re-INVITE", fw.caller, fromPBX[0], 491); ok {
		p.ack("491", fw.caller, fromPBX[0])
		_ = res
	}
	p.final("carrier's retry", fw.callee, fromCarrier[1], 200)
	p.final("carrier's retry relayed", fw.caller, toPBX[0], 200)
	p.final("pbx's retry", fw.caller, fromPBX[1], 200)
	p.final("pbx's retry relayed", fw.callee, toCarrier[1], 200)
	if bye, ok := p.one("BYEs to the carrier", fw.callee, fw.callee.fromSBC(isRequest("BYE"))); ok {
		p.final("BYE", fw.callee, bye, 200)
	}
	return p
}

// checkOfferIn183: the carrier offers in a reliable 183 to an INVITE
// without SDP from a PBX without 100rel. The SBC answers in its PRACK
// (RFC 3262 §5) with PCMA and telephone-event, anchored; the PBX gets no
// SDP before the 200, which carries the carrier's offer narrowed to PCMA;
// the PBX's answer comes in its ACK, the carrier's ACK carries none, and
// audio flows.
func checkOfferIn183(fw flowWire) []string {
	var p flowProblems
	if prack, ok := p.one("PRACKs from the SBC", fw.callee, fw.callee.fromSBC(isRequest("PRACK"))); ok {
		p.sdp("SBC's answer in the PRACK", fw.callee, fw.media, prack, "a=rtpmap:8 PCMA/8000")
		if m := mLine(prack.Body); !strings.HasSuffix(m, " RTP/AVP 8 101") {
			p.addf("carrier link: the SBC's answer has %q, want PCMA and telephone-event", m)
		}
		p.final("PRACK from the SBC", fw.callee, prack, 200)
	}
	if inv, ok := p.one("INVITEs relayed to the callee", fw.callee, fw.callee.fromSBC(isInitialInvite)); ok {
		p.noBody("INVITE", fw.callee, inv)
		if ack, ok := p.ack("INVITE", fw.callee, inv); ok {
			p.noBody("ACK after the early offer/answer", fw.callee, ack)
		}
	}
	for _, m := range fw.caller.fromSBC(func(m sipMessage) bool { return m.Status > 100 && m.Status < 200 }) {
		p.noBody("provisional to a caller that made no offer", fw.caller, m)
	}
	if inv, ok := p.one("INVITEs from the caller", fw.caller, fw.caller.fromPeer(isInitialInvite)); ok {
		if res, ok := p.final("INVITE", fw.caller, inv, 200); ok {
			p.sdp("200 with the narrowed offer", fw.caller, fw.media, res, "a=rtpmap:8 PCMA/8000")
			if strings.Contains(res.Body, "G729") {
				p.addf("pbx link: the offer in the 200 still has G729, which the SBC did not accept:\n%s", res.Body)
			}
		}
		if ack, ok := p.ack("PBX", fw.caller, inv); ok && !strings.Contains(ack.Body, "m=audio") {
			p.addf("pbx link: ACK %v carries no answer", ack)
		}
	}
	p.rtp(fw)
	return p
}
