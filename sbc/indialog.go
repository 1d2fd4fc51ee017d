package sbc

import (
	"context"
	"errors"
	"fmt"
	mathrand "math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/emiago/sipgo/sip"

	"github.com/edgesbc/edgesbc/media"
)

// inDialogTx is an in-dialog offer/answer transaction relayed from one leg
// to the other: a re-INVITE or an UPDATE. Only one runs per call at a time.
type inDialogTx struct {
	method  sip.RequestMethod
	from    media.Side // the leg that sent the request
	cseq    uint32     // its CSeq on that leg (ACK matching)
	tx      sip.ServerTransaction
	offered bool          // the request carried an offer (else the offer comes in the 2xx)
	res     *sip.Response // 2xx sent back, retransmitted until ACK
	retrans *time.Timer
	ack     *sip.Request // ACK for the other leg's 2xx, deferred when its answer comes in our ACK
	acked   bool
	// cancelled: the sender CANCELled its re-INVITE (sipgo has answered
	// 487); the relayed one is cancelled too, and a 2xx that crosses that
	// CANCEL is ACKed and kept: the media stays anchored on the sender's
	// side, so its session goes on unchanged.
	cancelled bool
	// own: the SBC's own session refresh, not relayed from a leg.
	own bool
	// ownOffer: a re-INVITE without SDP toward a peer with offer =
	// "early": the SBC offered to the other leg itself, the other leg's
	// answer goes to the sender as the offer in the 2xx and the sender's
	// answer in its ACK is settled here (earlyoffer.go).
	ownOffer bool
	// timer is the sender leg's session timer as renegotiated by this
	// request; it starts when the request succeeds.
	timer   *sessionTimer
	outBody []byte // the SDP relayed to the other leg
	// retry is the relayed request sent again after a 422 from the other
	// leg, with that leg's larger Min-SE (RFC 4028 §7.4); once per request.
	retry   *sip.Request
	retried bool
}

// inDialogHeaders are copied from an in-dialog request to the one relayed
// on the other leg, besides passHeaders and a peer's keep list. Bodies of
// INFO, MESSAGE and NOTIFY travel with their Content-Type.
var inDialogHeaders = []string{"Content-Type", "Event", "Subscription-State", "Info-Package", "Recv-Info"}

// onInDialog relays a request received on leg side within its dialog to
// the other leg and the outcome back: re-INVITE and UPDATE re-anchor the
// media (hold, resume, address or codec change); INFO, MESSAGE, NOTIFY and
// OPTIONS are relayed with their bodies. It runs in the request's handler
// goroutine and returns when the request has a final response.
func (c *Call) onInDialog(side media.Side, req *sip.Request, tx sip.ServerTransaction) {
	c.relayInDialog(side, req, tx, nil)
}

