package sbc

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/emiago/sipgo/sip"

	"github.com/edgesbc/edgesbc/media"
)

// callState is where a Call stands. Every state has a timer that ends it:
// early calls the invite timeout, answered calls the 2xx retransmission
// limit (64*T1), confirmed calls the media timeout.
type callState int

const (
	stateEarly     callState = iota // INVITE sent on leg B, no final response yet
	stateAnswered                   // 2xx sent on leg A, waiting for its ACK
	stateConfirmed                  // both dialogs confirmed
	stateEnded                      // released; late messages find no dialog
)

func (s callState) String() string {
	return [...]string{"early", "answered", "confirmed", "ended"}[s]
}

// Leg is one SIP dialog of a Call, seen from the SBC: on leg A the SBC is the
// UAS, on leg B the UAC. Local and remote are the From/To values of this
// dialog only; nothing here is ever copied to the other leg.
type Leg struct {
	side       media.Side
	zone       *zone
	peer       *peer
	callID     string
	localTag   string
	remoteTag  string
	local      sip.Uri
	localName  string
	remote     sip.Uri
	remoteName string
	localCSeq  uint32    // last CSeq we used for a request on this leg
	remoteCSeq uint32    // highest CSeq received on this leg
	target     sip.Uri   // remote target: the peer's Contact
	routes     []sip.Uri // route set (RFC 3261 §12.1)
	dest       string    // where requests go: the peer, never the Contact host
	// transport is the leg's SIP transport: the one leg A's INVITE came
	// on; empty for legs the SBC opened, which use their peer's.
	transport string
	learned   foreignSet
	// st is the leg's session timer (RFC 4028), nil when none runs.
	st *sessionTimer
	// peerMinSE is the Min-SE the peer asked for in a 422 or a request.
	peerMinSE time.Duration
	// allowUpdate: the peer lists UPDATE in Allow, so refreshes use it.
	allowUpdate bool
	// gone: the dialog has ended (BYE sent or received) while the call
	// goes on without this leg (a transfer).
	gone bool
	// lastAck is the last ACK sent on this leg for a 2xx, resent when the
	// 2xx is retransmitted.
	lastAck *sip.Request
	// originator: the SBC sent this dialog's initial INVITE, so it owns
	// the Call-ID, which sets its wait after a 491 (RFC 3261 §14.1).
	originator bool
}

// Call is one B2BUA call: leg A toward the caller and leg B toward the callee.
//
// sipgo runs every request in its own goroutine, so a Call serialises all of
// its state changes with mu. Outgoing messages are sent while mu is held, so
// that the messages of one leg leave in the order the state machine decided
// them. Handlers tolerate reordering on the way in (a BYE before its ACK ends
// the call; the late ACK then finds no dialog and is dropped) and refuse
// out-of-order requests by CSeq (RFC 3261 §12.2.2).
type Call struct {
	id  string
	srv *Server
	log *callLog

	mu        sync.Mutex // guards everything below
	state     callState
	legs      [2]*Leg
	inReq     *sip.Request // leg A's INVITE
	inTx      sip.ServerTransaction
	outReq    *sip.Request // leg B's INVITE
	lateOffer bool         // leg A's INVITE had no SDP: offer comes in B's 2xx, answer in A's ACK
	ownOffer  bool         // late offer toward a peer with offer = "early": the SBC offered to leg B (earlyoffer.go)
	earlySDP  []byte       // last SDP answer relayed to A in a provisional
	bAck      *sip.Request // ACK sent (or deferred) on leg B
	bAckSent  bool
	a2xx      *sip.Response // 2xx sent on leg A, retransmitted until ACK
	retrans   *time.Timer
	provSeen  bool   // leg B sent a provisional: CANCEL is allowed (RFC 3261 §9.1)
	lastRSeq  uint32 // highest RSeq PRACKed on leg B
	// bPrackRSeq is the RSeq of leg B's reliable provisional whose PRACK
	// waits for the caller's answer to its offer (a late-offer call); 0
	// when none waits.
	bPrackRSeq uint32
	// aRel is what the caller asked for in 100rel; aRSeq the RSeq of the
	// last reliable provisional sent on leg A, aProv that provisional and
	// aQueue the provisionals waiting for its PRACK (prack.go).
	aRel   relMode
	aRSeq  uint32
	aProv  *relProv
	aQueue []queuedProv
	// heldAnswer is leg B's 2xx waiting for leg A's PRACK; finalA is
	// closed when it has gone out, which ends the INVITE loop.
	heldAnswer *heldAnswer
	finalA     chan struct{}
	// earlyOA: a late-offer call completed its offer/answer in a reliable
	// provisional and its PRACK; the 2xx and ACK carry no new one.
	earlyOA bool
	// aOffered: in a call where the SBC offered to leg B itself, the
	// callee's answer has gone to the caller as the offer in a reliable
	// provisional; the 2xx repeats it.
	aOffered bool
	// ownAnswer: a late-offer call whose callee offered in a reliable
	// provisional that a caller without 100rel could not answer: the SBC
	// answered it in leg B's PRACK, and the caller gets the offer in the
	// 2xx and answers in its ACK (earlyoffer.go).
	ownAnswer bool
	cancelled bool // leg A cancelled, or we gave up on leg B
	cancelTx  bool // CANCEL already sent on leg B
	aborted   chan int
	keys      []dialogKey
	mediaOpen bool
	rec       CallRecord

	// lastSDP is the last SDP each side sent that the relay accepted: a
	// failed re-offer is rolled back by applying these again.
	lastSDP [2][]byte
	// sentSDP is the last SDP the SBC sent on each leg that was accepted:
	// what a session refresh repeats.
	sentSDP [2][]byte
	// aTimer is leg A's session timer as negotiated on its INVITE; it
	// starts with the answer.
	aTimer *sessionTimer
	// reqSE is the Session-Expires asked for on leg B's INVITE; a 422
	// raises it and the INVITE is sent again (RFC 4028 §7.4).
	reqSE    time.Duration
	retries  int
	retryReq *sip.Request
	// xfer is the terminated REFER in progress, if any; released are
	// legs that left the call in a transfer and whose dialog keys still
	// answer late requests.
	xfer     *transfer
	released []*Leg
	// spareOpen: a transfer's own offer is anchored in the spare media
	// session (refer.go), which the call closes if the transfer fails.
	spareOpen bool
	// update is the in-dialog offer/answer in progress (re-INVITE or
	// UPDATE); one at a time per call, a second one gets 491.
	update *inDialogTx
	done   chan struct{} // closed by end()
	// acked is signalled (with mu) whenever an ACK completes an INVITE
	// transaction of the call, a relayed REFER has its final response, or
	// the call ends; see awaitAck and awaitReferAnswer.
	acked *sync.Cond
	// referring counts the REFERs relayed onto each leg (refer = "pass")
	// whose final response has not gone back to the referrer yet.
	referring [2]int
}

