package sbc

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emiago/sipgo/sip"
)

// Access mode: remote phones in one zone (behind NATs of their own, on the
// public side) register with a pbx peer through the SBC.
//
// Each phone binding (its source address, port and transport, and the AOR
// user it registers) gets a registration of its own toward the PBX: a
// Call-ID, From tag and CSeq space the SBC chose, and a Contact on the SBC's
// address in the PBX's zone whose user part is a random token. Nothing of
// the phone's address, NAT or Contact reaches the PBX. The token maps back
// to the source the phone's REGISTER really came from (RFC 3581: where its
// NAT forwards replies), never to the Contact it claims.
//
// The Request-URI is the phone's own: its host must be the access domain,
// and it reaches the PBX unchanged, because the digest response in the
// phone's Authorization covers it (RFC 2617 §3.2.2: digest-uri). The
// credentials cross unchanged, so the PBX authenticates the phone itself;
// the SBC holds no passwords.

const (
	defaultAccessExpires    = 60 * time.Second
	defaultAccessPBXExpires = time.Hour
	defaultAccessBindings   = 10000
	// maxPendingPerSource bounds the bindings one address holds before
	// any of them registered, so one source cannot fill the table by
	// registering made-up users.
	maxPendingPerSource = 8
	// maxAccessUser bounds an AOR user part.
	maxAccessUser = 64
	// maxRegisterWaiters bounds the REGISTERs of one binding waiting
	// while another of it is relayed: phones have one at a time in
	// flight, and a source sending more (a password guesser) gets 503
	// with Retry-After for the rest instead of holding a goroutine each.
	maxRegisterWaiters = 4
	// registerRetryAfter is the Retry-After of that 503, in seconds.
	registerRetryAfter = "5"
	// tableFullRetryAfter is the Retry-After of the 503 for a full
	// binding table: registrations end far slower than one refusal.
	tableFullRetryAfter = "60"
)

// tokenPrefix starts every token, so that a Request-URI user from the PBX
// is told apart from a number: a token the SBC no longer knows gets 480
// instead of going out to a trunk as a called number.
const tokenPrefix = "r"

