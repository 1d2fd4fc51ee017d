package sbc

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/emiago/sipgo/sip"

	"github.com/edgesbc/edgesbc/media"
	"github.com/edgesbc/edgesbc/media/sdp"
)

// Offer interworking (RFC 3261 §13.2.1, RFC 3264). An INVITE without SDP
// (late offer) normally stays one: the callee offers in its 2xx and the
// caller answers in its ACK. Some peers (many carriers) refuse an INVITE
// without an offer; toward a peer with offer = "early" the SBC offers
// itself, from its own anchored media and the peer's codec list. The
// callee's answer then goes to the caller as the offer in the 2xx, and the
// caller's answer in the ACK completes the media session on the caller's
// side only: the callee already has the answer it needs. A callee may
// answer in a provisional instead; see ownOfferEarly for what the caller
// gets then.
//
// The same interworking serves a late-offer call whose callee offers in a
// reliable provisional while the caller does not support 100rel: the
// callee needs the answer in its PRACK (RFC 3262 §5), which the caller
// cannot give before the 2xx. The SBC answers itself (answerOwn), and the
// caller gets the callee's offer, narrowed to that answer, in the 2xx.

// OfferMode is how an INVITE without SDP is sent toward a peer.
type OfferMode string

const (
	// OfferPass sends the INVITE as it came: a late offer stays late.
	OfferPass OfferMode = "pass"
	// OfferEarly makes the SBC offer itself toward the peer when the
	// caller's INVITE has no SDP.
	OfferEarly OfferMode = "early"
)

// codec is one entry the SBC can put into an offer of its own.
type codec struct {
	pt     int
	rtpmap string // encoding/clock[/channels]
	fmtp   string // "" for none
}

// codecs are the codecs the SBC can offer by name (lower case). Static
// payload types keep their numbers (RFC 3551); dynamic ones get fixed
// numbers from 96 on.
var codecs = map[string]codec{
	"pcmu":            {pt: 0, rtpmap: "PCMU/8000"},
	"pcma":            {pt: 8, rtpmap: "PCMA/8000"},
	"g722":            {pt: 9, rtpmap: "G722/8000"},
	"g729":            {pt: 18, rtpmap: "G729/8000", fmtp: "annexb=no"},
	"opus":            {pt: 111, rtpmap: "opus/48000/2"},
	"telephone-event": {pt: 101, rtpmap: "telephone-event/8000", fmtp: "0-16"},
}

// DefaultCodecs is what the SBC offers toward a peer with offer = "early"
// and no codec list of its own.
var DefaultCodecs = []string{"PCMU", "PCMA", "telephone-event"}

// KnownCodec reports whether the SBC can offer the codec name (any case).
func KnownCodec(name string) bool {
	_, ok := codecs[strings.ToLower(name)]
	return ok
}

// earlyOffer reports whether the SBC offers itself toward p when the
// caller made no offer.
func (p *peer) earlyOffer() bool { return p.cfg.Offer == OfferEarly }

// offerTemplate writes the SDP offer the SBC makes itself: one audio
// stream with the given codecs, in order, at addr (an address of the
// caller's zone: the relay uses only its family, since the caller's media
// address is not known before its answer).
func offerTemplate(names []string, addr netip.Addr) ([]byte, error) {
	if len(names) == 0 {
		names = DefaultCodecs
	}
	fam := "IP4"
	if addr.Is6() {
		fam = "IP6"
	}
	var pts []string
	var attrs strings.Builder
	audio := false
	for _, n := range names {
		c, ok := codecs[strings.ToLower(n)]
		if !ok {
			return nil, fmt.Errorf("codec %q is not one the SBC can offer", n)
		}
		pt := fmt.Sprint(c.pt)
		if slices.Contains(pts, pt) {
			continue
		}
		pts = append(pts, pt)
		audio = audio || c.rtpmap != codecs["telephone-event"].rtpmap
		fmt.Fprintf(&attrs, "a=rtpmap:%d %s\r\n", c.pt, c.rtpmap)
		if c.fmtp != "" {
			fmt.Fprintf(&attrs, "a=fmtp:%d %s\r\n", c.pt, c.fmtp)
		}
	}
	if !audio {
		return nil, fmt.Errorf("codecs %v: no audio codec besides telephone-event", names)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "v=0\r\no=- 0 0 IN %s %v\r\ns=-\r\nc=IN %s %v\r\nt=0 0\r\n", fam, addr, fam, addr)
	fmt.Fprintf(&b, "m=audio 9 RTP/AVP %s\r\n", strings.Join(pts, " "))
	b.WriteString(attrs.String())
	b.WriteString("a=ptime:20\r\na=sendrecv\r\n")
	return []byte(b.String()), nil
}