// relayInDialog is onInDialog; a REFER (refer = "pass") comes with its
// rewritten Refer-To, nil when the REFER has no usable one.
func (c *Call) relayInDialog(side media.Side, req *sip.Request, tx sip.ServerTransaction, referTo sip.Header) {
	c.mu.Lock()
	c.awaitAck(side, 2*time.Second)
	if req.Method == sip.NOTIFY && eventPackage(req) == "refer" {
		c.awaitReferAnswer(side)
	}
	if c.strayRequest(side, req, tx) {
		c.mu.Unlock()
		return
	}
	l := c.legs[side]
	other := c.legs[side.Other()]
	seq := req.CSeq().SeqNo
	if seq <= l.remoteCSeq {
		// out of order (RFC 3261 §12.2.2)
		c.srv.respond(l.zone, req, tx, 500, nil)
		c.mu.Unlock()
		return
	}
	l.remoteCSeq = seq
	l.learned.learnFrom(req, c.srv.isOwnHost)
	offerAnswer := req.Method == sip.INVITE || req.Method == sip.UPDATE
	switch {
	case c.state == stateEnded:
		c.srv.respond(l.zone, req, tx, 481, nil)
		c.mu.Unlock()
		return
	case c.state == stateEarly && req.Method == sip.UPDATE:
		if c.answerEarlyUpdate(l, other, req, tx) {
			c.mu.Unlock()
			return
		}
	case c.state != stateConfirmed && req.Method == sip.INVITE,
		c.state == stateEarly:
		// a re-INVITE before the ACK, or anything but UPDATE in an early
		// dialog, is refused; the sender may retry
		c.srv.respond(l.zone, req, tx, 491, retryAfter("1"))
		c.mu.Unlock()
		return
	}
	var st *sessionTimer
	if offerAnswer && l.peer.timersOn() && c.state != stateEarly {
		// session timers start with the answer; an UPDATE in the early
		// dialog neither negotiates nor refreshes them
		var code int
		if st, code = uasTimer(l.peer, readTimer(req)); code == 422 {
			c.srv.respond(l.zone, req, tx, 422, []sip.Header{sip.NewHeader("Min-SE", seconds(l.peer.minSE()))})
			c.mu.Unlock()
			return
		}
		if t := readTimer(req); t.minSE > 0 {
			l.peerMinSE = t.minSE
		}
		if c.isRefresh(l, req) && (req.Method == sip.UPDATE || c.update == nil) {
			c.absorbRefresh(l, st, req, tx)
			c.mu.Unlock()
			return
		}
	}
	switch {
	case offerAnswer && (c.update != nil || c.xfer != nil):
		// glare: both sides changed the session at once (RFC 3261 §14.2)
		c.srv.respond(l.zone, req, tx, 491, nil)
		c.mu.Unlock()
		return
	}
	if ct := msgContact(req); ct != nil && req.Method == sip.INVITE {
		l.target = ct.Address // a re-INVITE may move the remote target
	}
	var body []byte
	var u *inDialogTx
	if offerAnswer {
		u = &inDialogTx{method: req.Method, from: side, cseq: seq, tx: tx, timer: st}
		if sdp := sdpBody(req); sdp != nil {
			out, err := c.negotiate(true, side, sdp)
			if err != nil {
				c.log.Warn("re-offer refused", "leg", side, "method", req.Method, "error", err)
				c.rollback()
				c.srv.respond(l.zone, req, tx, 488, nil)
				c.mu.Unlock()
				return
			}
			u.offered = true
			u.outBody = out
			body = out
		} else if req.Method == sip.INVITE && other.peer.earlyOffer() && c.mediaOpen {
			out, err := c.reofferOwn(l, other)
			if err != nil {
				c.log.Warn("own re-offer failed", "leg", other.side, "error", err)
				c.rollback()
				c.srv.respond(l.zone, req, tx, 500, nil)
				c.mu.Unlock()
				return
			}
			u.offered, u.ownOffer = true, true
			u.outBody = out
			body = out
		}
		c.update = u
	} else if b := req.Body(); len(b) > 0 {
		body = b
	}
	other.localCSeq++
	out := c.inDialog(other, req.Method, other.localCSeq)
	if offerAnswer {
		out.AppendHeader(c.srv.contact(other.zone))
		if other.st != nil {
			out.AppendHeader(sip.NewHeader("Supported", "timer"))
			for _, h := range uacHeaders(other, other.st.interval) {
				out.AppendHeader(h)
			}
		}
	}
	copyAllowed(req, out, other.peer)
	if req.Method == sip.REFER {
		if referTo == nil {
			c.log.Warn("unusable REFER", "leg", side)
			c.srv.respond(l.zone, req, tx, 400, nil)
			c.mu.Unlock()
			return
		}
		out.AppendHeader(referTo)
		for h := range headersNamed(req, "Referred-By") {
			out.AppendHeader(sip.NewHeader("Referred-By", rehomeIdentity(h.Value(), other.zone.host)))
		}
	}
	for _, name := range inDialogHeaders {
		if name == "Content-Type" && (body == nil || offerAnswer) {
			continue
		}
		for h := range headersNamed(req, name) {
			out.AppendHeader(sip.NewHeader(h.Name(), h.Value()))
		}
	}
	if offerAnswer && body != nil {
		out.AppendHeader(hdrSDP)
	}
	out.SetBody(body)
	c.send(other, out)
	if req.Method == sip.REFER {
		c.referring[other.side]++
		defer c.referAnswered(other.side)
	}
	c.mu.Unlock()

	var cancelled chan struct{}
	if req.Method == sip.INVITE {
		cancelled = make(chan struct{})
		var once sync.Once
		fire := func() { once.Do(func() { close(cancelled) }) }
		if !tx.OnCancel(func(*sip.Request) { fire() }) {
			fire()
		}
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	otx, err := other.zone.client.TransactionRequest(ctx, out, noBuild)
	if err != nil {
		c.log.Warn("relay in-dialog request", "method", req.Method, "error", err)
		c.finishInDialog(u, req, tx, 503, nil)
		return
	}
	defer func() { otx.Terminate() }()
	// the stack's Timer F (Timer B for an INVITE, until a provisional)
	// ends the transaction too; this timer is the SBC's own, which a test
	// can shorten. After a provisional to a re-INVITE it bounds the wait
	// for the final response by the invite timeout, counted from the
	// sending like the initial INVITE's (ringing); then the re-INVITE is
	// cancelled and 64*T1 bounds the wait for its final response.
	wait := time.NewTimer(c.srv.cfg.inDialogWait)
	defer wait.Stop()
	waitC := wait.C
	sent := time.Now()
	ringing, cancelSent := false, false
	cancelOther := func() {
		cancelSent, ringing = true, false
		c.mu.Lock()
		if c.state != stateEnded {
			c.runTx(other, c.cancelFor(other, out))
		}
		c.mu.Unlock()
		// the cancelled re-INVITE's final response is due within 64*T1
		// even after a provisional (RFC 3261 §9.1)
		wait.Reset(c.srv.cfg.inDialogWait)
		waitC = wait.C
	}
	for {
		select {
		case res := <-otx.Responses():
			if req.Method == sip.INVITE && res.StatusCode < 200 && !cancelSent && !ringing {
				ringing = true
				wait.Reset(time.Until(sent.Add(c.srv.cfg.InviteTimeout)))
				waitC = wait.C
			}
			if done := c.onInDialogResponse(u, req, tx, out, res); done {
				return
			}
			if retry := c.takeInDialogRetry(u); retry != nil {
				otx.Terminate()
				out = retry
				if otx, err = other.zone.client.TransactionRequest(ctx, out, noBuild); err != nil {
					c.finishInDialog(u, req, tx, 503, err)
					return
				}
				sent, ringing = time.Now(), false
				wait.Reset(c.srv.cfg.inDialogWait)
				waitC = wait.C
			}
		case <-otx.Done():
			c.finishInDialog(u, req, tx, 408, otx.Err())
			return
		case <-waitC:
			if ringing {
				// the other leg rings but never answers: the re-INVITE
				// is cancelled, and its final response (487, or a 2xx
				// that crosses the CANCEL) goes to the sender; a failed
				// re-INVITE leaves the session as it was (RFC 3261 §14.1)
				c.log.Info("re-INVITE not answered in time, cancelling", "leg", other.side, "from", side,
					"cseq", out.CSeq().SeqNo, "timeout", c.srv.cfg.InviteTimeout)
				cancelOther()
				continue
			}
			c.finishInDialog(u, req, tx, 408, fmt.Errorf("no final response in %v: %w", c.srv.cfg.inDialogWait, sip.ErrTransactionTimeout))
			return
		case <-cancelled:
			cancelled = nil
			c.mu.Lock()
			u.cancelled = true
			c.mu.Unlock()
			if !cancelSent {
				cancelOther()
			}
		case <-c.done:
			// the call ended meanwhile (BYE, timeout): the request dies
			// with it
			c.mu.Lock()
			c.srv.respond(l.zone, req, tx, 487, nil)
			c.mu.Unlock()
			return
		}
	}
}

// awaitAck restores arrival order where it matters: sipgo handles every
// request in its own goroutine, so a request sent right after an ACK can be
// handled before that ACK. A request from the leg that still owes us an ACK
// for a 2xx waits for it (bounded), instead of being refused with 491.
// Caller holds mu; it is released while waiting.
func (c *Call) awaitAck(side media.Side, limit time.Duration) {
	c.waitWhile(limit, func() bool {
		switch {
		case c.state == stateEnded:
			return false
		case c.state == stateAnswered && side == media.A:
			return true
		case c.update != nil && c.update.from == side && c.update.res != nil:
			return true
		}
		return false
	})
}

// awaitReferAnswer keeps a NOTIFY of the refer subscription from leg side
// behind the final response to a REFER relayed onto that leg (refer =
// "pass"). The REFER's recipient sends its first NOTIFY right after its
// 202, or even before it (RFC 6665 §4.1.2.4), and the 202 (in the relayed
// REFER's client transaction) and the NOTIFY (a request of its own) are
// handled in separate goroutines: without the wait the NOTIFY can reach the
// referrer first, which referrers that expect RFC 3515's order take for a
// broken transfer. The wait ends with the REFER's transaction or the call,
// and the server's inDialogWait bounds it. Caller holds mu; it is released
// while waiting.
func (c *Call) awaitReferAnswer(side media.Side) {
	if c.referring[side] > 0 {
		c.log.Debug("refer notify waits for the refer's final response", "leg", side)
	}
	c.waitWhile(c.srv.cfg.inDialogWait, func() bool {
		return c.state != stateEnded && c.referring[side] > 0
	})
}

// referAnswered ends the wait of awaitReferAnswer for one REFER relayed
// onto leg side, once its final response has gone to the referrer (or it
// never will). Caller does not hold mu.
func (c *Call) referAnswered(side media.Side) {
	c.mu.Lock()
	c.referring[side]--
	c.mu.Unlock()
	c.acked.Broadcast()
}

// waitWhile waits on acked while pending reports true, at most limit.
// Caller holds mu; it is released while waiting.
func (c *Call) waitWhile(limit time.Duration, pending func() bool) {
	if !pending() {
		return
	}
	expired := false
	t := time.AfterFunc(limit, func() {
		c.mu.Lock()
		expired = true
		c.mu.Unlock()
		c.acked.Broadcast()
	})
	defer t.Stop()
	for pending() && !expired {
		c.acked.Wait()
	}
}

// eventPackage returns the event package of a SUBSCRIBE or NOTIFY, lower
// case and without parameters (RFC 6665 §8.2.1): "refer" for "refer;id=3".
func eventPackage(req *sip.Request) string {
	for _, name := range []string{"Event", "o"} { // o: the compact form
		for h := range headersNamed(req, name) {
			pkg, _, _ := strings.Cut(h.Value(), ";")
			return strings.ToLower(strings.TrimSpace(pkg))
		}
	}
	return ""
}

// onInDialogResponse handles one response of the relayed request and
// reports whether it was final.
func (c *Call) onInDialogResponse(u *inDialogTx, req *sip.Request, tx sip.ServerTransaction, out *sip.Request, res *sip.Response) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	side := media.A
	if u != nil {
		side = u.from
	} else {
		side = c.sideOf(req)
	}
	l, other := c.legs[side], c.legs[side.Other()]
	code := res.StatusCode
	if code < 200 {
		if code > 100 && req.Method == sip.INVITE {
			c.respondOn(l, req, tx, code, nil, nil)
		}
		return false
	}
	if c.state == stateEnded {
		return true
	}
	other.learned.learnFrom(res, c.srv.isOwnHost)
	if code == 422 && u != nil && !u.retried && !u.cancelled && c.retryRelayed(u, other, out, res) {
		return false
	}
	if code >= 300 {
		if u != nil {
			c.rollback()
			c.update = nil
		}
		c.respondOn(l, req, tx, code, nil, copyHeaders(res, "Retry-After", "Reason", "Unsupported"))
		if (code == 481 || code == 408) && c.state != stateEarly {
			// the other leg's dialog is gone (RFC 3261 §14.1): end the call
			c.rec.EndReason = fmt.Sprintf("in-dialog %s got %d", req.Method, code)
			c.byeBoth()
		}
		return true
	}
	var body []byte
	if u == nil {
		// INFO, MESSAGE, NOTIFY, OPTIONS: only the outcome crosses
		c.respondOn(l, req, tx, code, nil, nil)
		return true
	}
	if ct := msgContact(res); ct != nil && req.Method == sip.INVITE {
		other.target = ct.Address
	}
	sdp := sdpBody(res)
	var err error
	switch {
	case u.offered && sdp != nil:
		body, err = c.negotiate(false, other.side, sdp)
	case u.offered:
		err = errors.New("offer answered without SDP")
	case sdp != nil:
		// offer in the 2xx; the answer will come in the ACK (re-INVITE)
		body, err = c.negotiate(true, other.side, sdp)
	}
	if req.Method == sip.INVITE {
		u.ack = c.inDialog(other, sip.ACK, out.CSeq().SeqNo)
	}
	if err != nil {
		c.log.Warn("re-answer unusable", "method", req.Method, "error", err)
		c.rollback()
		c.update = nil
		if u.ack != nil {
			c.sendAck(other, u.ack)
		}
		c.respondOn(l, req, tx, 488, nil, nil)
		return true
	}
	if req.Method == sip.INVITE && (u.offered || sdp == nil || u.cancelled) {
		c.sendAck(other, u.ack)
		u.acked = true
	}
	if other.st != nil {
		// a successful re-INVITE or UPDATE refreshes the leg it was sent on
		c.startTimer(other, uacTimer(other.peer, other.st.interval, res))
	}
	if u.offered {
		c.sentSDP[other.side] = u.outBody
	}
	if body != nil {
		c.sentSDP[side] = body
	}
	if u.cancelled {
		// the 2xx crossed our CANCEL: the sender already has its 487
		c.update = nil
		return true
	}
	u.res = c.respondOn(l, req, tx, code, body, uasHeaders(u.timer))
	if u.timer != nil {
		c.startTimer(l, u.timer)
	}
	if req.Method == sip.UPDATE {
		c.update = nil
		if c.state == stateEarly {
			// what leg A's 2xx repeats when leg B's has no SDP
			c.earlySDP = c.sentSDP[media.A]
		}
		return true
	}
	c.retransmitUpdate(u)
	return true
}

