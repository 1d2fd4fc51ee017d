package sbc

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/emiago/sipgo/sip"

	"github.com/edgesbc/edgesbc/media"
)

// Call transfer (REFER, RFC 3515). Per peer the SBC either terminates a
// REFER itself (the default, as enterprise SBCs do), relays it with its
// Refer-To and Referred-By hidden, or declines it.
//
// A terminated transfer keeps everything in the Call: the referrer's leg
// X stays in place while the SBC calls the target on a new leg T (without
// SDP, so the call goes on untouched until T answers). T's answer carries
// its offer; the media session is re-opened for the new pair of legs, the
// remaining leg Y gets that offer in a re-INVITE, and Y's answer goes to T
// in its ACK. T then takes X's place in the Call and X is released.
// Toward a peer with offer = "early" T's INVITE carries the SBC's own
// offer, anchored in a spare media session while X's media goes on; T's
// answer is then Y's offer, and the spare session becomes the call's.

// transfer is a terminated REFER in progress. One at a time per call; its
// fields are guarded by the Call's mu.
type transfer struct {
	referrer *Leg // X: the leg that sent the REFER
	target   *Leg // T: the new leg toward the Refer-To target
	invite   *sip.Request
	answered bool          // T sent a 2xx: it is a confirmed dialog to end if we fail
	final    bool          // T's INVITE has its final response
	answer   *sip.Response // T's 2xx: its Session-Expires is T's timer
	// reinvite: T is an existing dialog taken over from another call (an
	// attended transfer); invite is a re-INVITE in it.
	reinvite bool
	// offer is the SBC's own offer in T's INVITE when T's peer has offer
	// = "early", nil when the INVITE has no SDP. It is anchored in a media
	// session of its own (spareMedia) while the call's session still
	// carries the referrer's media.
	offer []byte
}

// spareID is the media session a transfer's own offer is anchored in
// until the bridge makes it the call's.
func (c *Call) spareID() media.SessionID { return media.SessionID(c.id + "/transfer") }

// transferOffer opens the spare media session for leg t (of a transfer)
// and returns the SBC's own offer toward t, or nil when t's peer takes an
// INVITE without SDP. Caller holds mu.
func (c *Call) transferOffer(t *Leg) ([]byte, error) {
	m := c.srv.media
	if m == nil || !c.mediaOpen || !t.peer.earlyOffer() {
		return nil, nil
	}
	y := c.legs[t.side.Other()]
	zones := [2]*zone{}
	zones[t.side], zones[y.side] = t.zone, y.zone
	c.dropSpare()
	id := c.spareID()
	if err := m.Open(id, mediaAddress(zones[media.A]), mediaAddress(zones[media.B])); err != nil {
		return nil, fmt.Errorf("open media for the transfer target: %w", err)
	}
	c.spareOpen = true
	tmpl, err := offerTemplate(t.peer.cfg.Codecs, y.zone.cfg.Address)
	if err == nil {
		var out []byte
		if out, err = m.OfferFor(id, t.side, tmpl); err == nil {
			c.log.Debug("transfer target gets an offer", "to_peer", t.peer.cfg.Name)
			return out, nil
		}
	}
	c.dropSpare()
	return nil, fmt.Errorf("own offer toward %s: %w", t.peer.cfg.Name, err)
}

// dropSpare closes the spare media session of a transfer, if open. Caller
// holds mu.
func (c *Call) dropSpare() {
	if c.spareOpen {
		c.spareOpen = false
		c.srv.media.Close(c.spareID(), "transfer")
	}
}

// referMode is the peer's REFER handling, defaulted.
func (p *peer) referMode() ReferMode {
	if p.cfg.Refer == "" {
		return ReferTerminate
	}
	return p.cfg.Refer
}

