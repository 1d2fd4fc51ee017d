package media

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/edgesbc/edgesbc/media/sdp"
	"github.com/hashicorp/go-hclog"
)

// SessionID names the media of one call. It equals the sbc CallID.
type SessionID string

// Side is one leg of a call.
type Side int

const (
	A Side = 0 // inbound leg: the caller
	B Side = 1 // outbound leg: the callee
)

// Other returns the opposite side.
func (s Side) Other() Side {
	if s == A {
		return B
	}
	return A
}

func (s Side) valid() bool { return s == A || s == B }

func (s Side) String() string {
	switch s {
	case A:
		return "A"
	case B:
		return "B"
	}
	return fmt.Sprintf("Side(%d)", int(s))
}

// session is the media of one call.
//
// Locking: mu guards closed, streams (and everything inside each stream
// except the reader-owned parts of relay sockets) and origins. It is held
// for the whole of an Offer, Answer, Close or Stats, including socket binds
// and waiting for the readers of its sockets to leave; readers never take
// it, so that cannot deadlock. Lock order: session.mu, then PortPool.mu.
// lastActivity and timedOut are atomics shared with the readers and the
// janitor.
type session struct {
	id    SessionID
	relay *Relay
	log   hclog.Logger
	addrs [2]Address // indexed by Side, normalized

	lastActivity atomic.Int64 // Relay.nanotime of the last admitted RTP batch
	timedOut     atomic.Bool  // OnTimeout was called
	// held is set while the call is on hold: both sides have sent SDP and
	// at least one of them has no stream it both sends and receives on
	// (sendonly, recvonly, inactive or a 0.0.0.0 address). Many PBXs send
	// no RTP at all while holding, so the janitor does not time a held
	// call out; the idle clock restarts when it resumes.
	held atomic.Bool
	// duplex records, per side, whether its last SDP had a sendrecv
	// stream with an address; known whether it sent any. Guarded by mu.
	duplex, known [2]bool

	mu      sync.Mutex
	closed  bool
	streams []*stream
	// origins are the o= lines of the SDP sent toward each side: a stable
	// session id per side and a version bumped by every body sent
	// (RFC 3264 §8).
	origins [2]sdp.Origin
}

func newSession(r *Relay, id SessionID, a, b Address) *session {
	s := &session{
		id:    id,
		relay: r,
		log:   r.log.With("call", string(id)),
		addrs: [2]Address{a, b},
	}
	for side := range s.origins {
		// 62 random bits, never zero: o= ids are decimal numbers that some
		// stacks parse as signed 64-bit.
		s.origins[side] = sdp.Origin{Username: r.cfg.Username, SessionID: rand.Uint64()>>2 | 1}
	}
	s.lastActivity.Store(r.nanotime())
	return s
}

// touch records media activity. Two readers of a session may race here;
// both store nearly the same instant, and skipping stores that would move
// the clock by less than a millisecond keeps the cache line quiet.
func (s *session) touch() {
	now := s.relay.nanotime()
	if now-s.lastActivity.Load() >= int64(time.Millisecond) {
		s.lastActivity.Store(now)
	}
}

// announced is what a side's SDP says about one m= line.
type announced struct {
	active    bool
	rtp, rtcp netip.AddrPort // invalid on hold (unspecified address)
}

// negotiation says where a body given to negotiate comes from.
type negotiation int

const (
	// received: an offer or answer side from sent.
	received negotiation = iota
	// template: the SBC's own offer toward from.Other(), written as if
	// side from had sent it; from's addresses in it mean nothing, so
	// nothing goes toward from until its answer is settled.
	template
	// settled: an answer from side from whose rewritten body goes
	// nowhere (the SBC made the offer toward from.Other() itself); the o=
	// version toward from.Other() stays.
	settled
)

