package media

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"sync"
	"syscall"
	"time"
)

// PortPair is one allocated RTP/RTCP port pair with its sockets. The
// caller owns the sockets: it closes them before handing the port back with
// PortPool.Release. The pool owns both ports either way; only the binding of
// the RTCP socket may be left to the caller (see PortPool.AllocateRTP).
type PortPair struct {
	Port int    // RTP port, even; RTCP is Port+1
	RTP  Socket // bound to Port
	RTCP Socket // bound to Port+1, or unbound (AllocateRTP) until BindRTCP
}

// PortPool hands out even-aligned RTP/RTCP port pairs from a fixed range.
//
// A released pair is quarantined before it is handed out again: late or
// spoofed packets aimed at an ended call must not reach the next call that
// would get the same port. Allocation is O(1) amortised: a FIFO of free pairs
// (least recently used first, which spreads reuse over the whole range) and
// a FIFO of quarantined pairs ordered by release time, moved back lazily.
//
// When no pair is free, the pair that has waited longest in quarantine is
// taken early, but never before it has waited QuarantineFloor (or the whole
// quarantine, when that is shorter): under a burst of short calls the pool
// trades some of its margin for calls instead of refusing them. Late packets
// of an ended call come within a network delay of its end, well inside the
// floor, and the next call's latching still admits only the sources its own
// SDP announced. Shortened counts these early reuses.
//
// The pool serves every bind address of the relay from one range, so each
// port number is in use at most once per host, whichever side it faces.
// PortPool is safe for concurrent use; mu guards all mutable fields.
type PortPool struct {
	first      int // lowest even port of the range
	quarantine time.Duration
	raw        bool             // bind raw sockets (see Socket); set before first use
	now        func() time.Time // injectable clock for tests

	mu          sync.Mutex
	state       []pairState // indexed by pair: port = first + 2*i
	free        ring[int]
	held        ring[heldPair] // quarantined pairs, oldest first
	allocated   int
	quarantined int
	shortened   uint64
}

// QuarantineFloor is the least time a released pair waits before a pool
// with no free pair takes it back early.
const QuarantineFloor = time.Second

type pairState uint8

const (
	pairFree pairState = iota
	pairAllocated
	pairQuarantined
)

type heldPair struct {
	pair  int
	since time.Time // released (or found busy)
	until time.Time // since + quarantine
}

// NewPortPool returns a pool of the even-aligned pairs whose both ports lie
// in [min, max], each withheld for quarantine after release.
func NewPortPool(min, max int, quarantine time.Duration) (*PortPool, error) {
	if min < 1 || max > 65535 || min > max {
		return nil, fmt.Errorf("media: port range [%d, %d] is not inside [1, 65535]", min, max)
	}
	if quarantine < 0 {
		return nil, fmt.Errorf("media: quarantine %v is negative", quarantine)
	}
	first := min + min%2
	n := (max - first + 1) / 2
	if n < 1 {
		return nil, fmt.Errorf("media: port range [%d, %d] holds no even RTP port with its RTCP port", min, max)
	}
	p := &PortPool{
		first:      first,
		quarantine: quarantine,
		now:        time.Now,
		state:      make([]pairState, n),
		free:       newRing[int](n),
		held:       newRing[heldPair](n),
	}
	// A shuffled start makes the first ports of a fresh process hard to
	// guess, which a stranger would otherwise aim at; latching (RFC 4961)
	// protects regardless, this only raises the cost of trying.
	for _, i := range rand.Perm(n) {
		p.free.push(i)
	}
	return p, nil
}

// Allocate binds the RTP and RTCP sockets of the next free pair on bind. A
// pair that some other process or socket holds is skipped and quarantined,
// so it is retried later rather than on every call. Any other bind error
// (an address that is not local, a permission problem) is a configuration
// fault that no other pair would fix: it is returned at once and the pair
// stays free. With no pair left it returns ErrPoolExhausted.
func (p *PortPool) Allocate(bind netip.Addr) (PortPair, error) {
	return p.allocate(bind, true)
}

