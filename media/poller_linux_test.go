//go:build linux

package media

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// newPollRelay is a relay on the epoll path with workers poller goroutines,
// more than GOMAXPROCS-1 so that workers race each other for sockets.
func newPollRelay(t testing.TB, workers int, mod func(*Config)) *Relay {
	t.Helper()
	return newTestRelay(t, ioEpoll, func(c *Config) {
		c.workers = workers
		if mod != nil {
			mod(c)
		}
	})
}

// openFDs counts the descriptors of the process.
func openFDs(t testing.TB) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("count descriptors: %v", err)
	}
	return len(ents)
}

// blast sends n copies of pkt from c to dst, unpaced, and reports the
// first error to t (from any goroutine).
func blast(t testing.TB, c *net.UDPConn, dst netip.AddrPort, pkt []byte, n int) {
	for range n {
		if _, err := c.WriteToUDPAddrPort(pkt, dst); err != nil {
			if !errors.Is(err, net.ErrClosed) {
				t.Errorf("send to %v: %v", dst, err)
			}
			return
		}
	}
}

func TestPollSlotHandshake(t *testing.T) {
	r := newPollRelay(t, 1, nil)
	s := newSession(r, "handshake", Address{Bind: relayA}, Address{Bind: relayB})
	var done sync.WaitGroup
	k := &relaySocket{sess: s, done: &done}
	var sl pollSlot
	const gen = 7
	sl.k = k
	k.reg = pollReg{slot: &sl, gen: gen}
	done.Add(1)
	r.reading.Add(1)
	sl.state.Store(uint64(gen) << 32)

	if sl.acquire(gen - 1) {
		t.Fatal("acquire with a stale generation succeeded")
	}
	if !sl.acquire(gen) {
		t.Fatal("acquire of an idle slot failed")
	}
	if sl.acquire(gen) {
		t.Fatal("second acquire of a busy slot succeeded: two workers in one socket")
	}
	if sl.release() {
		t.Fatal("release after an edge arrived while busy let go: that edge would be lost")
	}
	if !sl.release() {
		t.Fatal("release without a pending edge kept the slot")
	}
	if !sl.acquire(gen) {
		t.Fatal("acquire after release failed")
	}
	r.poll.stop(k)
	if got := r.reading.Load(); got != 1 {
		t.Fatalf("socket counted stopped (reading %d) while a worker is inside it", got)
	}
	if sl.acquire(gen) {
		t.Fatal("acquire of a closing slot succeeded")
	}
	if !sl.release() {
		t.Fatal("release of a closing slot kept it")
	}
	if got := r.reading.Load(); got != 0 {
		t.Fatalf("reading %d after the last worker left a closing socket, want 0", got)
	}
	done.Wait()
	r.poll.stop(k) // idempotent: no second Done
}