// onRefer handles a REFER received within leg side's dialog. What it
// needs of other calls (a Replaces naming one) is looked up before this
// call is locked, and two calls are only ever locked in a fixed order.
func (c *Call) onRefer(side media.Side, req *sip.Request, tx sip.ServerTransaction) {
	c.mu.Lock()
	c.awaitAck(side, 2*time.Second)
	l := c.legs[side]
	mode, from, into := l.peer.referMode(), l.zone, c.legs[side.Other()].zone
	c.mu.Unlock()
	target, targetErr := referTarget(req)
	if mode == ReferPass {
		var referTo sip.Header
		if h, err := c.srv.rewriteReferTo(req, from, into); err == nil {
			referTo = h
		}
		c.relayInDialog(side, req, tx, referTo)
		return
	}
	var replaced legRef
	replaces, attended := "", false
	if targetErr == nil && mode == ReferTerminate {
		if replaces, attended = target.Headers.Get("Replaces"); attended {
			replaced, _ = c.srv.replacedDialog(replaces, from)
		}
	}
	unlock := lockCalls(c, replaced.call)
	defer unlock()
	if c.strayRequest(side, req, tx) {
		return
	}
	l = c.legs[side]
	if seq := req.CSeq().SeqNo; seq <= l.remoteCSeq {
		c.srv.respond(l.zone, req, tx, 500, nil)
		return
	}
	l.remoteCSeq = req.CSeq().SeqNo
	switch {
	case c.state == stateEnded:
		c.srv.respond(l.zone, req, tx, 481, nil)
		return
	case mode == ReferReject:
		c.log.Info("transfer declined by policy", "leg", side, "peer", l.peer.cfg.Name)
		c.srv.respond(l.zone, req, tx, 603, nil)
		return
	case c.state != stateConfirmed || c.update != nil || c.xfer != nil:
		c.srv.respond(l.zone, req, tx, 491, retryAfter("1"))
		return
	}
	if targetErr != nil {
		c.log.Warn("unusable REFER", "leg", side, "error", targetErr)
		c.srv.respond(l.zone, req, tx, 400, nil)
		return
	}
	if attended {
		c.startAttended(l, replaces, replaced, req, tx)
		return
	}
	to, err := c.srv.route(l.peer)
	if err != nil {
		c.log.Warn("transfer target has no route", "leg", side, "error", err)
		c.srv.respond(l.zone, req, tx, 404, nil)
		return
	}
	l.learned.learnFrom(req, c.srv.isOwnHost)
	c.respondOn(l, req, tx, 202, nil, []sip.Header{c.srv.contact(l.zone)})
	c.startTransfer(l, to, target)
}

// referTarget returns the Refer-To URI of a REFER: a SIP URI with a user
// part, which is all the SBC routes on.
func referTarget(req *sip.Request) (sip.Uri, error) {
	hs := req.GetHeaders("Refer-To")
	if len(hs) == 0 {
		hs = req.GetHeaders("r")
	}
	if len(hs) != 1 {
		return sip.Uri{}, fmt.Errorf("%d Refer-To headers, want 1", len(hs))
	}
	var uri sip.Uri
	params := sip.NewParams()
	if _, err := sip.ParseAddressValue(hs[0].Value(), &uri, &params); err != nil {
		return sip.Uri{}, fmt.Errorf("parse Refer-To %q: %w", hs[0].Value(), err)
	}
	if (uri.Scheme != "sip" && uri.Scheme != "sips") || uri.User == "" {
		return sip.Uri{}, fmt.Errorf("Refer-To %q: not a SIP URI with a user", hs[0].Value())
	}
	return uri, nil
}