// AllocateRTP is Allocate without binding the RTCP socket: the pair is
// allocated, quarantined and released as a whole, and its RTCP port is
// reserved for the caller, which binds it later with BindRTCP if at all.
// Only a busy RTP port makes it skip a pair; a busy RTCP port shows when
// BindRTCP fails. The pair's RTCP Socket is unbound, and closing it does
// nothing.
func (p *PortPool) AllocateRTP(bind netip.Addr) (PortPair, error) {
	return p.allocate(bind, false)
}

// BindRTCP binds the RTCP socket of an allocated pair, for the caller of
// AllocateRTP: local is the RTCP address of the pair (its PortPair.RTCP's
// LocalAddr).
func (p *PortPool) BindRTCP(local netip.AddrPort) (Socket, error) {
	s, err := bindSocket(p.raw, local)
	if err != nil {
		return Socket{}, fmt.Errorf("bind rtcp %v: %w", local, err)
	}
	return s, nil
}

func (p *PortPool) allocate(bind netip.Addr, rtcp bool) (PortPair, error) {
	if !bind.IsValid() {
		return PortPair{}, fmt.Errorf("media: allocate port pair: bind address is missing")
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.now()
	p.expire(now)
	for tries := p.free.len(); tries > 0; tries-- {
		i, _ := p.free.pop()
		if p.state[i] != pairFree {
			continue // taken by Reserve while queued: drop the stale entry
		}
		port := p.first + 2*i
		pair, err := p.bindPair(bind.Unmap(), port, rtcp)
		switch {
		case err == nil:
			p.state[i] = pairAllocated
			p.allocated++
			return pair, nil
		case errors.Is(err, syscall.EADDRINUSE):
			p.hold(i, now)
		default:
			p.free.push(i)
			return PortPair{}, err
		}
	}
	// No free pair: take quarantined ones early, oldest first, if they
	// have waited the floor. A pair some other socket holds goes back to
	// the end of the queue; at most one pass over the queue.
	floor := min(p.quarantine, QuarantineFloor)
	for tries := p.held.len(); tries > 0; tries-- {
		h, _ := p.held.peek()
		if now.Sub(h.since) < floor {
			break
		}
		p.held.pop()
		p.quarantined--
		port := p.first + 2*h.pair
		pair, err := p.bindPair(bind.Unmap(), port, rtcp)
		switch {
		case err == nil:
			p.state[h.pair] = pairAllocated
			p.allocated++
			p.shortened++
			return pair, nil
		case errors.Is(err, syscall.EADDRINUSE):
			p.hold(h.pair, now)
		default:
			p.hold(h.pair, now)
			return PortPair{}, err
		}
	}
	return PortPair{}, ErrPoolExhausted
}

// Reserve binds the RTP and RTCP sockets of the pair whose RTP port is port
// on bind, as Allocate would have: a restarted relay takes back the ports of
// the calls it resumes. The pair must be free.
func (p *PortPool) Reserve(bind netip.Addr, port int) (PortPair, error) {
	if !bind.IsValid() {
		return PortPair{}, fmt.Errorf("media: reserve port pair: bind address is missing")
	}
	if port < p.first || (port-p.first)%2 != 0 || (port-p.first)/2 >= len(p.state) {
		return PortPair{}, fmt.Errorf("media: reserve port %d: not an RTP port of the range", port)
	}
	i := (port - p.first) / 2
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.state[i] != pairFree {
		return PortPair{}, fmt.Errorf("media: reserve port %d: pair in use", port)
	}
	pair, err := p.bindPair(bind.Unmap(), port, true)
	if err != nil {
		return PortPair{}, err
	}
	p.state[i] = pairAllocated
	p.allocated++
	return pair, nil
}

// bindPair binds the RTP socket of port on bind and, with withRTCP, the
// RTCP socket of port+1: "udp4" sockets for an IPv4 address, "udp6" (IPv6
// only) otherwise. Without withRTCP the RTCP socket is left unbound.
func (p *PortPool) bindPair(bind netip.Addr, port int, withRTCP bool) (PortPair, error) {
	rtp, err := bindSocket(p.raw, netip.AddrPortFrom(bind, uint16(port)))
	if err != nil {
		return PortPair{}, fmt.Errorf("bind rtp %v: %w", netip.AddrPortFrom(bind, uint16(port)), err)
	}
	rtcpAddr := netip.AddrPortFrom(bind, uint16(port+1))
	if !withRTCP {
		return PortPair{Port: port, RTP: rtp, RTCP: unboundSocket(rtcpAddr)}, nil
	}
	rtcp, err := p.BindRTCP(rtcpAddr)
	if err != nil {
		rtp.Close()
		return PortPair{}, err
	}
	return PortPair{Port: port, RTP: rtp, RTCP: rtcp}, nil
}

// Release quarantines the pair whose RTP port is port. The caller must have
// closed its sockets. Releasing a port that is not allocated (twice, odd,
// out of range) is ignored, so a double release cannot corrupt the pool.
func (p *PortPool) Release(port int) {
	if port < p.first || (port-p.first)%2 != 0 {
		return
	}
	i := (port - p.first) / 2
	p.mu.Lock()
	defer p.mu.Unlock()
	if i >= len(p.state) || p.state[i] != pairAllocated {
		return
	}
	p.allocated--
	p.hold(i, p.now())
}

// hold puts pair i in quarantine. p.mu must be held.
func (p *PortPool) hold(i int, now time.Time) {
	p.state[i] = pairQuarantined
	p.quarantined++
	p.held.push(heldPair{pair: i, since: now, until: now.Add(p.quarantine)})
}

// expire frees the quarantined pairs whose time is up. Entries are pushed
// with a fixed quarantine in release order, so the FIFO is sorted by until
// and the scan stops at the first pair still held. p.mu must be held.
func (p *PortPool) expire(now time.Time) {
	for {
		h, ok := p.held.peek()
		if !ok || now.Before(h.until) {
			return
		}
		p.held.pop()
		p.state[h.pair] = pairFree
		p.quarantined--
		p.free.push(h.pair)
	}
}

// Shortened returns how many pairs were handed out before their quarantine
// was over, because no pair was free.
func (p *PortPool) Shortened() uint64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.shortened
}