// TestPollerManySockets runs traffic through many calls at once, every
// direction and component, with more workers than processors.
func TestPollerManySockets(t *testing.T) {
	const (
		calls = 24
		rtp   = 40
		rtcp  = 5
	)
	base := runtime.NumGoroutine()
	r := newPollRelay(t, 4, nil)
	cs := make([]*call, calls)
	for i := range cs {
		cs[i] = setupCall(t, r, SessionID(fmt.Sprintf("call-many-%d", i)))
	}
	// Before RTP only the RTP sockets are read; the first packet of each
	// call brings its RTCP sockets.
	if got, want := r.poll.registered(), 2*calls; got != want || r.reading.Load() != int64(want) {
		t.Fatalf("registered %d, reading %d before RTP; want %d", got, r.reading.Load(), want)
	}
	pktA, pktB := rtpPacket(t, 0, 1, 0xA), rtpPacket(t, 0, 1, 0xB)
	for _, c := range cs {
		sendTo(t, c.a.rtp, c.toA, pktA)
		if got := collect(c.b.rtp, 1, 5*time.Second, 0); len(got) != 1 {
			t.Fatalf("%s: first RTP: B got %d packets, want 1", c.id, len(got))
		}
		waitRTCP(t, r, c.id, 0)
	}
	if got, want := r.poll.registered(), 4*calls; got != want || r.reading.Load() != int64(want) {
		t.Fatalf("registered %d, reading %d once RTP flowed; want %d", got, r.reading.Load(), want)
	}
	var wg sync.WaitGroup
	got := make([][4]int, calls) // rtp at B, rtp at A, rtcp at B, rtcp at A
	for i, c := range cs {
		type leg struct {
			from, to *net.UDPConn
			dst      netip.AddrPort
			pkt      []byte
			n        int
			slot     int
		}
		legs := []leg{
			{c.a.rtp, c.b.rtp, c.toA, pktA, rtp, 0},
			{c.b.rtp, c.a.rtp, c.toB, pktB, rtp, 1},
			{c.a.rtcp, c.b.rtcp, c.toARTCP, rtcpPacket(uint32(i)), rtcp, 2},
			{c.b.rtcp, c.a.rtcp, c.toBRTCP, rtcpPacket(uint32(i)), rtcp, 3},
		}
		for _, l := range legs {
			wg.Add(2)
			go func() {
				defer wg.Done()
				got[i][l.slot] = len(collect(l.to, l.n, 10*time.Second, 20*time.Millisecond))
			}()
			go func() {
				defer wg.Done()
				for j := range l.n {
					if _, err := l.from.WriteToUDPAddrPort(l.pkt, l.dst); err != nil {
						t.Errorf("send: %v", err)
						return
					}
					if j%8 == 7 {
						time.Sleep(time.Millisecond) // pace: never overrun loopback buffers
					}
				}
			}()
		}
	}
	wg.Wait()
	for i, c := range cs {
		if got[i] != [4]int{rtp, rtp, rtcp, rtcp} {
			t.Errorf("%s: received %v, want [%d %d %d %d]", c.id, got[i], rtp, rtp, rtcp, rtcp)
		}
		st, _ := r.Stats(c.id)
		checkAccounting(t, st)
		if f := st.Streams[0].Sides[A].RTP; f.Forwarded != rtp+1 || f.Packets != rtp+1 {
			t.Errorf("%s: side A RTP %+v, want %d forwarded", c.id, f, rtp+1)
		}
	}
	for _, c := range cs {
		r.Close(c.id, "bye")
	}
	if r.poll.registered() != 0 || r.reading.Load() != 0 {
		t.Errorf("after closing every call: registered %d, reading %d; want 0, 0", r.poll.registered(), r.reading.Load())
	}
	r.Shutdown()
	waitGoroutines(t, base)
}

