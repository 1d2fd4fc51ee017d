package sbc

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/emiago/sipgo/sip"

	"github.com/edgesbc/edgesbc/media"
)

// Reliable provisional responses (RFC 3262) are terminated per leg. On leg
// B the SBC is the UAC: it offers 100rel and PRACKs the callee's reliable
// provisionals itself (Call.prack). On leg A it is the UAS: when the
// caller's INVITE lists 100rel in Supported, provisionals carrying SDP go
// to it reliably; when it lists 100rel in Require, every provisional but
// 100 does. Either leg may use 100rel without the other.

// relMode is what the caller's INVITE says about 100rel.
type relMode int

const (
	relNone      relMode = iota // provisionals go to the caller unreliably
	relSupported                // those with SDP go reliably
	relRequired                 // all but 100 go reliably
)

func relModeOf(req *sip.Request) relMode {
	switch {
	case hasOption(req, "Require", "100rel"):
		return relRequired
	case hasOption(req, "Supported", "100rel"):
		return relSupported
	}
	return relNone
}

// relProv is a reliable provisional response sent on leg A, retransmitted
// until its PRACK (RFC 3262 §3).
type relProv struct {
	res   *sip.Response
	rseq  uint32
	sdp   bool // it carried SDP: a 2xx waits for its PRACK
	offer bool // the SDP was an offer (late offer): the PRACK answers it
	// acked: PRACKed; open: retransmissions run (stopped by the PRACK or
	// by a final response).
	acked, open bool
	timer       *time.Timer
}

// queuedProv is a provisional response waiting for the PRACK of the one
// before it: a UAS sends the next reliable provisional only once the
// previous one is acknowledged (RFC 3262 §3).
type queuedProv struct {
	code  int
	body  []byte
	offer bool
}

// maxQueuedProv bounds the provisionals held back for a slow PRACK; a
// callee sending more than this before the caller PRACKs loses the oldest
// ones, which only announced progress.
const maxQueuedProv = 8

// provisionalA relays a provisional response to leg A, reliably when the
// caller asked for it. body is the anchored SDP or nil; offer tells that
// it is an offer (a late-offer call). Caller holds mu.
func (c *Call) provisionalA(code int, body []byte, offer bool) {
	if !(c.aRel == relRequired || (c.aRel == relSupported && body != nil)) {
		c.respondA(code, body, nil)
		return
	}
	if p := c.aProv; p != nil && !p.acked {
		if len(c.aQueue) == maxQueuedProv {
			c.aQueue = c.aQueue[1:]
		}
		c.aQueue = append(c.aQueue, queuedProv{code: code, body: body, offer: offer})
		return
	}
	c.sendReliableA(code, body, offer)
}

// sendReliableA sends a reliable provisional on leg A and retransmits it at
// T1, doubling, until its PRACK; after 64*T1 without one the INVITE is
// refused with 500 (RFC 3262 §3). Caller holds mu.
func (c *Call) sendReliableA(code int, body []byte, offer bool) {
	if c.aRSeq == 0 {
		c.aRSeq = randCSeq() // any start between 1 and 2**31-1 will do
	} else {
		c.aRSeq++
	}
	a := c.legs[media.A]
	// Allow tells the caller that UPDATE works in the early dialog
	extra := []sip.Header{sip.NewHeader("Require", "100rel"), sip.NewHeader("RSeq", strconv.FormatUint(uint64(c.aRSeq), 10)), hdrAllow}
	p := &relProv{rseq: c.aRSeq, sdp: body != nil, offer: offer, open: true}
	p.res = c.respondOn(a, c.inReq, c.inTx, code, body, extra)
	c.aProv = p
	if body != nil {
		c.sentSDP[media.A] = body
	}
	interval := sip.T1
	deadline := time.Now().Add(64 * sip.T1)
	var tick func()
	tick = func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		if !p.open || c.aProv != p || c.state == stateEnded {
			return
		}
		if time.Now().After(deadline) {
			p.open = false
			c.log.Warn("no PRACK for reliable provisional on leg A, refusing the call", "rseq", p.rseq)
			if c.rec.EndReason == "" {
				c.rec.EndReason = "no prack"
			}
			select {
			case c.aborted <- 500:
			default:
			}
			return
		}
		if err := c.inTx.Respond(p.res); err != nil {
			c.log.Debug("reliable provisional retransmission", "error", err)
		}
		interval *= 2
		// the last wait ends at the deadline, not a whole interval after
		p.timer = time.AfterFunc(min(interval, time.Until(deadline)+time.Millisecond), tick)
	}
	p.timer = time.AfterFunc(interval, tick)
}

// stopReliableA ends the retransmission of leg A's reliable provisional
// once a final response is sent; a late PRACK for it is still answered
// (RFC 3262 §3). Caller holds mu.
func (c *Call) stopReliableA() {
	if p := c.aProv; p != nil {
		p.open = false
		if p.timer != nil {
			p.timer.Stop()
		}
	}
	c.aQueue = nil
}