// Size returns the number of pairs in the range.
func (p *PortPool) Size() int { return len(p.state) }

// Allocated returns the number of pairs handed out and not yet released.
func (p *PortPool) Allocated() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.allocated
}

// Quarantined returns the number of pairs waiting out their quarantine,
// including pairs skipped because another socket held them.
func (p *PortPool) Quarantined() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.expire(p.now())
	return p.quarantined
}

// InUse returns the pairs that Allocate cannot hand out right now:
// allocated plus quarantined.
func (p *PortPool) InUse() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.expire(p.now())
	return p.allocated + p.quarantined
}

// ring is a fixed-capacity FIFO. The pool never holds more entries than it
// has pairs, so pushes never overflow.
type ring[T any] struct {
	buf  []T
	head int
	n    int
}

func newRing[T any](capacity int) ring[T] { return ring[T]{buf: make([]T, capacity)} }

func (r *ring[T]) len() int { return r.n }

func (r *ring[T]) push(v T) {
	if r.n == len(r.buf) {
		return // unreachable: each pair is in at most one ring at a time
	}
	r.buf[(r.head+r.n)%len(r.buf)] = v
	r.n++
}

func (r *ring[T]) peek() (T, bool) {
	if r.n == 0 {
		var zero T
		return zero, false
	}
	return r.buf[r.head], true
}

func (r *ring[T]) pop() (T, bool) {
	v, ok := r.peek()
	if ok {
		var zero T
		r.buf[r.head] = zero
		r.head = (r.head + 1) % len(r.buf)
		r.n--
	}
	return v, ok
}
