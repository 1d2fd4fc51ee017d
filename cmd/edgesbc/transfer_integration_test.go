//go:build linux

package main_test

import (
	"fmt"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/edgesbc/edgesbc/internal/testenv"
)

// This file runs the transfers TestIntegrationTransfer (a blind transfer)
// leaves out: an attended transfer the SBC performs, and the two other
// REFER policies, "pass" (relayed with the target and referrer hidden) and
// "reject" (603). Each ends with the daemon back to idle and both links
// free of the other side's topology.

// referPoliciesConfig relays the PBX's REFERs and declines the carrier's.
const referPoliciesConfig = "testdata/refer_policies.hcl"

// The ports of the extra carrier parties of a transfer: the transferee
// (uac_transferee.xml) and the target of an attended transfer.
const (
	transfereePort, transfereeMedia = 5070, 6100
	targetPort, targetMedia         = 5080, 6200
)

// blindTransfer runs the three parties of a blind transfer the SBC
// performs: the carrier's transferee (port 5070, uac_transferee.xml) calls
// the PBX, the PBX (uas_refer.xml) REFERs it to a number on the carrier,
// where targetScenario answers with an RTP echo. Each party must complete
// exactly one call.
func blindTransfer(t *testing.T, l *lab, targetScenario string) {
	t.Helper()
	dir := scenarioDir(t)
	timeout := fmt.Sprintf("%ds", int((callBound+3*time.Second)/time.Second))
	target := testenv.StartSIPp(t, l.carrier.ns, dir, "-sf", targetScenario, "-i", l.carrier.addr.String(),
		"-p", strconv.Itoa(sipPort), "-rtp_echo", "-timeout", timeout)
	referrer := testenv.StartSIPp(t, l.pbx.ns, dir, "-sf", "uas_refer.xml", "-i", l.pbx.addr.String(),
		"-p", strconv.Itoa(sipPort), "-timeout", timeout)
	res, err := testenv.StartSIPp(t, l.carrier.ns, dir, "-sf", "uac_transferee.xml", "-i", l.carrier.addr.String(),
		"-p", strconv.Itoa(transfereePort), "-mp", strconv.Itoa(transfereeMedia), "-s", dialogInboundNumber,
		"-timeout", fmt.Sprintf("%ds", int(callBound/time.Second)), l.sbcPublic.String()).Wait()
	expectOneCall(t, "transferee uac_transferee.xml", res, err)
	res, err = referrer.Wait()
	expectOneCall(t, "referrer uas_refer.xml", res, err)
	res, err = target.Wait()
	expectOneCall(t, "target "+targetScenario, res, err)
}