func newID() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func newTag() string { return sip.GenerateTagN(12) }

func newCall(s *Server, from, to *peer, req *sip.Request, tx sip.ServerTransaction) *Call {
	c := &Call{
		id:      newID(),
		srv:     s,
		inReq:   req,
		inTx:    tx,
		aborted: make(chan int, 1),
		done:    make(chan struct{}),
		finalA:  make(chan struct{}),
	}
	c.acked = sync.NewCond(&c.mu)
	c.log = newCallLog(s.callLog, c.id)
	fromH, toH := req.From(), req.To()
	remoteTag, _ := fromH.Params.Get("tag")
	a := &Leg{
		side:       media.A,
		zone:       from.zone,
		peer:       from,
		callID:     req.CallID().Value(),
		localTag:   newTag(),
		remoteTag:  remoteTag,
		local:      toH.Address,
		localName:  toH.DisplayName,
		remote:     fromH.Address,
		remoteName: fromH.DisplayName,
		localCSeq:  randCSeq(),
		remoteCSeq: req.CSeq().SeqNo,
		dest:       sourceOrPeer(req, from),
		transport:  transportOf(req),
	}
	if ct := msgContact(req); ct != nil {
		a.target = ct.Address
	} else {
		a.target = fromH.Address
	}
	for h := range headersNamed(req, "Record-Route") {
		if rr, ok := h.(*sip.RecordRouteHeader); ok {
			a.routes = append(a.routes, rr.Address)
		}
	}
	a.learned.learnFrom(req, s.isOwnHost)

	user := req.Recipient.User
	if user == "" {
		user = toH.Address.User
	}
	b := &Leg{
		side:       media.B,
		zone:       to.zone,
		peer:       to,
		callID:     newID(),
		localTag:   newTag(),
		local:      sip.Uri{Scheme: "sip", User: fromH.Address.User, Host: to.zone.host},
		localName:  fromH.DisplayName,
		remote:     sip.Uri{Scheme: "sip", User: user, Host: to.host},
		remoteName: toH.DisplayName,
		localCSeq:  randCSeq(),
		target:     sip.Uri{Scheme: "sip", User: user, Host: to.host},
		dest:       to.dest,
		originator: true,
	}
	if to.cfg.Address.Port() != 5060 && to.cfg.Host == "" {
		b.target.Port = int(to.cfg.Address.Port())
	}
	if ac := from.access; ac != nil && strings.EqualFold(req.Recipient.Host, ac.cfg.Domain) {
		// a phone's call keeps its Request-URI, which its digest
		// credentials cover, and the registrar's domain in From and To
		b.target = *req.Recipient.Clone()
		b.remote.Host, b.local.Host = ac.cfg.Domain, ac.cfg.Domain
	}
	c.legs = [2]*Leg{a, b}
	c.rec = CallRecord{ID: c.id, From: fromH.Address.User, To: user, InPeer: from.cfg.Name, OutPeer: to.cfg.Name, Start: time.Now()}
	return c
}

// sourceOrPeer is where in-dialog requests toward the caller go: the address
// its INVITE really came from (far-end NAT friendly, RFC 3581), never the
// host in its Contact, which may be a private name we cannot resolve.
func sourceOrPeer(req *sip.Request, p *peer) string {
	if src := sourceOf(req); src.IsValid() {
		return src.String()
	}
	return p.dest
}

func randCSeq() uint32 {
	var b [2]byte
	_, _ = rand.Read(b[:])
	return uint32(b[0])<<8 | uint32(b[1]) + 1
}

// isOwnHost reports whether host is one of the SBC's own addresses; those
// are never treated as learned topology.
func (s *Server) isOwnHost(host string) bool {
	for _, z := range s.zones {
		if strings.EqualFold(z.ownHost, host) || z.ownAddr == host {
			return true
		}
	}
	return false
}

// foreignFor is what must not appear in a message sent on leg l. It is a
// value: made for every message sent, it stays on the sender's stack.
func (c *Call) foreignFor(l *Leg) foreignSet {
	other := c.legs[l.side.Other()]
	if other.peer == l.peer && other.zone == l.zone {
		// a call bridged back to the same peer (a transfer): what the
		// peer revealed about itself is no secret to it
		return foreignSet{networks: l.zone.foreign}
	}
	f := foreignSet{networks: l.zone.foreign, addrs: other.learned.addrs, hosts: other.learned.hosts}
	for _, x := range c.legs {
		if ac := x.peer.access; ac != nil {
			// a registered phone's call: both sides name the registrar's
			// domain in From and To, which is no secret of either
			f.hosts = slices.DeleteFunc(slices.Clone(f.hosts), func(h string) bool { return h == ac.domain })
		}
	}
	return f
}

