//go:build linux

package main_test

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/edgesbc/edgesbc/internal/testenv"
)

// This file runs session timer flows (RFC 4028) and a blind transfer the
// SBC performs (REFER, RFC 3515) between real SIPp peers. The scenarios
// expect requests only the SBC sends (its refreshes, its BYE when a session
// expires, its NOTIFYs), so they run through the SBC only; the checks here
// read both links to prove what SIPp cannot see: that nothing of one leg's
// timer crossed to the other, and nothing crossed between zones.

// timersConfig gives the PBX a 4 s session interval with Min-SE 3 s and
// turns session timers off toward the carrier.
const timersConfig = "testdata/timers.hcl"

// The scenario pairs of the session timer flows.
var (
	sessionExpiryPair = scenarioPair{name: "session_expiry", uac: "uac_session_expiry.xml", uas: "uas.xml",
		service: dialogOutboundNumber}
	sbcRefreshPair = scenarioPair{name: "sbc_refreshes", uac: "uac_quiet_call.xml", uas: "uas_expect_refresh.xml",
		service: dialogInboundNumber}
	retry422Pair = scenarioPair{name: "retry_after_422", uac: "uac_quiet_call.xml", uas: "uas_422.xml",
		service: dialogInboundNumber}
)

// sbcOnlyScenarios are run only through the SBC (here), never directly:
// each expects requests or answers that only the SBC produces.
var sbcOnlyScenarios = []string{
	"uac_session_expiry.xml", "uac_quiet_call.xml", "uas_expect_refresh.xml", "uas_422.xml",
	"uac_transferee.xml", "uas_refer.xml", "uas_transfer_target.xml",
	// transfer_integration_test.go
	"uas_attended_referrer.xml", "uac_attended_target.xml",
	"uac_refer_pass.xml", "uas_refer_pass.xml", "uas_refer_reject.xml",
	"uas_expect_offer.xml", "uas_transfer_target_offer.xml", "uas_expect_reoffer.xml", // offer_integration_test.go
	"uac_keep.xml", // offload_integration_test.go: a call across a restart
}

var timerFlows = []dialogFlow{
	{"silent_pbx_session_expires", outboundCall(sessionExpiryPair), checkSessionExpiry},
	{"sbc_refreshes_pbx_leg", inboundCall(sbcRefreshPair), checkSBCRefresh},
	{"pbx_422_retried", inboundCall(retry422Pair), checkRetry422},
}