// makeOffer builds and anchors the SBC's own offer toward leg B for a
// caller that made none. Caller holds mu; the media session is open.
func (c *Call) makeOffer() ([]byte, error) {
	a, b := c.legs[media.A], c.legs[media.B]
	tmpl, err := offerTemplate(b.peer.cfg.Codecs, a.zone.cfg.Address)
	if err != nil {
		return nil, fmt.Errorf("build own offer toward %s: %w", b.peer.cfg.Name, err)
	}
	out, err := c.srv.media.OfferFor(media.SessionID(c.id), media.B, tmpl)
	if err != nil {
		return nil, fmt.Errorf("anchor own offer toward %s: %w", b.peer.cfg.Name, err)
	}
	c.ownOffer = true
	c.log.Debug("late offer sent early", "to_peer", b.peer.cfg.Name)
	return out, nil
}

// settleOffer takes the caller's answer from its ACK when the SBC made the
// offer toward leg B: the answer must fit the offer the caller got in the
// 2xx (leg B's answer). One that does not ends the call on both legs: leg B
// has answered and been ACKed already, so there is nothing to renegotiate.
// Caller holds mu.
func (c *Call) settleOffer(ack *sip.Request) {
	body := sdpBody(ack)
	err := errors.New("ACK carries no answer to the offer in the 2xx")
	if body != nil {
		err = c.settle(body)
	}
	if err != nil {
		c.log.Warn("caller's answer unusable, ending call", "error", err)
		c.rec.EndReason = "bad answer"
		c.byeLeg(c.legs[media.A])
		c.byeLeg(c.legs[media.B])
		c.end()
		return
	}
}

// reofferOwn builds and anchors the SBC's own offer toward leg to for a
// re-INVITE without SDP from leg from, like the initial one (makeOffer).
// A session with more m= lines than the one audio stream of the template
// keeps them in the offer, disabled (RFC 3264 §8: a re-offer never drops
// an m= line). Caller holds mu.
func (c *Call) reofferOwn(from, to *Leg) ([]byte, error) {
	tmpl, err := offerTemplate(to.peer.cfg.Codecs, from.zone.cfg.Address)
	if err != nil {
		return nil, fmt.Errorf("build own re-offer toward %s: %w", to.peer.cfg.Name, err)
	}
	if cur, err := sdp.Parse(c.sentSDP[to.side]); err == nil {
		for _, m := range cur.Media()[min(1, len(cur.Media())):] {
			tmpl = fmt.Appendf(tmpl, "m=%s 0 %s %s\r\n", m.Kind, m.Proto, strings.Join(m.Formats, " "))
		}
	}
	out, err := c.srv.media.OfferFor(media.SessionID(c.id), to.side, tmpl)
	if err != nil {
		return nil, fmt.Errorf("anchor own re-offer toward %s: %w", to.peer.cfg.Name, err)
	}
	c.log.Debug("re-INVITE without SDP sent with an offer", "to_peer", to.peer.cfg.Name)
	return out, nil
}

// settleReoffer takes the sender's answer from the ACK of a re-INVITE the
// SBC made its own offer for (reofferOwn). As for the initial INVITE, an
// answer that does not fit the offer in the 2xx ends the call. Caller
// holds mu.
func (c *Call) settleReoffer(u *inDialogTx, ack *sip.Request) {
	body := sdpBody(ack)
	err := errors.New("ACK carries no answer to the offer in the 2xx")
	if body != nil {
		err = c.settleFrom(u.from, body)
	}
	if err != nil {
		c.log.Warn("answer to own re-offer unusable, ending call", "leg", u.from, "error", err)
		c.rec.EndReason = "bad answer"
		c.byeBoth()
	}
}