// retryRelayed sends a relayed re-INVITE or UPDATE again after the other
// leg answered 422: that leg's session timer takes the peer's Min-SE and
// the request goes out with a new CSeq (RFC 4028 §7.4). The sender never
// hears of it. Caller holds mu.
func (c *Call) retryRelayed(u *inDialogTx, other *Leg, out *sip.Request, res *sip.Response) bool {
	t := readTimer(res)
	if other.st == nil || t.minSE <= other.st.interval {
		return false
	}
	u.retried = true
	other.peerMinSE = t.minSE
	other.st.interval = t.minSE
	other.localCSeq++
	r := out.Clone()
	r.ReplaceHeader(c.srv.via(other.zone))
	r.ReplaceHeader(&sip.CSeqHeader{SeqNo: other.localCSeq, MethodName: out.Method})
	for r.RemoveHeader("Session-Expires") || r.RemoveHeader("Min-SE") {
	}
	for _, h := range uacHeaders(other, other.st.interval) {
		r.AppendHeader(h)
	}
	r.SetBody(out.Body())
	r.Laddr = other.zone.laddr
	r.SetDestination(other.dest)
	c.send(other, r)
	c.log.Debug("relayed request retried with a longer session interval", "leg", other.side, "min_se", t.minSE)
	u.retry = r
	return true
}