// TestPollerCloseWhileTrafficFlows closes calls while their phones and a
// stranger keep sending, in a port range so small that every call reuses
// the ports (and descriptor numbers) of one closed a moment before. A
// closed call's counters must never move again: a worker that read or
// forwarded on a recycled descriptor through the old socket would count
// there.
func TestPollerCloseWhileTrafficFlows(t *testing.T) {
	base := runtime.NumGoroutine()
	lo, _ := testPortRange(8)
	r := newPollRelay(t, 3, func(c *Config) {
		c.PortMin, c.PortMax = lo, lo+7
		c.Quarantine = time.Nanosecond
	})
	a, b := newPhone(t, phoneAIP, false), newPhone(t, phoneBIP, true)
	stranger, err := listen(t, strangeIP, 0)
	if err != nil {
		t.Fatal(err)
	}
	strangePkt := []byte("stranger")
	stop := make(chan struct{})
	var bg sync.WaitGroup
	bg.Add(1)
	go func() { // the stranger sprays every port of the range
		defer bg.Done()
		for {
			for port := lo; port <= lo+7; port++ {
				select {
				case <-stop:
					return
				default:
				}
				for _, ip := range []netip.Addr{relayA, relayB} {
					stranger.WriteToUDPAddrPort(strangePkt, netip.AddrPortFrom(ip, uint16(port)))
				}
			}
			time.Sleep(100 * time.Microsecond)
		}
	}()
	received := make(chan []byte, 1024)
	for _, c := range []*net.UDPConn{a.rtp, b.rtp} {
		bg.Add(1)
		go func() {
			defer bg.Done()
			buf := make([]byte, 2048)
			for {
				c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
				n, _, err := c.ReadFromUDPAddrPort(buf)
				select {
				case <-stop:
					return
				default:
				}
				if err == nil {
					select {
					case received <- append([]byte(nil), buf[:n]...):
					default:
					}
				}
			}
		}()
	}

	type closed struct {
		s     *session
		final Stats
	}
	var ended []closed
	pktA, pktB := rtpPacket(t, 0, 1, 0xA), rtpPacket(t, 0, 2, 0xB)
	for i := range 30 {
		id := SessionID(fmt.Sprintf("call-churn-%d", i))
		openCall(t, r, id)
		offer, err := r.Offer(id, A, a.sdp(1))
		if err != nil {
			t.Fatal(err)
		}
		answer, err := r.Answer(id, B, b.sdp(1))
		if err != nil {
			t.Fatal(err)
		}
		toB, _ := anchorOf(t, offer, 0)
		toA, _ := anchorOf(t, answer, 0)
		s := r.session(id)
		var senders sync.WaitGroup
		senders.Add(2)
		go func() { defer senders.Done(); blast(t, a.rtp, toA, pktA, 200) }()
		go func() { defer senders.Done(); blast(t, b.rtp, toB, pktB, 200) }()
		time.Sleep(time.Duration(i%4) * time.Millisecond)
		st, ok := r.Close(id, "bye")
		if !ok {
			t.Fatalf("Close(%s) = false", id)
		}
		checkAccounting(t, st)
		ended = append(ended, closed{s, st})
		senders.Wait()
	}
	close(stop)
	bg.Wait()
	close(received)
	for p := range received {
		if !bytes.Equal(p, pktA) && !bytes.Equal(p, pktB) {
			t.Errorf("a phone received %q: only the other phone's packets may be forwarded", p)
			break
		}
	}
	for _, e := range ended {
		if now := e.s.stats(); fmt.Sprint(now) != fmt.Sprint(e.final) {
			t.Errorf("%s counted after Close:\n at close %+v\n now      %+v", e.final.ID, e.final, now)
		}
	}
	if r.poll.registered() != 0 || r.reading.Load() != 0 || r.pool.Allocated() != 0 {
		t.Errorf("registered %d, reading %d, allocated %d; want 0, 0, 0",
			r.poll.registered(), r.reading.Load(), r.pool.Allocated())
	}
	r.Shutdown()
	waitGoroutines(t, base)
}

// TestPollerDescriptorReuse closes a call and opens another whose sockets
// get the same descriptor numbers and registry slots: an event of the old
// registration, fetched before the close, must not reach the new socket,
// and the new call must relay normally.
func TestPollerDescriptorReuse(t *testing.T) {
	r := newPollRelay(t, 2, nil)
	a, b := newPhone(t, phoneAIP, false), newPhone(t, phoneBIP, true)
	open := func(id SessionID) (toA netip.AddrPort, ks []*relaySocket) {
		t.Helper()
		openCall(t, r, id)
		if _, err := r.Offer(id, A, a.sdp(1)); err != nil {
			t.Fatal(err)
		}
		answer, err := r.Answer(id, B, b.sdp(1))
		if err != nil {
			t.Fatal(err)
		}
		toA, _ = anchorOf(t, answer, 0)
		s := r.session(id)
		s.mu.Lock()
		defer s.mu.Unlock()
		for _, ep := range s.streams[0].eps {
			for _, k := range ep.socks {
				// Registered sockets only: the RTCP sockets wait for RTP
				// (see rtcpBinding), which the RTP sent below brings on
				// the binder's goroutine.
				if k.reg.slot != nil {
					ks = append(ks, k)
				}
			}
		}
		if len(ks) == 0 {
			t.Fatalf("%s: no socket registered", id)
		}
		return toA, ks
	}
	_, old := open("call-old")
	type reg struct {
		fd       int
		idx, gen uint32
	}
	olds := map[int]reg{}
	for _, k := range old {
		olds[k.sock.fd] = reg{k.sock.fd, k.reg.idx, k.reg.gen}
	}
	oldFinal, _ := r.Close("call-old", "bye")

	toA, fresh := open("call-new")
	reused := 0
	for _, k := range fresh {
		o, ok := olds[k.sock.fd]
		if !ok {
			continue
		}
		reused++
		sl := r.poll.slot(o.idx)
		if sl.acquire(o.gen) {
			sl.release()
			t.Errorf("an event of the closed socket on fd %d (slot %d gen %d) took the slot of %v", o.fd, o.idx, o.gen, k.local)
		}
	}
	if reused == 0 {
		t.Skip("the kernel gave the new sockets other descriptor numbers; nothing to check")
	}
	if k := fresh[0]; r.poll.slot(k.reg.idx) != k.reg.slot {
		t.Errorf("slot %d does not lead to its socket's slot", k.reg.idx)
	}
	sendTo(t, a.rtp, toA, rtpPacket(t, 0, 1, 1))
	if got := collect(b.rtp, 1, 5*time.Second, 20*time.Millisecond); len(got) != 1 {
		t.Fatalf("new call on reused descriptors: B got %d packets, want 1", len(got))
	}
	if f := flow(t, r, "call-new", 0, A, compRTP); f.Forwarded != 1 {
		t.Errorf("new call: %+v, want 1 forwarded", f)
	}
	if f := oldFinal.Streams[0].Sides[A].RTP; f.Packets != 0 {
		t.Errorf("old call counted %d packets", f.Packets)
	}
}