// negotiate applies an offer or answer received from side from and returns
// the body to send to the other side.
//
// It is transactional: the body is parsed and checked, new endpoints are
// bound and the rewritten body is built before anything visible changes,
// so a failure leaves the session as it was and leaks no port.
func (s *session) negotiate(from Side, body []byte, offer bool, how negotiation) ([]byte, error) {
	what := "answer"
	if offer {
		what = "offer"
	}
	desc, err := sdp.Parse(body)
	if err != nil {
		return nil, fmt.Errorf("parse %s from side %v: %w: %w", what, from, ErrBadSDP, err)
	}
	media := desc.Media()
	to := from.Other()

	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, fmt.Errorf("%s from side %v for session %s: %w", what, from, s.id, ErrNoSession)
	}
	if !offer && len(media) > len(s.streams) {
		// RFC 3264 §6: the answer has exactly the offer's m= lines.
		return nil, fmt.Errorf("answer from side %v has %d m= lines, offer had %d: %w",
			from, len(media), len(s.streams), ErrBadSDP)
	}
	ann := make([]announced, len(media))
	for i, m := range media {
		ann[i], err = s.announcement(from, m)
		if err != nil {
			return nil, fmt.Errorf("%s from side %v: %w", what, from, err)
		}
		if !offer && ann[i].active && !s.streams[i].active() {
			return nil, fmt.Errorf("answer from side %v accepts m= line %d that the offer disabled: %w",
				from, i, ErrBadSDP)
		}
		if how == template {
			ann[i].rtp, ann[i].rtcp = netip.AddrPort{}, netip.AddrPort{}
		}
	}

	// Bind the endpoints of m= lines that become active. Only offers add
	// or re-enable streams.
	fresh := make([][2]*endpoint, len(media))
	discard := func() {
		for _, eps := range fresh {
			s.dropUnstarted(eps)
		}
	}
	for i := range media {
		if !ann[i].active || (i < len(s.streams) && s.streams[i].active()) {
			continue
		}
		if fresh[i], err = s.allocate(i); err != nil {
			discard()
			return nil, fmt.Errorf("%s from side %v: %w", what, from, err)
		}
	}

	ports := make([]int, len(media))
	for i := range media {
		switch {
		case !ann[i].active:
			ports[i] = 0
		case fresh[i][to] != nil:
			ports[i] = fresh[i][to].port
		default:
			ports[i] = s.streams[i].eps[to].port
		}
	}
	origin := s.origins[to]
	origin.Version++
	out, err := desc.Rewrite(sdp.Anchor{Addr: s.addrs[to].Advertise, Ports: ports, Origin: origin})
	if err != nil {
		discard()
		if errors.Is(err, sdp.ErrInvalidAnchor) {
			return nil, fmt.Errorf("rewrite %s from side %v: %w", what, from, err)
		}
		return nil, fmt.Errorf("rewrite %s from side %v: %w: %w", what, from, ErrBadSDP, err)
	}

	// Commit.
	if how != settled {
		s.origins[to] = origin
	}
	s.known[from] = how != template
	s.duplex[from] = false
	for i, m := range media {
		if ann[i].active && ann[i].rtp.IsValid() && (m.Direction == "" || m.Direction == sdp.SendRecv) {
			s.duplex[from] = true
		}
	}
	held := s.known[A] && s.known[B] && !(s.duplex[A] && s.duplex[B])
	s.held.Store(held)
	var pinned []<-chan struct{}
	expect := func(k *relaySocket, ap netip.AddrPort) {
		if w := k.expect(ap); w != nil {
			pinned = append(pinned, w)
		}
	}
	for i, m := range media {
		if i == len(s.streams) {
			s.streams = append(s.streams, &stream{index: i})
		}
		st := s.streams[i]
		st.kind = m.Kind
		switch {
		case ann[i].active:
			if fresh[i][A] != nil {
				s.start(st, fresh[i])
			}
			expect(st.eps[from].socks[compRTP], ann[i].rtp)
			expect(st.eps[from].socks[compRTCP], ann[i].rtcp)
			for _, k := range st.eps[A].socks {
				k.link.setHeld(held)
			}
		case !st.active():
		case offer:
			// RFC 3264 §8.2: port 0 in an offer disables the stream for
			// good (until offered again); its ports go to quarantine.
			s.retire(st)
		default:
			// A rejected stream in an answer keeps its endpoints: the
			// offerer was already told about them, and an answer in a
			// later 200 may still accept it. Nothing is sent toward the
			// rejecting side.
			st.eps[from].socks[compRTP].expect(netip.AddrPort{})
			st.eps[from].socks[compRTCP].expect(netip.AddrPort{})
		}
	}
	// The side may send as soon as it has our answer (or, for an answer
	// it sent, at once): its pinholes are in place before we go on.
	waitPins(pinned)
	s.log.Debug("sdp anchored", "sdp", what, "side", from, "streams", len(media), "version", origin.Version)
	return out, nil
}