// startTransfer accepts a REFER from leg x: it creates leg T toward peer
// to and starts its INVITE. Caller holds mu.
func (c *Call) startTransfer(x *Leg, to *peer, target sip.Uri) {
	y := c.legs[x.side.Other()]
	t := &Leg{
		side:       x.side,
		zone:       to.zone,
		peer:       to,
		callID:     newID(),
		localTag:   newTag(),
		local:      sip.Uri{Scheme: "sip", User: y.remote.User, Host: to.zone.host},
		localName:  y.remoteName,
		remote:     sip.Uri{Scheme: "sip", User: target.User, Host: to.host},
		localCSeq:  randCSeq(),
		target:     sip.Uri{Scheme: "sip", User: target.User, Host: to.host},
		dest:       to.dest,
		remoteName: "",
		originator: true,
	}
	if to.cfg.Address.Port() != 5060 && to.cfg.Host == "" {
		t.target.Port = int(to.cfg.Address.Port())
	}
	key := dialogKey{zone: t.zone, callID: t.callID, localTag: t.localTag}
	c.keys = append(c.keys, key)
	c.srv.register(key, legRef{call: c, side: t.side})

	req := sip.NewRequest(sip.INVITE, *t.target.Clone())
	req.AppendHeader(c.srv.via(t.zone))
	mf := sip.MaxForwardsHeader(70)
	req.AppendHeader(&mf)
	req.AppendHeader(c.fromHeader(t))
	req.AppendHeader(c.toHeader(t))
	cid := sip.CallIDHeader(t.callID)
	req.AppendHeader(&cid)
	t.localCSeq++
	req.AppendHeader(&sip.CSeqHeader{SeqNo: t.localCSeq, MethodName: sip.INVITE})
	req.AppendHeader(c.srv.contact(t.zone))
	req.AppendHeader(hdrAllow)
	if to.timersOn() {
		req.AppendHeader(sip.NewHeader("Supported", "timer"))
		for _, h := range uacHeaders(t, to.cfg.SessionExpires) {
			req.AppendHeader(h)
		}
	}
	req.AppendHeader(c.srv.hdrUA)
	offer, err := c.transferOffer(t)
	if err != nil {
		// the target still gets the INVITE, without SDP
		c.log.Warn("no offer for the transfer target", "error", err)
	}
	if offer != nil {
		req.AppendHeader(hdrSDP)
	}
	req.SetBody(offer)
	req.Laddr = t.zone.laddr
	req.SetDestination(t.dest)

	xf := &transfer{referrer: x, target: t, invite: req, offer: offer}
	c.xfer = xf
	c.log.Info("transfer accepted", "referrer", x.side, "to_peer", to.cfg.Name, "target", target.User)
	c.notify(x, "SIP/2.0 100 Trying", false, nil)
	c.send(t, req)
	c.srv.callWG.Add(1)
	go c.runTransfer(xf)
}

// lockCalls locks c and, if it is another call, other, always in the
// order of their IDs so that two transfers naming each other's calls
// cannot deadlock. It returns the unlock.
func lockCalls(c, other *Call) func() {
	if other == nil || other == c {
		c.mu.Lock()
		return c.mu.Unlock
	}
	first, second := c, other
	if other.id < c.id {
		first, second = other, c
	}
	first.mu.Lock()
	second.mu.Lock()
	return func() {
		second.mu.Unlock()
		first.mu.Unlock()
	}
}