// isBindingToken reports whether user has the form of a binding's token.
func isBindingToken(user string) bool {
	if len(user) != len(tokenPrefix)+24 || !strings.HasPrefix(user, tokenPrefix) {
		return false
	}
	for i := len(tokenPrefix); i < len(user); i++ {
		if c := user[i]; !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// pendingLife is how long a binding that never registered lives after its
// last REGISTER: one non-INVITE transaction (64*T1).
var pendingLife = 64 * sip.T1

// registerWait bounds how long a REGISTER waits for the one of its binding
// relayed before it: one non-INVITE transaction (64*T1), the longest the
// relayed one can take. A test shortens it.
var registerWait = 64 * sip.T1

type access struct {
	cfg    AccessConfig
	zone   *zone // the phones' zone
	pbx    *peer
	domain string // lower case
	// quit is closed when the server shuts down: REGISTERs waiting for
	// their turn or for the PBX stop waiting and get 503.
	quit <-chan struct{}

	lastFullLog atomic.Int64 // unix seconds of the last "table full" log line
	lastBusyLog atomic.Int64 // unix seconds of the last "registration busy" log line
	busyRefused atomic.Int64 // REGISTERs refused as busy since that line

	mu       sync.RWMutex // read by the entry filter for every stranger's datagram
	bindings map[bindingKey]*binding
	tokens   map[string]*binding
	pending  map[netip.Addr]int          // bindings not registered yet, per source address
	sources  map[netip.AddrPort]*binding // registered bindings by source: the phones
}

type bindingKey struct {
	src       netip.AddrPort
	transport string
	user      string
}

// binding is one phone registration. Fields after turn are guarded by the
// access's mu.
//
// Its REGISTERs toward the PBX go one at a time (RFC 3261 §10.2: no new
// registration before the final response to the previous one, or its
// timeout): a request holds turn, a one-slot semaphore, from reserving its
// CSeq until its upstream transaction has ended, so CSeqs rise in the order
// the PBX is sent them.
type binding struct {
	key        bindingKey
	turn       chan struct{}
	waiting    int // requests counted by enter that hold no turn yet
	token      string
	callID     string
	fromTag    string
	cseq       uint32
	contact    *sip.ContactHeader // the phone's own, once registered
	expires    time.Time
	registered bool
	peer       *peer // the phone's calls' peer, once registered
}

func newAccess(cfg AccessConfig, z *zone, pbx *peer, quit <-chan struct{}) *access {
	if cfg.Expires <= 0 {
		cfg.Expires = defaultAccessExpires
	}
	if cfg.PBXExpires <= 0 {
		cfg.PBXExpires = defaultAccessPBXExpires
	}
	if cfg.MaxBindings <= 0 {
		cfg.MaxBindings = defaultAccessBindings
	}
	return &access{
		cfg:      cfg,
		zone:     z,
		pbx:      pbx,
		quit:     quit,
		domain:   strings.ToLower(cfg.Domain),
		bindings: map[bindingKey]*binding{},
		tokens:   map[string]*binding{},
		pending:  map[netip.Addr]int{},
		sources:  map[netip.AddrPort]*binding{},
	}
}

// setupAccess builds the access mode of each configured zone. Called by
// NewServer once zones and peers exist.
func (s *Server) setupAccess(byName map[string]*zone) error {
	for _, ac := range s.cfg.Access {
		z := byName[ac.Zone]
		if z == nil {
			return fmt.Errorf("access %q: unknown zone %q", ac.Name, ac.Zone)
		}
		if z.access != nil {
			return fmt.Errorf("access %q: zone %q has an access mode already", ac.Name, ac.Zone)
		}
		var pbx *peer
		for _, p := range s.peers {
			if p.cfg.Name == ac.PBX && p.cfg.Kind == PBX {
				pbx = p
			}
		}
		if pbx == nil {
			return fmt.Errorf("access %q: no pbx named %q", ac.Name, ac.PBX)
		}
		if pbx.zone == z {
			return fmt.Errorf("access %q: pbx %q is in the phones' zone %q", ac.Name, ac.PBX, ac.Zone)
		}
		if ac.Domain == "" {
			return fmt.Errorf("access %q: no domain", ac.Name)
		}
		z.access = newAccess(ac, z, pbx, s.quit)
	}
	return nil
}

// registerRequest is what the SBC reads from a phone's REGISTER.
type registerRequest struct {
	user     string
	contact  *sip.ContactHeader // the first Contact; nil for a query
	wildcard bool               // Contact: * (remove every binding)
	expires  int                // seconds asked for; 0 removes
}

// parseRegister checks a phone's REGISTER and returns what the SBC relays,
// or the code of a local final response: 404 for a Request-URI outside the
// access domain (RFC 3261 §10.3 step 1), 400 for what cannot be relayed.
func parseRegister(req *sip.Request, domain string) (registerRequest, int) {
	var out registerRequest
	ru := req.Recipient
	if ru.Scheme != "sip" || !strings.EqualFold(ru.Host, domain) || ru.User != "" {
		return out, 404
	}
	to := req.To()
	if to == nil || to.Address.Scheme != "sip" || !validUser(to.Address.User) {
		return out, 404
	}
	out.user = to.Address.User
	out.expires = -1
	if h := req.GetHeader("Expires"); h != nil {
		n, err := strconv.ParseUint(strings.TrimSpace(h.Value()), 10, 32)
		if err != nil {
			return out, 400
		}
		out.expires = int(min(n, 1<<31-1))
	}
	contacts := req.GetHeaders("Contact")
	for _, h := range contacts {
		c, ok := h.(*sip.ContactHeader)
		if !ok {
			return out, 400
		}
		if c.Address.Wildcard {
			out.wildcard = true
			continue
		}
		if out.contact == nil {
			if c.Address.Scheme != "sip" {
				return out, 400
			}
			out.contact = c
		}
	}
	if out.wildcard {
		// RFC 3261 §10.3 step 6: "*" only alone and with Expires: 0
		if len(contacts) != 1 || out.expires != 0 {
			return out, 400
		}
		return out, 0
	}
	if out.contact != nil {
		if v, ok := out.contact.Params.Get("expires"); ok {
			n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 32)
			if err != nil {
				return out, 400
			}
			out.expires = int(min(n, 1<<31-1))
		}
	}
	return out, 0
}

// validUser accepts the user part of an AOR: not empty, bounded, and only
// the characters phones put there (digits, letters, ".-_+*#!~").
func validUser(u string) bool {
	if u == "" || len(u) > maxAccessUser {
		return false
	}
	for i := 0; i < len(u); i++ {
		c := u[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || strings.IndexByte(".-_+*#!~", c) >= 0) {
			return false
		}
	}
	return true
}

// refusal is why a REGISTER gets a local response instead of its turn.
type refusal int

const (
	admitted    refusal = iota
	tableFull           // max_bindings, or the pending attempts of its source
	bindingBusy         // too many REGISTERs of its binding wait, or waited too long
)

// enter finds or makes the binding of a REGISTER and counts the request
// among the binding's waiters. The caller then waits for the binding's
// turn (wait) and, holding it, reserves a CSeq (reserve).
func (a *access) enter(k bindingKey, now time.Time) (*binding, refusal) {
	a.mu.Lock()
	defer a.mu.Unlock()
	b := a.bindings[k]
	if b == nil {
		if len(a.bindings) >= a.cfg.MaxBindings || a.pending[k.src.Addr()] >= maxPendingPerSource {
			return nil, tableFull
		}
		b = &binding{key: k, turn: make(chan struct{}, 1), token: tokenPrefix + newID(), callID: newID(), fromTag: newTag(), cseq: randCSeq()}
		a.bindings[k] = b
		a.tokens[b.token] = b
		a.pending[k.src.Addr()]++
	}
	if b.waiting >= maxRegisterWaiters {
		return nil, bindingBusy
	}
	b.waiting++
	if !b.registered {
		b.expires = now.Add(pendingLife)
	}
	return b, admitted
}

// wait takes b's turn for a request counted by enter, waiting at most
// registerWait for the request before it; false when it did not get it.
// Either way the request no longer counts as waiting.
func (a *access) wait(b *binding) bool {
	t := time.NewTimer(registerWait)
	defer t.Stop()
	got := false
	select {
	case b.turn <- struct{}{}:
		got = true
	case <-t.C:
	case <-a.quit:
	}
	a.mu.Lock()
	b.waiting--
	a.mu.Unlock()
	return got
}

// reserve takes the next CSeq of b's registration for the request holding
// b's turn, and returns a copy of the fields the request needs; false when
// b was dropped (unregistered, reaped) while the request waited.
func (a *access) reserve(b *binding, now time.Time) (binding, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.bindings[b.key] != b {
		return binding{}, false
	}
	if !b.registered {
		b.expires = now.Add(pendingLife)
	}
	b.cseq++
	return *b, true
}

// done gives b's turn back once its holder's upstream transaction ended.
func (a *access) done(b *binding) { <-b.turn }

// take finds or makes the binding of k, waits for its turn and reserves a
// CSeq. It returns the binding, whose turn the caller holds until it calls
// done, and a copy of the fields the request needs. A binding dropped while
// the request waited is left for a new one, a bounded number of times.
func (a *access) take(k bindingKey) (*binding, binding, refusal) {
	for range 3 {
		b, why := a.enter(k, time.Now())
		if why != admitted {
			return nil, binding{}, why
		}
		if !a.wait(b) {
			return nil, binding{}, bindingBusy
		}
		if c, ok := a.reserve(b, time.Now()); ok {
			return b, c, admitted
		}
		a.done(b)
	}
	return nil, binding{}, bindingBusy
}

// settle records the outcome of a 2xx: granted seconds for the phone's
// contact, or the end of the binding on an unregister.
func (a *access) settle(k bindingKey, token string, contact *sip.ContactHeader, granted int, remove bool, now time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	b := a.bindings[k]
	if b == nil || b.token != token {
		return
	}
	switch {
	case remove:
		a.dropLocked(b)
	case granted > 0 && contact != nil:
		if !b.registered {
			a.unpendLocked(b)
		}
		b.registered = true
		if b.peer == nil {
			b.peer = phonePeer(a, k.src)
		}
		a.sources[k.src] = b
		b.contact = contact
		b.expires = now.Add(time.Duration(granted) * time.Second)
	}
}

func (a *access) dropLocked(b *binding) {
	if !b.registered {
		a.unpendLocked(b)
	}
	delete(a.bindings, b.key)
	delete(a.tokens, b.token)
	if a.sources[b.key.src] == b {
		delete(a.sources, b.key.src)
	}
}

func (a *access) unpendLocked(b *binding) {
	src := b.key.src.Addr()
	if a.pending[src] <= 1 {
		delete(a.pending, src)
	} else {
		a.pending[src]--
	}
}

// reap removes the bindings whose registration (or attempt) ran out, and
// returns how many it removed.
func (a *access) reap(now time.Time) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	n := 0
	for _, b := range a.bindings {
		if !now.Before(b.expires) {
			a.dropLocked(b)
			n++
		}
	}
	return n
}

