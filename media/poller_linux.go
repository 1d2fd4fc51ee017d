//go:build linux

package media

import (
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"
)

// bindRaw returns a non-blocking UDP socket bound to ap: socket and bind,
// nothing else. An IPv6 socket is IPv6-only, as net.ListenUDP("udp6")
// makes it, so that "::" never takes IPv4 traffic meant for another socket.
func bindRaw(ap netip.AddrPort) (int, error) {
	a := ap.Addr().Unmap()
	family := unix.AF_INET6
	if a.Is4() {
		family = unix.AF_INET
	}
	fd, err := unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_UDP)
	if err != nil {
		return -1, os.NewSyscallError("socket", err)
	}
	var sa unix.Sockaddr
	if family == unix.AF_INET {
		sa = &unix.SockaddrInet4{Port: int(ap.Port()), Addr: a.As4()}
	} else {
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 1); err != nil {
			unix.Close(fd)
			return -1, os.NewSyscallError("setsockopt", err)
		}
		sa = &unix.SockaddrInet6{Port: int(ap.Port()), Addr: a.As16()}
	}
	if err := unix.Bind(fd, sa); err != nil {
		unix.Close(fd)
		return -1, os.NewSyscallError("bind", err)
	}
	return fd, nil
}

func closeRaw(fd int) error { return unix.Close(fd) }

// Poller sizing.
const (
	// pollEvents is how many readiness events one epoll_wait returns at
	// most: enough to amortise the call at thousands of active sockets,
	// few enough that one worker does not sit on the events of many
	// sockets while the others wait.
	pollEvents = 64
	// pollBudget is how many recvmmsg batches one socket gets per turn.
	// A socket with more waiting goes to the back of its worker's queue,
	// so one flooded socket cannot starve the others.
	pollBudget = 4
	// pollChunk is how many registry slots are allocated at once.
	pollChunk = 256
	// sendWait bounds how long a worker waits for a full send buffer of a
	// peer socket to drain before it drops the rest of a batch: the worker
	// serves many sockets, so it cannot wait as long as a socket's own
	// reader goroutine could.
	sendWait = 10 * time.Millisecond
	// wakeData marks the shutdown eventfd's events; no slot has this index.
	wakeData = int32(-1)
)

// Slot state bits, below the generation in the upper 32 bits.
const (
	slotBusy    = 1 << 0 // a worker is draining the socket
	slotPending = 1 << 1 // readiness arrived while busy: drain once more
	slotClosing = 1 << 2 // the socket is being closed (or the slot is free)
)

// pollSlot is one registry entry: a registered relay socket and the
// handshake that lets exactly one worker drain it at a time.
//
// state is gen<<32 | flags. The generation changes every time the slot is
// freed, and every epoll event carries the index and the generation of
// the registration it belongs to, so an event that was already fetched
// when its socket closed (and whose descriptor number the kernel may have
// given to a new socket since) fails the compare-and-swap that takes the
// slot and is dropped. k is written only while no worker can take the slot
// (before the generation is published, after the socket has stopped).
type pollSlot struct {
	state atomic.Uint64
	k     *relaySocket
}

func slotGen(s uint64) uint32 { return uint32(s >> 32) }

// acquire takes the slot for the event of generation gen. It fails when
// the event is stale, the socket closing, or another worker drains it
// (which is then told to drain once more, so the readiness is not lost).
func (sl *pollSlot) acquire(gen uint32) bool {
	for {
		s := sl.state.Load()
		switch {
		case slotGen(s) != gen || s&slotClosing != 0:
			return false
		case s&slotBusy != 0:
			if s&slotPending != 0 || sl.state.CompareAndSwap(s, s|slotPending) {
				return false
			}
		case sl.state.CompareAndSwap(s, s|slotBusy):
			return true
		}
	}
}

// release gives up a slot after a drain that ended with EAGAIN. It
// returns false when readiness arrived meanwhile: the caller keeps the
// slot and drains again. When the socket is closing, the holder is the
// last one inside it and reports it stopped.
func (sl *pollSlot) release() bool {
	for {
		s := sl.state.Load()
		switch {
		case s&slotClosing != 0:
			if sl.state.CompareAndSwap(s, s&^(slotBusy|slotPending)) {
				sl.k.stopped()
				return true
			}
		case s&slotPending != 0:
			if sl.state.CompareAndSwap(s, s&^slotPending) {
				return false
			}
		case sl.state.CompareAndSwap(s, s&^slotBusy):
			return true
		}
	}
}

// closing reports whether the socket of a held slot is being closed.
func (sl *pollSlot) closing() bool { return sl.state.Load()&slotClosing != 0 }