// TestIntegrationAttendedTransfer: the carrier's transferee (port 5070)
// and target (port 5080) each call the PBX; the PBX REFERs the
// transferee's call with a Refer-To whose Replaces names its call with the
// target (RFC 3891). The SBC moves the target's leg into the transferee's
// call: it ends the PBX's leg of the target's call with BYE, re-INVITEs
// the target without SDP, bridges its offer to the transferee, NOTIFYs
// the PBX (100, then 200) and releases it. Audio then flows between the
// two carrier parties through the re-anchored media.
func TestIntegrationAttendedTransfer(t *testing.T) {
	l := newLab(t)
	base := l.daemon.Status(t)
	dir := scenarioDir(t)
	timeout := fmt.Sprintf("%ds", int((callBound+3*time.Second)/time.Second))
	pbx := testenv.StartSIPp(t, l.pbx.ns, dir, "-sf", "uas_attended_referrer.xml", "-i", l.pbx.addr.String(),
		"-p", strconv.Itoa(sipPort), "-m", "2", "-timeout", timeout)
	target := testenv.StartSIPp(t, l.carrier.ns, dir, "-sf", "uac_attended_target.xml", "-i", l.carrier.addr.String(),
		"-p", strconv.Itoa(targetPort), "-mp", strconv.Itoa(targetMedia), "-rtp_echo", "-s", dialogInboundNumber,
		"-timeout", timeout, l.sbcPublic.String())
	res, err := testenv.StartSIPp(t, l.carrier.ns, dir, "-sf", "uac_transferee.xml", "-i", l.carrier.addr.String(),
		"-p", strconv.Itoa(transfereePort), "-mp", strconv.Itoa(transfereeMedia), "-s", dialogInboundNumber,
		"-timeout", fmt.Sprintf("%ds", int(callBound/time.Second)), l.sbcPublic.String()).Wait()
	expectOneCall(t, "transferee uac_transferee.xml", res, err)
	res, err = target.Wait()
	expectOneCall(t, "target uac_attended_target.xml", res, err)
	res, err = pbx.Wait()
	if err != nil {
		t.Errorf("referrer uas_attended_referrer.xml: %v", err)
	} else if res != (testenv.SIPpResult{Exit: 0, Successful: 2}) {
		t.Errorf("referrer uas_attended_referrer.xml: exit %d, %d successful, %d failed calls; want exit 0 and two successful calls",
			res.Exit, res.Successful, res.Failed)
	}

	t.Run("daemon_back_to_idle", func(t *testing.T) { l.assertIdle(t, base) })
	carrierPkts, pbxPkts := l.stopCaptures(t)
	carrierMsgs, pbxMsgs := sipMessages(carrierPkts), sipMessages(pbxPkts)
	carrier := wireLink{name: "carrier", sbc: l.sbcPublic.Addr(), peer: l.carrier.addr, pkts: carrierPkts, sip: carrierMsgs}
	pbxLink := wireLink{name: "pbx", sbc: l.sbcPrivate.Addr(), peer: l.pbx.addr, pkts: pbxPkts, sip: pbxMsgs}

	t.Run("target_moved_and_bridged", func(t *testing.T) {
		var p flowProblems
		toPort := func(port uint16) func(sipMessage) bool {
			return func(m sipMessage) bool { return isReInvite(m) && m.Dst.Port() == port }
		}
		if re, ok := p.one("re-INVITEs to the target", carrier, carrier.fromSBC(toPort(targetPort))); ok {
			p.noBody("re-INVITE to the target", carrier, re)
			if ack, ok := p.ack("target", carrier, re); ok {
				p.sdp("ACK to the target", carrier, l.media, ack)
			}
		}
		if re, ok := p.one("re-INVITEs to the transferee", carrier, carrier.fromSBC(toPort(transfereePort))); ok {
			p.sdp("bridging re-INVITE", carrier, l.media, re)
		}
		p.referProgress(pbxLink)
		// both of the PBX's dialogs end with the SBC's BYE
		byes := pbxLink.fromSBC(isRequest("BYE"))
		if calls := distinctCalls(byes); len(byes) != 2 || calls != 2 {
			p.addf("pbx link: %d BYEs from the SBC in %d dialogs, want one in each of the PBX's 2 dialogs: %v", len(byes), calls, byes)
		}
		if n := len(carrier.fromSBC(isRequest("REFER"))); n > 0 {
			p.addf("carrier link: %d REFERs from the SBC, want none (the SBC performs the transfer)", n)
		}
		for _, problem := range p {
			t.Error(problem)
		}
	})

	t.Run("media_follows_the_transfer", func(t *testing.T) {
		counts := rtpByPeerPort(t, carrier, l.media)
		for _, k := range []string{fmt.Sprintf("to %d", targetMedia), fmt.Sprintf("from %d", targetMedia),
			fmt.Sprintf("to %d", transfereeMedia), fmt.Sprintf("from %d", transfereeMedia)} {
			if counts[k] < minRTP {
				t.Errorf("RTP %s: %d packets, want at least %d (all: %v)", k, counts[k], minRTP, counts)
			}
		}
	})

	t.Run("sdp_anchored_at_sbc", func(t *testing.T) {
		for _, p := range checkSDP(pbxMsgs, l.sbcPrivate.Addr(), l.pbx.addr) {
			t.Errorf("to pbx: %s", p)
		}
		for _, p := range checkSDP(carrierMsgs, l.sbcPublic.Addr(), l.carrier.addr) {
			t.Errorf("to carrier: %s", p)
		}
	})
	checkNoLeaks(t, l, carrierPkts, pbxPkts)
}