// settle completes the caller's side of the SBC's own offer with the
// caller's answer (in the ACK, or in the PRACK of a reliable provisional
// that carried the offer): it must fit the offer the caller got. Caller
// holds mu.
func (c *Call) settle(body []byte) error { return c.settleFrom(media.A, body) }

// settleFrom completes side's part of an offer/answer the SBC began
// itself with side's answer to the offer it was sent last. Caller holds
// mu.
func (c *Call) settleFrom(side media.Side, body []byte) error {
	if err := answerFits(c.sentSDP[side], body); err != nil {
		return err
	}
	if err := c.srv.media.Settle(media.SessionID(c.id), side, body); err != nil {
		return err
	}
	c.lastSDP[side] = body
	return nil
}

// ownOfferEarly takes the callee's answer to the SBC's offer from a
// provisional response and returns the SDP for leg A's provisional, nil
// for none. Any 18x with SDP may carry the answer (RFC 3261 §13.2.1; one
// the callee sends reliably is final, RFC 3262 §5), so the media is
// anchored at once. Toward the caller, who made no offer, that answer is
// an offer, and an offer may go only in the first reliable response
// (RFC 3261 §13.2.1, RFC 6337 §3.1): a caller that supports 100rel gets it
// in a reliable provisional and answers in its PRACK; one that does not
// gets the provisional without SDP and the offer in the 2xx. Its early
// media stays anchored but reaches nobody: the caller's media address is
// not known before its answer. Caller holds mu.
func (c *Call) ownOfferEarly(sdp []byte) []byte {
	if sdp != nil && !c.aOffered {
		out, err := c.anchorAnswer(sdp)
		if err != nil {
			c.log.Warn("early answer to own offer unusable", "error", err)
		} else {
			c.earlySDP = out
		}
	}
	if c.aOffered || c.earlySDP == nil || c.aRel == relNone {
		return nil
	}
	c.aOffered = true
	return c.earlySDP
}

// ownOfferAnswer returns the offer for leg A's 2xx when leg B's 2xx
// completes the SBC's offer: the callee's answer from the 2xx, or from a
// provisional when the 2xx has no SDP; the offer the caller already got
// in a reliable provisional, unchanged. Caller holds mu.
func (c *Call) ownOfferAnswer(sdp []byte) ([]byte, error) {
	switch {
	case c.aOffered:
		if sdp != nil && !bytes.Equal(sdp, c.lastSDP[media.B]) {
			// the callee moved since its provisional: follow its media
			// address; the caller keeps the offer it has
			if _, err := c.anchorAnswer(sdp); err != nil {
				return nil, err
			}
		}
		return c.earlySDP, nil
	case sdp != nil:
		return c.anchorAnswer(sdp)
	case c.earlySDP != nil:
		return c.earlySDP, nil
	}
	return nil, errors.New("own offer answered neither in the 2xx nor in a provisional")
}

