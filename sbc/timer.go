package sbc

import (
	"context"
	"fmt"
	mathrand "math/rand/v2"
	"strconv"
	"strings"
	"time"

	"github.com/emiago/sipgo/sip"

	"github.com/edgesbc/edgesbc/media"
)

// Session timers (RFC 4028) are terminated per leg: each leg negotiates its
// own interval and refresher with its own peer, and the SBC keeps each
// leg's session alive on its own. A refresh from one peer is answered on
// its leg and never crosses to the other one; when the SBC is the refresher
// of a leg it sends the refreshes itself; when a peer that promised to
// refresh stops doing so, the call ends with BYE on both legs (§10).

// rfc4028Floor is the smallest Min-SE the RFC allows on the wire (§5).
const rfc4028Floor = 90 * time.Second

// sessionTimer is the negotiated session timer of one leg. All fields are
// guarded by the Call's mu.
type sessionTimer struct {
	interval time.Duration // the leg's Session-Expires
	// weRefresh: the SBC refreshes this leg; otherwise its peer does and
	// the SBC only watches for the refreshes.
	weRefresh bool
	// peerSupports: the peer announced Supported: timer.
	peerSupports bool
	refreshed    time.Time // last successful refresh (or the answer)
	timer        *time.Timer
	gen          int // a fired timer of an older schedule does nothing
}

// timerRequest is what a request or response says about session timers.
type timerRequest struct {
	se        time.Duration // Session-Expires, 0 when absent
	refresher string        // "uac", "uas" or ""
	minSE     time.Duration // Min-SE, 0 when absent
	supported bool          // Supported: timer
}

// headerValues returns the values of a header under its full or compact
// name (RFC 3261 §7.3.3), split at commas.
func headerValues(msg sip.Message, names ...string) []string {
	var out []string
	for _, name := range names {
		for h := range headersNamed(msg, name) {
			for _, v := range strings.Split(h.Value(), ",") {
				if v = strings.TrimSpace(v); v != "" {
					out = append(out, v)
				}
			}
		}
	}
	return out
}

// hasOption reports whether an option tag is listed in a Supported or
// Require header of msg.
func hasOption(msg sip.Message, header, tag string) bool {
	names := []string{header}
	if header == "Supported" {
		names = append(names, "k")
	}
	for _, v := range headerValues(msg, names...) {
		if strings.EqualFold(v, tag) {
			return true
		}
	}
	return false
}

// readTimer parses Session-Expires (compact x), its refresher parameter,
// Min-SE and Supported: timer. Unparsable values count as absent.
func readTimer(msg sip.Message) timerRequest {
	var t timerRequest
	t.supported = hasOption(msg, "Supported", "timer")
	for _, name := range []string{"Session-Expires", "x"} {
		h := firstHeader(msg, name)
		if h == nil {
			continue
		}
		parts := strings.Split(h.Value(), ";")
		if n, err := strconv.ParseUint(strings.TrimSpace(parts[0]), 10, 32); err == nil && n > 0 {
			t.se = time.Duration(n) * time.Second
		}
		for _, p := range parts[1:] {
			k, v, _ := strings.Cut(strings.TrimSpace(p), "=")
			if strings.EqualFold(strings.TrimSpace(k), "refresher") {
				t.refresher = strings.ToLower(strings.TrimSpace(v))
			}
		}
		break
	}
	if h := firstHeader(msg, "Min-SE"); h != nil {
		v, _, _ := strings.Cut(h.Value(), ";")
		if n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 32); err == nil {
			t.minSE = time.Duration(n) * time.Second
		}
	}
	return t
}

// seconds renders a duration as delta-seconds, rounding up.
func seconds(d time.Duration) string {
	return strconv.FormatInt(int64((d+time.Second-1)/time.Second), 10)
}

// timersOn reports whether the SBC runs session timers toward p.
func (p *peer) timersOn() bool { return p.cfg.SessionExpires > 0 }

// minSE is the smallest interval accepted from p.
func (p *peer) minSE() time.Duration {
	if p.cfg.MinSE > 0 {
		return p.cfg.MinSE
	}
	return min(rfc4028Floor, p.cfg.SessionExpires)
}

