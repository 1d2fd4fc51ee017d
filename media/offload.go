package media

import (
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// Flow is one direction of a latched stream component (RTP or RTCP) at
// packet level: a datagram from Src to Local, the relay socket facing Src's
// side, leaves from Out, the relay socket of the same component facing the
// other side, toward Dst. Userspace does exactly this rewrite; an Offloader
// asks the kernel to do it instead.
type Flow struct {
	Src   netip.AddrPort // the sending side's latched source
	Local netip.AddrPort // relay socket the sending side sends to
	Out   netip.AddrPort // relay socket facing the receiving side
	Dst   netip.AddrPort // the receiving side's latched source
}

// Reverse is the other direction of the same component.
func (f Flow) Reverse() Flow { return Flow{Src: f.Dst, Local: f.Out, Out: f.Local, Dst: f.Src} }

func (f Flow) String() string { return fmt.Sprintf("%v>%v=%v>%v", f.Src, f.Local, f.Out, f.Dst) }

// Is4 reports whether every address of f is IPv4.
func (f Flow) Is4() bool {
	return f.Src.Addr().Is4() && f.Local.Addr().Is4() && f.Out.Addr().Is4() && f.Dst.Addr().Is4()
}

// Counter is what the kernel forwarded for one Flow.
type Counter struct{ Packets, Bytes uint64 }

func (c Counter) plus(o Counter) Counter {
	return Counter{Packets: c.Packets + o.Packets, Bytes: c.Bytes + o.Bytes}
}

// Offloader moves latched flows into the kernel (package firewall implements
// it with nftables). Without one, every packet stays in userspace.
//
// Offload and Withdraw never block on the kernel: they queue the work for
// the Offloader's own goroutine, which applies it in order, so a Withdraw
// after an Offload of the same flow always wins.
type Offloader interface {
	// Offload asks for f and f.Reverse() to be forwarded by the kernel.
	// done is called exactly once, never from the calling goroutine, with
	// nil once the kernel forwards both directions or with why it does not.
	Offload(f Flow, done func(error))
	// Withdraw hands f and f.Reverse() back to the relay sockets: the kernel
	// forgets their rules and NAT state. done, when not nil, is called once
	// with the final kernel counters of f and of f.Reverse(), never from the
	// calling goroutine.
	Withdraw(f Flow, done func(fwd, rev Counter))
	// Counters fills into, after clearing it, with the current kernel
	// counters of every offloaded flow, each direction under its own Flow.
	// The caller owns into and reuses it from poll to poll, so a poll
	// allocates nothing per flow once the map has grown.
	Counters(into map[Flow]Counter) error
}

// withdrawWait bounds how long closing a stream waits for the kernel's final
// counters; the last polled values are used after that.
const withdrawWait = 250 * time.Millisecond

// linkState is where the packets of a link go.
type linkState int

const (
	linkUser    linkState = iota // relay sockets forward
	linkPending                  // Offload queued
	linkKernel                   // the kernel forwards
)

// link is one component (RTP or RTCP) of a stream seen as a unit that can
// be offloaded: the relay socket facing each side. Once both sockets are
// latched the component's two directions are fixed 5-tuples; the first
// admitted batch after that queues an Offload. A new SDP with other
// addresses, hold and the end of the stream withdraw it again.
//
// Locking: mu guards every field but eligible. It is taken by reader
// goroutines (rarely: only while eligible), by the control path under the
// session lock, by the Offloader's callbacks and by the janitor, never
// while holding another lock except that the control path holds the
// session's; Relay.kmu may be taken while holding it.
type link struct {
	relay *Relay
	sess  *session
	comp  component
	index int
	socks [2]*relaySocket // by Side

	// eligible is the hot path's cheap test: state is linkUser and nothing
	// forbids an offload. Readers check it once per batch.
	eligible atomic.Bool

	mu      sync.Mutex
	state   linkState
	flow    Flow   // pending or installed: the A-to-B direction
	gen     uint64 // bumped by every Offload and Withdraw, to spot stale callbacks
	blocked bool   // the Offloader refused the current remotes
	held    bool   // the call is on hold
	closed  bool
	base    [2]Counter // by sending Side: final counters of earlier offloads
	live    [2]Counter // by sending Side: last polled counters of the current one
}

func newLink(s *session, comp component, index int, a, b *relaySocket) *link {
	lk := &link{relay: s.relay, sess: s, comp: comp, index: index, socks: [2]*relaySocket{a, b}}
	a.link, b.link = lk, lk
	lk.eligible.Store(s.relay.cfg.Offloader != nil)
	return lk
}

// refreshLocked recomputes eligible.
func (lk *link) refreshLocked() {
	lk.eligible.Store(lk.state == linkUser && !lk.blocked && !lk.held && !lk.closed &&
		lk.relay.cfg.Offloader != nil)
}

// try queues an Offload when both sockets are latched. Reader goroutines
// call it while eligible.
func (lk *link) try() {
	ra, rb := lk.socks[A].remote.Load(), lk.socks[B].remote.Load()
	if ra == nil || rb == nil || !ra.latched.IsValid() || !rb.latched.IsValid() {
		return
	}
	f := Flow{Src: ra.latched, Local: lk.socks[A].local, Out: lk.socks[B].local, Dst: rb.latched}
	lk.mu.Lock()
	if lk.state != linkUser || lk.blocked || lk.held || lk.closed {
		lk.mu.Unlock()
		return
	}
	lk.state, lk.flow = linkPending, f
	lk.gen++
	gen := lk.gen
	lk.refreshLocked()
	lk.mu.Unlock()
	lk.sess.log.Debug("offload requested", "stream", lk.index, "component", lk.comp, "flow", f)
	lk.relay.cfg.Offloader.Offload(f, func(err error) { lk.offloaded(gen, err) })
}

// offloaded is the Offloader's answer to the Offload of generation gen.
func (lk *link) offloaded(gen uint64, err error) {
	lk.mu.Lock()
	defer lk.mu.Unlock()
	if gen != lk.gen || lk.state != linkPending {
		return // withdrawn meanwhile; the Withdraw queued after it undoes it
	}
	if err != nil {
		lk.state, lk.blocked = linkUser, true
		lk.refreshLocked()
		lk.sess.log.Debug("offload refused: media stays in userspace", "stream", lk.index,
			"component", lk.comp, "flow", lk.flow, "error", err)
		return
	}
	lk.state = linkKernel
	lk.live = [2]Counter{}
	lk.relay.trackLink(lk, true)
	lk.sess.log.Debug("offloaded", "stream", lk.index, "component", lk.comp, "flow", lk.flow)
}

// withdraw hands the link back to userspace if the kernel has (or is about
// to have) it. The returned channel is closed once the final counters are
// in; it is already closed when there was nothing to withdraw.
func (lk *link) withdraw(reason string) <-chan struct{} {
	done := make(chan struct{})
	lk.mu.Lock()
	if lk.state == linkUser {
		lk.mu.Unlock()
		close(done)
		return done
	}
	f := lk.flow
	lk.state = linkUser
	lk.gen++
	gen := lk.gen
	lk.refreshLocked()
	lk.relay.trackLink(lk, false)
	lk.mu.Unlock()
	lk.sess.log.Debug("offload withdrawn", "stream", lk.index, "component", lk.comp, "flow", f, "reason", reason)
	lk.relay.cfg.Offloader.Withdraw(f, func(fwd, rev Counter) {
		lk.mu.Lock()
		lk.base[A] = lk.base[A].plus(fwd)
		lk.base[B] = lk.base[B].plus(rev)
		if gen == lk.gen {
			lk.live = [2]Counter{}
		}
		lk.mu.Unlock()
		close(done)
	})
	return done
}

// remoteChanged is called by the control path when a socket of the link
// got a new announced address: the installed rewrite is stale. A blocked
// link may try again with the new remotes.
func (lk *link) remoteChanged() {
	lk.withdraw("media changed")
	lk.mu.Lock()
	lk.blocked = false
	lk.refreshLocked()
	lk.mu.Unlock()
}

// setHeld withdraws the link while the call is on hold and lets it be
// offloaded again on resume.
func (lk *link) setHeld(held bool) {
	lk.mu.Lock()
	changed := lk.held != held
	lk.held = held
	lk.refreshLocked()
	lk.mu.Unlock()
	if changed && held {
		lk.withdraw("hold")
	}
}

// shut withdraws the link for good. The channel is closed once its final
// counters are in.
func (lk *link) shut() <-chan struct{} {
	lk.mu.Lock()
	lk.closed = true
	lk.refreshLocked()
	if lk.relay.keep.Load() {
		// Detached: the kernel keeps forwarding for the next process.
		lk.relay.trackLink(lk, false)
		lk.mu.Unlock()
		done := make(chan struct{})
		close(done)
		return done
	}
	lk.mu.Unlock()
	return lk.withdraw("stream closed")
}

// kernel returns what the kernel forwarded from side, over every offload of
// the link.
func (lk *link) kernel(side Side) Counter {
	lk.mu.Lock()
	defer lk.mu.Unlock()
	return lk.base[side].plus(lk.live[side])
}

// poll takes the latest counters of an installed link and reports whether
// any moved.
func (lk *link) poll(m map[Flow]Counter) bool {
	lk.mu.Lock()
	defer lk.mu.Unlock()
	if lk.state != linkKernel {
		return false
	}
	moved := false
	for side, f := range [2]Flow{lk.flow, lk.flow.Reverse()} {
		c, ok := m[f]
		if ok && c != lk.live[side] {
			lk.live[side] = c
			moved = true
		}
	}
	return moved
}

// trackLink adds or removes an installed link from the set the janitor
// polls.
func (r *Relay) trackLink(lk *link, on bool) {
	r.kmu.Lock()
	defer r.kmu.Unlock()
	if on {
		r.klinks[lk] = struct{}{}
	} else {
		delete(r.klinks, lk)
	}
}

// OffloadedLinks returns how many stream components the kernel forwards now.
func (r *Relay) OffloadedLinks() int {
	r.kmu.Lock()
	defer r.kmu.Unlock()
	return len(r.klinks)
}

// pollKernel reads the kernel counters of installed links and marks the
// sessions whose RTP moved as active: packets the kernel forwards never
// reach a relay socket, so this is the only sign of life of such a call.
func (r *Relay) pollKernel(buf []*link, m map[Flow]Counter) []*link {
	buf = buf[:0]
	r.kmu.Lock()
	for lk := range r.klinks {
		buf = append(buf, lk)
	}
	r.kmu.Unlock()
	if len(buf) == 0 {
		return buf
	}
	err := r.cfg.Offloader.Counters(m)
	if err != nil {
		// Once per failure streak: the janitor asks every tick.
		if !r.countersFailing {
			r.log.Warn("read kernel media counters: offloaded calls cannot be checked for activity", "error", err)
		}
		r.countersFailing = true
		return buf
	}
	if r.countersFailing {
		r.log.Info("kernel media counters readable again")
		r.countersFailing = false
	}
	for _, lk := range buf {
		if lk.poll(m) && lk.comp == compRTP {
			lk.sess.touch()
		}
	}
	clear(buf)
	return buf
}
