//go:build linux

package main_test

import (
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/edgesbc/edgesbc/internal/testenv"
)

// This file runs calls whose dialogs carry more than INVITE, ACK and BYE
// through the SBC: hold and resume, re-INVITE without SDP, late offer, a
// refused re-INVITE, INFO and UPDATE. Each flow is one call between real
// SIPp peers; besides SIPp's own verdict (the scenarios check directions,
// bodies and headers with ereg check_it), every flow checks its own traffic
// on both links: each offer and answer re-anchored at the SBC, bodies kept
// or left out as the flow requires, and RTP relayed where audio plays.

// The numbers dialled in each direction, as in sbcCases: a number on the
// trunk from the PBX, an extension of the PBX from the carrier.
const (
	dialogOutboundNumber = "15551234567"
	dialogInboundNumber  = "1000"
)

// The scenario pairs of the in-dialog flows, as run without an SBC.
var (
	holdPair = scenarioPair{name: "hold_resume", uac: "uac_hold.xml", uas: "uas_hold.xml",
		service: dialogOutboundNumber, uasArgs: []string{"-rtp_echo"}, rtp: true}
	reinviteNoSDPPair = scenarioPair{name: "reinvite_without_sdp", uac: "uac_reinvite_nosdp.xml", uas: "uas_reinvite_nosdp.xml",
		service: dialogOutboundNumber, uasArgs: []string{"-rtp_echo"}, rtp: true}
	lateOfferPair = scenarioPair{name: "late_offer", uac: "uac_late_offer.xml", uas: "uas_late_offer.xml",
		service: dialogOutboundNumber, uasArgs: []string{"-rtp_echo"}, rtp: true}
	reinvite488Pair = scenarioPair{name: "reinvite_rejected_488", uac: "uac_reinvite_488.xml", uas: "uas_reinvite_488.xml",
		service: dialogOutboundNumber, uasArgs: []string{"-rtp_echo"}, rtp: true}
	infoPair = scenarioPair{name: "info_dtmf_relay", uac: "uac_info.xml", uas: "uas_info.xml",
		service: dialogOutboundNumber}
	updatePair = scenarioPair{name: "update_from_callee", uac: "uac_expect_update.xml", uas: "uas_update.xml",
		service: dialogOutboundNumber}
)

// The in-dialog pairs join directPairs, so TestIntegrationSIPpDirect proves
// them over a plain link (including the branch of the ACK for the 488) and
// TestScenarioCoverage counts their files as run.
// inboundCall returns p as a call from the carrier to the PBX.
func inboundCall(p scenarioPair) sbcCase {
	p.service = dialogInboundNumber
	return sbcCase{scenarioPair: p, inbound: true}
}

// outboundCall returns p as a call from the PBX to the carrier.
func outboundCall(p scenarioPair) sbcCase {
	p.service = dialogOutboundNumber
	return sbcCase{scenarioPair: p}
}

// dialogFlow is one call of TestIntegrationDialogs and what its traffic
// must show.
type dialogFlow struct {
	name string
	sbcCase
	// check returns what the flow's traffic got wrong.
	check func(fw flowWire) []string
}

var dialogFlows = []dialogFlow{
	{"hold_resume_from_pbx", outboundCall(holdPair), checkHoldResume},
	{"hold_resume_from_carrier", inboundCall(holdPair), checkHoldResume},
	{"reinvite_without_sdp_from_pbx", outboundCall(reinviteNoSDPPair), checkReinviteWithoutSDP},
	{"late_offer_from_pbx", outboundCall(lateOfferPair), checkLateOffer},
	{"late_offer_from_carrier", inboundCall(lateOfferPair), checkLateOffer},
	{"reinvite_rejected_488", outboundCall(reinvite488Pair), checkReinviteRejected},
	{"info_from_pbx", outboundCall(infoPair), checkInfo},
	{"update_from_carrier", outboundCall(updatePair), checkUpdate},
}

// TestIntegrationDialogs runs every in-dialog flow through one daemon, one
// call after the other, each with captures of its own on both links; then
// checks the whole run's carrier link for inside topology and that the
// daemon is back to idle.
func TestIntegrationDialogs(t *testing.T) { runDialogs(t, newLab(t)) }

// TestIntegrationDialogsKernel runs the same flows with kernel offload on:
// every re-INVITE, hold and resume must take the stream out of the kernel
// and back with the wire looking exactly as with the userspace relay.
func TestIntegrationDialogsKernel(t *testing.T) {
	l := newLabWith(t, integrationConfig, forwarding)
	if st := l.daemon.Status(t); !st.KernelOffload {
		t.Fatalf("status %+v: kernel offload is off although the namespace forwards", st)
	}
	runDialogs(t, l)
	offloaded := 0
	for _, m := range regexp.MustCompile(`rtp_offloaded=(\d+)`).FindAllStringSubmatch(l.daemon.Log(), -1) {
		if n, _ := strconv.Atoi(m[1]); n > 0 {
			offloaded++
		}
	}
	if offloaded == 0 {
		t.Error("no call's CDR shows packets forwarded by the kernel")
	}
	t.Logf("%d calls had packets forwarded by the kernel", offloaded)
}