// poller reads the raw relay sockets of one Relay: a fixed set of worker
// goroutines wait in epoll_wait on one epoll instance, and each ready
// socket is drained with recvmmsg and forwarded by relaySocket.forward.
//
// Sockets are registered edge-triggered (EPOLLET) and handed between
// workers by the slot handshake (acquire/release): no syscall per wake
// beyond the reads themselves, where EPOLLONESHOT would need an
// epoll_ctl to re-arm after every drain. A drain reads until EAGAIN; an
// edge that arrives while a socket is drained sets slotPending, so the
// holder reads once more before it lets go, and nothing that arrived is
// left unread without a wake to come. A socket that still has datagrams
// after pollBudget batches stays held and goes to the back of its
// worker's queue; the worker then polls without blocking until its queue
// is empty. A read that fails with anything but EAGAIN (ENOMEM, ENOBUFS)
// keeps the slot held and is retried after a backoff of 1 ms doubling to
// 100 ms, so it never spins.
//
// Closing (stop, then free) never lets a worker near a reused descriptor:
// stop marks the slot closing, and the socket counts as stopped once no
// worker is inside it (relaySocket.stopped); only then does free close the
// descriptor and bump the generation. A worker sends on the peer socket
// of the one it drains; the session stops and waits for every socket of a
// stream before it closes any, so that descriptor is open too. The RTCP
// sockets of a stream are registered later than its RTP sockets, once RTP
// flows (see rtcpBinding), and only after both of them are bound.
//
// A socket closed while its worker waits out a read backoff counts as
// stopped when that wait ends, at most 100 ms later.
//
// Locking: mu guards the growth of table, vacant, used, stopped and the
// epoll_ctl calls (so that a registration never reaches an epoll
// descriptor that shutdown closed). Workers read the table without
// locking: it only grows, by swapping in a longer copy of its chunk list.
type poller struct {
	log     hclog.Logger
	epfd    int
	wakefd  int // eventfd, readable once shutdown starts
	workers sync.WaitGroup

	table atomic.Pointer[[]*[pollChunk]pollSlot]

	mu      sync.Mutex
	vacant  []uint32 // free slot indexes
	used    int      // registered sockets
	stopped bool
}

// pollWorkers is the number of poller goroutines: like the lanes of the
// goroutine-per-socket paths, all processors but one, so that SIP
// signaling always finds one even when every worker is busy forwarding.
func pollWorkers() int { return max(1, runtime.GOMAXPROCS(0)-1) }

func newPoller(log hclog.Logger, workers int) (*poller, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("media: start poller: %w", os.NewSyscallError("epoll_create1", err))
	}
	wakefd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(epfd)
		return nil, fmt.Errorf("media: start poller: %w", os.NewSyscallError("eventfd", err))
	}
	// Level-triggered: once written, every worker sees it.
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: wakeData}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, wakefd, &ev); err != nil {
		unix.Close(wakefd)
		unix.Close(epfd)
		return nil, fmt.Errorf("media: start poller: %w", os.NewSyscallError("epoll_ctl", err))
	}
	p := &poller{log: log, epfd: epfd, wakefd: wakefd}
	p.table.Store(new([]*[pollChunk]pollSlot))
	p.workers.Add(workers)
	for range workers {
		go p.work()
	}
	return p, nil
}

// slot returns the slot at index i, or nil when there is none.
func (p *poller) slot(i uint32) *pollSlot {
	t := *p.table.Load()
	if int(i/pollChunk) >= len(t) {
		return nil
	}
	return &t[i/pollChunk][i%pollChunk]
}

// register starts reading k's raw socket. Until stop, k may be drained by
// any worker at any time.
func (p *poller) register(k *relaySocket) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stopped {
		return fmt.Errorf("register %v: %w", k.local, ErrRelayClosed)
	}
	if len(p.vacant) == 0 {
		old := *p.table.Load()
		t := append(old[:len(old):len(old)], new([pollChunk]pollSlot))
		base := uint32(len(old) * pollChunk)
		for i := uint32(pollChunk); i > 0; i-- {
			t[len(old)][i-1].state.Store(slotClosing)
			p.vacant = append(p.vacant, base+i-1)
		}
		p.table.Store(&t)
	}
	i := p.vacant[len(p.vacant)-1]
	sl := p.slot(i)
	gen := slotGen(sl.state.Load())
	sl.k = k
	k.reg = pollReg{slot: sl, idx: i, gen: gen}
	k.done.Add(1)
	sl.state.Store(uint64(gen) << 32)
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLET, Fd: int32(i), Pad: int32(gen)}
	if err := unix.EpollCtl(p.epfd, unix.EPOLL_CTL_ADD, k.sock.fd, &ev); err != nil {
		// No event can name this generation: nobody else is inside.
		sl.state.Store(uint64(gen+1)<<32 | slotClosing)
		sl.k = nil
		k.reg = pollReg{}
		k.done.Done()
		return fmt.Errorf("register %v: %w", k.local, os.NewSyscallError("epoll_ctl", err))
	}
	p.vacant = p.vacant[:len(p.vacant)-1]
	p.used++
	k.sess.relay.reading.Add(1)
	return nil
}