func (c *Call) takeInDialogRetry(u *inDialogTx) *sip.Request {
	if u == nil {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	r := u.retry
	u.retry = nil
	return r
}

// onUpdateAck completes a re-INVITE: the ACK from the leg that sent it,
// carrying the answer when the offer came in our 2xx. Caller holds mu.
func (c *Call) onUpdateAck(u *inDialogTx, req *sip.Request) {
	if u.retrans != nil {
		u.retrans.Stop()
	}
	other := c.legs[u.from.Other()]
	if u.ownOffer && u.res != nil {
		if c.update == u {
			c.update = nil
		}
		c.settleReoffer(u, req)
		return
	}
	if !u.acked && u.ack != nil {
		if sdp := sdpBody(req); sdp != nil {
			if out, err := c.negotiate(false, u.from, sdp); err == nil {
				u.ack.AppendHeader(hdrSDP)
				u.ack.SetBody(out)
				c.sentSDP[other.side] = out
			} else {
				c.log.Warn("answer in ACK unusable", "error", err)
			}
		}
		c.sendAck(other, u.ack)
		u.acked = true
	}
	if c.update == u {
		c.update = nil
	}
}

// retransmitUpdate resends a re-INVITE's 2xx until its ACK, like the
// initial one (RFC 3261 §13.3.1.4). Caller holds mu.
func (c *Call) retransmitUpdate(u *inDialogTx) {
	interval := sip.T1
	deadline := time.Now().Add(64 * sip.T1)
	var tick func()
	tick = func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		if c.update != u || c.state == stateEnded {
			return
		}
		if time.Now().After(deadline) {
			c.log.Warn("no ACK for re-INVITE 2xx, ending call", "leg", u.from)
			c.rec.EndReason = "no ack"
			if !u.acked && u.ack != nil {
				c.sendAck(c.legs[u.from.Other()], u.ack)
			}
			c.update = nil
			c.byeBoth()
			return
		}
		if err := c.srv.resend2xx(c.legs[u.from].zone, u.tx, u.res); err != nil {
			c.log.Debug("re-INVITE 2xx retransmission", "error", err)
		}
		interval = min(2*interval, sip.T2)
		u.retrans = time.AfterFunc(interval, tick)
	}
	u.retrans = time.AfterFunc(interval, tick)
}