// startAttended performs an attended transfer (RFC 3891 Replaces in the
// Refer-To): the referrer x has a second call through the SBC, named by
// the Replaces, and wants its two far parties connected. The other call
// gives up its far leg, which becomes the transfer target of this call,
// and ends (BYE to its referrer's leg); the target is then bridged exactly
// like a blind transfer's, starting with a re-INVITE without SDP. Caller
// holds mu; it answers the REFER itself.
func (c *Call) startAttended(x *Leg, replaces string, ref legRef, req *sip.Request, tx sip.ServerTransaction) {
	other := ref.call
	switch {
	case other == nil:
		c.log.Info("attended transfer names an unknown dialog", "leg", x.side)
		c.srv.respond(x.zone, req, tx, 481, nil)
		return
	case other == c:
		c.srv.respond(x.zone, req, tx, 400, nil)
		return
	}
	replaced := other.legs[ref.side]
	v, _ := url.QueryUnescape(replaces)
	if callID, _, _ := strings.Cut(v, ";"); strings.TrimSpace(callID) != replaced.callID {
		// the key names a leg that is no longer in the pair (a released
		// referrer, a ringing target)
		c.srv.respond(x.zone, req, tx, 481, nil)
		return
	}
	if other.state == stateEnded {
		c.srv.respond(x.zone, req, tx, 481, nil)
		return
	}
	if other.state != stateConfirmed || other.update != nil || other.xfer != nil {
		c.srv.respond(x.zone, req, tx, 491, retryAfter("1"))
		return
	}
	t := other.legs[ref.side.Other()]
	c.respondOn(x, req, tx, 202, nil, []sip.Header{c.srv.contact(x.zone)})
	c.log.Info("attended transfer accepted", "referrer", x.side, "replaced_call", other.id)

	// the other call ends here without its far leg, which moves to us
	t.gone = true // the other call must not BYE it
	if t.st != nil && t.st.timer != nil {
		t.st.timer.Stop()
	}
	other.rec.EndReason = "replaced by transfer"
	other.byeLeg(replaced)
	other.end()
	t.gone, t.st = false, nil
	t.side = x.side
	key := dialogKey{zone: t.zone, callID: t.callID, localTag: t.localTag}
	c.keys = append(c.keys, key)
	c.srv.register(key, legRef{call: c, side: t.side})

	t.localCSeq++
	inv := c.inDialog(t, sip.INVITE, t.localCSeq)
	inv.AppendHeader(c.srv.contact(t.zone))
	inv.AppendHeader(hdrAllow)
	offer, err := c.transferOffer(t)
	if err != nil {
		c.log.Warn("no offer for the transfer target", "error", err)
	}
	if offer != nil {
		inv.AppendHeader(hdrSDP)
	}
	inv.SetBody(offer)
	xf := &transfer{referrer: x, target: t, invite: inv, reinvite: true, answered: true, offer: offer}
	c.xfer = xf
	c.notify(x, "SIP/2.0 100 Trying", false, nil)
	c.send(t, inv)
	c.srv.callWG.Add(1)
	go c.runTransfer(xf)
}

// runTransfer drives T's INVITE transaction to its final response. If the
// call ends first, T is cancelled (and a 2xx that crosses the CANCEL is
// ACKed and ended).
func (c *Call) runTransfer(xf *transfer) {
	defer c.srv.callWG.Done()
	t := xf.target
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	tx, err := t.zone.client.TransactionRequest(ctx, xf.invite, noBuild)
	if err != nil {
		c.mu.Lock()
		c.transferFailed(xf, 503, "Service Unavailable")
		c.mu.Unlock()
		return
	}
	defer func() { tx.Terminate() }()
	timeout := time.NewTimer(c.srv.cfg.InviteTimeout)
	defer timeout.Stop()
	var giveUp <-chan time.Time
	cancelled := false
	sendCancel := func() {
		if !cancelled {
			cancelled = true
			c.mu.Lock()
			c.runTx(t, c.cancelFor(t, xf.invite))
			c.mu.Unlock()
			giveUp = time.After(64 * sip.T1)
		}
	}
	done := c.done
	glares := 0
	for {
		select {
		case res := <-tx.Responses():
			if res.StatusCode == 491 && xf.reinvite && !cancelled && glares < maxGlareRetries {
				// the taken-over dialog's peer re-INVITEd at the same time
				glares++
				tx.Terminate()
				retry := c.afterGlare(t, xf.invite, func() bool { return c.xfer == xf })
				c.mu.Lock()
				if retry == nil {
					c.transferFailed(xf, 491, reasonPhrase(491))
					c.mu.Unlock()
					return
				}
				xf.invite = retry
				c.mu.Unlock()
				if tx, err = t.zone.client.TransactionRequest(ctx, retry, noBuild); err != nil {
					c.mu.Lock()
					c.transferFailed(xf, 503, "Service Unavailable")
					c.mu.Unlock()
					return
				}
				continue
			}
			if c.onTransferResponse(xf, res) {
				return
			}
		case <-tx.Done():
			c.mu.Lock()
			if !xf.final {
				c.transferFailed(xf, 408, "Request Timeout")
			}
			c.mu.Unlock()
			return
		case <-timeout.C:
			c.mu.Lock()
			c.transferFailed(xf, 408, "Request Timeout")
			c.mu.Unlock()
			sendCancel()
		case <-done:
			done = nil
			sendCancel()
		case <-giveUp:
			return
		}
	}
}