// TestPollerShutdownWithSocketsRegistered shuts the relay down under
// traffic without closing its calls first: every worker exits, every
// descriptor is closed and nothing stays registered.
func TestPollerShutdownWithSocketsRegistered(t *testing.T) {
	base := runtime.NumGoroutine()
	var phones [2]*phone
	phones[A], phones[B] = newPhone(t, phoneAIP, false), newPhone(t, phoneBIP, true)
	fds := openFDs(t)
	r := newPollRelay(t, 3, nil)
	var toA []netip.AddrPort
	for i := range 5 {
		id := SessionID(fmt.Sprintf("call-down-%d", i))
		openCall(t, r, id)
		if _, err := r.Offer(id, A, phones[A].sdp(1)); err != nil {
			t.Fatal(err)
		}
		answer, err := r.Answer(id, B, phones[B].sdp(1))
		if err != nil {
			t.Fatal(err)
		}
		ap, _ := anchorOf(t, answer, 0)
		toA = append(toA, ap)
	}
	if got := openFDs(t); got != fds+2+5*2 {
		t.Errorf("descriptors: %d, want %d (epoll and eventfd, and 2 RTP sockets per call)", got, fds+2+5*2)
	}
	var senders sync.WaitGroup
	for _, ap := range toA {
		senders.Add(1)
		go func() { defer senders.Done(); blast(t, phones[A].rtp, ap, rtpPacket(t, 0, 1, 1), 300) }()
	}
	collect(phones[B].rtp, 1, 5*time.Second, 0) // traffic flows
	// RTP latched on every call: their RTCP sockets are bound and read too,
	// and Shutdown closes them as well.
	eventually(t, "the RTCP sockets of every call to be read", func() bool { return r.poll.registered() == 5*4 })
	if got := openFDs(t); got != fds+2+5*4 {
		t.Errorf("descriptors once RTP flowed: %d, want %d (4 sockets per call)", got, fds+2+5*4)
	}
	r.Shutdown()
	senders.Wait()
	if r.poll.registered() != 0 || r.reading.Load() != 0 || r.Sessions() != 0 {
		t.Errorf("after Shutdown: registered %d, reading %d, sessions %d; want 0",
			r.poll.registered(), r.reading.Load(), r.Sessions())
	}
	if got := openFDs(t); got != fds {
		t.Errorf("descriptors after Shutdown: %d, want %d", got, fds)
	}
	if err := r.Open("late", Address{Bind: relayA}, Address{Bind: relayB}); !errors.Is(err, ErrRelayClosed) {
		t.Errorf("Open after Shutdown: %v, want ErrRelayClosed", err)
	}
	waitGoroutines(t, base)
}