// uasTimer decides the session timer of a leg from a session-creating or
// refreshing request the SBC received on it as the UAS (RFC 4028 §9). It
// returns 422 when the requested interval is below the peer's Min-SE and
// the requester can retry (it supports timers); otherwise the interval is
// raised instead. A nil timer means no session timer on this leg.
func uasTimer(p *peer, t timerRequest) (*sessionTimer, int) {
	if !p.timersOn() {
		return nil, 0
	}
	floor := max(p.minSE(), t.minSE)
	se := p.cfg.SessionExpires
	if t.se > 0 {
		if t.se < p.minSE() && t.supported {
			return nil, 422
		}
		se = min(t.se, se) // the UAS may lower the interval, never raise it
	}
	se = max(se, floor)
	st := &sessionTimer{interval: se, peerSupports: t.supported}
	switch {
	case t.refresher == "uas":
		st.weRefresh = true
	case t.refresher == "uac" && t.supported:
	case t.supported:
		// the requester refreshes: it knows how, and it costs us nothing
	default:
		// a peer without timer support can only be kept alive by us
		st.weRefresh = true
	}
	return st, 0
}

// uacTimer reads the session timer of a leg from the 2xx the SBC received
// as the UAC of a request that asked for requested (RFC 4028 §7.2). A peer
// that answers without Session-Expires does not run the timer: the SBC then
// refreshes that leg itself, so a dead peer is still noticed.
func uacTimer(p *peer, requested time.Duration, res *sip.Response) *sessionTimer {
	if !p.timersOn() {
		return nil
	}
	t := readTimer(res)
	if t.se == 0 {
		return &sessionTimer{interval: requested, weRefresh: true, peerSupports: t.supported}
	}
	return &sessionTimer{interval: t.se, weRefresh: t.refresher != "uas", peerSupports: true}
}

// uasHeaders are the session timer headers of a 2xx the SBC sends as UAS
// on a leg with timer st (RFC 4028 §9).
func uasHeaders(st *sessionTimer) []sip.Header {
	if st == nil {
		return nil
	}
	refresher := "uac"
	if st.weRefresh {
		refresher = "uas"
	}
	hs := []sip.Header{sip.NewHeader("Session-Expires", seconds(st.interval)+";refresher="+refresher)}
	if !st.weRefresh {
		// the peer must refresh: it has to know (§9)
		hs = append(hs, sip.NewHeader("Require", "timer"))
	}
	return append(hs, sip.NewHeader("Supported", "timer"))
}

// uacHeaders are the session timer headers of a request the SBC sends as
// UAC on leg l: the initial INVITE asks for the peer's configured interval
// and lets it choose the refresher; a refresh or relayed re-INVITE keeps the
// negotiated interval and roles (RFC 4028 §7.4).
func uacHeaders(l *Leg, interval time.Duration) []sip.Header {
	if !l.peer.timersOn() {
		return nil
	}
	se := seconds(interval)
	if st := l.st; st != nil {
		if st.weRefresh {
			se += ";refresher=uac"
		} else {
			se += ";refresher=uas"
		}
	}
	return []sip.Header{
		sip.NewHeader("Session-Expires", se),
		sip.NewHeader("Min-SE", seconds(max(l.peer.minSE(), l.peerMinSE))),
	}
}

// expiryMargin is how long before expiry the watching side ends the
// session (RFC 4028 §10: the smaller of 32 seconds and a third of it).
func expiryMargin(interval time.Duration) time.Duration {
	return min(32*time.Second, interval/3)
}

// startTimer (re)arms leg l's session timer after the session was set up
// or refreshed. Caller holds mu.
func (c *Call) startTimer(l *Leg, st *sessionTimer) {
	if old := l.st; old != nil && old.timer != nil {
		old.timer.Stop()
	}
	l.st = st
	if st == nil || c.state == stateEnded {
		return
	}
	st.refreshed = time.Now()
	if st.weRefresh {
		c.armTimer(l, st, st.interval/2)
	} else {
		c.armTimer(l, st, st.interval-expiryMargin(st.interval))
	}
}

// armTimer schedules leg l's next timer event in d. Caller holds mu.
func (c *Call) armTimer(l *Leg, st *sessionTimer, d time.Duration) {
	if st.timer != nil {
		st.timer.Stop()
	}
	st.gen++
	gen := st.gen
	st.timer = time.AfterFunc(d, func() { c.onTimer(l, st, gen) })
}

