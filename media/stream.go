package media

import (
	"errors"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// component is the RTP or RTCP half of a stream (the ICE term: component 1
// is RTP, component 2 is RTCP).
type component int

const (
	compRTP component = iota
	compRTCP
)

var components = [...]component{compRTP, compRTCP}

func (c component) String() string {
	if c == compRTCP {
		return "rtcp"
	}
	return "rtp"
}

// stream is one m= line across both legs: an endpoint facing each side. Both
// endpoints exist together (the m= line is active) or neither does (port 0).
// All fields are guarded by the owning session's mu.
type stream struct {
	index   int
	kind    string
	eps     [2]*endpoint    // indexed by Side
	retired [2][2]FlowStats // [Side][component]: counters of endpoints closed earlier
}

func (st *stream) active() bool { return st.eps[A] != nil }

// endpoint is the SBC's face toward one side for one stream: an RTP and an
// RTCP socket on that side's bind address, from one PortPool pair. On the
// ioEpoll path the RTCP socket is bound only once the stream's RTP flows
// (see rtcpBinding). done counts its sockets being read (see
// relaySocket.stopped); it is waited on, and grown by a late RTCP
// registration, only with the session lock held, which is safe because
// readers never take it.
type endpoint struct {
	port  int             // RTP port; RTCP is port+1
	socks [2]*relaySocket // indexed by component
	done  sync.WaitGroup
}

// remote is what a relay socket knows about the far end of its side. It is
// immutable: the control path (Offer/Answer) and the latching reader swap
// the whole value, so the reader sees either the old or the new state and
// never half of each.
type remote struct {
	// expected is the address:port the side announced in SDP. It is invalid
	// while the side's SDP is unknown, when the stream was rejected, or when
	// the side announced an unspecified address (RFC 2543 style hold).
	expected netip.AddrPort
	// latched is the source of the first admitted packet (RFC 4961
	// symmetric RTP); invalid until then.
	latched netip.AddrPort
}

// destination is where packets for this side are sent: the latched source
// if any, since that is what the side's NAT lets back in, else the announced
// address. It is invalid when neither is known.
func (r *remote) destination() netip.AddrPort {
	switch {
	case r == nil:
		return netip.AddrPort{}
	case r.latched.IsValid():
		return r.latched
	}
	return r.expected
}

// verdict is admission's decision on one datagram.
type verdict int

const (
	drop  verdict = iota // not from the side: count and discard
	admit                // from the latched source: forward
	latch                // first packet from the announced IP: learn the source, then forward
)

// admission decides whether a datagram from src is the side's media. It is
// the bleed protection of the relay (the "RTP bleed" attack sends to relay
// ports hoping to be latched in place of the real party):
//
//   - Until the side's SDP is known there is nothing to compare with: drop.
//   - Before latching, only the IP announced in SDP is admitted, from any
//     port, because a NAT in front of the side may have changed the port.
//     That first packet fixes the latched source.
//   - After latching, only that exact address:port is admitted.
//
// A new SDP from the side with a different address starts over (see
// relaySocket.expect).
func admission(r *remote, src netip.AddrPort) verdict {
	switch {
	case r == nil || !r.expected.IsValid():
		return drop
	case r.latched.IsValid():
		if src == r.latched {
			return admit
		}
		return drop
	case src.Addr() == r.expected.Addr():
		return latch
	}
	// Hook for NAT-tolerant latching: a per-peer option will let a side
	// behind a NAT that rewrites its SDP address badly be latched on its
	// first packet from any IP, returning latch here for sources this
	// function now drops. Strict matching stays the default.
	return drop
}

// relaySocket is one UDP socket of an endpoint (RTP or RTCP) and its
// reader: a goroutine of its own (run, on the ioMmsg and ioXNet paths) or,
// on the ioEpoll path, whichever worker of the relay's poller holds it. A
// datagram read here comes from this socket's side; if admitted it is
// forwarded out of peer, the socket of the same component facing the other
// side, so the far end sees the SBC's own address and port of its side and
// never the other side's.
//
// Ownership: io and the writes to c belong to the reader, of which there is
// exactly one at a time. remote is written by the control path with the
// session lock held and by the reader when latching (compare-and-swap),
// read by both readers of the stream. sock, peer, done and the identity
// fields are set before reading starts and never change until it has
// stopped: an RTCP socket bound late (see rtcpBinding) gets its sock under
// the session lock before it and its peer are registered; reg belongs to
// the poller. rtcp is fixed at creation.
type relaySocket struct {
	sess  *session
	side  Side
	comp  component
	index int // stream index, for logs
	sock  Socket
	local netip.AddrPort
	io    batchIO // goroutine paths only
	peer  *relaySocket
	done  *sync.WaitGroup // the endpoint's: Done once reading stopped
	reg   pollReg         // ioEpoll only
	rtcp  *rtcpBinding    // RTP sockets of a stream whose RTCP is bound on latch; else nil

	remote atomic.Pointer[remote]
	c      counters
	link   *link // the component across both sides, for offloading
}

func newRelaySocket(s *session, side Side, comp component, index int, sock Socket, done *sync.WaitGroup) *relaySocket {
	local := sock.LocalAddr()
	local = netip.AddrPortFrom(local.Addr().Unmap(), local.Port())
	return &relaySocket{sess: s, side: side, comp: comp, index: index, sock: sock, local: local, done: done}
}

// stopped records that nobody reads the socket any more.
func (k *relaySocket) stopped() {
	k.sess.relay.reading.Add(-1)
	k.done.Done()
}

// expect records the address the side announced. An unchanged announcement
// (a re-INVITE keeping its media, the 200 repeating the 183's answer) keeps
// the latch; a different one drops it, and the first packet from the new
// address latches again. The caller holds the session lock. The returned
// channel, when not nil, is closed once the socket's new pinhole is open
// (see Pinholer).
func (k *relaySocket) expect(ap netip.AddrPort) <-chan struct{} {
	cur := k.remote.Load()
	if cur != nil && cur.expected == ap {
		return nil
	}
	k.remote.Store(&remote{expected: ap})
	var old netip.AddrPort
	if cur != nil {
		old = cur.expected
	}
	pinned := k.repin(old, ap)
	if k.link != nil {
		k.link.remoteChanged()
	}
	return pinned
}

// stats returns the socket's counters and addresses, including what the
// kernel forwarded for it while its link was offloaded.
func (k *relaySocket) stats() FlowStats {
	f := k.c.snapshot()
	if k.link != nil {
		kc := k.link.kernel(k.side)
		f.Packets += kc.Packets
		f.Bytes += kc.Bytes
		f.Forwarded += kc.Packets
		f.ForwardedBytes += kc.Bytes
		f.Offloaded += kc.Packets
		f.OffloadedBytes += kc.Bytes
	}
	f.Local = k.local
	if r := k.remote.Load(); r != nil {
		f.Expected, f.Latched = r.expected, r.latched
	}
	return f
}

// run is the socket's reader goroutine on the goroutine-per-socket paths.
// It exits once the socket is closed.
func (k *relaySocket) run() {
	defer k.stopped()
	fwd := make([][]byte, 0, mmsgBatchLen)
	var backoff time.Duration
	for {
		n, err := k.io.recv()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Transient kernel errors (ENOMEM, ENOBUFS) must not spin a
			// core: back off, bounded, until reads succeed again.
			if backoff == 0 {
				k.sess.log.Debug("read failed", "side", k.side, "stream", k.index, "component", k.comp, "error", err)
			}
			backoff = min(max(2*backoff, time.Millisecond), 100*time.Millisecond)
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		k.forward(k.io, n, fwd) // holding a lane: see batchIO
		k.io.release()
	}
}

// forward handles the n datagrams of batch b, collecting the admitted ones
// in fwd (the reader's, with room for a batch). It is the hot path: no
// allocation, one atomic add per counter per batch.
func (k *relaySocket) forward(b batchView, n int, fwd [][]byte) {
	r := k.remote.Load()
	fwd = fwd[:0]
	var bytes, stranger, trunc uint64
	for i := range n {
		p, src, truncated := b.datagram(i)
		bytes += uint64(len(p))
		if !k.admit(&r, src) {
			stranger++
			continue
		}
		if truncated {
			trunc++
			continue
		}
		fwd = append(fwd, p)
	}

	var sent, sentBytes, noDest, sendErr int
	if len(fwd) > 0 {
		dst := k.peer.remote.Load().destination()
		if !dst.IsValid() {
			noDest = len(fwd)
		} else {
			var err error
			sent, sentBytes, err = b.send(fwd, dst)
			sendErr = len(fwd) - sent
			if err != nil && !errors.Is(err, net.ErrClosed) && k.c.sendErr.Load() == 0 {
				k.sess.log.Debug("forward failed", "side", k.side, "stream", k.index, "component", k.comp, "dst", dst, "error", err)
			}
		}
		clear(fwd) // do not pin the batch's buffers past release
	}

	k.c.packets.Add(uint64(n))
	k.c.bytes.Add(bytes)
	if sent > 0 {
		k.c.forwarded.Add(uint64(sent))
		k.c.forwardedB.Add(uint64(sentBytes))
	}
	if stranger > 0 {
		k.c.stranger.Add(stranger)
	}
	if trunc > 0 {
		k.c.trunc.Add(trunc)
	}
	if noDest > 0 {
		k.c.noDest.Add(uint64(noDest))
	}
	if sendErr > 0 {
		k.c.sendErr.Add(uint64(sendErr))
	}
	if k.comp == compRTP && uint64(n) > stranger {
		k.sess.touch()
	}
	if len(fwd) > 0 && k.link != nil && k.link.eligible.Load() {
		k.link.try()
	}
}

// admit applies admission to one datagram, latching when told to. *r is the
// reader's current view of remote and is refreshed when the control path
// replaced it concurrently.
func (k *relaySocket) admit(r **remote, src netip.AddrPort) bool {
	for range 3 {
		cur := *r
		switch admission(cur, src) {
		case admit:
			return true
		case drop:
			return false
		}
		next := &remote{expected: cur.expected, latched: src}
		if k.remote.CompareAndSwap(cur, next) {
			*r = next
			k.sess.log.Debug("remote latched", "side", k.side, "stream", k.index, "component", k.comp,
				"src", src, "announced", cur.expected)
			// Once both sides are latched the component's flows are
			// fixed 5-tuples: forward then tries to offload them.
			if k.rtcp != nil {
				k.rtcp.request() // RTP flows: RTCP follows
			}
			return true
		}
		*r = k.remote.Load() // new SDP arrived meanwhile: decide again
	}
	return false
}