// finishInDialog answers a relayed request whose other side never
// answered. When its transaction timed out, that side's dialog is gone as
// after a 408 (RFC 3261 §12.2.1.2: no response at all counts like 408 or
// 481), and the call ends with BYE on both legs; a call must not stay up
// on a leg that no longer answers, whatever the request was (a REFER, a
// NOTIFY of its subscription). Caller does not hold mu.
func (c *Call) finishInDialog(u *inDialogTx, req *sip.Request, tx sip.ServerTransaction, code int, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	side := c.sideOf(req)
	if u != nil {
		side = u.from
		c.rollback()
		if c.update == u {
			c.update = nil
		}
	}
	timedOut := errors.Is(err, sip.ErrTransactionTimeout)
	c.log.Info("in-dialog request not answered", "method", req.Method, "code", code, "error", err,
		"ending_call", timedOut && c.state != stateEarly && c.state != stateEnded)
	if c.state == stateEnded {
		return
	}
	c.respondOn(c.legs[side], req, tx, code, nil, nil)
	if timedOut && c.state != stateEarly {
		c.rec.EndReason = fmt.Sprintf("in-dialog %s timed out", req.Method)
		c.byeBoth()
	}
}

// rollback re-applies the last accepted SDP of both sides, so that a
// failed re-offer leaves the media as it was. Caller holds mu.
func (c *Call) rollback() {
	m := c.srv.media
	if m == nil || !c.mediaOpen {
		return
	}
	id := media.SessionID(c.id)
	// the original offerer is whichever side's SDP the session started
	// with; re-applying offer then answer restores both expectations
	first, second := media.A, media.B
	if c.lateOffer {
		first, second = media.B, media.A
	}
	if sdp := c.lastSDP[first]; sdp != nil {
		if _, err := m.Offer(id, first, sdp); err != nil {
			c.log.Warn("media rollback", "side", first, "error", err)
		}
	}
	if sdp := c.lastSDP[second]; sdp != nil {
		if _, err := m.Answer(id, second, sdp); err != nil {
			c.log.Warn("media rollback", "side", second, "error", err)
		}
	}
}