// run carries the call from leg A's INVITE to its final response. It runs in
// the INVITE handler's goroutine and returns only when leg A has a final
// response, because sipgo ends the server transaction when it returns.
func (c *Call) run() {
	s := c.srv
	a, b := c.legs[media.A], c.legs[media.B]
	if !s.addCall(c) {
		s.respond(a.zone, c.inReq, c.inTx, 503, nil)
		return
	}
	s.counters.callsTotal.Add(1)
	// 100 Trying at once (RFC 3261 §17.2.1 allows it; for a B2BUA, whose
	// leg B takes a while, it is the norm): the caller stops retransmitting
	// its INVITE, and sipgo's own 200 ms timer for a 100 never fires. Left
	// to that timer and to retransmitted INVITEs, callers under load were
	// seen receiving a 100 after the 200 (the bench's SIPp then drops the
	// call).
	c.mu.Lock()
	c.respondA(100, nil, nil)
	c.mu.Unlock()
	c.keys = []dialogKey{
		{zone: a.zone, callID: a.callID, localTag: a.localTag},
		{zone: b.zone, callID: b.callID, localTag: b.localTag},
	}
	s.register(c.keys[0], legRef{call: c, side: media.A})
	s.register(c.keys[1], legRef{call: c, side: media.B})
	if c.log.IsDebug() {
		c.log.Debug("new call", "from_peer", a.peer.cfg.Name, "to_peer", b.peer.cfg.Name, "from", c.rec.From, "to", c.rec.To)
	}

	// register for CANCEL before anything leaves on leg B, so none is missed
	cancelled := make(chan struct{})
	var once sync.Once
	if !c.inTx.OnCancel(func(*sip.Request) { once.Do(func() { close(cancelled) }) }) {
		once.Do(func() { close(cancelled) })
	}

	if rej := c.checkRequire(); rej != nil {
		c.finishEarly(rej.Code, rej, []sip.Header{sip.NewHeader("Unsupported", rej.Reason)})
		return
	}
	st, code := uasTimer(a.peer, readTimer(c.inReq))
	if code == 422 {
		c.finishEarly(422, errors.New("session interval too small"), []sip.Header{sip.NewHeader("Min-SE", seconds(a.peer.minSE()))})
		return
	}
	c.aTimer = st
	c.aRel = relModeOf(c.inReq)
	a.allowUpdate = allowsUpdate(c.inReq)
	c.reqSE = b.peer.cfg.SessionExpires

	c.mu.Lock()
	body, err := c.anchorOffer()
	if err != nil {
		c.mu.Unlock()
		// the offer is the caller's fault only when the relay says so;
		// no free port pair, a failed bind or a descriptor limit is the
		// SBC's own shortage: 503, so the caller may try elsewhere
		code := 503
		if errors.Is(err, media.ErrBadSDP) {
			code = 488
		}
		c.finishEarly(code, err, nil)
		return
	}
	req := c.buildInvite(body)
	c.outReq = req
	c.sentSDP[media.B] = body
	c.send(b, req)
	c.mu.Unlock()

	// sipgo uses the context only to resolve and dial: leg B's address
	// is an IP and its connection exists (direct), so nothing waits on it
	ctx := context.Background()
	tx, err := b.zone.client.TransactionRequest(ctx, req, noBuild)
	if err != nil {
		c.finishEarly(503, fmt.Errorf("send invite to %s: %w", b.peer.cfg.Name, err), nil)
		return
	}
	defer func() { tx.Terminate() }()

	inviteTimer := time.NewTimer(s.cfg.InviteTimeout)
	defer inviteTimer.Stop()
	var giveUp <-chan time.Time // bounds the wait for leg B's final response after a CANCEL
	txDone := tx.Done()
	for {
		select {
		case res := <-tx.Responses():
			if c.onInviteResponse(res) {
				return
			}
			if retry := c.takeRetry(); retry != nil {
				tx.Terminate()
				if tx, err = b.zone.client.TransactionRequest(ctx, retry, noBuild); err != nil {
					c.finishEarly(503, fmt.Errorf("send invite to %s: %w", b.peer.cfg.Name, err), nil)
					return
				}
				txDone = tx.Done()
			}
		case <-txDone:
			if c.onInviteFailed(tx.Err()) {
				return
			}
			txDone = nil // leg B answered; leg A's 2xx waits for a PRACK
		case <-c.finalA:
			return
		case <-cancelled:
			cancelled = nil
			c.mu.Lock()
			c.rec.EndReason = "caller cancel"
			c.rec.Status = 487 // sipgo has answered 487 on leg A
			c.stopReliableA()
			if c.dropHeldAnswer() {
				c.mu.Unlock()
				return
			}
			c.abandonLegB()
			c.mu.Unlock()
			giveUp = time.After(64 * sip.T1)
		case <-inviteTimer.C:
			c.mu.Lock()
			if c.heldAnswer != nil {
				// leg B has answered: the PRACK wait bounds the call now
				c.mu.Unlock()
				continue
			}
			c.log.Debug("no answer in time, cancelling", "timeout", s.cfg.InviteTimeout)
			c.rec.EndReason = "no answer"
			c.respondA(408, nil, nil)
			c.abandonLegB()
			c.mu.Unlock()
			giveUp = time.After(64 * sip.T1)
		case code := <-c.aborted:
			c.mu.Lock()
			if !c.cancelled {
				c.respondA(code, nil, nil)
			}
			if c.dropHeldAnswer() {
				c.mu.Unlock()
				return
			}
			c.abandonLegB()
			c.mu.Unlock()
			giveUp = time.After(64 * sip.T1)
		case <-giveUp:
			c.mu.Lock()
			c.end()
			c.mu.Unlock()
			return
		}
	}
}

// dropHeldAnswer ends a call whose leg B answered while leg A's 2xx waited
// for a PRACK that will not come: leg B's dialog is confirmed, so it gets
// a BYE. It reports whether there was such an answer. Caller holds mu.
func (c *Call) dropHeldAnswer() bool {
	if c.heldAnswer == nil {
		return false
	}
	c.heldAnswer = nil
	c.byeLeg(c.legs[media.B])
	c.end()
	return true
}

// checkRequire refuses extensions the SBC does not implement (RFC 3261
// §8.2.2.3): timer is understood toward a peer with session timers on,
// 100rel always (prack.go).
func (c *Call) checkRequire() *Reject {
	var unsupported []string
	for _, opt := range headerValues(c.inReq, "Require") {
		if strings.EqualFold(opt, "timer") && c.legs[media.A].peer.timersOn() || strings.EqualFold(opt, "100rel") {
			continue
		}
		unsupported = append(unsupported, opt)
	}
	if len(unsupported) == 0 {
		return nil
	}
	return &Reject{Code: 420, Reason: strings.Join(unsupported, ", "), Err: errors.New("unsupported Require")}
}

// finishEarly answers leg A with a final error before leg B exists.
func (c *Call) finishEarly(code int, err error, extra []sip.Header) {
	c.log.Info("call refused", "code", code, "error", err)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.respondA(code, nil, extra)
	c.rec.EndReason = "refused"
	c.end()
}

// anchorOffer opens the media session and rewrites leg A's SDP offer for leg
// B. Without SDP the call is a late offer.
func (c *Call) anchorOffer() ([]byte, error) {
	body := sdpBody(c.inReq)
	if body == nil {
		c.lateOffer = true
	}
	m := c.srv.media
	if m == nil {
		return body, nil
	}
	a, b := c.legs[media.A], c.legs[media.B]
	if err := m.Open(media.SessionID(c.id), mediaAddress(a.zone), mediaAddress(b.zone)); err != nil {
		return nil, fmt.Errorf("open media session: %w", err)
	}
	c.mediaOpen = true
	if body == nil {
		if b.peer.earlyOffer() {
			return c.makeOffer()
		}
		return nil, nil
	}
	out, err := m.Offer(media.SessionID(c.id), media.A, c.natSDP(a, body))
	if err != nil {
		return nil, fmt.Errorf("anchor offer: %w", err)
	}
	c.lastSDP[media.A] = body
	return out, nil
}

func mediaAddress(z *zone) media.Address {
	return media.Address{Bind: z.cfg.Address, Advertise: z.cfg.Advertise}
}