func (c *Call) stopTimers() {
	for _, l := range c.legs {
		if l != nil && l.st != nil && l.st.timer != nil {
			l.st.timer.Stop()
		}
	}
}

// onTimer is leg l's session timer firing: refresh the leg when the SBC is
// its refresher, else the peer's refresh is overdue and the call ends.
func (c *Call) onTimer(l *Leg, st *sessionTimer, gen int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state == stateEnded || l.st != st || st.gen != gen {
		return
	}
	expiry := st.refreshed.Add(st.interval)
	if !st.weRefresh {
		c.log.Info("session expired: no refresh from peer", "leg", l.side, "peer", l.peer.cfg.Name, "interval", st.interval)
		c.rec.EndReason = "session expired"
		c.byeBoth()
		return
	}
	if time.Now().After(expiry.Add(-expiryMargin(st.interval))) {
		c.log.Info("session expired: refreshes failed", "leg", l.side, "peer", l.peer.cfg.Name, "interval", st.interval)
		c.rec.EndReason = "session refresh failed"
		c.byeBoth()
		return
	}
	if c.state != stateConfirmed || c.update != nil || c.xfer != nil {
		// another offer/answer is under way; when it succeeds it refreshes
		// this leg too, else try again shortly
		c.armTimer(l, st, min(time.Second, time.Until(expiry)/4))
		return
	}
	c.refresh(l, st)
}

// retryLater re-arms a refresh that did not succeed: half of what is left
// before the session would expire. Caller holds mu.
func (c *Call) retryLater(l *Leg, st *sessionTimer) {
	left := time.Until(st.refreshed.Add(st.interval).Add(-expiryMargin(st.interval)))
	c.armTimer(l, st, max(left/2, 100*time.Millisecond))
}

// refresh sends a session refresh on leg l (RFC 4028 §7.4): UPDATE without
// SDP when the peer allows UPDATE, else a re-INVITE offering the same SDP
// as last time (an unchanged version, so no media changes). The
// transaction occupies the call's offer/answer slot: a re-INVITE from a
// peer meanwhile gets 491. Caller holds mu.
func (c *Call) refresh(l *Leg, st *sessionTimer) {
	method := sip.INVITE
	body := c.sentSDP[l.side]
	if l.allowUpdate || body == nil {
		method = sip.UPDATE
		body = nil
	}
	u := &inDialogTx{method: method, from: l.side.Other(), own: true}
	c.update = u
	l.localCSeq++
	req := c.inDialog(l, method, l.localCSeq)
	req.AppendHeader(c.srv.contact(l.zone))
	req.AppendHeader(sip.NewHeader("Supported", "timer"))
	for _, h := range uacHeaders(l, st.interval) {
		req.AppendHeader(h)
	}
	if body != nil {
		req.AppendHeader(hdrSDP)
	}
	req.SetBody(body)
	c.send(l, req)
	c.log.Debug("session refresh", "leg", l.side, "method", method, "interval", st.interval)

	s := c.srv
	s.callWG.Add(1)
	go func() {
		defer s.callWG.Done()
		tx, err := l.zone.client.TransactionRequest(context.Background(), req, noBuild)
		if err != nil {
			c.refreshDone(l, st, u, req, nil, fmt.Errorf("send %s: %w", method, err))
			return
		}
		defer tx.Terminate()
		// a provisional stops a re-INVITE's Timer B: the wait for the
		// final response has a timer of its own (see finalResponse)
		wait := time.NewTimer(s.cfg.inDialogWait)
		defer wait.Stop()
		for {
			select {
			case res := <-tx.Responses():
				if res.StatusCode >= 200 {
					c.refreshDone(l, st, u, req, res, nil)
					return
				}
			case <-tx.Done():
				c.refreshDone(l, st, u, req, nil, tx.Err())
				return
			case <-wait.C:
				c.refreshDone(l, st, u, req, nil, fmt.Errorf("no final response in %v: %w", s.cfg.inDialogWait, sip.ErrTransactionTimeout))
				return
			case <-c.done:
				return
			}
		}
	}()
}