// onTransferResponse handles one response to T's INVITE and reports
// whether the transaction is finished for the transfer.
func (c *Call) onTransferResponse(xf *transfer, res *sip.Response) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := xf.target
	code := res.StatusCode
	switch {
	case code == 100:
		return false
	case code < 200:
		if c.xfer == xf {
			c.notify(xf.referrer, fmt.Sprintf("SIP/2.0 %d %s", code, reasonPhrase(code)), false, nil)
		}
		return false
	case code >= 300:
		xf.final = true
		if c.xfer == xf {
			c.transferFailed(xf, code, reasonPhrase(code))
		}
		return true
	}
	// 2xx
	xf.final = true
	if xf.reinvite {
		if ct := msgContact(res); ct != nil {
			t.target = ct.Address // a re-INVITE keeps the route set
		}
	} else {
		if tag, ok := res.To().Params.Get("tag"); ok {
			t.remoteTag = tag
		}
		c.setTarget(t, res)
	}
	t.learned.learnFrom(res, c.srv.isOwnHost)
	if c.xfer != xf || c.state == stateEnded {
		// the call ended or the transfer was given up while T rang
		c.sendAck(t, c.inDialog(t, sip.ACK, xf.invite.CSeq().SeqNo))
		c.byeLeg(t)
		return true
	}
	xf.answered = true
	xf.answer = res
	c.bridge(xf, res)
	return true
}

// transferFailed reports a failed transfer to the referrer and goes back to
// the call as it was; without a referrer any more, the call ends. Caller
// holds mu.
func (c *Call) transferFailed(xf *transfer, code int, reason string) {
	if c.xfer != xf {
		return
	}
	c.xfer = nil
	c.dropSpare()
	c.log.Info("transfer failed", "code", code)
	if xf.answered {
		c.byeLeg(xf.target)
	}
	x := xf.referrer
	c.notify(x, fmt.Sprintf("SIP/2.0 %d %s", code, reason), true, nil)
	if x.gone && c.state != stateEnded {
		c.rec.EndReason = "transfer failed"
		c.byeBoth()
	}
}

// bridge connects T to the remaining leg Y after T answered with its offer:
// the media session is re-opened for the legs Y and T, and Y gets T's offer
// in a re-INVITE. Caller holds mu.
func (c *Call) bridge(xf *transfer, res *sip.Response) {
	t := xf.target
	y := c.legs[t.side.Other()]
	sdp := sdpBody(res)
	ack := c.inDialog(t, sip.ACK, xf.invite.CSeq().SeqNo)
	var offer []byte
	var err error
	if xf.offer != nil {
		offer, err = c.adoptSpare(t, sdp)
	} else {
		offer, err = c.reanchorFor(t, sdp)
	}
	if err != nil {
		c.log.Warn("transfer target answer unusable", "error", err)
		c.sendAck(t, ack)
		c.transferFailed(xf, 488, "Not Acceptable Here")
		return
	}
	if xf.offer != nil {
		// T answered the SBC's offer: its ACK has nothing to wait for
		c.sendAck(t, ack)
		ack = nil
	}
	u := &inDialogTx{method: sip.INVITE, from: t.side, own: true}
	c.update = u
	y.localCSeq++
	req := c.inDialog(y, sip.INVITE, y.localCSeq)
	req.AppendHeader(c.srv.contact(y.zone))
	if y.st != nil {
		req.AppendHeader(sip.NewHeader("Supported", "timer"))
		for _, h := range uacHeaders(y, y.st.interval) {
			req.AppendHeader(h)
		}
	}
	if offer != nil {
		req.AppendHeader(hdrSDP)
	}
	req.SetBody(offer)
	c.send(y, req)
	c.srv.callWG.Add(1)
	go func() {
		defer c.srv.callWG.Done()
		for glares := 0; ; glares++ {
			res := c.finalResponse(y, req)
			if res == nil || res.StatusCode != 491 || glares == maxGlareRetries {
				c.bridged(xf, u, req, ack, offer, sdp, res)
				return
			}
			// Y's own re-INVITE or UPDATE crossed ours
			retry := c.afterGlare(y, req, func() bool { return c.xfer == xf })
			if retry == nil {
				c.bridged(xf, u, req, ack, offer, sdp, res)
				return
			}
			req = retry
		}
	}()
}