// announcement checks one m= line of a body from side from.
func (s *session) announcement(from Side, m sdp.Media) (announced, error) {
	if m.Port == 0 {
		return announced{}, nil
	}
	if strings.HasPrefix(strings.ToUpper(m.Proto), "TCP") || m.NumPorts > 1 {
		// The relay moves the datagrams of one port pair per stream.
		// TCP media and layered streams over several pairs (m=<port>/<n>)
		// cannot be anchored, and passing their addresses through would
		// reveal the other side, so they are disabled (port 0); the
		// answerer rejects them in turn.
		return announced{}, nil
	}
	if m.Port < 0 || m.Port > 65535 {
		return announced{}, fmt.Errorf("m= line %d port %d: %w", m.Index, m.Port, ErrBadSDP)
	}
	addr := m.Addr.Unmap()
	if !addr.IsValid() {
		return announced{}, fmt.Errorf("m= line %d has no connection address: %w", m.Index, ErrBadSDP)
	}
	local := s.addrs[from].Bind
	if addr.Is4() != local.Is4() {
		return announced{}, fmt.Errorf("m= line %d address %v is not reachable from %v: %w", m.Index, addr, local, ErrBadSDP)
	}
	a := announced{active: true}
	if !addr.IsUnspecified() {
		a.rtp = netip.AddrPortFrom(addr, uint16(m.Port))
	}
	rtcp := netip.AddrPortFrom(m.RTCP.Addr().Unmap(), m.RTCP.Port())
	if !m.RTCP.IsValid() || m.RTCP.Port() == 0 {
		// RFC 3605 absent: RTCP is on the next port (RFC 3550 §11).
		rtcp = netip.AddrPortFrom(addr, uint16(min(m.Port+1, 65535)))
	}
	switch {
	case rtcp.Addr().Is4() != local.Is4():
		return announced{}, fmt.Errorf("m= line %d rtcp address %v is not reachable from %v: %w", m.Index, rtcp.Addr(), local, ErrBadSDP)
	case !rtcp.Addr().IsUnspecified():
		a.rtcp = rtcp
	}
	return a, nil
}

// allocate binds a new endpoint on each side for stream index and pairs
// their sockets. Nothing runs yet; start or dropUnstarted ends that state.
// On the ioEpoll path only the RTP sockets are bound now; the RTCP sockets
// wait for RTP (see rtcpBinding).
func (s *session) allocate(index int) ([2]*endpoint, error) {
	pool := s.relay.pool
	alloc := pool.Allocate
	if s.relay.poll != nil {
		alloc = pool.AllocateRTP
	}
	return s.endpoints(index, func(side Side) (PortPair, error) {
		return alloc(s.addrs[side].Bind)
	})
}

// endpoints builds the two endpoints of stream index from the port pairs
// get returns for each side, links their sockets and prepares their
// reading. On the ioEpoll path reading starts here: a datagram that
// arrives before the stream is started finds no remote and is dropped as a
// stranger's, as it would be by a reader started later. RTCP sockets that
// get left unbound are neither bound nor read here: the stream's RTP
// sockets ask for them when they latch (see rtcpBinding).
func (s *session) endpoints(index int, get func(Side) (PortPair, error)) ([2]*endpoint, error) {
	var eps [2]*endpoint
	for _, side := range [...]Side{A, B} {
		pair, err := get(side)
		if err != nil {
			s.dropUnstarted(eps)
			return [2]*endpoint{}, fmt.Errorf("allocate ports for stream %d side %v: %w", index, side, err)
		}
		ep := &endpoint{port: pair.Port}
		ep.socks = [2]*relaySocket{
			compRTP:  newRelaySocket(s, side, compRTP, index, pair.RTP, &ep.done),
			compRTCP: newRelaySocket(s, side, compRTCP, index, pair.RTCP, &ep.done),
		}
		eps[side] = ep
	}
	for _, c := range components {
		eps[A].socks[c].peer = eps[B].socks[c]
		eps[B].socks[c].peer = eps[A].socks[c]
		newLink(s, c, index, eps[A].socks[c], eps[B].socks[c])
	}
	if !eps[A].socks[compRTCP].sock.bound() && !eps[B].socks[compRTCP].sock.bound() {
		b := &rtcpBinding{sess: s, index: index, eps: eps}
		eps[A].socks[compRTP].rtcp, eps[B].socks[compRTP].rtcp = b, b
	}
	r := s.relay
	for _, ep := range eps {
		for _, k := range ep.socks {
			if !k.sock.bound() {
				continue
			}
			var err error
			if r.poll != nil {
				err = r.poll.register(k)
			} else {
				k.io, err = newBatchIO(r.cfg.batchIO, k.sock.conn, k.peer.sock.conn, k.comp, r.lanes)
			}
			if err != nil {
				s.dropUnstarted(eps)
				return [2]*endpoint{}, fmt.Errorf("set up stream %d side %v %v: %w", index, k.side, k.comp, err)
			}
		}
	}
	return eps, nil
}

// dropUnstarted closes and releases endpoints that were never started. On
// the ioEpoll path their sockets are read already, and a worker inside a
// socket of one side uses its peer on the other: as in retire, every socket
// has stopped before any is closed.
func (s *session) dropUnstarted(eps [2]*endpoint) {
	s.quiesce(eps)
	for _, ep := range eps {
		if ep != nil {
			s.relay.closeSockets(ep)
			s.relay.pool.Release(ep.port)
		}
	}
}