// legByCallID finds a leg of the call, current, ringing in a transfer or
// released, by its Call-ID. Caller holds mu.
func (c *Call) legByCallID(id *sip.CallIDHeader) *Leg {
	if id == nil {
		return nil
	}
	for _, l := range c.legs {
		if l.callID == id.Value() {
			return l
		}
	}
	if xf := c.xfer; xf != nil && xf.target.callID == id.Value() {
		return xf.target
	}
	for _, l := range c.released {
		if l.callID == id.Value() {
			return l
		}
	}
	return nil
}

// sideOf finds which leg an in-dialog request arrived on.
func (c *Call) sideOf(req *sip.Request) media.Side {
	if id := req.CallID(); id != nil && id.Value() == c.legs[media.B].callID {
		return media.B
	}
	return media.A
}

// respondOn answers an in-dialog request on leg l. Caller holds mu.
func (c *Call) respondOn(l *Leg, req *sip.Request, tx sip.ServerTransaction, code int, body []byte, extra []sip.Header) *sip.Response {
	res := sip.NewResponseFromRequest(req, code, reasonPhrase(code), nil)
	if to := res.To(); to != nil && code > 100 && !req.To().Params.Has("tag") {
		// only the initial INVITE lacks our tag; every response to it but
		// 100 carries the same one (RFC 3261 §8.2.6.2)
		to.Params.Add("tag", l.localTag)
	}
	c.srv.decorateResponse(l.zone, res, code)
	for _, h := range extra {
		res.AppendHeader(h)
	}
	if body != nil {
		res.AppendHeader(hdrSDP)
	}
	res.SetBody(body)
	setTransport(res, l.zone, "", transportOf(req))
	c.send(l, res)
	if err := c.srv.respondTx(l.zone, req, tx, res); err != nil {
		c.log.Debug("respond in dialog", "code", code, "error", err)
	}
	return res
}