// reanchorFor re-opens the call's media session for the legs after the
// transfer (T in place of the referrer) and anchors T's offer. Caller
// holds mu.
func (c *Call) reanchorFor(t *Leg, sdp []byte) ([]byte, error) {
	if sdp == nil {
		return nil, errors.New("answer without SDP to an INVITE without offer")
	}
	m := c.srv.media
	if m == nil || !c.mediaOpen {
		return sdp, nil
	}
	id := media.SessionID(c.id)
	zones := [2]*zone{c.legs[media.A].zone, c.legs[media.B].zone}
	zones[t.side] = t.zone
	m.Close(id, "transfer")
	c.mediaOpen = false
	if err := m.Open(id, mediaAddress(zones[media.A]), mediaAddress(zones[media.B])); err != nil {
		return nil, fmt.Errorf("reopen media session: %w", err)
	}
	c.mediaOpen = true
	out, err := m.Offer(id, t.side, sdp)
	if err != nil {
		return nil, fmt.Errorf("anchor transfer offer: %w", err)
	}
	return out, nil
}

// adoptSpare takes T's answer to the SBC's own offer and makes the spare
// media session the call's: the referrer's media ends here. It returns
// the offer for Y: T's answer, anchored toward Y. Caller holds mu.
func (c *Call) adoptSpare(t *Leg, sdp []byte) ([]byte, error) {
	if sdp == nil {
		return nil, errors.New("transfer target answered the offer without SDP")
	}
	m := c.srv.media
	out, err := m.Answer(c.spareID(), t.side, sdp)
	if err != nil {
		return nil, fmt.Errorf("anchor transfer target's answer: %w", err)
	}
	id := media.SessionID(c.id)
	m.Close(id, "transfer")
	c.mediaOpen = false
	if err := m.Rename(c.spareID(), id); err != nil {
		return nil, fmt.Errorf("adopt transfer media: %w", err)
	}
	c.spareOpen, c.mediaOpen = false, true
	return out, nil
}

// bridged completes a transfer with Y's answer to the re-INVITE: T gets it
// in its ACK and takes the referrer's place; the referrer is told and
// released. If Y refused, the call cannot go back (its media session is
// gone) and ends on every leg.
func (c *Call) bridged(xf *transfer, u *inDialogTx, req *sip.Request, ackT *sip.Request, offer, sdpT []byte, res *sip.Response) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.update == u {
		c.update = nil
	}
	defer c.acked.Broadcast()
	t, x := xf.target, xf.referrer
	y := c.legs[t.side.Other()]
	if res != nil && res.StatusCode < 300 {
		c.sendAck(y, c.inDialog(y, sip.ACK, req.CSeq().SeqNo))
	}
	ackTarget := func() {
		if ackT != nil { // nil: sent already, T answered the SBC's offer
			c.sendAck(t, ackT)
		}
	}
	if c.state == stateEnded || c.xfer != xf {
		ackTarget()
		c.byeLeg(t)
		return
	}
	var answer []byte
	err := errors.New("no answer to the bridging re-INVITE")
	if res != nil && res.StatusCode < 300 {
		if ct := msgContact(res); ct != nil {
			y.target = ct.Address
		}
		y.learned.learnFrom(res, c.srv.isOwnHost)
		switch {
		case sdpBody(res) == nil:
			err = errors.New("bridging re-INVITE answered without SDP")
		case xf.offer != nil:
			// T has its answer: Y's completes the session on Y's side only
			if err = answerFits(offer, sdpBody(res)); err == nil {
				err = c.srv.media.Settle(media.SessionID(c.id), y.side, sdpBody(res))
			}
			if err == nil {
				c.lastSDP[y.side] = sdpBody(res)
			}
		default:
			answer, err = c.negotiate(false, y.side, sdpBody(res))
		}
	} else if res != nil {
		err = fmt.Errorf("bridging re-INVITE answered %d", res.StatusCode)
	}
	if err != nil {
		c.log.Warn("transfer bridge failed, ending call", "error", err)
		ackTarget()
		c.transferFailed(xf, 500, "Server Internal Error")
		if c.state != stateEnded {
			c.rec.EndReason = "transfer failed"
			c.byeBoth()
		}
		return
	}
	if answer != nil {
		ackT.AppendHeader(hdrSDP)
		ackT.SetBody(answer)
	}
	ackTarget()

	// T takes the referrer's place; its offer started the new session
	c.xfer = nil
	if x.st != nil && x.st.timer != nil {
		x.st.timer.Stop()
	}
	c.legs[t.side] = t
	c.released = append(c.released, x)
	c.lastSDP[t.side] = sdpT
	c.sentSDP[t.side] = answer
	if xf.offer != nil {
		c.sentSDP[t.side] = xf.offer
	}
	c.sentSDP[y.side] = offer
	c.lateOffer = t.side == media.B
	c.bAckSent = true
	if y.st != nil {
		c.startTimer(y, uacTimer(y.peer, y.st.interval, res))
	}
	c.startTimer(t, uacTimer(t.peer, t.peer.cfg.SessionExpires, xf.answer))
	c.rec.Transfers++
	c.log.Info("call transferred", "leg", t.side, "peer", t.peer.cfg.Name)
	if !x.gone {
		c.notify(x, "SIP/2.0 200 OK", true, func() {
			// release the referrer once it has heard the outcome
			if !x.gone && c.state != stateEnded {
				c.byeLeg(x)
			}
		})
	}
}