// count is the number of bindings held, registered or not.
func (a *access) count() (registered, pending int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, b := range a.bindings {
		if b.registered {
			registered++
		} else {
			pending++
		}
	}
	return registered, pending
}

// runReaper reaps every zone's bindings until ctx ends.
func (s *Server) runReaper(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			for _, z := range s.zones {
				if z.access != nil {
					if n := z.access.reap(now); n > 0 {
						s.log.Debug("registrations expired", "zone", z.cfg.Name, "removed", n)
					}
				}
			}
		}
	}
}

// hasCredentials reports whether a request carries digest credentials: a
// challenge to it is a failed authentication, while a challenge to a
// request without any is how digest starts.
func hasCredentials(req *sip.Request) bool {
	return req.GetHeader("Authorization") != nil || req.GetHeader("Proxy-Authorization") != nil
}

// isRegister reports whether a raw message is a REGISTER request.
func isRegister(data []byte) bool {
	return bytes.HasPrefix(bytes.TrimLeft(data, "\r\n\x00"), []byte("REGISTER "))
}

// onRegister relays a phone's REGISTER to the PBX of its zone's access
// mode and the PBX's final response back. Without an access mode, or from a
// peer, REGISTER is refused as before.
func (s *Server) onRegister(z *zone, req *sip.Request, tx sip.ServerTransaction) {
	a := z.access
	src := sourceOf(req)
	if a == nil || !src.IsValid() || s.peerBySource(z, src.Addr()) != nil {
		s.onOther(z, req, tx)
		return
	}
	reg, code := parseRegister(req, a.domain)
	if code != 0 {
		s.log.Debug("register refused", "zone", z.cfg.Name, "src", src, "code", code)
		s.accessRespond(z, req, tx, code, nil)
		return
	}
	k := bindingKey{src: src, transport: transportOf(req), user: reg.user}
	held, b, why := a.take(k)
	switch why {
	case tableFull:
		// at most one line every 10 seconds: a flood of made-up users
		// must not flood the log
		if logTurn(&a.lastFullLog) {
			s.log.Warn("register refused: too many registrations", "zone", z.cfg.Name, "src", src, "max_bindings", a.cfg.MaxBindings, "per_source_attempts", maxPendingPerSource)
		}
		s.accessRespond(z, req, tx, 503, retryAfter(tableFullRetryAfter))
		return
	case bindingBusy:
		// likewise for REGISTERs of one binding sent faster than the
		// PBX answers them
		a.busyRefused.Add(1)
		if logTurn(&a.lastBusyLog) {
			s.log.Warn("register refused: registration busy", "zone", z.cfg.Name, "src", src, "user", reg.user, "refused", a.busyRefused.Swap(0), "max_waiting", maxRegisterWaiters)
		}
		s.accessRespond(z, req, tx, 503, retryAfter(registerRetryAfter))
		return
	}
	// the turn goes to the next REGISTER of the binding once this one's
	// outcome is recorded: an unregister's 200 drops the binding first
	defer a.done(held)
	up := s.upstreamRegister(a, &b, req, reg)
	res, err := s.relayRegister(a, up)
	if err != nil {
		s.log.Debug("register relay", "zone", z.cfg.Name, "src", src, "error", err)
		if errors.Is(err, ErrShuttingDown) {
			s.accessRespond(z, req, tx, 503, retryAfter(registerRetryAfter))
			return
		}
		s.accessRespond(z, req, tx, 408, nil)
		return
	}
	code = res.StatusCode
	var extra []sip.Header
	switch {
	case code == 401:
		extra = copyHeaders(res, "WWW-Authenticate")
	case code == 407:
		extra = copyHeaders(res, "Proxy-Authenticate")
	case code >= 200 && code < 300:
		remove := reg.wildcard || reg.expires == 0
		granted := 0
		var ct *sip.ContactHeader
		if reg.contact != nil && !remove {
			granted = grantedExpires(res, b.token, a.cfg.PBXExpires)
			granted = min(granted, int(a.cfg.Expires/time.Second))
			if reg.expires > 0 {
				granted = min(granted, reg.expires)
			}
			if granted > 0 {
				ct = reg.contact.Clone()
				ct.Params.Remove("expires")
				ct.Params.Add("expires", strconv.Itoa(granted))
				extra = append(extra, ct)
			}
		}
		a.settle(k, b.token, ct, granted, remove, time.Now())
	}
	s.accessRespond(z, req, tx, code, extra)
}