// answerWaits reports whether leg A's 2xx must wait: a reliable
// provisional with SDP is not yet PRACKed (RFC 3262 §3). Caller holds mu.
func (c *Call) answerWaits() bool {
	p := c.aProv
	return p != nil && p.sdp && !p.acked && p.open
}

// parseRAck reads "response-num CSeq-num Method" (RFC 3262 §7.2).
func parseRAck(req *sip.Request) (rseq, cseq uint32, method string, ok bool) {
	h := req.GetHeaders("RAck")
	if len(h) != 1 {
		return 0, 0, "", false
	}
	f := strings.Fields(h[0].Value())
	if len(f) != 3 {
		return 0, 0, "", false
	}
	r, err1 := strconv.ParseUint(f[0], 10, 32)
	s, err2 := strconv.ParseUint(f[1], 10, 32)
	if err1 != nil || err2 != nil {
		return 0, 0, "", false
	}
	return uint32(r), uint32(s), f[2], true
}

// onPrack answers a PRACK from the caller. One that matches the reliable
// provisional awaiting it (RAck: its RSeq, the INVITE's CSeq number and
// method) gets 200 and stops the retransmissions; any other gets 481 (RFC
// 3262 §3). When that provisional carried an offer, the PRACK carries the
// answer, which goes on to the callee in leg B's PRACK. Then the next held
// provisional, or leg A's held 2xx, is sent.
func (c *Call) onPrack(side media.Side, req *sip.Request, tx sip.ServerTransaction) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.strayRequest(side, req, tx) {
		return
	}
	l := c.legs[side]
	if seq := req.CSeq().SeqNo; seq <= l.remoteCSeq {
		c.srv.respond(l.zone, req, tx, 500, nil)
		return
	} else {
		l.remoteCSeq = seq
	}
	p := c.aProv
	rseq, cseq, method, ok := parseRAck(req)
	if side != media.A || p == nil || p.acked || !ok || c.state == stateEnded || c.cancelled ||
		rseq != p.rseq || cseq != c.inReq.CSeq().SeqNo || !strings.EqualFold(method, string(sip.INVITE)) {
		c.srv.respond(l.zone, req, tx, 481, nil)
		return
	}
	p.acked, p.open = true, false
	if p.timer != nil {
		p.timer.Stop()
	}
	sdp := sdpBody(req)
	code := 200
	aborting := false
	switch {
	case p.offer && sdp != nil:
		var out []byte
		var err error
		if c.ownOffer {
			// the answer to the callee's answer relayed as an offer:
			// the callee has what it needs, nothing goes to leg B
			err = c.settle(sdp)
		} else {
			out, err = c.negotiate(false, media.A, sdp)
		}
		if err != nil {
			c.log.Warn("early answer from caller unusable", "error", err)
			c.rec.EndReason = "bad answer"
			code, aborting = 488, true
			select {
			case c.aborted <- 488:
			default:
			}
			break
		}
		c.earlyOA = true
		c.sendPrackB(out)
	case p.offer:
		c.log.Warn("caller PRACKed an early offer without an answer")
		c.sendPrackB(nil)
	case sdp != nil:
		// a new offer in the PRACK (RFC 3262 §5) is not taken up: the
		// session stays as the provisional set it
		code = 488
	}
	c.respondOn(l, req, tx, code, nil, nil)
	if aborting || c.state != stateEarly {
		return
	}
	if len(c.aQueue) > 0 {
		q := c.aQueue[0]
		c.aQueue = c.aQueue[1:]
		c.provisionalA(q.code, q.body, q.offer)
		return
	}
	if c.heldAnswer != nil && !c.answerWaits() {
		h := c.heldAnswer
		c.heldAnswer = nil
		c.answerA(h.body, h.res)
		close(c.finalA)
	}
}

// sendPrackB sends leg B's PRACK held back until the caller answered the
// offer of the callee's reliable provisional; body is that answer,
// anchored, or nil. Caller holds mu.
func (c *Call) sendPrackB(body []byte) {
	rseq := c.bPrackRSeq
	if rseq == 0 {
		return
	}
	c.bPrackRSeq = 0
	b := c.legs[media.B]
	b.localCSeq++
	req := c.inDialog(b, sip.PRACK, b.localCSeq)
	req.AppendHeader(sip.NewHeader("RAck", fmt.Sprintf("%d %d INVITE", rseq, c.outReq.CSeq().SeqNo)))
	if body != nil {
		req.AppendHeader(hdrSDP)
		req.SetBody(body)
		c.sentSDP[media.B] = body
	}
	c.runTx(b, req)
}

// heldAnswer is leg B's 2xx, relayed to leg A once the reliable provisional
// with SDP before it is PRACKed.
type heldAnswer struct {
	body []byte
	res  *sip.Response
}