// TestPollerFailingSocket registers a descriptor that is readable but that
// recvmmsg refuses (an eventfd: ENOTSOCK), as a socket failing with
// ENOMEM would be: the only worker must keep serving other sockets while
// it retries that one with a backoff, and closing it must end.
func TestPollerFailingSocket(t *testing.T) {
	base := runtime.NumGoroutine()
	r := newPollRelay(t, 1, nil)
	efd, err := unix.Eventfd(1, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		t.Fatal(err)
	}
	s := newSession(r, "failing", Address{Bind: relayA}, Address{Bind: relayB})
	var done sync.WaitGroup
	bad := &relaySocket{sess: s, sock: Socket{fd: efd}, done: &done}
	bad.peer = bad
	if err := r.poll.register(bad); err != nil {
		t.Fatal(err)
	}

	c := setupCall(t, r, "call-beside")
	for seq := range uint16(5) {
		sendTo(t, c.a.rtp, c.toA, rtpPacket(t, 0, seq, 1))
		if got := collect(c.b.rtp, 1, 5*time.Second, 0); len(got) != 1 {
			t.Fatalf("packet %d beside a failing socket: B got %d, want 1", seq, len(got))
		}
	}

	r.poll.stop(bad)
	done.Wait()
	r.poll.free(bad)
	if bad.sock.fd != -1 {
		t.Errorf("failing socket not closed: fd %d", bad.sock.fd)
	}
	r.Close(c.id, "bye")
	if r.poll.registered() != 0 || r.reading.Load() != 0 {
		t.Errorf("registered %d, reading %d; want 0, 0", r.poll.registered(), r.reading.Load())
	}
	r.Shutdown()
	waitGoroutines(t, base)
}

// parkedInWait reports whether a goroutine is blocked in a WaitGroup.Wait
// called from the function fn (a method name such as "dropUnstarted").
func parkedInWait(fn string) bool {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	for _, g := range strings.Split(string(buf), "\n\n") {
		head, _, _ := strings.Cut(g, "\n")
		parked := strings.Contains(head, "[sync.WaitGroup.Wait") || strings.Contains(head, "[semacquire")
		if parked && strings.Contains(g, "sync.(*WaitGroup).Wait(") && strings.Contains(g, "."+fn+"(") {
			return true
		}
	}
	return false
}

// TestPollerDropUnstartedWaitsForWholeStream drops the endpoints of a
// stream that was never started (an offer that failed after its ports were
// bound) while a worker is inside a socket of side B. That worker sends out
// of the socket's peer on side A, so no socket of the stream may be closed
// before it has left: a closed descriptor number can belong to a new
// socket by then.
func TestPollerDropUnstartedWaitsForWholeStream(t *testing.T) {
	r := newPollRelay(t, 1, nil)
	s := newSession(r, "drop-unstarted", Address{Bind: relayA}, Address{Bind: relayB})
	eps, err := s.allocate(0)
	if err != nil {
		t.Fatal(err)
	}
	kA, kB := eps[A].socks[compRTP], eps[B].socks[compRTP]
	fdA := kA.sock.fd
	// Be the worker draining kB: nothing was sent to the new ports, so no
	// real worker holds its slot.
	sl := kB.reg.slot
	if !sl.acquire(kB.reg.gen) {
		t.Fatal("the slot of an idle socket could not be taken")
	}
	dropped := make(chan struct{})
	go func() {
		defer close(dropped)
		s.dropUnstarted(eps)
	}()
	eventually(t, "dropUnstarted to wait for the worker", func() bool { return parkedInWait("dropUnstarted") })

	// What the worker does next: send out of the peer socket.
	if fd := kB.peer.sock.fd; fd != fdA {
		t.Errorf("peer descriptor %d while a worker is inside its stream, want %d (still open)", fd, fdA)
	} else if sa, err := unix.Getsockname(fd); err != nil {
		t.Errorf("peer descriptor %d closed while a worker is inside its stream: %v", fd, err)
	} else if in4, ok := sa.(*unix.SockaddrInet4); !ok || in4.Port != int(kA.local.Port()) {
		t.Errorf("peer descriptor %d is bound to %v, want port %d", fd, sa, kA.local.Port())
	}
	if !sl.release() {
		t.Fatal("release of a closing slot kept it")
	}
	<-dropped
	for _, ep := range eps {
		for _, k := range ep.socks {
			if k.sock.fd != -1 {
				t.Errorf("%v not closed: fd %d", k.local, k.sock.fd)
			}
		}
	}
	if r.poll.registered() != 0 || r.reading.Load() != 0 || r.pool.Allocated() != 0 {
		t.Errorf("registered %d, reading %d, allocated %d; want 0, 0, 0",
			r.poll.registered(), r.reading.Load(), r.pool.Allocated())
	}
}