// upstreamRegister builds the PBX's REGISTER for binding b from scratch.
func (s *Server) upstreamRegister(a *access, b *binding, req *sip.Request, reg registerRequest) *sip.Request {
	pz := a.pbx.zone
	r := sip.NewRequest(sip.REGISTER, *req.Recipient.Clone())
	r.AppendHeader(s.via(pz))
	mf := sip.MaxForwardsHeader(70)
	if in := req.MaxForwards(); in != nil && in.Val() > 0 && in.Val() <= 70 {
		mf = sip.MaxForwardsHeader(in.Val() - 1)
	}
	r.AppendHeader(&mf)
	fromUser := reg.user
	var fromName string
	if f := req.From(); f != nil && validUser(f.Address.User) {
		fromUser, fromName = f.Address.User, f.DisplayName
	}
	r.AppendHeader(&sip.FromHeader{DisplayName: fromName, Address: sip.Uri{Scheme: "sip", User: fromUser, Host: a.cfg.Domain}, Params: tagParams(b.fromTag)})
	r.AppendHeader(&sip.ToHeader{DisplayName: req.To().DisplayName, Address: sip.Uri{Scheme: "sip", User: reg.user, Host: a.cfg.Domain}, Params: sip.NewParams()})
	cid := sip.CallIDHeader(b.callID)
	r.AppendHeader(&cid)
	r.AppendHeader(&sip.CSeqHeader{SeqNo: b.cseq, MethodName: sip.REGISTER})
	switch {
	case reg.wildcard:
		r.AppendHeader(&sip.ContactHeader{Address: sip.Uri{Wildcard: true}})
	case reg.contact != nil:
		r.AppendHeader(&sip.ContactHeader{Address: sip.Uri{Scheme: "sip", User: b.token, Host: pz.host, Port: pz.port}})
	}
	switch {
	case reg.wildcard || reg.expires == 0:
		r.AppendHeader(sip.NewHeader("Expires", "0"))
	case reg.contact != nil:
		r.AppendHeader(sip.NewHeader("Expires", strconv.Itoa(int(a.cfg.PBXExpires/time.Second))))
	}
	for _, h := range copyHeaders(req, "Authorization", "Proxy-Authorization") {
		r.AppendHeader(h)
	}
	r.AppendHeader(s.hdrUA)
	r.SetBody(nil)
	// what the phone revealed about itself stays on its side
	f := &foreignSet{networks: pz.foreign, addrs: []netip.Addr{sourceOf(req).Addr()}}
	f.learnFrom(req, func(h string) bool { return s.isOwnHost(h) || strings.EqualFold(h, a.domain) })
	touched, size := s.guard.scrubSized(r, f)
	if len(touched) > 0 {
		s.log.Warn("leak guard removed content", "zone", pz.cfg.Name, "method", "REGISTER", "headers", strings.Join(touched, ","))
	}
	dest := a.pbx.dest
	s.direct(pz, a.pbx, &dest, a.pbx.cfg.Transport, r, size)
	return r
}