// refreshDone handles the outcome of the SBC's own refresh of leg l.
func (c *Call) refreshDone(l *Leg, st *sessionTimer, u *inDialogTx, req *sip.Request, res *sip.Response, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.update == u {
		c.update = nil
	}
	defer c.acked.Broadcast()
	if c.state == stateEnded {
		return
	}
	code := 408
	if res != nil {
		code = res.StatusCode
	}
	if res != nil && code < 300 && req.Method == sip.INVITE {
		c.sendAck(l, c.inDialog(l, sip.ACK, req.CSeq().SeqNo))
		if sdp := sdpBody(res); sdp != nil && !sameSDPVersion(sdp, c.lastSDP[l.side]) && c.srv.media != nil && c.mediaOpen {
			// the peer moved its media in its answer: follow it
			if _, err := c.srv.media.Answer(media.SessionID(c.id), l.side, sdp); err != nil {
				c.log.Warn("refresh answer unusable", "leg", l.side, "error", err)
			} else {
				c.lastSDP[l.side] = sdp
			}
		}
	}
	if l.st != st {
		return // renegotiated meanwhile
	}
	switch {
	case code < 300:
		if ct := msgContact(res); ct != nil && req.Method == sip.INVITE {
			l.target = ct.Address
		}
		next := uacTimer(l.peer, st.interval, res)
		if next != nil && !next.peerSupports && readTimer(res).se == 0 {
			// still no timer support on the far side: keep our interval
			next.interval = st.interval
		}
		if next == nil {
			next = st
		}
		c.startTimer(l, next)
	case code == 422:
		// the peer wants a longer interval (RFC 4028 §7.4): retry with it
		if t := readTimer(res); t.minSE > st.interval {
			l.peerMinSE = t.minSE
			st.interval = t.minSE
			c.refresh(l, st)
			return
		}
		c.retryLater(l, st)
	case code == 405 || code == 501:
		if req.Method == sip.UPDATE && l.allowUpdate {
			l.allowUpdate = false
			c.refresh(l, st)
			return
		}
		c.retryLater(l, st)
	case code == 491:
		// the peer's own re-INVITE or UPDATE crossed ours (glare)
		c.log.Debug("session refresh crossed a request of the peer, retrying", "leg", l.side)
		left := time.Until(st.refreshed.Add(st.interval).Add(-expiryMargin(st.interval)))
		c.armTimer(l, st, max(min(glareWait(l.originator), left/2), 10*time.Millisecond))
	case code == 408 || code == 481:
		// the dialog is gone on that side (RFC 3261 §12.2.1.2)
		c.log.Info("session refresh failed, ending call", "leg", l.side, "code", code, "error", err)
		c.rec.EndReason = "session refresh failed"
		c.byeBoth()
	default:
		c.log.Debug("session refresh refused", "leg", l.side, "code", code)
		c.retryLater(l, st)
	}
}

// glareWait is how long a UAC waits before it retries a re-INVITE or
// UPDATE refused with 491 (RFC 3261 §14.1): the owner of the Call-ID (the
// dialog's initiator) a random time between 2.1 and 4 s, the other side
// between 0 and 2 s, both in units of 10 ms. The two sides of a glare so
// retry at different times instead of colliding again.
func glareWait(owner bool) time.Duration {
	if owner {
		return 2100*time.Millisecond + time.Duration(mathrand.IntN(191))*10*time.Millisecond
	}
	return time.Duration(mathrand.IntN(201)) * 10 * time.Millisecond
}

// maxGlareRetries bounds how often the SBC sends one re-INVITE of its own
// again after 491s.
const maxGlareRetries = 3