func runDialogs(t *testing.T, l *lab) {
	base := l.daemon.Status(t)
	if base.Calls != 0 || base.Sessions != 0 || base.PortsInUse != 0 || base.Dialogs != 0 {
		t.Errorf("status right after start: %+v, want no calls, sessions, ports or dialogs", base)
	}

	for _, f := range dialogFlows {
		select {
		case <-l.daemon.Done():
			t.Fatalf("daemon exited; flows from %s on not run", f.name)
		default:
		}
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
			// The SBC's own client transactions: a new branch for the ACK
			// of a 2xx, the re-INVITE's branch for the ACK of the 488.
			for _, side := range []wireLink{pbx, carrier} {
				for _, p := range checkTransactions(side.sip, side.sbc) {
					t.Errorf("%s link, SBC transactions: %s", side.name, p)
				}
			}
			for _, p := range f.check(w) {
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

	t.Run("sdp_anchored_at_sbc", func(t *testing.T) {
		for _, p := range checkSDP(sipMessages(pbxPkts), l.sbcPrivate.Addr(), l.pbx.addr) {
			t.Errorf("to pbx: %s", p)
		}
		for _, p := range checkSDP(sipMessages(carrierPkts), l.sbcPublic.Addr(), l.carrier.addr) {
			t.Errorf("to carrier: %s", p)
		}
	})
}

// wireLink is one flow's traffic on the link between the SBC and one peer.
type wireLink struct {
	name      string // "pbx" or "carrier"
	sbc, peer netip.Addr
	pkts      []testenv.Packet
	sip       []sipMessage
}

// flowWire is one flow's traffic on the caller's and on the callee's link.
type flowWire struct {
	caller, callee wireLink
	media          portRange
}

// link stops c and reads it as the link between the SBC at sbc and peer.
func (l *lab) link(t *testing.T, name string, c *testenv.Capture, sbc, peer netip.Addr) wireLink {
	t.Helper()
	pkts, err := testenv.ReadUDP(c.Stop())
	if err != nil {
		t.Fatalf("%s capture: %v", name, err)
	}
	return wireLink{name: name, sbc: sbc, peer: peer, pkts: pkts, sip: sipMessages(pkts)}
}

// fromSBC returns the distinct messages the SBC sent to the peer that
// match, in capture order.
func (w wireLink) fromSBC(match func(sipMessage) bool) []sipMessage {
	return w.messages(w.sbc, w.peer, match)
}

// fromPeer returns the distinct messages the peer sent to the SBC that
// match, in capture order.
func (w wireLink) fromPeer(match func(sipMessage) bool) []sipMessage {
	return w.messages(w.peer, w.sbc, match)
}

// messages returns the messages from src to dst that match, leaving out
// retransmissions: a message repeating the method or status, Call-ID, CSeq
// and top Via branch of an earlier one.
func (w wireLink) messages(src, dst netip.Addr, match func(sipMessage) bool) []sipMessage {
	type key struct {
		method               string
		status               int
		callID, cseq, branch string
	}
	seen := map[key]bool{}
	var out []sipMessage
	for _, m := range w.sip {
		if m.Src.Addr() != src || m.Dst.Addr() != dst || !match(m) {
			continue
		}
		k := key{m.Method, m.Status, m.CallID, strings.Join(strings.Fields(m.header("cseq")), " "), m.Branch}
		if seen[k] {
			continue
		}
		seen[k] = true
		out = append(out, m)
	}
	return out
}

// finalResponse returns the first final response on w to req, sent the
// other way.
func (w wireLink) finalResponse(req sipMessage) (sipMessage, bool) {
	i := slices.IndexFunc(w.sip, func(m sipMessage) bool {
		return m.Status >= 200 && m.Src.Addr() == req.Dst.Addr() && m.Dst.Addr() == req.Src.Addr() &&
			m.CallID == req.CallID && sameCSeq(m, req)
	})
	if i < 0 {
		return sipMessage{}, false
	}
	return w.sip[i], true
}

// ackFor returns the first ACK on w for the INVITE req, sent the same way.
func (w wireLink) ackFor(req sipMessage) (sipMessage, bool) {
	n, ok := cseqNumber(req)
	if !ok {
		return sipMessage{}, false
	}
	i := slices.IndexFunc(w.sip, func(m sipMessage) bool {
		k, ok := cseqNumber(m)
		return m.Method == "ACK" && m.Src.Addr() == req.Src.Addr() && m.Dst.Addr() == req.Dst.Addr() &&
			m.CallID == req.CallID && ok && k == n
	})
	if i < 0 {
		return sipMessage{}, false
	}
	return w.sip[i], true
}

// isRequest matches requests of method.
func isRequest(method string) func(sipMessage) bool {
	return func(m sipMessage) bool { return m.Method == method }
}

// toTagParam matches a tag parameter in a To header value.
var toTagParam = regexp.MustCompile(`(?i);\s*tag\s*=`)

// isReInvite matches an INVITE within a dialog, which carries the To tag.
func isReInvite(m sipMessage) bool {
	return m.Method == "INVITE" && toTagParam.MatchString(m.header("to"))
}

// isInitialInvite matches the INVITE that creates a dialog.
func isInitialInvite(m sipMessage) bool {
	return m.Method == "INVITE" && !toTagParam.MatchString(m.header("to"))
}

// cseqNumber returns the sequence number of m's CSeq.
func cseqNumber(m sipMessage) (uint32, bool) {
	f := strings.Fields(m.header("cseq"))
	if len(f) != 2 {
		return 0, false
	}
	n, err := strconv.ParseUint(f[0], 10, 32)
	return uint32(n), err == nil
}

// sameCSeq reports whether a and b have the same CSeq number and method.
func sameCSeq(a, b sipMessage) bool {
	n, ok1 := cseqNumber(a)
	k, ok2 := cseqNumber(b)
	return ok1 && ok2 && n == k && a.CSeqMethod == b.CSeqMethod
}

// flowProblems collects what a flow's traffic got wrong, one line each.
type flowProblems []string

func (p *flowProblems) addf(format string, args ...any) {
	*p = append(*p, fmt.Sprintf(format, args...))
}

// sdp checks an SDP body the SBC sent on w: there, labelled
// application/sdp, every c= the SBC's address on that link, every m= port
// one of the SBC's media ports, and each of attrs present as a line.
func (p *flowProblems) sdp(what string, w wireLink, media portRange, m sipMessage, attrs ...string) {
	if m.Body == "" {
		p.addf("%s link, %s: %v has no SDP body", w.name, what, m)
		return
	}
	if ct := m.header("content-type"); !strings.EqualFold(ct, "application/sdp") {
		p.addf("%s link, %s: %v has Content-Type %q, want application/sdp", w.name, what, m, ct)
	}
	var conns, streams int
	lines := map[string]bool{}
	for line := range strings.Lines(m.Body) {
		line = strings.TrimSpace(line)
		lines[line] = true
		switch {
		case strings.HasPrefix(line, "c="):
			conns++
			if f := strings.Fields(line[2:]); len(f) != 3 || f[2] != w.sbc.String() {
				p.addf("%s link, %s: %v has %q, want c=IN IP4 %v", w.name, what, m, line, w.sbc)
			}
		case strings.HasPrefix(line, "m="):
			streams++
			f := strings.Fields(line[2:])
			if len(f) < 2 {
				p.addf("%s link, %s: %v has a malformed %q", w.name, what, m, line)
				continue
			}
			if port, err := strconv.ParseUint(f[1], 10, 16); err != nil || !media.contains(uint16(port)) {
				p.addf("%s link, %s: %v has %q, want a port of %v in %d-%d", w.name, what, m, line, w.sbc, media.min, media.max)
			}
		}
	}
	if conns == 0 || streams == 0 {
		p.addf("%s link, %s: %v has %d c= and %d m= lines, want at least one each:\n%s", w.name, what, m, conns, streams, m.Body)
	}
	for _, a := range attrs {
		if !lines[a] {
			p.addf("%s link, %s: %v has no %q line:\n%s", w.name, what, m, a, m.Body)
		}
	}
}

// noBody reports a body on a message that must have none.
func (p *flowProblems) noBody(what string, w wireLink, m sipMessage) {
	if m.Body != "" {
		p.addf("%s link, %s: %v carries a body (Content-Type %q), want none:\n%s", w.name, what, m, m.header("content-type"), m.Body)
	}
}

// rtp checks that the caller's audio and its echo crossed both links
// between the SBC's media ports and the peers, and that nothing else
// reached a peer.
func (p *flowProblems) rtp(fw flowWire) {
	for _, w := range []wireLink{fw.caller, fw.callee} {
		r := checkRTP(w.pkts, w.sbc, w.peer, fw.media, sipPort)
		if r.ToPeer < minRTP || r.FromPeer < minRTP {
			p.addf("%s link: %d RTP packets from %v media ports to the %s, %d back; want at least %d each way",
				w.name, r.ToPeer, w.sbc, w.name, r.FromPeer, minRTP)
		}
		for _, s := range r.Strays {
			p.addf("%s link: media not from %v ports %d-%d: %s", w.name, w.sbc, fw.media.min, fw.media.max, s)
		}
	}
}

// one returns the single message of msgs, reporting any other count.
func (p *flowProblems) one(what string, w wireLink, msgs []sipMessage) (sipMessage, bool) {
	if len(msgs) != 1 {
		p.addf("%s link: %d %s, want 1: %v", w.name, len(msgs), what, msgs)
		return sipMessage{}, false
	}
	return msgs[0], true
}

// final returns the final response to req on w, reporting its absence or
// a status other than want.
func (p *flowProblems) final(what string, w wireLink, req sipMessage, want int) (sipMessage, bool) {
	res, ok := w.finalResponse(req)
	switch {
	case !ok:
		p.addf("%s link, %s: no final response to %v, want %d", w.name, what, req, want)
	case res.Status != want:
		p.addf("%s link, %s: %v answered %v, want %d", w.name, what, req, res, want)
	default:
		return res, true
	}
	return sipMessage{}, false
}

// ack returns the ACK on w for the INVITE req, reporting its absence.
func (p *flowProblems) ack(what string, w wireLink, req sipMessage) (sipMessage, bool) {
	ack, ok := w.ackFor(req)
	if !ok {
		p.addf("%s link, %s: no ACK for %v", w.name, what, req)
	}
	return ack, ok
}

// checkHoldResume: the caller's hold (a=sendonly) and resume (a=sendrecv)
// re-INVITEs reach the callee re-anchored at the SBC, the callee's answers
// (a=recvonly, a=sendrecv) reach the caller the same way, and the audio
// played across both survives them.
func checkHoldResume(fw flowWire) []string {
	var p flowProblems
	sent := fw.caller.fromPeer(isReInvite)
	relayed := fw.callee.fromSBC(isReInvite)
	if len(sent) != 2 || len(relayed) != 2 {
		p.addf("re-INVITEs: %d from the caller on the %s link, %d relayed to the callee on the %s link; want 2 each (hold, resume)",
			len(sent), fw.caller.name, len(relayed), fw.callee.name)
	}
	for i, step := range []struct{ name, offer, answer string }{
		{"hold", "a=sendonly", "a=recvonly"},
		{"resume", "a=sendrecv", "a=sendrecv"},
	} {
		if i < len(relayed) {
			p.sdp(step.name+" re-INVITE", fw.callee, fw.media, relayed[i], step.offer)
		}
		if i < len(sent) {
			if res, ok := p.final(step.name+" re-INVITE", fw.caller, sent[i], 200); ok {
				p.sdp(step.name+" 200", fw.caller, fw.media, res, step.answer)
			}
		}
	}
	p.rtp(fw)
	return p
}

// checkReinviteWithoutSDP: an SDP-less re-INVITE stays SDP-less, the
// callee's offer in the 200 reaches the caller re-anchored, the caller's
// answer in the ACK reaches the callee re-anchored, and audio flows on the
// renegotiated session.
func checkReinviteWithoutSDP(fw flowWire) []string {
	var p flowProblems
	if relayed, ok := p.one("re-INVITEs relayed to the callee", fw.callee, fw.callee.fromSBC(isReInvite)); ok {
		p.noBody("re-INVITE", fw.callee, relayed)
		if ack, ok := p.ack("re-INVITE", fw.callee, relayed); ok {
			p.sdp("ACK with the answer", fw.callee, fw.media, ack)
		}
	}
	if sent, ok := p.one("re-INVITEs from the caller", fw.caller, fw.caller.fromPeer(isReInvite)); ok {
		if res, ok := p.final("re-INVITE", fw.caller, sent, 200); ok {
			p.sdp("200 with the offer", fw.caller, fw.media, res)
		}
	}
	p.rtp(fw)
	return p
}

// checkLateOffer: the INVITE without SDP reaches the callee without SDP,
// the offer in the callee's 200 reaches the caller re-anchored, the answer
// in the caller's ACK reaches the callee re-anchored, and audio flows.
func checkLateOffer(fw flowWire) []string {
	var p flowProblems
	if relayed, ok := p.one("INVITEs relayed to the callee", fw.callee, fw.callee.fromSBC(isInitialInvite)); ok {
		p.noBody("INVITE", fw.callee, relayed)
		if ack, ok := p.ack("INVITE", fw.callee, relayed); ok {
			p.sdp("ACK with the answer", fw.callee, fw.media, ack)
		}
	}
	if sent, ok := p.one("INVITEs from the caller", fw.caller, fw.caller.fromPeer(isInitialInvite)); ok {
		if res, ok := p.final("INVITE", fw.caller, sent, 200); ok {
			p.sdp("200 with the offer", fw.caller, fw.media, res)
		}
	}
	p.rtp(fw)
	return p
}

// checkReinviteRejected: the refused re-offer reaches the callee
// re-anchored, its 488 reaches the caller, the SBC ACKs the 488 on the
// callee's side (checkTransactions checks the branch), the call goes on
// to a relayed BYE, and audio played after the refusal still flows both
// ways: the media went back to what was first agreed.
func checkReinviteRejected(fw flowWire) []string {
	var p flowProblems
	if sent, ok := p.one("re-INVITEs from the caller", fw.caller, fw.caller.fromPeer(isReInvite)); ok {
		p.final("re-INVITE", fw.caller, sent, 488)
	}
	if relayed, ok := p.one("re-INVITEs relayed to the callee", fw.callee, fw.callee.fromSBC(isReInvite)); ok {
		p.sdp("re-INVITE", fw.callee, fw.media, relayed, "a=rtpmap:18 G729/8000")
		p.ack("488 to the re-INVITE", fw.callee, relayed)
	}
	p.one("BYEs relayed to the callee after the refused re-INVITE", fw.callee, fw.callee.fromSBC(isRequest("BYE")))
	p.rtp(fw)
	return p
}

// checkInfo: the caller's INFO reaches the callee with its Content-Type and
// body unchanged, and the callee's 200 comes back.
func checkInfo(fw flowWire) []string {
	var p flowProblems
	sent, ok1 := p.one("INFOs from the caller", fw.caller, fw.caller.fromPeer(isRequest("INFO")))
	relayed, ok2 := p.one("INFOs relayed to the callee", fw.callee, fw.callee.fromSBC(isRequest("INFO")))
	if !ok1 || !ok2 {
		return p
	}
	if sent.Body == "" {
		p.addf("%s link: %v has no body; the scenario must send one", fw.caller.name, sent)
	}
	if got, want := relayed.header("content-type"), sent.header("content-type"); got != want {
		p.addf("%s link: %v has Content-Type %q, want %q as sent", fw.callee.name, relayed, got, want)
	}
	if relayed.Body != sent.Body {
		p.addf("%s link: %v has body %q, want %q as sent", fw.callee.name, relayed, relayed.Body, sent.Body)
	}
	p.final("INFO from the SBC", fw.callee, relayed, 200)
	p.final("INFO", fw.caller, sent, 200)
	return p
}

// checkUpdate: the callee's UPDATE without SDP (a session refresh) reaches
// the caller without SDP, and the caller's 200 goes back to the callee.
func checkUpdate(fw flowWire) []string {
	var p flowProblems
	if relayed, ok := p.one("UPDATEs relayed to the caller", fw.caller, fw.caller.fromSBC(isRequest("UPDATE"))); ok {
		p.noBody("UPDATE", fw.caller, relayed)
		p.final("UPDATE from the SBC", fw.caller, relayed, 200)
	}
	if sent, ok := p.one("UPDATEs from the callee", fw.callee, fw.callee.fromPeer(isRequest("UPDATE"))); ok {
		p.final("UPDATE", fw.callee, sent, 200)
	}
	return p
}

// TestDialogChecks shows that each flow check passes the traffic of a
// correct flow and reports each way the SBC could get it wrong. It needs
// neither root nor the network.
func TestDialogChecks(t *testing.T) {
	for _, tt := range []struct {
		name   string
		check  func(flowWire) []string
		wire   func() flowWire
		mutate func(t *testing.T, fw *flowWire)
		want   string // "" for the correct flow
	}{
		{name: "hold/correct", check: checkHoldResume, wire: fakeHold},
		{name: "hold/offer points past the SBC", check: checkHoldResume, wire: fakeHold, want: "want c=IN IP4 203.0.113.1",
			mutate: func(t *testing.T, fw *flowWire) {
				replaceFakeBody(t, &fw.callee, "2 INVITE", 0, "c=IN IP4 203.0.113.1", "c=IN IP4 10.91.1.2")
			}},
		{name: "hold/offer direction lost", check: checkHoldResume, wire: fakeHold, want: `no "a=sendonly" line`,
			mutate: func(t *testing.T, fw *flowWire) {
				replaceFakeBody(t, &fw.callee, "2 INVITE", 0, "a=sendonly", "a=sendrecv")
			}},
		{name: "hold/answer direction lost", check: checkHoldResume, wire: fakeHold, want: `no "a=recvonly" line`,
			mutate: func(t *testing.T, fw *flowWire) {
				replaceFakeBody(t, &fw.caller, "2 INVITE", 200, "a=recvonly", "a=sendrecv")
			}},
		{name: "hold/offer port not relayed", check: checkHoldResume, wire: fakeHold, want: "want a port of 203.0.113.1",
			mutate: func(t *testing.T, fw *flowWire) {
				replaceFakeBody(t, &fw.callee, "2 INVITE", 0, "m=audio 20002", "m=audio 6000")
			}},
		{name: "hold/resume not relayed", check: checkHoldResume, wire: fakeHold, want: "want 2 each",
			mutate: func(t *testing.T, fw *flowWire) { dropFake(t, &fw.callee, "3 INVITE", 0) }},
		{name: "hold/refused", check: checkHoldResume, wire: fakeHold, want: "want 200",
			mutate: func(t *testing.T, fw *flowWire) { findFake(t, &fw.caller, "2 INVITE", 200).Status = 488 }},
		{name: "hold/echo lost", check: checkHoldResume, wire: fakeHold, want: "RTP packets",
			mutate: func(t *testing.T, fw *flowWire) {
				fw.callee.pkts = slices.DeleteFunc(fw.callee.pkts, func(p testenv.Packet) bool { return p.Src.Addr() == fw.callee.peer })
			}},

		{name: "late_offer/correct", check: checkLateOffer, wire: fakeLateOffer},
		{name: "late_offer/offer invented", check: checkLateOffer, wire: fakeLateOffer, want: "carries a body",
			mutate: func(t *testing.T, fw *flowWire) {
				m := findFake(t, &fw.callee, "1 INVITE", 0)
				m.Body = fakeSDP("203.0.113.1", 20002)
			}},
		{name: "late_offer/answer not relayed", check: checkLateOffer, wire: fakeLateOffer, want: "no SDP body",
			mutate: func(t *testing.T, fw *flowWire) { findFake(t, &fw.callee, "1 ACK", 0).Body = "" }},
		{name: "late_offer/no ACK", check: checkLateOffer, wire: fakeLateOffer, want: "no ACK",
			mutate: func(t *testing.T, fw *flowWire) { dropFake(t, &fw.callee, "1 ACK", 0) }},
		{name: "late_offer/offer points past the SBC", check: checkLateOffer, wire: fakeLateOffer, want: "want c=IN IP4 10.91.1.1",
			mutate: func(t *testing.T, fw *flowWire) {
				replaceFakeBody(t, &fw.caller, "1 INVITE", 200, "c=IN IP4 10.91.1.1", "c=IN IP4 203.0.113.2")
			}},

		{name: "reinvite_without_sdp/correct", check: checkReinviteWithoutSDP, wire: fakeReinviteWithoutSDP},
		{name: "reinvite_without_sdp/offer invented", check: checkReinviteWithoutSDP, wire: fakeReinviteWithoutSDP, want: "carries a body",
			mutate: func(t *testing.T, fw *flowWire) {
				findFake(t, &fw.callee, "2 INVITE", 0).Body = fakeSDP("203.0.113.1", 20002)
			}},
		{name: "reinvite_without_sdp/offer lost", check: checkReinviteWithoutSDP, wire: fakeReinviteWithoutSDP, want: "no SDP body",
			mutate: func(t *testing.T, fw *flowWire) { findFake(t, &fw.caller, "2 INVITE", 200).Body = "" }},
		{name: "reinvite_without_sdp/answer lost", check: checkReinviteWithoutSDP, wire: fakeReinviteWithoutSDP, want: "no SDP body",
			mutate: func(t *testing.T, fw *flowWire) { findFake(t, &fw.callee, "2 ACK", 0).Body = "" }},

		{name: "reinvite_488/correct", check: checkReinviteRejected, wire: fakeReinviteRejected},
		{name: "reinvite_488/wrong code relayed", check: checkReinviteRejected, wire: fakeReinviteRejected, want: "want 488",
			mutate: func(t *testing.T, fw *flowWire) { findFake(t, &fw.caller, "2 INVITE", 488).Status = 500 }},
		{name: "reinvite_488/not acknowledged", check: checkReinviteRejected, wire: fakeReinviteRejected, want: "no ACK",
			mutate: func(t *testing.T, fw *flowWire) { dropFake(t, &fw.callee, "2 ACK", 0) }},
		{name: "reinvite_488/codec lost", check: checkReinviteRejected, wire: fakeReinviteRejected, want: `no "a=rtpmap:18 G729/8000" line`,
			mutate: func(t *testing.T, fw *flowWire) {
				replaceFakeBody(t, &fw.callee, "2 INVITE", 0, "a=rtpmap:18 G729/8000", "a=rtpmap:8 PCMA/8000")
			}},
		{name: "reinvite_488/call dropped", check: checkReinviteRejected, wire: fakeReinviteRejected, want: "0 BYEs",
			mutate: func(t *testing.T, fw *flowWire) { dropFake(t, &fw.callee, "3 BYE", 0) }},

		{name: "info/correct", check: checkInfo, wire: fakeInfo},
		{name: "info/body changed", check: checkInfo, wire: fakeInfo, want: "has body",
			mutate: func(t *testing.T, fw *flowWire) {
				findFake(t, &fw.callee, "2 INFO", 0).Body = "Signal=6\r\nDuration=160\r\n"
			}},
		{name: "info/content type changed", check: checkInfo, wire: fakeInfo, want: "has Content-Type",
			mutate: func(t *testing.T, fw *flowWire) {
				findFake(t, &fw.callee, "2 INFO", 0).Headers["content-type"] = []string{"text/plain"}
			}},
		{name: "info/no answer", check: checkInfo, wire: fakeInfo, want: "no final response",
			mutate: func(t *testing.T, fw *flowWire) { dropFake(t, &fw.caller, "2 INFO", 200) }},

		{name: "update/correct", check: checkUpdate, wire: fakeUpdate},
		{name: "update/offer invented", check: checkUpdate, wire: fakeUpdate, want: "carries a body",
			mutate: func(t *testing.T, fw *flowWire) {
				findFake(t, &fw.caller, "2 UPDATE", 0).Body = fakeSDP("10.91.1.1", 20000)
			}},
		{name: "update/refused", check: checkUpdate, wire: fakeUpdate, want: "want 200",
			mutate: func(t *testing.T, fw *flowWire) { findFake(t, &fw.callee, "2 UPDATE", 200).Status = 481 }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			fw := tt.wire()
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

// fakeMsg is one SIP message of a fake flow on one link.
type fakeMsg struct {
	fromSBC bool
	method  string // a request's method; "" for a response
	status  int    // a response's status
	cseq    string
	inDlg   bool   // the To header carries a tag
	ctype   string // Content-Type, "" for none
	body    string
}

func fakeReq(fromSBC bool, method, cseq string, inDlg bool, ctype, body string) fakeMsg {
	return fakeMsg{fromSBC: fromSBC, method: method, cseq: cseq, inDlg: inDlg, ctype: ctype, body: body}
}

func fakeRes(fromSBC bool, status int, cseq, ctype, body string) fakeMsg {
	return fakeMsg{fromSBC: fromSBC, status: status, cseq: cseq, inDlg: true, ctype: ctype, body: body}
}

// fakeSDP is an SDP body with connection address addr, one audio stream
// on port and extra lines.
func fakeSDP(addr string, port int, extra ...string) string {
	lines := []string{"v=0", "o=- 1 1 IN IP4 " + addr, "s=-", "c=IN IP4 " + addr, "t=0 0",
		fmt.Sprintf("m=audio %d RTP/AVP 8 101", port), "a=rtpmap:8 PCMA/8000"}
	return strings.Join(append(lines, extra...), "\r\n") + "\r\n"
}

const fakeSDPType = "application/sdp"

// fakeLink builds a link between the SBC at sbc and peer carrying msgs
// (parsed the way captured packets are) and minRTP+10 RTP packets each way.
func fakeLink(name, sbc, peer string, msgs ...fakeMsg) wireLink {
	w := wireLink{name: name, sbc: netip.MustParseAddr(sbc), peer: netip.MustParseAddr(peer)}
	sipSBC, sipPeer := sbc+":5060", peer+":5060"
	for i, m := range msgs {
		start := m.method + " sip:1@" + peer + " SIP/2.0"
		if m.method == "" {
			start = fmt.Sprintf("SIP/2.0 %d X", m.status)
		}
		to := "<sip:1@x>"
		if m.inDlg {
			to += ";tag=b"
		}
		lines := []string{start, fmt.Sprintf("Via: SIP/2.0/UDP x;branch=z9hG4bK-%d", i), "From: <sip:2@x>;tag=a", "To: " + to,
			"Call-ID: " + name + "-call", "CSeq: " + m.cseq}
		if m.ctype != "" {
			lines = append(lines, "Content-Type: "+m.ctype)
		}
		src, dst := sipPeer, sipSBC
		if m.fromSBC {
			src, dst = dst, src
		}
		w.pkts = append(w.pkts, udpPacket(src, dst, sipText(append(lines, "", m.body)...)))
	}
	for range minRTP + 10 {
		w.pkts = append(w.pkts, udpPacket(sbc+":20010", peer+":6000", "rtp"), udpPacket(peer+":6000", sbc+":20010", "rtp"))
	}
	w.sip = sipMessages(w.pkts)
	return w
}

// fakeWire is a call from the PBX to the carrier.
func fakeWire(pbx, carrier []fakeMsg) flowWire {
	return flowWire{
		caller: fakeLink("pbx", "10.91.1.1", "10.91.1.2", pbx...),
		callee: fakeLink("carrier", "203.0.113.1", "203.0.113.2", carrier...),
		media:  portRange{20000, 20099},
	}
}

// The correct flows. On the PBX link the SBC's media port is 20000, on the
// carrier link 20002; the peers use 6000.

func fakeHold() flowWire {
	return fakeWire([]fakeMsg{
		fakeReq(false, "INVITE", "1 INVITE", false, fakeSDPType, fakeSDP("10.91.1.2", 6000, "a=sendrecv")),
		fakeRes(true, 200, "1 INVITE", fakeSDPType, fakeSDP("10.91.1.1", 20000, "a=sendrecv")),
		fakeReq(false, "ACK", "1 ACK", true, "", ""),
		fakeReq(false, "INVITE", "2 INVITE", true, fakeSDPType, fakeSDP("10.91.1.2", 6000, "a=sendonly")),
		fakeRes(true, 200, "2 INVITE", fakeSDPType, fakeSDP("10.91.1.1", 20000, "a=recvonly")),
		fakeReq(false, "ACK", "2 ACK", true, "", ""),
		fakeReq(false, "INVITE", "3 INVITE", true, fakeSDPType, fakeSDP("10.91.1.2", 6000, "a=sendrecv")),
		fakeRes(true, 200, "3 INVITE", fakeSDPType, fakeSDP("10.91.1.1", 20000, "a=sendrecv")),
		fakeReq(false, "ACK", "3 ACK", true, "", ""),
	}, []fakeMsg{
		fakeReq(true, "INVITE", "1 INVITE", false, fakeSDPType, fakeSDP("203.0.113.1", 20002, "a=sendrecv")),
		fakeRes(false, 200, "1 INVITE", fakeSDPType, fakeSDP("203.0.113.2", 6000, "a=sendrecv")),
		fakeReq(true, "ACK", "1 ACK", true, "", ""),
		fakeReq(true, "INVITE", "2 INVITE", true, fakeSDPType, fakeSDP("203.0.113.1", 20002, "a=sendonly")),
		fakeRes(false, 200, "2 INVITE", fakeSDPType, fakeSDP("203.0.113.2", 6000, "a=recvonly")),
		fakeReq(true, "ACK", "2 ACK", true, "", ""),
		fakeReq(true, "INVITE", "3 INVITE", true, fakeSDPType, fakeSDP("203.0.113.1", 20002, "a=sendrecv")),
		fakeRes(false, 200, "3 INVITE", fakeSDPType, fakeSDP("203.0.113.2", 6000, "a=sendrecv")),
		fakeReq(true, "ACK", "3 ACK", true, "", ""),
	})
}

func fakeLateOffer() flowWire {
	return fakeWire([]fakeMsg{
		fakeReq(false, "INVITE", "1 INVITE", false, "", ""),
		fakeRes(true, 200, "1 INVITE", fakeSDPType, fakeSDP("10.91.1.1", 20000)),
		fakeReq(false, "ACK", "1 ACK", true, fakeSDPType, fakeSDP("10.91.1.2", 6000)),
	}, []fakeMsg{
		fakeReq(true, "INVITE", "1 INVITE", false, "", ""),
		fakeRes(false, 200, "1 INVITE", fakeSDPType, fakeSDP("203.0.113.2", 6000)),
		fakeReq(true, "ACK", "1 ACK", true, fakeSDPType, fakeSDP("203.0.113.1", 20002)),
	})
}

func fakeReinviteWithoutSDP() flowWire {
	return fakeWire([]fakeMsg{
		fakeReq(false, "INVITE", "1 INVITE", false, fakeSDPType, fakeSDP("10.91.1.2", 6000)),
		fakeRes(true, 200, "1 INVITE", fakeSDPType, fakeSDP("10.91.1.1", 20000)),
		fakeReq(false, "ACK", "1 ACK", true, "", ""),
		fakeReq(false, "INVITE", "2 INVITE", true, "", ""),
		fakeRes(true, 200, "2 INVITE", fakeSDPType, fakeSDP("10.91.1.1", 20000)),
		fakeReq(false, "ACK", "2 ACK", true, fakeSDPType, fakeSDP("10.91.1.2", 6000)),
	}, []fakeMsg{
		fakeReq(true, "INVITE", "1 INVITE", false, fakeSDPType, fakeSDP("203.0.113.1", 20002)),
		fakeRes(false, 200, "1 INVITE", fakeSDPType, fakeSDP("203.0.113.2", 6000)),
		fakeReq(true, "ACK", "1 ACK", true, "", ""),
		fakeReq(true, "INVITE", "2 INVITE", true, "", ""),
		fakeRes(false, 200, "2 INVITE", fakeSDPType, fakeSDP("203.0.113.2", 6000)),
		fakeReq(true, "ACK", "2 ACK", true, fakeSDPType, fakeSDP("203.0.113.1", 20002)),
	})
}

func fakeReinviteRejected() flowWire {
	return fakeWire([]fakeMsg{
		fakeReq(false, "INVITE", "1 INVITE", false, fakeSDPType, fakeSDP("10.91.1.2", 6000)),
		fakeRes(true, 200, "1 INVITE", fakeSDPType, fakeSDP("10.91.1.1", 20000)),
		fakeReq(false, "ACK", "1 ACK", true, "", ""),
		fakeReq(false, "INVITE", "2 INVITE", true, fakeSDPType, fakeSDP("10.91.1.2", 6000, "a=rtpmap:18 G729/8000")),
		fakeRes(true, 488, "2 INVITE", "", ""),
		fakeReq(false, "ACK", "2 ACK", true, "", ""),
		fakeReq(false, "BYE", "3 BYE", true, "", ""),
		fakeRes(true, 200, "3 BYE", "", ""),
	}, []fakeMsg{
		fakeReq(true, "INVITE", "1 INVITE", false, fakeSDPType, fakeSDP("203.0.113.1", 20002)),
		fakeRes(false, 200, "1 INVITE", fakeSDPType, fakeSDP("203.0.113.2", 6000)),
		fakeReq(true, "ACK", "1 ACK", true, "", ""),
		fakeReq(true, "INVITE", "2 INVITE", true, fakeSDPType, fakeSDP("203.0.113.1", 20002, "a=rtpmap:18 G729/8000")),
		fakeRes(false, 488, "2 INVITE", "", ""),
		fakeReq(true, "ACK", "2 ACK", true, "", ""),
		fakeReq(true, "BYE", "3 BYE", true, "", ""),
		fakeRes(false, 200, "3 BYE", "", ""),
	})
}

func fakeInfo() flowWire {
	const dtmf = "Signal=5\r\nDuration=160\r\n"
	return fakeWire([]fakeMsg{
		fakeReq(false, "INFO", "2 INFO", true, "application/dtmf-relay", dtmf),
		fakeRes(true, 200, "2 INFO", "", ""),
	}, []fakeMsg{
		fakeReq(true, "INFO", "2 INFO", true, "application/dtmf-relay", dtmf),
		fakeRes(false, 200, "2 INFO", "", ""),
	})
}

func fakeUpdate() flowWire {
	return fakeWire([]fakeMsg{
		fakeReq(true, "UPDATE", "2 UPDATE", true, "", ""),
		fakeRes(false, 200, "2 UPDATE", "", ""),
	}, []fakeMsg{
		fakeReq(false, "UPDATE", "2 UPDATE", true, "", ""),
		fakeRes(true, 200, "2 UPDATE", "", ""),
	})
}

// findFake returns the message on w with CSeq cseq and status (0 for the
// request), failing the test if there is none.
func findFake(t *testing.T, w *wireLink, cseq string, status int) *sipMessage {
	t.Helper()
	for i := range w.sip {
		if w.sip[i].header("cseq") == cseq && w.sip[i].Status == status {
			return &w.sip[i]
		}
	}
	t.Fatalf("%s link: no message with CSeq %q and status %d", w.name, cseq, status)
	return nil
}

// dropFake removes the messages findFake would return.
func dropFake(t *testing.T, w *wireLink, cseq string, status int) {
	t.Helper()
	findFake(t, w, cseq, status)
	w.sip = slices.DeleteFunc(w.sip, func(m sipMessage) bool { return m.header("cseq") == cseq && m.Status == status })
}

// replaceFakeBody replaces old with new in the body of the message findFake would
// return, failing the test if old is not there.
func replaceFakeBody(t *testing.T, w *wireLink, cseq string, status int, old, new string) {
	t.Helper()
	m := findFake(t, w, cseq, status)
	if !strings.Contains(m.Body, old) {
		t.Fatalf("%s link: %v: body has no %q:\n%s", w.name, m, old, m.Body)
	}
	m.Body = strings.Replace(m.Body, old, new, 1)
}