// relayRegister sends the PBX's REGISTER and waits for its final response,
// bounded by Timer F.
func (s *Server) relayRegister(a *access, r *sip.Request) (*sip.Response, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 64*sip.T1)
	defer cancel()
	tx, err := a.pbx.zone.client.TransactionRequest(ctx, r, noBuild)
	if err != nil {
		return nil, fmt.Errorf("send register to pbx %s: %w", a.pbx.cfg.Name, err)
	}
	defer tx.Terminate()
	for {
		select {
		case res := <-tx.Responses():
			if res.StatusCode >= 200 {
				return res, nil
			}
		case <-tx.Done():
			return nil, fmt.Errorf("register to pbx %s: %w", a.pbx.cfg.Name, tx.Err())
		case <-ctx.Done():
			return nil, fmt.Errorf("register to pbx %s: %w", a.pbx.cfg.Name, ctx.Err())
		case <-a.quit:
			return nil, fmt.Errorf("register to pbx %s: %w", a.pbx.cfg.Name, ErrShuttingDown)
		}
	}
}

// grantedExpires is what the PBX granted the binding's token contact: its
// expires parameter, else the response's Expires header, else what was
// asked. 0 when the 2xx does not list the contact.
func grantedExpires(res *sip.Response, token string, asked time.Duration) int {
	for _, h := range res.GetHeaders("Contact") {
		c, ok := h.(*sip.ContactHeader)
		if !ok || c.Address.User != token {
			continue
		}
		if v, ok := c.Params.Get("expires"); ok {
			if n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 32); err == nil {
				return int(min(n, 1<<31-1))
			}
		}
		if h := res.GetHeader("Expires"); h != nil {
			if n, err := strconv.ParseUint(strings.TrimSpace(h.Value()), 10, 32); err == nil {
				return int(min(n, 1<<31-1))
			}
		}
		return int(asked / time.Second)
	}
	return 0
}