// notify sends a NOTIFY of the implicit refer subscription on leg x with a
// sipfrag of the transfer's progress (RFC 3515 §2.4.5); final ends the
// subscription. then, if set, runs with mu held once the NOTIFY has its
// final response or none will come. A referrer that does not answer it at
// all (or answers 408) is gone: see referrerGone. Caller holds mu.
func (c *Call) notify(x *Leg, frag string, final bool, then func()) {
	if x.gone || c.state == stateEnded {
		return
	}
	x.localCSeq++
	req := c.inDialog(x, sip.NOTIFY, x.localCSeq)
	req.AppendHeader(c.srv.contact(x.zone))
	req.AppendHeader(sip.NewHeader("Event", "refer"))
	state := "active;expires=60"
	if final {
		state = "terminated;reason=noresource"
	}
	req.AppendHeader(sip.NewHeader("Subscription-State", state))
	req.AppendHeader(sip.NewHeader("Content-Type", "message/sipfrag;version=2.0"))
	req.SetBody([]byte(frag + "\r\n"))
	c.runTxThen(x, req, func(code int) {
		c.mu.Lock()
		defer c.mu.Unlock()
		if code == 408 {
			c.referrerGone(x)
		}
		if then != nil {
			then()
		}
	})
}

// referrerGone handles a NOTIFY that leg x, the referrer, never answered:
// its dialog is gone (RFC 3261 §12.2.1.2). A transfer it asked for goes on
// without it, as when a referrer hangs up after the 202, and its failure
// then ends the call; a call the referrer is still part of (its transfer
// failed) ends now with BYE on both legs, instead of staying up with a
// party that no longer answers. A 481 only ends the subscription (RFC 6665
// §4.1.3) and changes nothing here. Caller holds mu.
func (c *Call) referrerGone(x *Leg) {
	if x.gone || c.state == stateEnded {
		return
	}
	switch {
	case c.xfer != nil && c.xfer.referrer == x:
		c.log.Info("referrer does not answer, the transfer goes on without it", "leg", x.side)
		c.byeLeg(x)
	case c.legs[x.side] == x:
		c.log.Info("referrer does not answer, ending call", "leg", x.side)
		c.rec.EndReason = "referrer gone"
		c.byeBoth()
	}
}

