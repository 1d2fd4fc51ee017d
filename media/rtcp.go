package media

import (
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// rtcpBinding is the deferred RTCP of one pair of endpoints on the ioEpoll
// path. Most calls of a busy SBC are set up, ring or fail without ever
// carrying RTP, and RTCP is meaningless without it, so the pool allocates
// the whole pair (RTP port and port+1) but binds only the RTP sockets: the
// RTCP relay sockets exist from the start, with their addresses, expected
// remotes and link, unbound and unread. The first latch of either RTP
// socket of the pair asks the relay's binder (see Relay.serveRTCP) to bind
// and read both RTCP sockets, so a call holds two descriptors until its
// media flows and four afterwards, as before.
//
// A bind that fails (another process holds port+1) costs the stream its
// RTCP and nothing else: the call goes on, and Relay.RTCPBindFailed counts
// it.
//
// eps and index are fixed; requested is set once, by the first latch, and
// never cleared, so each pair is queued at most once.
type rtcpBinding struct {
	sess      *session
	index     int
	eps       [2]*endpoint
	requested atomic.Bool
}

// request asks for the pair's RTCP sockets. A poller worker calls it when
// it latches an RTP socket: it must not block and must not take the session
// lock (Close and retire hold it while they wait for the workers to leave
// the stream's sockets), so it only queues the pair for the binder.
func (b *rtcpBinding) request() {
	if b.requested.Load() || !b.requested.CompareAndSwap(false, true) {
		return
	}
	b.sess.relay.rtcp.push(b)
}

// rtcpBinder is the relay's queue of pairs whose RTCP sockets are wanted,
// served by one goroutine (Relay.serveRTCP). The queue is unbounded so that
// no request is lost, yet it holds at most one entry per pair of endpoints
// (see rtcpBinding.requested): no more than the relay's open streams.
//
// mu guards queue and is held only to append or to take the whole queue.
// failed counts the pairs left without RTCP; lastWarn belongs to the
// serving goroutine.
type rtcpBinder struct {
	mu    sync.Mutex
	queue []*rtcpBinding

	wake     chan struct{} // capacity 1: the queue has something
	done     chan struct{} // closed when the serving goroutine has returned
	failed   atomic.Uint64
	lastWarn time.Time
}

func newRTCPBinder() *rtcpBinder {
	return &rtcpBinder{wake: make(chan struct{}, 1), done: make(chan struct{})}
}

// push queues b and wakes the serving goroutine without waiting for it.
func (q *rtcpBinder) push(b *rtcpBinding) {
	q.mu.Lock()
	q.queue = append(q.queue, b)
	q.mu.Unlock()
	select {
	case q.wake <- struct{}{}:
	default: // already woken: it takes the whole queue
	}
}

// rtcpWarnEvery bounds how often a failed RTCP bind is logged; the counter
// keeps the full count.
const rtcpWarnEvery = 10 * time.Second

// serveRTCP binds the RTCP sockets that latches asked for, until Shutdown
// stops the relay. Requests that arrive after that are never served: their
// sessions are being closed. The binding runs on a locked thread (see
// binderThread); should that thread ever be unable to return to its own
// network namespace, it ends and a new one takes over. ready is closed
// once the first thread serves, so that NewRelay returns with the relay's
// goroutines all running (tests count them).
func (r *Relay) serveRTCP(ready chan<- struct{}) {
	defer close(r.rtcp.done)
	for {
		stopped := make(chan bool, 1)
		go func(ready chan<- struct{}) { stopped <- r.serveRTCPOnThread(ready) }(ready)
		ready = nil
		if <-stopped {
			return
		}
		r.log.Error("rtcp binder thread could not return to its network namespace: binding goes on on a new thread")
	}
}

// serveRTCPOnThread is serveRTCP on one locked thread: true once the relay
// stops, false when the thread must be given up. It closes ready, when
// not nil, once its thread is locked.
func (r *Relay) serveRTCPOnThread(ready chan<- struct{}) bool {
	q := r.rtcp
	t := lockBinderThread()
	if ready != nil {
		close(ready)
	}
	var batch []*rtcpBinding
	for {
		select {
		case <-r.stop:
			t.release()
			return true
		case <-q.wake:
		}
		q.mu.Lock()
		batch, q.queue = q.queue, batch[:0]
		q.mu.Unlock()
		for i, b := range batch {
			if !b.sess.bindRTCP(b, &t) {
				// the rest go back to the queue for the next thread
				q.mu.Lock()
				q.queue = append(q.queue, batch[i+1:]...)
				q.mu.Unlock()
				select {
				case q.wake <- struct{}{}:
				default:
				}
				t.close()
				return false
			}
		}
		clear(batch) // do not keep ended sessions reachable
	}
}

// bindRTCP binds and reads both RTCP sockets of b, unless the session has
// closed or the stream no longer has b's endpoints (retired, or disabled
// and offered again) since the latch asked. Both sockets are bound before
// either is registered with the poller: a worker reading one side's socket
// sends out of the other side's. Each is bound on t in the network
// namespace of the RTP socket beside it. It returns false only when t can
// no longer be used (see binderThread.bindNear).
func (s *session) bindRTCP(b *rtcpBinding, t *binderThread) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || b.index >= len(s.streams) || s.streams[b.index].eps != b.eps {
		return true
	}
	ks := [2]*relaySocket{b.eps[A].socks[compRTCP], b.eps[B].socks[compRTCP]}
	if ks[A].sock.bound() || ks[B].sock.bound() {
		return true // unreachable: each pair is queued once
	}
	r := s.relay
	var socks [2]Socket
	for side, k := range ks {
		near := b.eps[side].socks[compRTP].sock.fd
		sock, ok, err := t.bindNear(near, func() (Socket, error) { return r.pool.BindRTCP(k.local) })
		if err != nil || !ok {
			// what is bound goes again: no one's yet
			if err == nil {
				sock.Close() // bound, but the thread is lost
				err = fmt.Errorf("bind rtcp %v: the binder could not return to its network namespace", k.local)
			}
			if Side(side) == B {
				socks[A].Close()
			}
			r.rtcpLost(s, b.index, err)
			return ok
		}
		socks[side] = sock
	}
	ks[A].sock, ks[B].sock = socks[A], socks[B]
	for _, k := range ks {
		if err := r.poll.register(k); err != nil {
			// What is bound stays so, read or not, and is closed with the
			// stream like any of its sockets.
			r.rtcpLost(s, b.index, err)
			return true
		}
	}
	s.log.Debug("rtcp bound", "stream", b.index, "local_a", ks[A].local, "local_b", ks[B].local)
	return true
}

// rtcpLost counts and, at most once every rtcpWarnEvery, logs a stream left
// without RTCP. Only the binder goroutine calls it.
func (r *Relay) rtcpLost(s *session, index int, err error) {
	n := r.rtcp.failed.Add(1)
	if now := time.Now(); now.Sub(r.rtcp.lastWarn) >= rtcpWarnEvery {
		r.rtcp.lastWarn = now
		s.log.Warn("rtcp sockets not bound: the stream relays rtp only", "stream", index,
			"error", err, "failed_total", n)
	}
}

// RTCPBindFailed returns how many streams have gone without RTCP because
// their RTCP sockets, bound when RTP first flowed, could not be bound
// (another process held the port next to their RTP port) or read.
func (r *Relay) RTCPBindFailed() uint64 {
	if r.rtcp == nil {
		return 0
	}
	return r.rtcp.failed.Load()
}