// accessRespond answers a phone's REGISTER: the phone's own dialog headers,
// our Server header and extra (challenges, the phone's restored Contact),
// checked by the leak guard for anything of the PBX's side. An auth failure
// feeds the ban policies; a first challenge to a request without
// credentials does not.
func (s *Server) accessRespond(z *zone, req *sip.Request, tx sip.ServerTransaction, code int, extra []sip.Header) {
	res := sip.NewResponseFromRequest(req, code, reasonPhrase(code), nil)
	if to := res.To(); to != nil && !to.Params.Has("tag") {
		to.Params.Add("tag", newTag())
	}
	res.AppendHeader(s.hdrServer)
	for _, h := range extra {
		res.AppendHeader(h)
	}
	if touched := s.guard.scrub(res, &foreignSet{networks: z.foreign}); len(touched) > 0 {
		s.log.Warn("leak guard removed content", "zone", z.cfg.Name, "method", "REGISTER", "code", code, "headers", strings.Join(touched, ","))
	}
	if err := s.respondTx(z, req, tx, res); err != nil {
		s.log.Debug("respond failed", "zone", z.cfg.Name, "code", code, "error", err)
	}
	if (code == 401 || code == 407) && !hasCredentials(req) {
		return
	}
	if g := s.sec.Load(); g != nil {
		s.guardOutcome(g.Guard, z, req, code)
	}
}