// stop ends the reading of k: no worker takes its slot any more, and k
// counts as stopped (k.done) once the worker inside it, if any, has left.
// It is idempotent.
func (p *poller) stop(k *relaySocket) {
	sl := k.reg.slot
	if sl == nil {
		return
	}
	for {
		s := sl.state.Load()
		if slotGen(s) != k.reg.gen || s&slotClosing != 0 {
			return
		}
		if sl.state.CompareAndSwap(s, s|slotClosing) {
			if s&slotBusy == 0 {
				k.stopped()
			}
			return
		}
	}
}

// free closes k's socket and frees its slot. k must have stopped (k.done
// waited for); closing the descriptor also takes it out of the epoll set.
func (p *poller) free(k *relaySocket) {
	if sl := k.reg.slot; sl != nil {
		p.mu.Lock()
		sl.k = nil
		sl.state.Store(uint64(k.reg.gen+1)<<32 | slotClosing)
		p.vacant = append(p.vacant, k.reg.idx)
		p.used--
		p.mu.Unlock()
		k.reg = pollReg{}
	}
	k.sock.Close()
}

// registered returns the number of registered sockets.
func (p *poller) registered() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.used
}

// shutdown stops the workers and closes the epoll instance. Sockets still
// registered (none, once every session is closed) are left to their
// sessions, which stop and free them as usual.
func (p *poller) shutdown() {
	p.mu.Lock()
	if p.stopped {
		p.mu.Unlock()
		return
	}
	p.stopped = true
	one := [8]byte{1}
	if _, err := unix.Write(p.wakefd, one[:]); err != nil {
		p.log.Error("wake media poller", "error", err)
	}
	p.mu.Unlock()
	p.workers.Wait()
	p.mu.Lock()
	unix.Close(p.epfd)
	unix.Close(p.wakefd)
	p.mu.Unlock()
}

// pollReg is what a relay socket knows of its registration: its slot,
// the slot's index and the generation its events carry. The backoff of
// failing reads belongs to the worker holding the slot.
type pollReg struct {
	slot    *pollSlot
	idx     uint32
	gen     uint32
	backoff time.Duration
}

// pollWorker is one poller goroutine's state: its batch of buffers, the
// sockets it holds between turns and the view forward reads and sends
// through.
type pollWorker struct {
	p      *poller
	io     pollIO
	fwd    [][]byte
	queue  []*pollSlot // held, with datagrams left after their budget
	next   []*pollSlot
	retry  []pollRetry // held, after a failed read
	retry2 []pollRetry
}

type pollRetry struct {
	sl *pollSlot
	at time.Time
}

// work is a poller goroutine. It returns once shutdown wakes it.
func (p *poller) work() {
	defer p.workers.Done()
	w := &pollWorker{p: p, io: pollIO{b: newMmsgBatch()}, fwd: make([][]byte, 0, mmsgBatchLen)}
	defer w.letGo()
	events := make([]unix.EpollEvent, pollEvents)
	var failing bool
	for {
		timeout := -1
		switch {
		case len(w.queue) > 0:
			timeout = 0
		case len(w.retry) > 0:
			at := w.retry[0].at
			for _, r := range w.retry[1:] {
				if r.at.Before(at) {
					at = r.at
				}
			}
			timeout = max(0, int((time.Until(at)+time.Millisecond-1)/time.Millisecond))
		}
		n, err := unix.EpollWait(p.epfd, events, timeout)
		if err != nil {
			if err == unix.EINTR {
				continue
			}
			// Cannot happen with a valid epoll descriptor; never spin.
			if !failing {
				p.log.Error("media poller wait failed", "error", err)
			}
			failing = true
			time.Sleep(10 * time.Millisecond)
			continue
		}
		failing = false
		for _, ev := range events[:n] {
			if ev.Fd == wakeData {
				return
			}
			if sl := p.slot(uint32(ev.Fd)); sl != nil && sl.acquire(uint32(ev.Pad)) {
				w.turn(sl)
			}
		}
		if len(w.queue) > 0 {
			cur := w.queue
			w.queue = w.next[:0]
			for _, sl := range cur {
				w.turn(sl)
			}
			clear(cur)
			w.next = cur[:0]
		}
		if len(w.retry) > 0 {
			now := time.Now()
			cur := w.retry
			w.retry = w.retry2[:0]
			for _, r := range cur {
				if r.at.After(now) && !r.sl.closing() {
					w.retry = append(w.retry, r)
				} else {
					w.turn(r.sl)
				}
			}
			clear(cur)
			w.retry2 = cur[:0]
		}
	}
}