// TestIntegrationSessionTimers runs each session timer flow through one
// daemon, with captures of its own on both links, then checks the whole
// run's carrier link for inside topology and that the daemon is back to
// idle (no timer left running a call).
func TestIntegrationSessionTimers(t *testing.T) {
	l := newLabConfig(t, timersConfig)
	base := l.daemon.Status(t)
	for _, f := range timerFlows {
		t.Run(f.name, func(t *testing.T) {
			pbxCapture := testenv.StartCapture(t, l.topo.PBX, l.topo.PBXIf, "udp")
			carrierCapture := testenv.StartCapture(t, l.topo.Carrier, l.topo.CarrierIf, "udp")
			l.call(t, f.sbcCase)
			pbx := l.link(t, "pbx", pbxCapture, l.sbcPrivate.Addr(), l.pbx.addr)
			carrier := l.link(t, "carrier", carrierCapture, l.sbcPublic.Addr(), l.carrier.addr)
			w := flowWire{caller: pbx, callee: carrier, media: l.media}
			if f.inbound {
				w.caller, w.callee = carrier, pbx
			}
			for _, p := range f.check(w) {
				t.Error(p)
			}
		})
	}
	t.Run("daemon_back_to_idle", func(t *testing.T) { l.assertIdle(t, base) })
	carrierPkts, pbxPkts := l.stopCaptures(t)
	t.Run("no_inside_topology_on_carrier_link", func(t *testing.T) {
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

// sentAt returns the capture time of the first packet on w from src to dst
// whose message matches.
func sentAt(w wireLink, src, dst netip.Addr, match func(sipMessage) bool) (time.Time, bool) {
	for _, p := range w.pkts {
		if p.Src.Addr() != src || p.Dst.Addr() != dst {
			continue
		}
		if m, ok := parseSIP(p); ok && match(m) {
			return p.Time, true
		}
	}
	return time.Time{}, false
}

func isStatus(code int, method string) func(sipMessage) bool {
	return func(m sipMessage) bool { return m.Status == code && m.CSeqMethod == method }
}

// noRefreshCrossed reports refreshes on w: a leg's timer is the SBC's
// business on that leg alone.
func (p *flowProblems) noRefreshCrossed(w wireLink) {
	if n := len(w.fromSBC(isRequest("UPDATE"))); n > 0 {
		p.addf("%s link: %d UPDATEs from the SBC, want none (no refresh crosses)", w.name, n)
	}
	if n := len(w.fromSBC(isReInvite)); n > 0 {
		p.addf("%s link: %d re-INVITEs from the SBC, want none (no refresh crosses)", w.name, n)
	}
}

// checkSessionExpiry: the PBX asks for 2 s and gets 422 with the SBC's
// Min-SE; it retries with 4 s as refresher and never refreshes, so the SBC
// sends BYE on both legs after 4 s less a third. The carrier, with timers
// off, sees neither the 422 nor any session timer header.
func checkSessionExpiry(fw flowWire) []string {
	var p flowProblems
	pbx, carrier := fw.caller, fw.callee
	if res, ok := p.one("422 responses from the SBC", pbx, pbx.fromSBC(isStatus(422, "INVITE"))); ok && res.header("min-se") != "3" {
		p.addf("pbx link: %v has Min-SE %q, want 3", res, res.header("min-se"))
	}
	p.one("BYEs from the SBC", pbx, pbx.fromSBC(isRequest("BYE")))
	p.one("BYEs from the SBC", carrier, carrier.fromSBC(isRequest("BYE")))
	p.one("INVITEs from the SBC", carrier, carrier.fromSBC(isInitialInvite))
	answered, ok1 := sentAt(pbx, pbx.sbc, pbx.peer, isStatus(200, "INVITE"))
	bye, ok2 := sentAt(pbx, pbx.sbc, pbx.peer, isRequest("BYE"))
	switch d := bye.Sub(answered); {
	case !ok1 || !ok2:
		p.addf("pbx link: no 200 or no BYE from the SBC")
	case d < 2200*time.Millisecond || d > 3600*time.Millisecond:
		p.addf("pbx link: BYE %v after the 200, want 4 s less a third (about 2.7 s)", d.Round(time.Millisecond))
	}
	for _, m := range carrier.fromSBC(func(sipMessage) bool { return true }) {
		if m.header("session-expires") != "" || m.header("min-se") != "" {
			p.addf("carrier link: %v carries session timer headers; timers are off toward the carrier", m)
		}
	}
	p.noRefreshCrossed(carrier)
	return p
}

// checkSBCRefresh: the PBX supports no timers, so the SBC refreshes its
// leg itself with an UPDATE without SDP at half of 4 s; the carrier sees
// nothing of it.
func checkSBCRefresh(fw flowWire) []string {
	var p flowProblems
	carrier, pbx := fw.caller, fw.callee
	if up, ok := p.one("UPDATEs from the SBC", pbx, pbx.fromSBC(isRequest("UPDATE"))); ok {
		p.noBody("refresh", pbx, up)
		if se := up.header("session-expires"); se != "4;refresher=uac" {
			p.addf("pbx link: %v has Session-Expires %q, want 4;refresher=uac", up, se)
		}
	}
	answered, ok1 := sentAt(pbx, pbx.peer, pbx.sbc, isStatus(200, "INVITE"))
	update, ok2 := sentAt(pbx, pbx.sbc, pbx.peer, isRequest("UPDATE"))
	if d := update.Sub(answered); ok1 && ok2 && (d < 1700*time.Millisecond || d > 2600*time.Millisecond) {
		p.addf("pbx link: refresh %v after the answer, want about 2 s", d.Round(time.Millisecond))
	}
	p.noRefreshCrossed(carrier)
	return p
}

// checkRetry422: the PBX answers the SBC's INVITE with 422 and Min-SE 6;
// the SBC retries in the same dialog attempt with 6 s and a higher CSeq,
// and the caller only ever sees the 200.
func checkRetry422(fw flowWire) []string {
	var p flowProblems
	carrier, pbx := fw.caller, fw.callee
	invites := pbx.fromSBC(isInitialInvite)
	if len(invites) != 2 {
		p.addf("pbx link: %d INVITEs from the SBC, want 2 (the retry after 422): %v", len(invites), invites)
		return p
	}
	first, retry := invites[0], invites[1]
	n1, _ := cseqNumber(first)
	n2, _ := cseqNumber(retry)
	if retry.CallID != first.CallID || n2 <= n1 {
		p.addf("pbx link: retry %v must keep the Call-ID of %v with a higher CSeq", retry, first)
	}
	if first.header("session-expires") != "4" || retry.header("session-expires") != "6" || retry.header("min-se") != "6" {
		p.addf("pbx link: Session-Expires %q then %q (Min-SE %q), want 4 then 6 (Min-SE 6)",
			first.header("session-expires"), retry.header("session-expires"), retry.header("min-se"))
	}
	if n := len(carrier.fromSBC(isStatus(422, "INVITE"))); n > 0 {
		p.addf("carrier link: %d 422 responses reached the caller, want none", n)
	}
	if inv, ok := p.one("INVITEs from the caller", carrier, carrier.fromPeer(isInitialInvite)); ok {
		p.final("caller's INVITE", carrier, inv, 200)
	}
	p.noRefreshCrossed(carrier)
	return p
}

// TestIntegrationTransfer: three SIPp parties. The carrier (from port
// 5070) calls the PBX, which transfers it to 15557654321 with a REFER. The
// SBC performs the transfer: it calls the target (routed like a call from
// the PBX: to the carrier's 5060) without SDP, bridges it to the caller
// with a re-INVITE carrying the target's offer, sends NOTIFYs to the PBX
// and releases it; then the caller's audio is echoed by the target through
// the re-anchored media.
func TestIntegrationTransfer(t *testing.T) {
	l := newLab(t)
	base := l.daemon.Status(t)
	blindTransfer(t, l, "uas_transfer_target.xml")

	t.Run("daemon_back_to_idle", func(t *testing.T) { l.assertIdle(t, base) })
	carrierPkts, pbxPkts := l.stopCaptures(t)
	carrierMsgs := sipMessages(carrierPkts)
	carrier := wireLink{name: "carrier", sbc: l.sbcPublic.Addr(), peer: l.carrier.addr, pkts: carrierPkts, sip: carrierMsgs}

	t.Run("target_called_without_offer_and_bridged", func(t *testing.T) {
		var p flowProblems
		fromTransferee := func(m sipMessage) bool { return m.Src.Port() == transfereePort || m.Dst.Port() == transfereePort }
		toTarget := func(m sipMessage) bool { return m.Dst.Port() == sipPort && m.Src.Addr() == carrier.sbc }
		var targetInvites []sipMessage
		for _, m := range carrier.fromSBC(isInitialInvite) {
			if toTarget(m) {
				targetInvites = append(targetInvites, m)
			}
		}
		if inv, ok := p.one("INVITEs to the transfer target", carrier, targetInvites); ok {
			p.noBody("INVITE to the target", carrier, inv)
			if ack, ok := p.ack("target", carrier, inv); ok {
				p.sdp("ACK to the target", carrier, l.media, ack)
			}
		}
		var bridges []sipMessage
		for _, m := range carrier.fromSBC(isReInvite) {
			if fromTransferee(m) {
				bridges = append(bridges, m)
			}
		}
		if re, ok := p.one("re-INVITEs to the transferee", carrier, bridges); ok {
			p.sdp("bridging re-INVITE", carrier, l.media, re)
		}
		for _, problem := range p {
			t.Error(problem)
		}
	})

	t.Run("media_follows_the_transfer", func(t *testing.T) {
		// RTP between the SBC's media ports and each carrier party, both
		// ways; nothing reaches them from anywhere else
		counts := map[string]int{}
		for i, pkt := range carrierPkts {
			if pkt.Proto != testenv.ProtoUDP || pkt.Src.Port() == sipPort || pkt.Dst.Port() == sipPort ||
				pkt.Src.Port() == transfereePort || pkt.Dst.Port() == transfereePort {
				continue
			}
			switch {
			case pkt.Src.Addr() == carrier.sbc && l.media.contains(pkt.Src.Port()):
				counts[fmt.Sprintf("to %d", pkt.Dst.Port())]++
			case pkt.Dst.Addr() == carrier.sbc && l.media.contains(pkt.Dst.Port()):
				counts[fmt.Sprintf("from %d", pkt.Src.Port())]++
			case pkt.Dst.Addr() == carrier.peer:
				t.Errorf("packet %d: %v > %v: media not from the SBC's ports", i, pkt.Src, pkt.Dst)
			}
		}
		for _, k := range []string{"to 6000", "from 6000", fmt.Sprintf("to %d", transfereeMedia), fmt.Sprintf("from %d", transfereeMedia)} {
			if counts[k] < minRTP {
				t.Errorf("RTP %s: %d packets, want at least %d (all: %v)", k, counts[k], minRTP, counts)
			}
		}
	})

	t.Run("sdp_anchored_at_sbc", func(t *testing.T) {
		for _, p := range checkSDP(sipMessages(pbxPkts), l.sbcPrivate.Addr(), l.pbx.addr) {
			t.Errorf("to pbx: %s", p)
		}
		for _, p := range checkSDP(carrierMsgs, l.sbcPublic.Addr(), l.carrier.addr) {
			t.Errorf("to carrier: %s", p)
		}
	})
	t.Run("no_inside_topology_on_carrier_link", func(t *testing.T) {
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

// TestTimerChecks proves the session timer checks on fake traffic: each
// correct flow passes, and each fault the SBC could make is reported.
func TestTimerChecks(t *testing.T) {
	for _, tt := range []struct {
		name   string
		check  func(flowWire) []string
		wire   func(t *testing.T, extra ...fakeMsg) flowWire
		extra  []fakeMsg // added to the SBC's side of the link that must stay quiet
		mutate func(t *testing.T, fw *flowWire)
		want   string // "" for the correct flow
	}{
		{name: "expiry/correct", check: checkSessionExpiry, wire: fakeSessionExpiry},
		{name: "expiry/no 422", check: checkSessionExpiry, wire: fakeSessionExpiry, want: "0 422 responses",
			mutate: func(t *testing.T, fw *flowWire) { dropFake(t, &fw.caller, "1 INVITE", 422) }},
		{name: "expiry/carrier not hung up", check: checkSessionExpiry, wire: fakeSessionExpiry, want: "0 BYEs from the SBC",
			mutate: func(t *testing.T, fw *flowWire) { dropFake(t, &fw.callee, "2 BYE", 0) }},
		{name: "expiry/BYE too late", check: checkSessionExpiry, wire: fakeSessionExpiry, want: "after the 200",
			mutate: func(t *testing.T, fw *flowWire) { retime(t, &fw.caller, "1 BYE", 0, 3900*time.Millisecond) }},
		{name: "expiry/timer headers to carrier", check: checkSessionExpiry, wire: fakeSessionExpiry, want: "carries session timer headers",
			mutate: func(t *testing.T, fw *flowWire) {
				findFake(t, &fw.callee, "1 INVITE", 0).Headers["session-expires"] = []string{"4"}
			}},
		{name: "expiry/refresh crossed", check: checkSessionExpiry, wire: fakeSessionExpiry, want: "UPDATEs from the SBC",
			extra: []fakeMsg{fakeReq(true, "UPDATE", "3 UPDATE", true, "", "")}},

		{name: "refresh/correct", check: checkSBCRefresh, wire: fakeSBCRefresh},
		{name: "refresh/none", check: checkSBCRefresh, wire: fakeSBCRefresh, want: "0 UPDATEs from the SBC",
			mutate: func(t *testing.T, fw *flowWire) { dropFake(t, &fw.callee, "5 UPDATE", 0) }},
		{name: "refresh/with SDP", check: checkSBCRefresh, wire: fakeSBCRefresh, want: "carries a body",
			mutate: func(t *testing.T, fw *flowWire) {
				findFake(t, &fw.callee, "5 UPDATE", 0).Body = fakeSDP("10.91.1.1", 20000)
			}},
		{name: "refresh/too late", check: checkSBCRefresh, wire: fakeSBCRefresh, want: "want about 2 s",
			mutate: func(t *testing.T, fw *flowWire) { retime(t, &fw.callee, "5 UPDATE", 0, 3500*time.Millisecond) }},
		{name: "refresh/crossed", check: checkSBCRefresh, wire: fakeSBCRefresh, want: "re-INVITEs from the SBC",
			extra: []fakeMsg{fakeReq(true, "INVITE", "2 INVITE", true, fakeSDPType, fakeSDP("203.0.113.1", 20002))}},

		{name: "422/correct", check: checkRetry422, wire: fakeRetry422},
		{name: "422/not retried", check: checkRetry422, wire: fakeRetry422, want: "want 2 (the retry after 422)",
			mutate: func(t *testing.T, fw *flowWire) { dropFake(t, &fw.callee, "8 INVITE", 0) }},
		{name: "422/interval not raised", check: checkRetry422, wire: fakeRetry422, want: "want 4 then 6",
			mutate: func(t *testing.T, fw *flowWire) {
				findFake(t, &fw.callee, "8 INVITE", 0).Headers["session-expires"] = []string{"4"}
			}},
		{name: "422/relayed to the caller", check: checkRetry422, wire: fakeRetry422, want: "422 responses reached the caller",
			extra: []fakeMsg{fakeRes(true, 422, "1 INVITE", "", "")}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			fw := tt.wire(t, tt.extra...)
			if tt.mutate != nil {
				tt.mutate(t, &fw)
			}
			got := tt.check(fw)
			switch {
			case tt.want == "" && len(got) > 0:
				t.Errorf("correct flow reported:\n%s", strings.Join(got, "\n"))
			case tt.want != "" && !strings.Contains(strings.Join(got, "\n"), tt.want):
				t.Errorf("reported %q, want a problem containing %q", got, tt.want)
			}
		})
	}
}

// timedLink is fakeLink with the capture time of each message: at[i] after
// a fixed start for msgs[i].
func timedLink(name, sbc, peer string, msgs []fakeMsg, at []time.Duration) wireLink {
	w := fakeLink(name, sbc, peer, msgs...)
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := range msgs {
		if i < len(at) {
			w.pkts[i].Time = start.Add(at[i])
		}
	}
	return w
}

// retime moves the packet of the message findFake would return to at.
func retime(t *testing.T, w *wireLink, cseq string, status int, at time.Duration) {
	t.Helper()
	for i, p := range w.pkts {
		if m, ok := parseSIP(p); ok && m.header("cseq") == cseq && m.Status == status {
			w.pkts[i].Time = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).Add(at)
			return
		}
	}
	t.Fatalf("%s link: no packet with CSeq %q and status %d", w.name, cseq, status)
}

func setFakeHeader(t *testing.T, w *wireLink, cseq string, status int, name, value string) {
	t.Helper()
	findFake(t, w, cseq, status).Headers[name] = []string{value}
}

// fakeSessionExpiry: the PBX's 2 s refused with 422, 4 s accepted at 0 s,
// the SBC's BYEs at 2.7 s.
func fakeSessionExpiry(t *testing.T, extra ...fakeMsg) flowWire {
	pbxSDP, carSDP := fakeSDP("10.91.1.2", 6000), fakeSDP("203.0.113.2", 6000)
	pbx := timedLink("pbx", "10.91.1.1", "10.91.1.2", []fakeMsg{
		fakeReq(false, "INVITE", "1 INVITE", false, fakeSDPType, pbxSDP),
		fakeRes(true, 422, "1 INVITE", "", ""),
		fakeReq(false, "ACK", "1 ACK", false, "", ""),
		fakeReq(false, "INVITE", "2 INVITE", false, fakeSDPType, pbxSDP),
		fakeRes(true, 200, "2 INVITE", fakeSDPType, fakeSDP("10.91.1.1", 20000)),
		fakeReq(false, "ACK", "2 ACK", true, "", ""),
		fakeReq(true, "BYE", "1 BYE", true, "", ""),
		fakeRes(false, 200, "1 BYE", "", ""),
	}, []time.Duration{0, 0, 0, 0, 0, 0, 2700 * time.Millisecond, 2700 * time.Millisecond})
	setFakeHeader(t, &pbx, "1 INVITE", 422, "min-se", "3")
	car := fakeLink("carrier", "203.0.113.1", "203.0.113.2", append([]fakeMsg{
		fakeReq(true, "INVITE", "1 INVITE", false, fakeSDPType, fakeSDP("203.0.113.1", 20002)),
		fakeRes(false, 200, "1 INVITE", fakeSDPType, carSDP),
		fakeReq(true, "ACK", "1 ACK", true, "", ""),
		fakeReq(true, "BYE", "2 BYE", true, "", ""),
		fakeRes(false, 200, "2 BYE", "", ""),
	}, extra...)...)
	return flowWire{caller: pbx, callee: car, media: portRange{20000, 20099}}
}

// fakeSBCRefresh: the carrier calls the PBX; the SBC refreshes the PBX leg
// with an UPDATE 2 s after the answer.
func fakeSBCRefresh(t *testing.T, extra ...fakeMsg) flowWire {
	car := fakeLink("carrier", "203.0.113.1", "203.0.113.2", append([]fakeMsg{
		fakeReq(false, "INVITE", "1 INVITE", false, fakeSDPType, fakeSDP("203.0.113.2", 6000)),
		fakeRes(true, 200, "1 INVITE", fakeSDPType, fakeSDP("203.0.113.1", 20002)),
		fakeReq(false, "ACK", "1 ACK", true, "", ""),
		fakeReq(false, "BYE", "2 BYE", true, "", ""),
		fakeRes(true, 200, "2 BYE", "", ""),
	}, extra...)...)
	pbx := timedLink("pbx", "10.91.1.1", "10.91.1.2", []fakeMsg{
		fakeReq(true, "INVITE", "4 INVITE", false, fakeSDPType, fakeSDP("10.91.1.1", 20000)),
		fakeRes(false, 200, "4 INVITE", fakeSDPType, fakeSDP("10.91.1.2", 6000)),
		fakeReq(true, "ACK", "4 ACK", true, "", ""),
		fakeReq(true, "UPDATE", "5 UPDATE", true, "", ""),
		fakeRes(false, 200, "5 UPDATE", "", ""),
	}, []time.Duration{0, 0, 0, 2 * time.Second, 2 * time.Second})
	setFakeHeader(t, &pbx, "5 UPDATE", 0, "session-expires", "4;refresher=uac")
	return flowWire{caller: car, callee: pbx, media: portRange{20000, 20099}}
}

// fakeRetry422: the PBX answers 422; the SBC retries with 6 s.
func fakeRetry422(t *testing.T, extra ...fakeMsg) flowWire {
	car := fakeLink("carrier", "203.0.113.1", "203.0.113.2", append([]fakeMsg{
		fakeReq(false, "INVITE", "1 INVITE", false, fakeSDPType, fakeSDP("203.0.113.2", 6000)),
		fakeRes(true, 200, "1 INVITE", fakeSDPType, fakeSDP("203.0.113.1", 20002)),
		fakeReq(false, "ACK", "1 ACK", true, "", ""),
	}, extra...)...)
	pbx := fakeLink("pbx", "10.91.1.1", "10.91.1.2",
		fakeReq(true, "INVITE", "7 INVITE", false, fakeSDPType, fakeSDP("10.91.1.1", 20000)),
		fakeRes(false, 422, "7 INVITE", "", ""),
		fakeReq(true, "ACK", "7 ACK", false, "", ""),
		fakeReq(true, "INVITE", "8 INVITE", false, fakeSDPType, fakeSDP("10.91.1.1", 20000)),
		fakeRes(false, 200, "8 INVITE", fakeSDPType, fakeSDP("10.91.1.2", 6000)),
		fakeReq(true, "ACK", "8 ACK", true, "", ""),
	)
	setFakeHeader(t, &pbx, "7 INVITE", 0, "session-expires", "4")
	setFakeHeader(t, &pbx, "8 INVITE", 0, "session-expires", "6")
	setFakeHeader(t, &pbx, "8 INVITE", 0, "min-se", "6")
	return flowWire{caller: car, callee: pbx, media: portRange{20000, 20099}}
}