// sdpBody returns the message body if it is SDP.
func sdpBody(msg sip.Message) []byte {
	body := msg.Body()
	if len(body) == 0 {
		return nil
	}
	ct := firstHeader(msg, "Content-Type")
	if ct == nil {
		return nil
	}
	v := strings.TrimSpace(ct.Value())
	if i := strings.IndexByte(v, ';'); i >= 0 {
		v = strings.TrimSpace(v[:i])
	}
	if !asciiEqualFold(v, "application/sdp") {
		return nil
	}
	return body
}

// asciiEqualFold reports whether s is the lower-case ASCII string lc,
// ignoring ASCII case only (strings.EqualFold would also take, say, "ſ"
// for "s").
func asciiEqualFold(s, lc string) bool {
	if len(s) != len(lc) {
		return false
	}
	for i := 0; i < len(s); i++ {
		if lower(s[i]) != lc[i] {
			return false
		}
	}
	return true
}

// passHeaders are copied from one leg's INVITE to the other's: they carry
// no topology. Everything else is rebuilt or dropped; a peer's keep_headers
// extends the list toward that peer.
var passHeaders = []string{"Subject", "Priority", "Privacy", "Accept", "Accept-Language"}

// buildInvite builds leg B's INVITE from scratch (RFC 3261 §8.1.1).
func (c *Call) buildInvite(body []byte) *sip.Request {
	b := c.legs[media.B]
	req := sip.NewRequest(sip.INVITE, *b.target.Clone())
	req.AppendHeader(c.srv.via(b.zone))
	mf := sip.MaxForwardsHeader(70)
	if in := c.inReq.MaxForwards(); in != nil && in.Val() > 0 {
		mf = sip.MaxForwardsHeader(in.Val() - 1)
	}
	req.AppendHeader(&mf)
	req.AppendHeader(c.fromHeader(b))
	req.AppendHeader(c.toHeader(b))
	cid := sip.CallIDHeader(b.callID)
	req.AppendHeader(&cid)
	b.localCSeq++
	req.AppendHeader(&sip.CSeqHeader{SeqNo: b.localCSeq, MethodName: sip.INVITE})
	req.AppendHeader(c.srv.contact(b.zone))
	req.AppendHeader(hdrAllow)
	// reliable provisionals (RFC 3262) are acknowledged by the SBC on
	// leg B itself, whatever the caller supports
	if b.peer.timersOn() {
		req.AppendHeader(hdrSupportedTimer)
	} else {
		req.AppendHeader(hdrSupported)
	}
	for _, h := range uacHeaders(b, c.reqSE) {
		req.AppendHeader(h)
	}
	req.AppendHeader(c.srv.hdrUA)
	copyAllowed(c.inReq, req, b.peer)
	if c.legs[media.A].peer.access != nil {
		// the registrar authenticates the phone's call itself
		for _, h := range copyHeaders(c.inReq, "Authorization", "Proxy-Authorization") {
			req.AppendHeader(h)
		}
	}
	if body != nil {
		req.AppendHeader(hdrSDP)
	}
	req.SetBody(body)
	req.Laddr = b.zone.laddr
	req.SetDestination(b.dest)
	return req
}

func copyAllowed(from, to sip.Message, toward *peer) {
	for _, name := range passHeaders {
		for h := range headersNamed(from, name) {
			to.AppendHeader(sip.NewHeader(h.Name(), h.Value()))
		}
	}
	if toward == nil {
		return
	}
	for name := range toward.keep {
		for h := range headersNamed(from, name) {
			to.AppendHeader(sip.NewHeader(h.Name(), rehomeIdentity(h.Value(), toward.zone.host)))
		}
	}
}

// rehomeIdentity rewrites the host of a name-addr header value that carries a
// SIP identity (P-Asserted-Identity, Diversion, ...) to the SBC's own host in
// the egress zone: the user part (the number) is what the far side needs, the
// host would reveal the other side's domain. Values that are not a SIP
// name-addr (tel: URIs, free text) are returned unchanged.
func rehomeIdentity(v, host string) string {
	var uri sip.Uri
	params := sip.NewParams()
	name, err := sip.ParseAddressValue(v, &uri, &params)
	if err != nil || (uri.Scheme != "sip" && uri.Scheme != "sips") || uri.Host == "" {
		return v
	}
	// the URI is written out here rather than by sip.Uri.String, which
	// parses the host as an IP address each time; host is the zone's,
	// which that would leave as it is
	var b strings.Builder
	b.Grow(len(v) + len(host))
	if name != "" {
		b.WriteString(`"`)
		b.WriteString(strings.ReplaceAll(name, `"`, ""))
		b.WriteString(`" `)
	}
	b.WriteString("<")
	b.WriteString(uri.Scheme)
	b.WriteString(":")
	if uri.User != "" {
		b.WriteString(uri.User)
		b.WriteString("@")
	}
	b.WriteString(host)
	if up, ok := uri.UriParams.Get("user"); ok && up == "phone" {
		b.WriteString(";user=phone")
	}
	b.WriteString(">")
	for _, kv := range params {
		b.WriteString(";")
		b.WriteString(kv.K)
		if kv.V != "" {
			b.WriteString("=")
			b.WriteString(kv.V)
		}
	}
	return b.String()
}

func (c *Call) fromHeader(l *Leg) *sip.FromHeader {
	p := sip.NewParams()
	p.Add("tag", l.localTag)
	return &sip.FromHeader{DisplayName: l.localName, Address: l.local, Params: p}
}

func (c *Call) toHeader(l *Leg) *sip.ToHeader {
	p := sip.NewParams()
	if l.remoteTag != "" {
		p.Add("tag", l.remoteTag)
	}
	return &sip.ToHeader{DisplayName: l.remoteName, Address: l.remote, Params: p}
}

// inDialog builds a request within leg l's dialog (RFC 3261 §12.2.1.1).
func (c *Call) inDialog(l *Leg, method sip.RequestMethod, seq uint32) *sip.Request {
	req := sip.NewRequest(method, *l.target.Clone())
	req.AppendHeader(c.srv.via(l.zone))
	mf := sip.MaxForwardsHeader(70)
	req.AppendHeader(&mf)
	for _, r := range l.routes {
		req.AppendHeader(&sip.RouteHeader{Address: r})
	}
	if l.side == media.A {
		// on leg A we are the UAS: our URI is its To, the caller's its From
		req.AppendHeader(&sip.FromHeader{DisplayName: l.localName, Address: l.local, Params: tagParams(l.localTag)})
		req.AppendHeader(&sip.ToHeader{DisplayName: l.remoteName, Address: l.remote, Params: tagParams(l.remoteTag)})
	} else {
		req.AppendHeader(c.fromHeader(l))
		req.AppendHeader(c.toHeader(l))
	}
	cid := sip.CallIDHeader(l.callID)
	req.AppendHeader(&cid)
	req.AppendHeader(&sip.CSeqHeader{SeqNo: seq, MethodName: method})
	req.AppendHeader(c.srv.hdrUA)
	req.SetBody(nil)
	req.Laddr = l.zone.laddr
	req.SetDestination(l.dest)
	return req
}