// sendAck sends an ACK for a 2xx on leg l. Caller holds mu.
func (c *Call) sendAck(l *Leg, ack *sip.Request) {
	l.lastAck = ack
	c.send(l, ack)
	if err := l.zone.client.WriteRequest(ack, noBuild); err != nil {
		c.log.Debug("send ack", "leg", l.side, "error", err)
	}
}

func copyHeaders(from sip.Message, names ...string) []sip.Header {
	var out []sip.Header
	for _, name := range names {
		for h := range headersNamed(from, name) {
			out = append(out, sip.NewHeader(h.Name(), h.Value()))
		}
	}
	return out
}

// answerEarlyUpdate handles an UPDATE received in an early dialog (RFC 3311
// §5.1) and reports whether it answered it: one that goes on is relayed to
// the other leg's early dialog like any UPDATE. An offer before the initial
// offer/answer is complete gets 500 with Retry-After, one crossing another
// offer 491 (RFC 3311 §5.2). When the other leg has no early dialog to take
// it (no tagged provisional from the callee yet; a caller that was sent no
// reliable provisional or does not allow UPDATE), the SBC answers itself:
// 200 to an UPDATE without SDP, and to one with an offer the media is
// re-anchored toward the sender and the answer is the SBC's side of the
// session as it stands; the other leg never notices. Caller holds mu.
func (c *Call) answerEarlyUpdate(l, other *Leg, req *sip.Request, tx sip.ServerTransaction) bool {
	sdp := sdpBody(req)
	switch {
	case sdp != nil && !c.earlyAnswered():
		c.srv.respond(l.zone, req, tx, 500, retryAfter(strconv.Itoa(mathrand.IntN(11))))
		return true
	case sdp != nil && c.update != nil:
		c.srv.respond(l.zone, req, tx, 491, nil)
		return true
	case c.earlyDialog(other):
		return false
	case sdp == nil:
		c.respondOn(l, req, tx, 200, nil, nil)
		return true
	}
	body, err := c.reanchorLocally(l.side, sdp)
	if err != nil {
		c.log.Warn("early UPDATE offer refused", "leg", l.side, "error", err)
		c.respondOn(l, req, tx, 488, nil, nil)
		return true
	}
	c.respondOn(l, req, tx, 200, body, nil)
	return true
}

// earlyAnswered reports whether the initial offer/answer has been done in
// the early dialog: the callee's answer to the caller's offer came in a
// provisional, or (late offer) the caller answered the callee's offer in
// its PRACK. Caller holds mu.
func (c *Call) earlyAnswered() bool {
	if c.lateOffer {
		return c.earlyOA
	}
	return c.lastSDP[media.B] != nil
}

// earlyDialog reports whether leg l has an early dialog the SBC may send
// an UPDATE on. Caller holds mu.
func (c *Call) earlyDialog(l *Leg) bool {
	if l.gone || c.cancelled {
		return false
	}
	if l.side == media.B {
		return l.remoteTag != ""
	}
	return c.aRSeq != 0 && l.allowUpdate
}

// reanchorLocally takes an offer from side that cannot reach the other leg
// and answers it from the session as it stands: the relay follows the
// sender's new address, and the answer is the SBC's address toward it with
// the other side's last SDP. Caller holds mu.
func (c *Call) reanchorLocally(side media.Side, sdp []byte) ([]byte, error) {
	m := c.srv.media
	other := side.Other()
	if m == nil || !c.mediaOpen || c.lastSDP[other] == nil {
		return nil, errors.New("no anchored session to answer from")
	}
	if _, err := c.negotiate(true, side, sdp); err != nil {
		c.rollback()
		return nil, err
	}
	out, err := m.Answer(media.SessionID(c.id), other, c.lastSDP[other])
	if err != nil {
		c.rollback()
		return nil, fmt.Errorf("answer from the session: %w", err)
	}
	c.sentSDP[side] = out
	if side == media.A {
		c.earlySDP = out
	}
	return out, nil
}