// afterGlare waits as RFC 3261 §14.1 asks after a 491 to req, sent on leg
// l, and sends req again as a new transaction: a new branch and the leg's
// next CSeq. It returns nil, sending nothing, when the call ended meanwhile
// or still reports false. Caller does not hold mu.
func (c *Call) afterGlare(l *Leg, req *sip.Request, still func() bool) *sip.Request {
	t := time.NewTimer(glareWait(l.originator))
	defer t.Stop()
	select {
	case <-t.C:
	case <-c.done:
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state == stateEnded || !still() {
		return nil
	}
	l.localCSeq++
	r := req.Clone()
	r.ReplaceHeader(c.srv.via(l.zone))
	r.ReplaceHeader(&sip.CSeqHeader{SeqNo: l.localCSeq, MethodName: req.Method})
	r.SetBody(req.Body())
	r.Laddr = l.zone.laddr
	r.SetDestination(l.dest)
	c.send(l, r)
	c.log.Debug("re-INVITE sent again after glare", "leg", l.side, "cseq", l.localCSeq)
	return r
}

// finalResponse runs a request the SBC originates on leg l as a client
// transaction and returns its final response, nil when there is none
// (Timer B/F, transport error, or nothing final within the server's
// inDialogWait). A provisional stops an INVITE's Timer B (RFC 3261
// §17.1.1.2) and sipgo uses a context only to dial, so the wait has a
// timer of its own: a peer that sends 100 Trying and nothing else must
// not hold a transfer forever. Caller does not hold mu.
func (c *Call) finalResponse(l *Leg, req *sip.Request) *sip.Response {
	tx, err := l.zone.client.TransactionRequest(context.Background(), req, noBuild)
	if err != nil {
		c.log.Debug("send request", "method", req.Method, "leg", l.side, "error", err)
		return nil
	}
	defer tx.Terminate()
	wait := time.NewTimer(c.srv.cfg.inDialogWait)
	defer wait.Stop()
	for {
		select {
		case res := <-tx.Responses():
			if res.StatusCode >= 200 {
				return res
			}
		case <-tx.Done():
			return nil
		case <-wait.C:
			c.log.Info("no final response, giving up", "method", req.Method, "leg", l.side, "wait", c.srv.cfg.inDialogWait)
			return nil
		}
	}
}

// sameSDPVersion reports whether two SDP bodies have the same origin line:
// a peer that repeats its o= line changes nothing (RFC 3264 §8).
func sameSDPVersion(a, b []byte) bool {
	oa, ob := originLine(a), originLine(b)
	return oa != "" && oa == ob
}

func originLine(sdp []byte) string {
	for line := range strings.Lines(string(sdp)) {
		if strings.HasPrefix(line, "o=") {
			return strings.TrimSpace(line)
		}
	}
	return ""
}

// isRefresh reports whether an in-dialog request received on leg l only
// refreshes that leg's session (RFC 4028): the leg runs a session timer,
// the request is a session refresh (it says so with Session-Expires, or
// the peer is the leg's refresher), and it changes no media: an UPDATE
// without SDP, or an offer repeating the last one's version. Such a request
// is answered by the SBC on its own leg and not relayed.
func (c *Call) isRefresh(l *Leg, req *sip.Request) bool {
	if l.st == nil || (req.Method != sip.INVITE && req.Method != sip.UPDATE) {
		return false
	}
	if readTimer(req).se == 0 && l.st.weRefresh {
		return false
	}
	sdp := sdpBody(req)
	if sdp == nil {
		return req.Method == sip.UPDATE && len(req.Body()) == 0
	}
	return sameSDPVersion(sdp, c.lastSDP[l.side])
}

// absorbRefresh answers a session refresh on its own leg: 200 with the
// leg's renegotiated timer and, to a re-INVITE, the same SDP the leg last
// got from the SBC (unchanged, so nothing moves). Caller holds mu.
func (c *Call) absorbRefresh(l *Leg, st *sessionTimer, req *sip.Request, tx sip.ServerTransaction) {
	var body []byte
	if sdpBody(req) != nil {
		body = c.sentSDP[l.side]
	}
	if ct := msgContact(req); ct != nil && req.Method == sip.INVITE {
		l.target = ct.Address
	}
	res := c.respondOn(l, req, tx, 200, body, uasHeaders(st))
	c.startTimer(l, st)
	c.log.Debug("session refresh absorbed", "leg", l.side, "method", req.Method, "interval", st.interval)
	if req.Method == sip.INVITE {
		u := &inDialogTx{method: req.Method, from: l.side, cseq: req.CSeq().SeqNo, tx: tx, res: res, acked: true}
		c.update = u
		c.retransmitUpdate(u)
	}
}

// allowsUpdate reports whether msg's Allow lists UPDATE (RFC 3311 §5.1).
func allowsUpdate(msg sip.Message) bool {
	for _, v := range headerValues(msg, "Allow") {
		if strings.EqualFold(v, "UPDATE") {
			return true
		}
	}
	return false
}