// answerFits checks an SDP answer against the offer it answers (RFC 3264
// §6): the same m= lines, nothing accepted that the offer disabled, each
// accepted RTP stream with a payload format of the offer, and at least one
// stream accepted.
func answerFits(offer, answer []byte) error {
	od, err := sdp.Parse(offer)
	if err != nil {
		return fmt.Errorf("parse offer: %w", err)
	}
	ad, err := sdp.Parse(answer)
	if err != nil {
		return fmt.Errorf("parse answer: %w", err)
	}
	om, am := od.Media(), ad.Media()
	if len(om) != len(am) {
		return fmt.Errorf("answer has %d m= lines, the offer %d", len(am), len(om))
	}
	accepted := 0
	for i := range am {
		o, a := om[i], am[i]
		if a.Port == 0 {
			continue
		}
		if o.Port == 0 {
			return fmt.Errorf("m= line %d: answer accepts a stream the offer disabled", i)
		}
		if a.Kind != o.Kind || !strings.EqualFold(a.Proto, o.Proto) {
			return fmt.Errorf("m= line %d: answer %s %s for an offer of %s %s", i, a.Kind, a.Proto, o.Kind, o.Proto)
		}
		if strings.Contains(strings.ToUpper(o.Proto), "RTP") &&
			!slices.ContainsFunc(a.Formats, func(f string) bool { return slices.Contains(o.Formats, f) }) {
			return fmt.Errorf("m= line %d: no payload type of the answer (%s) was offered (%s)",
				i, strings.Join(a.Formats, " "), strings.Join(o.Formats, " "))
		}
		accepted++
	}
	if accepted == 0 {
		return errors.New("answer accepts no stream")
	}
	return nil
}

// answerOwn answers the callee's offer from a reliable provisional on the
// caller's behalf and returns the answer for leg B's PRACK, or nil when
// there is none to give (the PRACK then goes without, as before). The
// offer is narrowed to the streams and codecs of the answer, and that is
// what the caller is offered in the 2xx: the relay does not transcode, so
// the caller may only pick what the callee was told. Caller holds mu.
func (c *Call) answerOwn(offer []byte) []byte {
	a := c.legs[media.A]
	narrowed, tmpl, err := narrowOffer(offer, a.peer.cfg.Codecs, a.zone.cfg.Address)
	if err == nil {
		var toA, answer []byte
		if toA, err = c.negotiate(true, media.B, narrowed); err == nil {
			if answer, err = c.srv.media.AnswerFor(media.SessionID(c.id), media.B, tmpl); err == nil {
				c.earlySDP = toA
				c.ownAnswer = true
				c.log.Debug("callee's early offer answered by the SBC", "for_peer", a.peer.cfg.Name)
				return answer
			}
		}
	}
	c.log.Warn("callee's early offer left unanswered", "error", err)
	return nil
}

// narrowOffer prepares the SBC's own answer to offer: the first RTP audio
// stream keeps one codec of the offer, the first in prefs the offer has
// (else the offer's first), and telephone-event when both have it; every
// other stream is rejected (port 0). It returns the offer narrowed to
// that and the answer template, at addr (only its family counts).
func narrowOffer(offer []byte, prefs []string, addr netip.Addr) (narrowed, tmpl []byte, err error) {
	d, err := sdp.Parse(offer)
	if err != nil {
		return nil, nil, fmt.Errorf("parse offer: %w", err)
	}
	ms := d.Media()
	if len(prefs) == 0 {
		prefs = DefaultCodecs
	}
	var session []string
	var sections [][]string // each m= line with the lines after it
	for line := range strings.Lines(string(offer)) {
		line = strings.TrimRight(line, "\r\n")
		switch {
		case line == "":
		case strings.HasPrefix(line, "m="):
			sections = append(sections, []string{line})
		case len(sections) == 0:
			session = append(session, line)
		default:
			sections[len(sections)-1] = append(sections[len(sections)-1], line)
		}
	}
	if len(sections) != len(ms) {
		return nil, nil, fmt.Errorf("offer has %d m= sections, %d parsed", len(sections), len(ms))
	}
	fam := "IP4"
	if addr.Is6() {
		fam = "IP6"
	}
	var nb, tb strings.Builder
	for _, l := range session {
		nb.WriteString(l + "\r\n")
	}
	fmt.Fprintf(&tb, "v=0\r\no=- 0 0 IN %s %v\r\ns=-\r\nc=IN %s %v\r\nt=0 0\r\n", fam, addr, fam, addr)
	answered := false
	for i, m := range ms {
		sec := sections[i]
		var keep []string
		if !answered && m.Kind == "audio" && m.Port != 0 && m.NumPorts <= 1 &&
			strings.Contains(strings.ToUpper(m.Proto), "RTP") {
			keep = pickFormats(m.Formats, rtpmaps(sec), prefs)
		}
		if len(keep) == 0 {
			reject := fmt.Sprintf("m=%s 0 %s %s\r\n", m.Kind, m.Proto, strings.Join(m.Formats, " "))
			nb.WriteString(reject)
			tb.WriteString(reject)
			continue
		}
		answered = true
		f := strings.Fields(sec[0])
		fmt.Fprintf(&nb, "%s %s %s %s\r\n", f[0], f[1], f[2], strings.Join(keep, " "))
		fmt.Fprintf(&tb, "m=%s 9 %s %s\r\n", m.Kind, m.Proto, strings.Join(keep, " "))
		for _, l := range sec[1:] {
			pt, ok := formatAttr(l)
			if ok && !slices.Contains(keep, pt) {
				continue
			}
			nb.WriteString(l + "\r\n")
			if ok && (strings.HasPrefix(l, "a=rtpmap:") || strings.HasPrefix(l, "a=fmtp:")) {
				tb.WriteString(l + "\r\n")
			}
		}
		fmt.Fprintf(&tb, "a=%s\r\n", answerDirection(m.Direction))
	}
	if !answered {
		return nil, nil, errors.New("offer has no RTP audio stream to answer")
	}
	return []byte(nb.String()), []byte(tb.String()), nil
}