func tagParams(tag string) sip.HeaderParams {
	p := sip.NewParams()
	if tag != "" {
		p.Add("tag", tag)
	}
	return p
}

// send runs the leak guard over a message about to leave on leg l and, for
// a request, picks its transport and connection (see Server.direct).
func (c *Call) send(l *Leg, msg sip.Message) {
	f := c.foreignFor(l)
	touched, size := c.srv.guard.scrubSized(msg, &f)
	if len(touched) > 0 {
		c.log.Warn("leak guard removed content", "leg", l.side, "zone", l.zone.cfg.Name, "headers", strings.Join(touched, ","))
	}
	if req, ok := msg.(*sip.Request); ok {
		c.srv.direct(l.zone, l.peer, &l.dest, l.transportName(), req, size)
	}
}

// transportName is the transport of the leg's requests, before the RFC
// 3261 §18.1.1 size rule.
func (l *Leg) transportName() string {
	if l.transport != "" {
		return l.transport
	}
	return l.peer.cfg.Transport
}

// respondA sends a response on leg A's INVITE transaction, with our To tag
// (the same on every response but 100, RFC 3261 §8.2.6.2). Caller holds mu.
func (c *Call) respondA(code int, body []byte, extra []sip.Header) {
	a := c.legs[media.A]
	res := c.respondOn(a, c.inReq, c.inTx, code, body, extra)
	if code >= 200 && c.rec.Status == 0 {
		c.rec.Status = code
	}
	if code >= 200 && code < 300 {
		c.a2xx = res
	}
	if a.peer.access != nil && (code == 403 || ((code == 401 || code == 407) && hasCredentials(c.inReq))) {
		// a phone's failed authentication at its registrar counts as
		// a REGISTER's does (accessRespond)
		if g := c.srv.sec.Load(); g != nil {
			c.srv.guardOutcome(g.Guard, a.zone, c.inReq, code)
		}
	}
	if code >= 200 {
		c.stopReliableA()
	}
}

// onInviteResponse handles one response to leg B's INVITE and reports
// whether the INVITE transaction is finished for the call.
func (c *Call) onInviteResponse(res *sip.Response) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	b := c.legs[media.B]
	code := res.StatusCode
	if code == 100 {
		// any provisional, 100 included, allows a CANCEL (RFC 3261 §9.1)
		c.provSeen = true
		if c.cancelled {
			c.sendCancel()
		}
		return false
	}
	b.learned.learnFrom(res, c.srv.isOwnHost)
	if tag, ok := res.To().Params.Get("tag"); ok && tag != "" && code < 300 {
		b.remoteTag = tag
	}
	switch {
	case code < 200:
		c.provSeen = true
		if c.cancelled {
			c.sendCancel()
			return false
		}
		if c.heldAnswer != nil {
			return false // late: leg B has answered already
		}
		if b.remoteTag != "" {
			c.setTarget(b, res) // the early dialog's remote target and route set
		}
		sdp := sdpBody(res)
		rel := reliable(res)
		if c.ownOffer {
			// the callee answers the SBC's offer (earlyoffer.go)
			if rel && !c.prack(res, false) {
				return false
			}
			body := c.ownOfferEarly(sdp)
			c.provisionalA(code, body, body != nil)
			return false
		}
		if rel && sdp != nil && c.lateOffer && c.aRel == relNone && c.mediaOpen &&
			!c.ownAnswer && c.bPrackRSeq == 0 {
			// the callee's offer, which the caller cannot answer before
			// its 2xx: the SBC answers it (earlyoffer.go)
			if !c.prack(res, true) {
				return false
			}
			c.sendPrackB(c.answerOwn(sdp))
			c.provisionalA(code, nil, false)
			return false
		}
		// in a late-offer call the callee's reliable provisional carries
		// the offer; a caller doing 100rel answers it in its PRACK, which
		// leg B's PRACK then carries (RFC 3262 §5)
		offer := rel && sdp != nil && c.lateOffer && !c.earlyOA && c.bPrackRSeq == 0 && c.aRel != relNone
		if rel && !c.prack(res, offer) {
			return false // a retransmission: already relayed
		}
		var body []byte
		switch {
		case offer:
			out, err := c.anchorReoffer(sdp)
			if err != nil {
				c.log.Warn("early offer refused", "error", err)
				c.sendPrackB(nil)
				offer = false
			} else {
				body = out
				c.earlySDP = out
			}
		case sdp != nil && !c.lateOffer:
			out, err := c.anchorAnswer(sdp)
			if err != nil {
				c.log.Warn("early media answer refused", "error", err)
			} else {
				body = out
				c.earlySDP = out
			}
		}
		c.provisionalA(code, body, offer)
		return false

	case code < 300:
		if c.heldAnswer != nil {
			// a retransmission while leg A's 2xx waits for its PRACK
			c.ackB(nil)
			return false
		}
		c.setTarget(b, res)
		if c.cancelled || c.state == stateEnded {
			// CANCEL/200 race (RFC 3261 §9.1): the callee answered after
			// we gave up; confirm and immediately end its dialog
			c.ackB(nil)
			c.byeLeg(b)
			c.end()
			return true
		}
		return c.answered(res)

	default:
		if code == 422 && c.retryWithMinSE(res) {
			return false
		}
		if !c.cancelled {
			out := code
			if code == 422 {
				// leg A's timer is negotiated apart: its Min-SE means
				// nothing to the caller
				out = 500
			}
			if code < 400 {
				// redirects are not followed yet, and their Contact
				// would reveal the far side
				out = 480
			}
			var extra []sip.Header
			for _, name := range []string{"Retry-After", "Reason", "WWW-Authenticate", "Proxy-Authenticate", "Unsupported"} {
				for h := range headersNamed(res, name) {
					extra = append(extra, sip.NewHeader(h.Name(), h.Value()))
				}
			}
			c.respondA(out, nil, extra)
			c.rec.EndReason = "callee rejected"
		}
		c.end()
		return true
	}
}