// TestIntegrationTransferPolicies runs the REFER policies other than
// "terminate" through one daemon: the PBX's REFER relayed to the carrier
// (refer = "pass") with its target and referrer hidden, and the carrier's
// REFER declined with 603 (refer = "reject") with nothing reaching the PBX.
func TestIntegrationTransferPolicies(t *testing.T) {
	l := newLabConfig(t, referPoliciesConfig)
	base := l.daemon.Status(t)

	t.Run("pass_from_pbx", func(t *testing.T) {
		pbxCapture := testenv.StartCapture(t, l.topo.PBX, l.topo.PBXIf, "udp")
		carrierCapture := testenv.StartCapture(t, l.topo.Carrier, l.topo.CarrierIf, "udp")
		l.call(t, inboundCall(scenarioPair{name: "refer_pass", uac: "uac_refer_pass.xml", uas: "uas_refer_pass.xml"}))
		pbx := l.link(t, "pbx", pbxCapture, l.sbcPrivate.Addr(), l.pbx.addr)
		carrier := l.link(t, "carrier", carrierCapture, l.sbcPublic.Addr(), l.carrier.addr)
		for _, p := range checkReferPassed(carrier, pbx) {
			t.Error(p)
		}
	})

	t.Run("reject_from_carrier", func(t *testing.T) {
		pbxCapture := testenv.StartCapture(t, l.topo.PBX, l.topo.PBXIf, "udp")
		carrierCapture := testenv.StartCapture(t, l.topo.Carrier, l.topo.CarrierIf, "udp")
		l.call(t, outboundCall(scenarioPair{name: "refer_reject", uac: "uac_expect_bye.xml", uas: "uas_refer_reject.xml"}))
		pbx := l.link(t, "pbx", pbxCapture, l.sbcPrivate.Addr(), l.pbx.addr)
		carrier := l.link(t, "carrier", carrierCapture, l.sbcPublic.Addr(), l.carrier.addr)
		var p flowProblems
		if refer, ok := p.one("REFERs from the carrier", carrier, carrier.fromPeer(isRequest("REFER"))); ok {
			p.final("REFER", carrier, refer, 603)
		}
		for _, w := range []wireLink{pbx, carrier} {
			if n := len(w.fromSBC(func(m sipMessage) bool { return m.Method == "REFER" || m.Method == "NOTIFY" })); n > 0 {
				p.addf("%s link: %d REFERs or NOTIFYs from the SBC, want none", w.name, n)
			}
		}
		for _, problem := range p {
			t.Error(problem)
		}
	})

	t.Run("daemon_back_to_idle", func(t *testing.T) { l.assertIdle(t, base) })
	carrierPkts, pbxPkts := l.stopCaptures(t)
	checkNoLeaks(t, l, carrierPkts, pbxPkts)
}

// checkReferPassed: the PBX's REFER reaches the carrier with Refer-To
// naming the target by number at the SBC's public address and
// Referred-By at the SBC too; the carrier's 202 and NOTIFYs (with their
// sipfrag bodies) reach the PBX.
func checkReferPassed(carrier, pbx wireLink) []string {
	var p flowProblems
	if refer, ok := p.one("REFERs from the SBC", carrier, carrier.fromSBC(isRequest("REFER"))); ok {
		got := refer.header("refer-to")
		if want := regexp.MustCompile(`^<sip:15557654321@` + regexp.QuoteMeta(carrier.sbc.String()) + `(:5060)?;user=phone>$`); !want.MatchString(got) {
			p.addf("carrier link: %v has Refer-To %q, want <sip:15557654321@%v[:5060];user=phone>", refer, got, carrier.sbc)
		}
		if rb := refer.header("referred-by"); !strings.Contains(rb, "@"+carrier.sbc.String()) {
			p.addf("carrier link: %v has Referred-By %q, want the SBC's address %v as host", refer, rb, carrier.sbc)
		}
		p.final("relayed REFER", carrier, refer, 202)
	}
	if refer, ok := p.one("REFERs from the PBX", pbx, pbx.fromPeer(isRequest("REFER"))); ok {
		p.final("REFER", pbx, refer, 202)
	}
	p.referProgress(pbx)
	return p
}