// rtpmaps reads the a=rtpmap lines of one m= section: payload type to
// lower-case encoding/clock.
func rtpmaps(section []string) map[string]string {
	out := map[string]string{}
	for _, l := range section {
		if rest, ok := strings.CutPrefix(l, "a=rtpmap:"); ok {
			if pt, enc, ok := strings.Cut(rest, " "); ok {
				out[pt] = strings.ToLower(strings.TrimSpace(enc))
			}
		}
	}
	return out
}

// formatAttr returns the payload type an a=rtpmap, a=fmtp or a=rtcp-fb
// line is about.
func formatAttr(line string) (string, bool) {
	for _, p := range []string{"a=rtpmap:", "a=fmtp:", "a=rtcp-fb:"} {
		if rest, ok := strings.CutPrefix(line, p); ok {
			pt, _, _ := strings.Cut(rest, " ")
			if pt != "*" {
				return pt, true
			}
		}
	}
	return "", false
}

// pickFormats chooses the payload types of the SBC's answer from formats:
// the first codec of prefs the offer has, else the offer's first that is
// not telephone-event; and telephone-event when both list it.
func pickFormats(formats []string, maps map[string]string, prefs []string) []string {
	name := func(pt string) string {
		enc, ok := maps[pt]
		if !ok {
			// static payload types need no rtpmap (RFC 3551)
			for _, c := range codecs {
				if c.pt < 96 && fmt.Sprint(c.pt) == pt {
					enc = strings.ToLower(c.rtpmap)
				}
			}
		}
		n, _, _ := strings.Cut(enc, "/")
		return n
	}
	main := ""
	wantEvents := false
	for _, p := range prefs {
		c, ok := codecs[strings.ToLower(p)]
		if !ok {
			continue
		}
		want, _, _ := strings.Cut(strings.ToLower(c.rtpmap), "/")
		if want == "telephone-event" {
			wantEvents = true
			continue
		}
		for _, pt := range formats {
			if main == "" && name(pt) == want {
				main = pt
			}
		}
	}
	for _, pt := range formats {
		if main == "" && name(pt) != "telephone-event" {
			main = pt
		}
	}
	if main == "" {
		return nil
	}
	keep := []string{main}
	if wantEvents {
		if i := slices.IndexFunc(formats, func(pt string) bool { return name(pt) == "telephone-event" }); i >= 0 {
			keep = append(keep, formats[i])
		}
	}
	return keep
}

// answerDirection is the direction an answer gives a stream offered with
// dir (RFC 3264 §6.1).
func answerDirection(dir string) string {
	switch dir {
	case sdp.SendOnly:
		return sdp.RecvOnly
	case sdp.RecvOnly:
		return sdp.SendOnly
	case sdp.Inactive:
		return sdp.Inactive
	}
	return sdp.SendRecv
}