// registeredSocket returns the relay socket registered with r's poller
// that is bound to local, or nil.
func registeredSocket(r *Relay, local netip.AddrPort) *relaySocket {
	r.poll.mu.Lock()
	defer r.poll.mu.Unlock()
	for _, chunk := range *r.poll.table.Load() {
		for i := range chunk {
			if k := chunk[i].k; k != nil && k.local == local {
				return k
			}
		}
	}
	return nil
}

// TestPollerRestoreHeldCallNotOffloaded restores a held call whose sides
// are latched while side B keeps sending RTCP, as phones on hold do. The
// poller reads a socket from the moment it is registered, before Restore
// has set up the stream's links: a datagram forwarded then must already
// find them held, since a held call is never offloaded.
func TestPollerRestoreHeldCallNotOffloaded(t *testing.T) {
	a, b := newPhone(t, phoneAIP, false), newPhone(t, phoneBIP, false)
	fake := newFakeOffloader()
	var lo int
	r := newPollRelay(t, 1, func(c *Config) {
		c.Offloader = fake
		lo = c.PortMin
	})
	latched := func(c *net.UDPConn) RemoteState { return RemoteState{Expected: addrOf(c), Latched: addrOf(c)} }
	toBRTCP := netip.AddrPortFrom(relayB, uint16(lo+3))
	// The RTP flow was in the kernel before the restart and is gone now:
	// Adopt is asked about it and finds nothing.
	gone := Flow{Src: addrOf(a.rtp), Local: netip.AddrPortFrom(relayA, uint16(lo)),
		Out: netip.AddrPortFrom(relayB, uint16(lo+2)), Dst: addrOf(b.rtp)}
	state := SessionState{
		ID:     "call-restore-held",
		Addrs:  [2]Address{{Bind: relayA}, {Bind: relayB}},
		Known:  [2]bool{true, true},
		Duplex: [2]bool{true, false}, // B holds
		Streams: []StreamState{{
			Kind:  "audio",
			Ports: [2]int{lo, lo + 2},
			Remote: [2][2]RemoteState{
				A: {latched(a.rtp), latched(a.rtcp)},
				B: {latched(b.rtp), latched(b.rtcp)},
			},
			Kernel: [2]*Flow{compRTP: &gone},
		}},
	}
	adopts := 0
	fake.onAdopt = func(Flow) {
		// Restore has registered the sockets and not started the stream:
		// B's RTCP arrives now, and a worker reads it at once.
		adopts++
		k := registeredSocket(r, toBRTCP)
		if k == nil {
			t.Fatalf("no socket registered on %v while restoring", toBRTCP)
		}
		sendTo(t, b.rtcp, toBRTCP, rtcpPacket(1))
		eventually(t, "B's RTCP to be read", func() bool {
			// The worker has let go of the socket after counting the
			// datagram: whatever forwarding it did is over.
			return k.c.packets.Load() == 1 && k.reg.slot.state.Load()&slotBusy == 0
		})
	}
	if err := r.Restore(state); err != nil {
		t.Fatalf("Restore: %v", err)
	}
	if adopts != 1 {
		t.Fatalf("Adopt called %d times, want 1", adopts)
	}
	if off, _ := fake.calls(); len(off) != 0 {
		t.Errorf("held call offloaded while it was restored: %v", off)
	}
	// The restored call relays (in userspace: it is held).
	sendTo(t, b.rtcp, toBRTCP, rtcpPacket(2))
	if got := collect(a.rtcp, 1, 5*time.Second, 0); len(got) != 1 {
		t.Fatalf("after restore, B to A RTCP: %d packets, want 1", len(got))
	}
	if off, _ := fake.calls(); len(off) != 0 {
		t.Errorf("held call offloaded: %v", off)
	}
}