// referProgress checks the NOTIFYs of a refer subscription the PBX gets
// on w: "100 Trying" while active, then "200 OK" ending it, as
// message/sipfrag, each answered 200.
func (p *flowProblems) referProgress(w wireLink) {
	notifies := w.fromSBC(isRequest("NOTIFY"))
	if len(notifies) != 2 {
		p.addf("%s link: %d NOTIFYs from the SBC, want 2 (100 Trying, 200 OK): %v", w.name, len(notifies), notifies)
		return
	}
	for i, want := range []struct{ frag, state string }{
		{"SIP/2.0 100 Trying", "active"},
		{"SIP/2.0 200 OK", "terminated"},
	} {
		n := notifies[i]
		if !strings.HasPrefix(n.Body, want.frag) {
			p.addf("%s link: NOTIFY %d %v has body %q, want sipfrag %q", w.name, i+1, n, n.Body, want.frag)
		}
		if ct := n.header("content-type"); !strings.HasPrefix(strings.ToLower(ct), "message/sipfrag") {
			p.addf("%s link: NOTIFY %d %v has Content-Type %q, want message/sipfrag", w.name, i+1, n, ct)
		}
		if ev := n.header("event"); ev != "refer" {
			p.addf("%s link: NOTIFY %d %v has Event %q, want refer", w.name, i+1, n, ev)
		}
		if st := n.header("subscription-state"); !strings.HasPrefix(st, want.state) {
			p.addf("%s link: NOTIFY %d %v has Subscription-State %q, want %s", w.name, i+1, n, st, want.state)
		}
		p.final("NOTIFY", w, n, 200)
	}
}

// distinctCalls counts the Call-IDs among msgs.
func distinctCalls(msgs []sipMessage) int {
	ids := map[string]bool{}
	for _, m := range msgs {
		ids[m.CallID] = true
	}
	return len(ids)
}

// rtpByPeerPort counts the RTP packets between the SBC's media ports and
// each of the peer's ports on w ("to 6000", "from 6000"), reporting media
// that reached the peer from anywhere else.
func rtpByPeerPort(t *testing.T, w wireLink, media portRange) map[string]int {
	t.Helper()
	counts := map[string]int{}
	sip := func(port uint16) bool {
		return port == sipPort || port == transfereePort || port == targetPort
	}
	for i, pkt := range w.pkts {
		if pkt.Proto != testenv.ProtoUDP || sip(pkt.Src.Port()) || sip(pkt.Dst.Port()) {
			continue
		}
		switch {
		case pkt.Src.Addr() == w.sbc && media.contains(pkt.Src.Port()):
			counts[fmt.Sprintf("to %d", pkt.Dst.Port())]++
		case pkt.Dst.Addr() == w.sbc && media.contains(pkt.Dst.Port()):
			counts[fmt.Sprintf("from %d", pkt.Src.Port())]++
		case pkt.Dst.Addr() == w.peer:
			t.Errorf("packet %d: %v > %v: media not from the SBC's ports", i, pkt.Src, pkt.Dst)
		}
	}
	return counts
}

// checkNoLeaks checks both links of a whole run for the other side's
// topology.
func checkNoLeaks(t *testing.T, l *lab, carrierPkts, pbxPkts []testenv.Packet) {
	t.Helper()
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