// retryWithMinSE sends leg B's INVITE again after a 422 (RFC 4028 §7.4):
// same Call-ID and From tag, a new CSeq, and the larger interval the peer
// asked for in Min-SE. It reports whether a retry was sent; takeRetry hands
// it to the INVITE loop. Caller holds mu.
func (c *Call) retryWithMinSE(res *sip.Response) bool {
	b := c.legs[media.B]
	t := readTimer(res)
	if c.cancelled || c.state != stateEarly || c.retries >= 2 || t.minSE <= c.reqSE || !b.peer.timersOn() {
		return false
	}
	c.retries++
	c.log.Debug("callee wants a longer session interval, retrying", "min_se", t.minSE)
	b.peerMinSE = t.minSE
	c.reqSE = t.minSE
	b.remoteTag = ""
	c.provSeen, c.cancelTx, c.lastRSeq, c.bPrackRSeq = false, false, 0, 0
	req := c.buildInvite(c.outReq.Body())
	c.outReq = req
	c.send(b, req)
	c.retryReq = req
	return true
}

func (c *Call) takeRetry() *sip.Request {
	c.mu.Lock()
	defer c.mu.Unlock()
	r := c.retryReq
	c.retryReq = nil
	return r
}

// reliable reports whether a provisional response must be PRACKed.
func reliable(res *sip.Response) bool {
	for h := range headersNamed(res, "Require") {
		for _, opt := range strings.Split(h.Value(), ",") {
			if strings.EqualFold(strings.TrimSpace(opt), "100rel") {
				return countHeaders(res, "RSeq") > 0
			}
		}
	}
	return false
}

// prack acknowledges a reliable provisional response on leg B (RFC 3262
// §7.2) and reports whether it was new. 100rel is terminated per leg: the
// caller's leg gets the response reliably or not as it asked (prack.go).
// hold keeps the PRACK back until the caller's answer to the offer in the
// response arrives (sendPrackB). Caller holds mu.
func (c *Call) prack(res *sip.Response, hold bool) bool {
	b := c.legs[media.B]
	rseq, err := strconv.ParseUint(strings.TrimSpace(res.GetHeaders("RSeq")[0].Value()), 10, 32)
	if err != nil || rseq == 0 {
		c.log.Warn("reliable provisional without a usable RSeq", "error", err)
		return false
	}
	if uint32(rseq) <= c.lastRSeq {
		return false
	}
	c.lastRSeq = uint32(rseq)
	c.setTarget(b, res) // the early dialog's remote target and route set
	if hold {
		c.bPrackRSeq = uint32(rseq)
		return true
	}
	b.localCSeq++
	req := c.inDialog(b, sip.PRACK, b.localCSeq)
	req.AppendHeader(sip.NewHeader("RAck", fmt.Sprintf("%d %d INVITE", rseq, c.outReq.CSeq().SeqNo)))
	c.runTx(b, req)
	return true
}

// answered relays leg B's 2xx to leg A, and reports whether leg A has its
// final response: a 2xx waits for the PRACK of a reliable provisional with
// SDP (RFC 3262 §3). Caller holds mu.
func (c *Call) answered(res *sip.Response) bool {
	b := c.legs[media.B]
	sdp := sdpBody(res)
	var body []byte
	var err error
	// a late offer whose offer/answer is done (or under way) in the early
	// dialog: the 2xx repeats that offer, no answer comes in the ACK
	early := c.earlyOA || c.bPrackRSeq != 0
	switch {
	case c.ownOffer:
		// leg B answered the SBC's offer; the answer is leg A's offer
		body, err = c.ownOfferAnswer(sdp)
	case c.ownAnswer:
		// the SBC answered leg B's offer in its PRACK; that offer,
		// narrowed to the answer, is leg A's
		body = c.earlySDP
	case c.lateOffer && early:
		body = c.earlySDP
	case c.lateOffer && sdp != nil:
		// leg B made the offer; leg A answers in its ACK, which then goes
		// to leg B: its ACK waits until then
		body, err = c.anchorReoffer(sdp)
	case c.lateOffer:
		err = errors.New("late offer answered without SDP")
	case sdp != nil:
		body, err = c.anchorAnswer(sdp)
	default:
		body = c.earlySDP
		if body == nil && c.srv.media != nil {
			err = errors.New("offer answered without SDP")
		}
	}
	c.bAck = c.inDialog(b, sip.ACK, c.outReq.CSeq().SeqNo)
	if err != nil {
		c.log.Warn("callee answer unusable", "error", err)
		c.ackB(nil)
		c.byeLeg(b)
		c.respondA(502, nil, nil)
		c.rec.EndReason = "bad answer"
		c.end()
		return true
	}
	if !c.lateOffer || c.ownOffer || c.ownAnswer || early {
		c.ackB(nil)
	}
	if c.answerWaits() {
		c.heldAnswer = &heldAnswer{body: body, res: res}
		c.aQueue = nil
		c.log.Debug("answer waits for the caller's PRACK")
		return false
	}
	c.answerA(body, res)
	return true
}

// answerA sends leg B's answer on as leg A's 2xx and starts what runs
// while the call is answered. Caller holds mu.
func (c *Call) answerA(body []byte, res *sip.Response) {
	b := c.legs[media.B]
	c.state = stateAnswered
	c.rec.Answer = time.Now()
	c.srv.counters.callsAnswered.Add(1)
	b.allowUpdate = allowsUpdate(res)
	c.respondA(200, body, uasHeaders(c.aTimer))
	c.sentSDP[media.A] = body
	c.startTimer(c.legs[media.A], c.aTimer)
	c.startTimer(b, uacTimer(b.peer, c.reqSE, res))
	c.startRetransmit()
	if c.log.IsDebug() {
		c.log.Debug("call answered", "setup_ms", c.rec.Answer.Sub(c.rec.Start).Milliseconds())
	}
}

func (c *Call) setTarget(l *Leg, res *sip.Response) {
	if ct := msgContact(res); ct != nil {
		l.target = ct.Address
	}
	// the UAC's route set is the Record-Route of the 2xx in reverse order
	var routes []sip.Uri
	for h := range headersNamed(res, "Record-Route") {
		if rr, ok := h.(*sip.RecordRouteHeader); ok {
			routes = append([]sip.Uri{rr.Address}, routes...)
		}
	}
	l.routes = routes
}

func (c *Call) anchorAnswer(sdp []byte) ([]byte, error) {
	return c.negotiate(false, media.B, sdp)
}

func (c *Call) anchorReoffer(sdp []byte) ([]byte, error) {
	return c.negotiate(true, media.B, sdp)
}

// negotiate hands an offer or answer from side to the relay and remembers
// it for rollback. Caller holds mu.
func (c *Call) negotiate(offer bool, from media.Side, sdp []byte) ([]byte, error) {
	if c.srv.media == nil {
		return sdp, nil
	}
	var out []byte
	var err error
	sdp = c.natSDP(c.legs[from], sdp)
	if offer {
		out, err = c.srv.media.Offer(media.SessionID(c.id), from, sdp)
	} else {
		out, err = c.srv.media.Answer(media.SessionID(c.id), from, sdp)
	}
	if err != nil {
		return nil, err
	}
	c.lastSDP[from] = sdp
	return out, nil
}