// admits reports whether a datagram from a stranger in the access zone
// goes on: a REGISTER from anyone, and anything from the source of a
// registered phone (its calls, their responses and in-dialog requests).
func (a *access) admits(src netip.AddrPort, data []byte) bool {
	return isRegister(data) || a.phoneAt(src) != nil
}

// phoneAt is the peer of the phone registered from src, nil when none is.
func (a *access) phoneAt(src netip.AddrPort) *peer {
	a.mu.RLock()
	defer a.mu.RUnlock()
	if b := a.sources[src]; b != nil {
		return b.peer
	}
	return nil
}

// phonePeer is the peer a registered phone's calls come from: reached at
// the source its REGISTER came from, without session timers and refusing
// transfers (a REFER from it gets 603), since phones register for calls
// to and from their PBX only.
func phonePeer(a *access, src netip.AddrPort) *peer {
	ip := src.Addr()
	return &peer{
		cfg: PeerConfig{Name: "phone " + src.String(), Zone: a.zone.cfg.Name, Address: src, Refer: ReferReject,
			Offer: OfferPass, Transport: TransportUDP},
		zone:    a.zone,
		sources: []netip.Prefix{netip.PrefixFrom(ip, ip.BitLen())},
		keep:    map[string]bool{},
		dest:    src.String(),
		host:    a.cfg.Domain,
		access:  a,
	}
}

// natSDP makes the connection addresses of an SDP from a phone behind a NAT
// the address its signalling comes from: the media relay then latches on
// what the NAT sends from there (any port) instead of waiting for the
// private address the phone announced. Other legs' SDP is returned as is.
func (c *Call) natSDP(l *Leg, sdp []byte) []byte {
	if l == nil || l.peer.access == nil || sdp == nil {
		return sdp
	}
	src, err := netip.ParseAddrPort(l.dest)
	if err != nil {
		return sdp
	}
	return rewriteConnection(sdp, src.Addr())
}

// callee finds the registered phone a call from the PBX is for: the
// peer of its binding, the Contact it registered and its AOR user.
func (a *access) callee(token string) (*peer, sip.Uri, string, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	b := a.tokens[token]
	if b == nil || !b.registered || b.contact == nil || b.peer == nil {
		return nil, sip.Uri{}, "", false
	}
	target := *b.contact.Address.Clone()
	return b.peer, target, b.key.user, true
}

// rewriteConnection replaces the address of every c= line of the family
// of ip with ip; an unspecified address (hold, RFC 3264 §8.4) stays.
func rewriteConnection(sdp []byte, ip netip.Addr) []byte {
	fam := "IN IP4 "
	if ip.Is6() {
		fam = "IN IP6 "
	}
	lines := bytes.SplitAfter(sdp, []byte("\n"))
	var out bytes.Buffer
	for _, line := range lines {
		body := bytes.TrimRight(line, "\r\n")
		if bytes.HasPrefix(body, []byte("c="+fam)) && !bytes.Equal(body, []byte("c="+fam+"0.0.0.0")) && !bytes.Equal(body, []byte("c="+fam+"::")) {
			out.WriteString("c=" + fam + ip.String())
			out.Write(line[len(body):])
			continue
		}
		out.Write(line)
	}
	return out.Bytes()
}

// calleePhone is the registered phone a call from the PBX goes to.
type calleePhone struct {
	peer    *peer
	contact sip.Uri
	user    string
}

// phoneCallee finds the phone of token among the access modes whose PBX
// is from; nil when there is none.
func (s *Server) phoneCallee(from *peer, token string) *calleePhone {
	for _, z := range s.zones {
		if a := z.access; a != nil && a.pbx == from {
			if p, ct, user, ok := a.callee(token); ok {
				return &calleePhone{peer: p, contact: ct, user: user}
			}
		}
	}
	return nil
}

// registrarOf reports whether p is the PBX of an access mode.
func (s *Server) registrarOf(p *peer) bool {
	for _, z := range s.zones {
		if z.access != nil && z.access.pbx == p {
			return true
		}
	}
	return false
}