// quiesce stops reading all of a stream's sockets and waits until no
// reader is inside any of them: a worker reading one socket sends out of
// its peer on the other side, so none may close before all have stopped.
// A nil endpoint is skipped, and so is an RTCP socket never bound (see
// rtcpBinding): nothing reads it.
func (s *session) quiesce(eps [2]*endpoint) {
	for _, ep := range eps {
		if ep != nil {
			s.relay.stopReading(ep)
		}
	}
	for _, ep := range eps {
		if ep != nil {
			ep.done.Wait()
		}
	}
}

// start installs eps in st and, on the goroutine-per-socket paths, starts
// their four reader goroutines.
func (s *session) start(st *stream, eps [2]*endpoint) {
	st.eps = eps
	if s.relay.poll == nil {
		for _, ep := range eps {
			for _, k := range ep.socks {
				ep.done.Add(1)
				s.relay.reading.Add(1)
				go k.run()
			}
		}
	}
	s.log.Debug("stream started", "stream", st.index, "kind", st.kind,
		"port_a", eps[A].port, "port_b", eps[B].port)
}

// stopReading makes the readers of ep's sockets stop: closing a socket
// wakes its reader goroutine, and the poller stops handing it to workers.
// ep.done is over once they have. It is idempotent.
func (r *Relay) stopReading(ep *endpoint) {
	for _, k := range ep.socks {
		if r.poll != nil {
			r.poll.stop(k)
		} else {
			k.sock.Close()
		}
	}
}

// closeSockets closes ep's sockets once reading them has stopped (ep.done
// waited for). A stream's readers send out of each other's sockets, so all
// of them have stopped before any is closed. An RTCP socket that was never
// bound has nothing to close (its Socket holds no descriptor).
func (r *Relay) closeSockets(ep *endpoint) {
	if r.poll == nil {
		return // closed by stopReading
	}
	for _, k := range ep.socks {
		r.poll.free(k)
	}
}

// retire stops reading st's sockets, waits for the readers to leave, keeps
// the counters, closes the sockets and quarantines the ports (the RTCP
// port too, bound or not: the pool owns the pair). Stopping every socket
// first lets all the readers leave in parallel.
func (s *session) retire(st *stream) {
	if !st.active() {
		return
	}
	closeLinks([]*stream{st})
	s.quiesce(st.eps)
	for side, ep := range st.eps {
		for c, k := range ep.socks {
			st.retired[side][c].add(k.stats())
			k.unpin()
		}
		s.relay.closeSockets(ep)
		s.relay.pool.Release(ep.port)
	}
	st.eps = [2]*endpoint{}
	s.log.Debug("stream stopped", "stream", st.index)
}

// close ends the session: every socket closed, every reader gone, every
// port in quarantine. It returns the final counters.
func (s *session) close() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.closed {
		s.closed = true
		closeLinks(s.streams)
		for _, st := range s.streams {
			for _, ep := range st.eps {
				if ep != nil {
					s.relay.stopReading(ep)
				}
			}
		}
		for _, st := range s.streams {
			s.retire(st)
		}
	}
	return s.statsLocked()
}

func (s *session) stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.statsLocked()
}

func (s *session) statsLocked() Stats {
	out := Stats{ID: s.id, Streams: make([]StreamStats, len(s.streams))}
	for i, st := range s.streams {
		ss := StreamStats{Index: st.index, Kind: st.kind, Active: st.active()}
		for side := range ss.Sides {
			flows := st.retired[side]
			if ep := st.eps[side]; ep != nil {
				for c, k := range ep.socks {
					flows[c].add(k.stats())
				}
			}
			ss.Sides[side] = EndpointStats{RTP: flows[compRTP], RTCP: flows[compRTCP]}
		}
		out.Streams[i] = ss
	}
	return out
}

// closeLinks withdraws the offloaded components of streams and waits,
// bounded by withdrawWait in all, for their final kernel counters. All
// withdrawals are queued before the first wait, so they share batches.
func closeLinks(streams []*stream) {
	var waits []<-chan struct{}
	for _, st := range streams {
		if !st.active() {
			continue
		}
		for _, k := range st.eps[A].socks {
			waits = append(waits, k.link.shut())
		}
	}
	if len(waits) == 0 {
		return
	}
	deadline := time.NewTimer(withdrawWait)
	defer deadline.Stop()
	for _, w := range waits {
		select {
		case <-w:
		case <-deadline.C:
			return
		}
	}
}