// ackB sends (or resends) leg B's ACK for its 2xx. Caller holds mu.
func (c *Call) ackB(body []byte) {
	b := c.legs[media.B]
	if c.bAck == nil {
		c.bAck = c.inDialog(b, sip.ACK, c.outReq.CSeq().SeqNo)
	}
	if body != nil {
		c.bAck.AppendHeader(hdrSDP)
		c.bAck.SetBody(body)
	}
	if body != nil {
		c.sentSDP[media.B] = body
	}
	c.send(b, c.bAck)
	if err := b.zone.client.WriteRequest(c.bAck, noBuild); err != nil {
		c.log.Debug("send ack on leg B", "error", err)
	}
	c.bAckSent = true
}

// onRetransmitted2xx re-ACKs a 2xx retransmission from leg B.
func (c *Call) onRetransmitted2xx(res *sip.Response) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if l := c.legByCallID(res.CallID()); l != nil && l.lastAck != nil && res.CSeq() != nil && l.lastAck.CSeq().SeqNo == res.CSeq().SeqNo {
		if err := l.zone.client.WriteRequest(l.lastAck, noBuild); err != nil {
			c.log.Debug("resend ack", "leg", l.side, "error", err)
		}
		return
	}
	if id := res.CallID(); id == nil || c.outReq == nil || id.Value() != c.outReq.CallID().Value() {
		return // a transfer target's 2xx whose ACK waits for the bridge
	}
	if c.bAckSent && c.bAck != nil {
		b := c.legs[media.B]
		if err := b.zone.client.WriteRequest(c.bAck, noBuild); err != nil {
			c.log.Debug("resend ack on leg B", "error", err)
		}
	}
}

// startRetransmit resends leg A's 2xx until its ACK arrives (RFC 3261
// §13.3.1.4): T1, doubling up to T2, for at most 64*T1; without an ACK by
// then the call ends with BYE on both legs.
func (c *Call) startRetransmit() {
	interval := sip.T1
	deadline := time.Now().Add(64 * sip.T1)
	var tick func()
	tick = func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		if c.state != stateAnswered {
			return
		}
		if time.Now().After(deadline) {
			c.log.Warn("no ACK for 2xx on leg A, ending call")
			c.rec.EndReason = "no ack"
			c.byeBoth()
			return
		}
		if err := c.srv.resend2xx(c.legs[media.A].zone, c.inTx, c.a2xx); err != nil {
			c.log.Debug("2xx retransmission", "error", err)
		}
		interval *= 2
		if interval > sip.T2 {
			interval = sip.T2
		}
		c.retrans = time.AfterFunc(interval, tick)
	}
	c.retrans = time.AfterFunc(interval, tick)
}

// onInviteFailed handles leg B's INVITE transaction ending without a final
// response: Timer B (no answer at all) or a transport error. It reports
// whether the INVITE loop is done; it is not when the transaction ended
// with a 2xx that waits for leg A's PRACK.
func (c *Call) onInviteFailed(err error) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.heldAnswer != nil {
		return false
	}
	if !c.cancelled && c.state == stateEarly {
		code := 408
		if err != nil && errors.Is(err, sip.ErrTransactionTransport) {
			code = 503
		}
		c.log.Info("callee did not answer", "code", code, "error", err)
		c.respondA(code, nil, nil)
		c.rec.EndReason = "callee timeout"
	}
	if c.state == stateEarly {
		c.end()
	}
	return true
}

// abandonLegB gives up on leg B while it is early. Caller holds mu.
func (c *Call) abandonLegB() {
	if c.cancelled {
		return
	}
	c.cancelled = true
	if c.provSeen {
		c.sendCancel()
	}
}

// sendCancel cancels leg B's INVITE (RFC 3261 §9.1): same Request-URI,
// Call-ID, To, From, CSeq number and top Via as the INVITE.
func (c *Call) sendCancel() {
	if c.cancelTx || c.outReq == nil {
		return
	}
	c.cancelTx = true
	b := c.legs[media.B]
	c.runTx(b, c.cancelFor(b, c.outReq))
}

// cancelFor builds the CANCEL of an INVITE we sent on leg l (RFC 3261 §9.1):
// same Request-URI, top Via, Route, From, To, Call-ID and CSeq number.
func (c *Call) cancelFor(l *Leg, inv *sip.Request) *sip.Request {
	req := sip.NewRequest(sip.CANCEL, *inv.Recipient.Clone())
	req.AppendHeader(inv.Via().Clone())
	mf := sip.MaxForwardsHeader(70)
	req.AppendHeader(&mf)
	for h := range headersNamed(inv, "Route") {
		if r, ok := h.(*sip.RouteHeader); ok {
			req.AppendHeader(&sip.RouteHeader{Address: r.Address})
		}
	}
	from, to := inv.From(), inv.To()
	req.AppendHeader(&sip.FromHeader{DisplayName: from.DisplayName, Address: from.Address, Params: from.Params.Clone()})
	req.AppendHeader(&sip.ToHeader{DisplayName: to.DisplayName, Address: to.Address, Params: to.Params.Clone()})
	cid := sip.CallIDHeader(inv.CallID().Value())
	req.AppendHeader(&cid)
	req.AppendHeader(&sip.CSeqHeader{SeqNo: inv.CSeq().SeqNo, MethodName: sip.CANCEL})
	req.AppendHeader(c.srv.hdrUA)
	req.SetBody(nil)
	req.Laddr = l.zone.laddr
	req.SetDestination(l.dest)
	return req
}

// runTx sends a non-INVITE request and waits for its outcome in the
// background, bounded by Timer F. The server waits for these on shutdown.
func (c *Call) runTx(l *Leg, req *sip.Request) { c.runTxThen(l, req, nil) }

// runTxThen is runTx with a function to run with the outcome once the
// transaction has ended; nil for none. The outcome is the final response's
// status code, 408 when none came in time (Timer F, or the server's
// inDialogWait) and 503 when the request could not be sent (RFC 3261
// §8.1.3.1). Caller holds mu; then runs without it.
func (c *Call) runTxThen(l *Leg, req *sip.Request, then func(code int)) {
	c.send(l, req)
	s := c.srv
	s.callWG.Add(1)
	go func() {
		defer s.callWG.Done()
		code := 503
		if then != nil {
			defer func() { then(code) }()
		}
		// Timer F ends the transaction; the timer is only a backstop, and
		// one timer costs less than a context with a deadline (sipgo uses
		// the context only to resolve and dial, which a leg never needs)
		tx, err := l.zone.client.TransactionRequest(context.Background(), req, noBuild)
		if err != nil {
			c.log.Debug("send request", "method", req.Method, "leg", l.side, "error", err)
			return
		}
		defer tx.Terminate()
		backstop := time.NewTimer(s.cfg.inDialogWait)
		defer backstop.Stop()
		for {
			select {
			case res := <-tx.Responses():
				if res.StatusCode >= 200 {
					code = res.StatusCode
					return
				}
			case <-tx.Done():
				if errors.Is(tx.Err(), sip.ErrTransactionTimeout) {
					code = 408
				}
				return
			case <-backstop.C:
				code = 408
				return
			}
		}
	}()
}