// strayRequest answers an in-dialog request that belongs to a leg no longer
// (or not yet) in the call's pair: a released referrer or a transfer
// target still ringing. It reports whether req was such a request. Caller
// holds mu.
func (c *Call) strayRequest(side media.Side, req *sip.Request, tx sip.ServerTransaction) bool {
	id := req.CallID()
	if id == nil || c.legs[side].callID == id.Value() {
		return false
	}
	var l *Leg
	target := false
	if xf := c.xfer; xf != nil && xf.target.callID == id.Value() {
		l, target = xf.target, true
	}
	for _, r := range c.released {
		if r.callID == id.Value() {
			l = r
		}
	}
	switch {
	case req.Method == sip.ACK:
		return true
	case l == nil:
		c.srv.respond(c.legs[side].zone, req, tx, 481, nil)
		return true
	}
	switch {
	case req.Method == sip.BYE:
		c.srv.respond(l.zone, req, tx, 200, nil)
		l.gone = true
		if target {
			c.transferFailed(c.xfer, 487, "Request Terminated")
		}
	case target:
		c.srv.respond(l.zone, req, tx, 491, nil)
	default:
		c.srv.respond(l.zone, req, tx, 481, nil)
	}
	return true
}

// rewriteReferTo hides the Refer-To of a relayed REFER (refer = "pass")
// sent from zone from into zone to: the target keeps its user part and
// points at the SBC in the receiving zone, which routes the transferee's
// new call like any other; a Replaces naming a dialog the SBC knows is
// mapped to the matching dialog of that call on the receiving side, any
// other Replaces is dropped. It takes call locks itself: the caller holds
// none.
func (s *Server) rewriteReferTo(req *sip.Request, from, to *zone) (sip.Header, error) {
	uri, err := referTarget(req)
	if err != nil {
		return nil, err
	}
	out := sip.Uri{Scheme: "sip", User: uri.User, Host: to.host, Port: to.port}
	if up, ok := uri.UriParams.Get("user"); ok && up == "phone" {
		out.UriParams = sip.NewParams()
		out.UriParams.Add("user", "phone")
	}
	if rep, ok := uri.Headers.Get("Replaces"); ok {
		if mapped := s.mapReplaces(rep, from, to); mapped != "" {
			out.Headers = sip.NewParams()
			out.Headers.Add("Replaces", url.QueryEscape(mapped))
		}
	}
	return sip.NewHeader("Refer-To", "<"+out.String()+">"), nil
}

// replacedDialog finds the leg a Replaces value (RFC 3891:
// call-id;to-tag=..;from-tag=.., URI-escaped) names among the SBC's
// dialogs in zone z: one of its tags is the SBC's own.
func (s *Server) replacedDialog(escaped string, z *zone) (legRef, bool) {
	v, err := url.QueryUnescape(escaped)
	if err != nil {
		return legRef{}, false
	}
	parts := strings.Split(v, ";")
	callID := strings.TrimSpace(parts[0])
	for _, p := range parts[1:] {
		k, val, _ := strings.Cut(strings.TrimSpace(p), "=")
		if k = strings.ToLower(strings.TrimSpace(k)); k != "to-tag" && k != "from-tag" {
			continue
		}
		s.mu.RLock()
		ref, ok := s.dialogs[dialogKey{zone: z, callID: callID, localTag: strings.TrimSpace(val)}]
		s.mu.RUnlock()
		if ok {
			return ref, true
		}
	}
	return legRef{}, false
}

// mapReplaces translates a Replaces value naming a leg of a call in zone
// from into the same call's leg in zone to, as its peer there knows it. It
// returns "" when the dialog is unknown.
func (s *Server) mapReplaces(escaped string, from, to *zone) string {
	if ref, ok := s.replacedDialog(escaped, from); ok {
		other := ref.call
		other.mu.Lock()
		defer other.mu.Unlock()
		l := other.legs[ref.side.Other()]
		if l.zone != to || other.state == stateEnded {
			return ""
		}
		// the peer of l is the UAS of an INVITE with Replaces sent to the
		// SBC: to-tag is the SBC's tag, from-tag the peer's
		return fmt.Sprintf("%s;to-tag=%s;from-tag=%s", l.callID, l.localTag, l.remoteTag)
	}
	return ""
}
