package sbc

import (
	"hash/maphash"
	"strconv"
	"sync"
	"time"

	"github.com/emiago/sipgo/sip"
)

// acceptedLinger is how long sipgo keeps an INVITE transaction that has
// seen a 2xx: Timer L on the server side, Timer M on the client side (RFC
// 6026 §7.1). RFC 6026 sets both to 64×T1 (32 s) so that the transaction
// absorbs retransmitted INVITEs and forked 2xx responses; a transaction
// there keeps its request and every response in memory. The SBC does
// both jobs itself, outside the transaction:
//   - it retransmits its 2xx on its own until the ACK (resend2xx), over the
//     connection the INVITE came on;
//   - it absorbs a retransmitted INVITE by its transaction identity for
//     64×T1 after first seeing it (seenSet);
//   - it terminates its client INVITE transactions at their final
//     response and answers a retransmitted 2xx with its ACK again
//     (onStrayResponse).
//
// A short linger is then enough, and sipgo's Terminate leaves these two
// timers running, so the linger, not the call, decided how long every
// answered call's INVITE transactions stayed in memory: about 10 KB a
// call for 32 s, the larger part of the heap under a sustained call rate.
var acceptedLinger = sip.T1

func init() {
	// sipgo reads these package variables when the timers start; they are
	// set once, before any transaction exists
	sip.Timer_L = acceptedLinger
	sip.Timer_M = acceptedLinger
}

// resend2xx retransmits a 2xx already sent in tx (RFC 3261 §13.3.1.4).
// Over UDP it goes straight to the connection the request came on, as
// sipgo's own transaction would send it: the transaction has usually ended
// by then (acceptedLinger). Over TCP it goes through respondTx, which
// reconnects when the connection is gone.
func (s *Server) resend2xx(z *zone, tx sip.ServerTransaction, res *sip.Response) error {
	st, ok := tx.(interface {
		Origin() *sip.Request
		Connection() sip.Connection
	})
	if !ok {
		return tx.Respond(res)
	}
	req := st.Origin()
	if transportOf(req) == TransportUDP {
		if conn := st.Connection(); conn != nil {
			return conn.WriteMsg(res)
		}
	}
	return s.respondTx(z, req, tx, res)
}

// retransWindow is how long a retransmission of a request can arrive after
// the first copy: its sender gives up retransmitting after Timer B or F,
// 64×T1, and a datagram older than a few seconds more is not delivered.
var retransWindow = 64*sip.T1 + sip.T4

// maxSeenTx bounds the memory of a seenSet: 2^20 requests in a window is
// over 29,000 a second, well above what a node serves; past it the oldest
// are forgotten first.
const maxSeenTx = 1 << 20

// seenSet remembers server transactions by their identity for
// retransWindow after sipgo has let go of them, so that a retransmission
// arriving later gets what the transaction would have given it: every
// INVITE received (a copy is absorbed instead of starting a second call or
// repeating a re-INVITE), and every BYE answered 200 (a copy, sent because
// the 200 was lost, gets 200 again instead of 481), whose transaction the
// SBC ends at once instead of keeping it for Timer J (64×T1). It keeps a
// 64-bit hash per request (a collision between two requests within the
// window has odds of about 2^-24 at a million entries) and expires them in
// arrival order: no timer, no goroutine.
type seenSet struct {
	mu     sync.Mutex
	seed   maphash.Seed
	window time.Duration
	max    int
	at     map[uint64]int64 // hash -> arrival, unix nanoseconds
	order  []seenEntry      // ring in arrival order
	head   int
	n      int
}

type seenEntry struct {
	h  uint64
	at int64
}

func newSeenSet(window time.Duration, max int) *seenSet {
	return &seenSet{seed: maphash.MakeSeed(), window: window, max: max, at: map[uint64]int64{}}
}

// txKey hashes what identifies a request's server transaction (RFC 3261
// §17.2.3) plus the zone it came to: the method, the top Via's branch and
// sent-by, Call-ID, From tag and CSeq number. ok is false when the request
// lacks one of them (such requests are refused before this).
func (s *seenSet) txKey(zoneName string, req *sip.Request) (uint64, bool) {
	via, id, from, cs := req.Via(), req.CallID(), req.From(), req.CSeq()
	if via == nil || id == nil || from == nil || cs == nil {
		return 0, false
	}
	branch, _ := via.Params.Get("branch")
	tag, _ := from.Params.Get("tag")
	var h maphash.Hash
	h.SetSeed(s.seed)
	for _, part := range [...]string{zoneName, string(req.Method), branch, via.Host, id.Value(), tag} {
		h.WriteString(part)
		h.WriteByte(0)
	}
	var num [24]byte
	h.Write(strconv.AppendUint(num[:0], uint64(cs.SeqNo), 10))
	h.WriteByte(0)
	h.Write(strconv.AppendInt(num[:0], int64(via.Port), 10))
	return h.Sum64(), true
}

// seen records key at now and reports whether it was already recorded
// within the window.
func (s *seenSet) seen(key uint64, now time.Time) bool {
	t := now.UnixNano()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.expire(t)
	if at, ok := s.at[key]; ok && t-at < int64(s.window) {
		return true
	}
	if s.n == s.max {
		s.drop()
	}
	if len(s.order) < s.max && s.n == len(s.order) {
		// grow the ring, keeping arrival order from head
		grown := make([]seenEntry, min(max(2*len(s.order), 64), s.max))
		for i := 0; i < s.n; i++ {
			grown[i] = s.order[(s.head+i)%len(s.order)]
		}
		s.order, s.head = grown, 0
	}
	s.order[(s.head+s.n)%len(s.order)] = seenEntry{h: key, at: t}
	s.n++
	s.at[key] = t
	return false
}

// has reports whether key was recorded within the window before now.
func (s *seenSet) has(key uint64, now time.Time) bool {
	t := now.UnixNano()
	s.mu.Lock()
	defer s.mu.Unlock()
	at, ok := s.at[key]
	return ok && t-at < int64(s.window)
}

// expire forgets the entries older than the window. Caller holds mu.
func (s *seenSet) expire(now int64) {
	for s.n > 0 && now-s.order[s.head].at >= int64(s.window) {
		s.drop()
	}
}

// drop forgets the oldest entry. Caller holds mu.
func (s *seenSet) drop() {
	e := s.order[s.head]
	if s.at[e.h] == e.at {
		delete(s.at, e.h)
	}
	s.head = (s.head + 1) % len(s.order)
	s.n--
}

// size is the number of INVITEs remembered.
func (s *seenSet) size() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.n
}