// turn drains a held socket for at most pollBudget batches and then lets
// it go (EAGAIN), queues it (budget spent) or schedules a retry (read
// failed). A closing socket is let go at once.
func (w *pollWorker) turn(sl *pollSlot) {
	k := sl.k
	for range pollBudget {
		if sl.closing() {
			sl.release()
			return
		}
		n, errno := recvmmsg(uintptr(k.sock.fd), w.io.b)
		switch errno {
		case 0:
			k.reg.backoff = 0
			w.io.peer = k.peer.sock.fd
			w.io.family = unix.AF_INET6
			if k.peer.local.Addr().Is4() {
				w.io.family = unix.AF_INET
			}
			k.forward(&w.io, n, w.fwd)
		case unix.EAGAIN:
			if sl.release() {
				return
			}
		default:
			// Transient kernel errors (ENOMEM, ENOBUFS) must not spin a
			// core: retry later, backing off.
			if k.reg.backoff == 0 {
				k.sess.log.Debug("read failed", "side", k.side, "stream", k.index, "component", k.comp,
					"error", os.NewSyscallError("recvmmsg", errno))
			}
			k.reg.backoff = min(max(2*k.reg.backoff, time.Millisecond), 100*time.Millisecond)
			w.retry = append(w.retry, pollRetry{sl: sl, at: time.Now().Add(k.reg.backoff)})
			return
		}
	}
	w.queue = append(w.queue, sl)
}

// letGo gives back every slot the worker holds when it exits.
func (w *pollWorker) letGo() {
	for _, sl := range w.queue {
		sl.drop()
	}
	for _, r := range w.retry {
		r.sl.drop()
	}
}

// drop lets go of a held slot without draining it: the poller is shutting
// down.
func (sl *pollSlot) drop() {
	for {
		s := sl.state.Load()
		if sl.state.CompareAndSwap(s, s&^(slotBusy|slotPending)) {
			if s&slotClosing != 0 {
				sl.k.stopped()
			}
			return
		}
	}
}

// pollIO is the batchView of a poller worker: the datagrams of its last
// recvmmsg, sent out of the peer socket of the socket it drains.
type pollIO struct {
	b      *mmsgBatch
	peer   int    // peer socket's descriptor
	family uint16 // peer socket's address family
	pfd    [1]unix.PollFd
}

func (x *pollIO) datagram(i int) ([]byte, netip.AddrPort, bool) { return x.b.datagram(i) }

// send writes pkts with sendmmsg. A datagram the kernel refuses is
// skipped; a send buffer that stays full for sendWait drops the rest
// of the batch.
func (x *pollIO) send(pkts [][]byte, dst netip.AddrPort) (int, int, error) {
	n, ok := x.b.prepareTx(pkts, x.family, dst)
	if !ok {
		return 0, 0, errFamily
	}
	pkts = pkts[:n]
	var sent, bytes int
	var first error
	waited := false
	// Every round moves off forward by at least one datagram, or ends.
	for off := 0; off < len(pkts); {
		k, errno := sendmmsg(uintptr(x.peer), x.b, off, len(pkts)-off)
		switch {
		case errno == unix.EAGAIN && !waited:
			waited = true
			x.pfd[0] = unix.PollFd{Fd: int32(x.peer), Events: unix.POLLOUT}
			_, _ = unix.Poll(x.pfd[:], int(sendWait/time.Millisecond))
			continue
		case errno == unix.EAGAIN:
			if first == nil {
				first = os.NewSyscallError("sendmmsg", errno)
			}
			return sent, bytes, first
		case errno != 0:
			if first == nil {
				first = os.NewSyscallError("sendmmsg", errno)
			}
			off++ // skip the datagram the kernel refused
			continue
		}
		k = max(0, min(k, len(pkts)-off))
		if k == 0 {
			break // no progress and no error: never spin
		}
		for _, p := range pkts[off : off+k] {
			bytes += len(p)
		}
		sent += k
		off += k
	}
	return sent, bytes, first
}