// byeLeg ends one confirmed leg. Caller holds mu.
func (c *Call) byeLeg(l *Leg) {
	if l.gone {
		return
	}
	l.gone = true
	l.localCSeq++
	c.runTx(l, c.inDialog(l, sip.BYE, l.localCSeq))
}

// byeBoth ends an answered call from the SBC's side. Caller holds mu.
func (c *Call) byeBoth() {
	if c.lateOffer && !c.bAckSent && c.bAck != nil {
		c.ackB(nil)
	}
	c.byeLeg(c.legs[media.A])
	c.byeLeg(c.legs[media.B])
	if xf := c.xfer; xf != nil {
		c.xfer = nil
		if xf.answered {
			c.byeLeg(xf.target)
		}
		// a target still ringing is cancelled by runTransfer
	}
	c.end()
}

// hangup ends the call from the SBC's side, whatever its state: used for
// shutdown and media timeout.
func (c *Call) hangup(reason string, code int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch c.state {
	case stateEarly:
		if c.rec.EndReason == "" {
			c.rec.EndReason = reason
		}
		select {
		case c.aborted <- code:
		default:
		}
	case stateAnswered, stateConfirmed:
		c.rec.EndReason = reason
		c.byeBoth()
	}
}

func (c *Call) onAck(side media.Side, req *sip.Request) {
	c.mu.Lock()
	defer c.mu.Unlock()
	defer c.acked.Broadcast()
	if c.strayRequest(side, req, nil) {
		return
	}
	if u := c.update; u != nil && !u.own && u.from == side && req.CSeq() != nil && req.CSeq().SeqNo == u.cseq {
		c.onUpdateAck(u, req)
		return
	}
	if side != media.A || c.state != stateAnswered {
		return // retransmission or stray: ACKs are never answered
	}
	if req.CSeq() == nil || c.inReq.CSeq() == nil || req.CSeq().SeqNo != c.inReq.CSeq().SeqNo {
		return
	}
	c.state = stateConfirmed
	if c.retrans != nil {
		c.retrans.Stop()
	}
	c.legs[media.A].learned.learnFrom(req, c.srv.isOwnHost)
	if c.ownOffer || c.ownAnswer {
		if !c.earlyOA {
			c.settleOffer(req)
		}
		return
	}
	if c.lateOffer && !c.earlyOA {
		var body []byte
		if sdp := sdpBody(req); sdp != nil {
			out, err := c.answerFromA(sdp)
			if err != nil {
				c.log.Warn("late-offer answer from caller unusable", "error", err)
				c.rec.EndReason = "bad answer"
				c.ackB(nil)
				c.byeLeg(c.legs[media.A])
				c.byeLeg(c.legs[media.B])
				c.end()
				return
			}
			body = out
		}
		c.ackB(body)
	}
}

func (c *Call) answerFromA(sdp []byte) ([]byte, error) {
	return c.negotiate(false, media.A, sdp)
}

// onBye handles a BYE on one leg and reports whether it answered it 200.
func (c *Call) onBye(side media.Side, req *sip.Request, tx sip.ServerTransaction) (answered bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.strayRequest(side, req, tx) {
		return
	}
	l := c.legs[side]
	if seq := req.CSeq().SeqNo; seq < l.remoteCSeq {
		c.srv.respond(l.zone, req, tx, 500, nil)
		return
	}
	l.remoteCSeq = req.CSeq().SeqNo
	if c.state == stateEnded {
		c.srv.respond(l.zone, req, tx, 481, nil)
		return
	}
	c.srv.respond(l.zone, req, tx, 200, nil)
	answered = true
	if c.state == stateEarly {
		// a BYE in an early dialog (only leg B can have one), or on leg
		// B's dialog while leg A's 2xx waits for a PRACK: treat it as the
		// callee giving up
		if c.heldAnswer != nil {
			l.gone = true
		}
		c.rec.EndReason = "callee bye early"
		select {
		case c.aborted <- 480:
		default:
		}
		return
	}
	if c.retrans != nil {
		c.retrans.Stop()
	}
	l.gone = true
	if xf := c.xfer; xf != nil && xf.referrer == l {
		// the referrer hangs up after its REFER was accepted, as
		// transferors do: the transfer goes on without it
		return
	}
	if side == media.A {
		c.rec.EndReason = "caller bye"
	} else {
		c.rec.EndReason = "callee bye"
	}
	if c.lateOffer && !c.bAckSent && c.bAck != nil {
		c.ackB(nil)
	}
	c.byeLeg(c.legs[side.Other()])
	c.end()
	return
}

// end releases everything of the call exactly once. Caller holds mu.
func (c *Call) end() {
	if c.state == stateEnded {
		return
	}
	c.state = stateEnded
	close(c.done)
	c.acked.Broadcast()
	if c.retrans != nil {
		c.retrans.Stop()
	}
	c.stopTimers()
	c.stopReliableA()
	if u := c.update; u != nil && u.retrans != nil {
		u.retrans.Stop()
	}
	if c.mediaOpen {
		if st, ok := c.srv.media.Close(media.SessionID(c.id), c.rec.EndReason); ok {
			c.rec.MediaStats = st
		}
	}
	c.dropSpare()
	c.rec.End = time.Now()
	c.srv.removeCall(c, c.keys)
	if c.log.IsDebug() {
		c.log.Debug("call ended", "reason", c.rec.EndReason, "status", c.rec.Status, "duration_ms", c.rec.End.Sub(c.rec.Start).Milliseconds())
	}
	if h := c.srv.hooks.CallEnded; h != nil {
		rec := c.rec
		go h(context.Background(), rec)
	}
}

// OnMediaTimeout ends the call whose media stopped in both directions.
func (s *Server) OnMediaTimeout(id media.SessionID) {
	s.mu.RLock()
	c := s.calls[string(id)]
	s.mu.RUnlock()
	if c != nil {
		c.log.Info("media timeout, ending call")
		c.hangup("media timeout", 408)
	}
}
