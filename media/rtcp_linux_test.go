//go:build linux

package media

import (
	"errors"
	"fmt"
	"net/netip"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"
)

// callWith opens id on r and runs an offer from phone a and an answer from
// phone b, like setupCall with phones of the caller's.
func callWith(t testing.TB, r *Relay, id SessionID, a, b *phone) *call {
	t.Helper()
	c := &call{id: id, a: a, b: b}
	openCall(t, r, id)
	var err error
	if c.offer, err = r.Offer(id, A, a.sdp(1)); err != nil {
		t.Fatalf("Offer: %v", err)
	}
	c.toB, c.toBRTCP = anchorOf(t, c.offer, 0)
	if c.answer, err = r.Answer(id, B, b.sdp(1)); err != nil {
		t.Fatalf("Answer: %v", err)
	}
	c.toA, c.toARTCP = anchorOf(t, c.answer, 0)
	return c
}

// portFree reports whether ap can be bound (and closes what it bound):
// true when no relay socket holds it.
func portFree(t testing.TB, ap netip.AddrPort) bool {
	t.Helper()
	c, err := listen(t, ap.Addr(), int(ap.Port()))
	if err != nil {
		if !errors.Is(err, syscall.EADDRINUSE) {
			t.Fatalf("bind %v: %v", ap, err)
		}
		return false
	}
	c.Close()
	return true
}

// rtcpBindingOf returns the pending RTCP binding of stream i of id.
func rtcpBindingOf(t testing.TB, r *Relay, id SessionID, i int) *rtcpBinding {
	t.Helper()
	s := r.session(id)
	s.mu.Lock()
	defer s.mu.Unlock()
	b := s.streams[i].eps[A].socks[compRTP].rtcp
	if b == nil || b != s.streams[i].eps[B].socks[compRTP].rtcp {
		t.Fatalf("stream %d of %s: RTP sockets share no RTCP binding", i, id)
	}
	return b
}

// TestLazyRTCPBoundWhenRTPFlows: a call that carries no RTP holds its two
// RTP sockets and leaves both RTCP ports unbound (yet reserved in the
// pool); RTP from one side alone brings both RTCP sockets, and RTCP from
// both phones is then relayed end to end.
func TestLazyRTCPBoundWhenRTPFlows(t *testing.T) {
	base := runtime.NumGoroutine()
	a, b := newPhone(t, phoneAIP, false), newPhone(t, phoneBIP, true)
	fds := openFDs(t)
	r := newPollRelay(t, 2, nil)
	relayFDs := openFDs(t) - fds // epoll instance and eventfd
	c := callWith(t, r, "call-lazy", a, b)

	if got := r.poll.registered(); got != 2 || r.reading.Load() != 2 {
		t.Fatalf("before RTP: registered %d, reading %d; want 2, 2 (the RTP sockets)", got, r.reading.Load())
	}
	if got := openFDs(t); got != fds+relayFDs+2 {
		t.Errorf("before RTP: %d descriptors, want %d (two sockets for the call)", got, fds+relayFDs+2)
	}
	if n := rtcpBound(t, r, c.id, 0); n != 0 {
		t.Errorf("before RTP: %d RTCP sockets bound, want 0", n)
	}
	for _, ap := range []netip.AddrPort{c.toARTCP, c.toBRTCP} {
		if !portFree(t, ap) {
			t.Errorf("RTCP port %v is bound before any RTP", ap)
		}
	}
	if r.pool.Allocated() != 2 {
		t.Errorf("Allocated %d, want 2: the pool holds both pairs whole", r.pool.Allocated())
	}
	// Until RTCP is bound its flows still report where they will be.
	if f := flow(t, r, c.id, 0, A, compRTCP); f.Local != c.toARTCP || f.Expected != addrOf(a.rtcp) || f.Packets != 0 {
		t.Errorf("side A RTCP before RTP: %+v, want local %v expecting %v", f, c.toARTCP, addrOf(a.rtcp))
	}

	// RTP from A only: its latch asks for both sides' RTCP.
	sendTo(t, a.rtp, c.toA, rtpPacket(t, 0, 1, 0xA))
	if got := collect(b.rtp, 1, 5*time.Second, 0); len(got) != 1 {
		t.Fatalf("B got %d RTP packets, want 1", len(got))
	}
	waitRTCP(t, r, c.id, 0)
	if got := r.poll.registered(); got != 4 || r.reading.Load() != 4 {
		t.Errorf("after RTP: registered %d, reading %d; want 4, 4", got, r.reading.Load())
	}
	if got := openFDs(t); got != fds+relayFDs+4 {
		t.Errorf("after RTP: %d descriptors, want %d (four sockets for the call)", got, fds+relayFDs+4)
	}
	for _, ap := range []netip.AddrPort{c.toARTCP, c.toBRTCP} {
		if portFree(t, ap) {
			t.Errorf("RTCP port %v is not bound once RTP flowed", ap)
		}
	}

	var wg sync.WaitGroup
	var rtcpAtA, rtcpAtB []datagram
	wg.Add(2)
	go func() { defer wg.Done(); rtcpAtB = collect(b.rtcp, 5, 10*time.Second, 100*time.Millisecond) }()
	go func() { defer wg.Done(); rtcpAtA = collect(a.rtcp, 5, 10*time.Second, 100*time.Millisecond) }()
	for i := range 5 {
		sendTo(t, a.rtcp, c.toARTCP, rtcpPacket(0xA0+uint32(i)))
		sendTo(t, b.rtcp, c.toBRTCP, rtcpPacket(0xB0+uint32(i)))
	}
	wg.Wait()
	checkRTCP(t, "A→B", rtcpAtB, 0xA0, c.toBRTCP)
	checkRTCP(t, "B→A", rtcpAtA, 0xB0, c.toARTCP)
	st, _ := r.Stats(c.id)
	checkAccounting(t, st)
	for side, e := range st.Streams[0].Sides {
		if e.RTCP.Forwarded != 5 {
			t.Errorf("side %v RTCP forwarded %d, want 5", Side(side), e.RTCP.Forwarded)
		}
	}
	if n := r.RTCPBindFailed(); n != 0 {
		t.Errorf("RTCPBindFailed %d, want 0", n)
	}

	r.Close(c.id, "bye")
	if r.poll.registered() != 0 || r.reading.Load() != 0 || r.pool.Allocated() != 0 {
		t.Errorf("after Close: registered %d, reading %d, allocated %d; want 0, 0, 0",
			r.poll.registered(), r.reading.Load(), r.pool.Allocated())
	}
	r.Shutdown()
	if got := openFDs(t); got != fds {
		t.Errorf("after Shutdown: %d descriptors, want %d", got, fds)
	}
	waitGoroutines(t, base)
}

// TestLazyRTCPBindFailure takes a stream's RTCP port on one side before RTP
// flows, as another process might: the stream loses RTCP on both sides,
// the failure is counted, RTP goes on both ways and nothing leaks.
func TestLazyRTCPBindFailure(t *testing.T) {
	for _, taken := range []Side{A, B} { // bound first or second
		t.Run("taken="+taken.String(), func(t *testing.T) {
			base := runtime.NumGoroutine()
			a, b := newPhone(t, phoneAIP, false), newPhone(t, phoneBIP, true)
			r := newPollRelay(t, 2, nil)
			c := callWith(t, r, "call-rtcp-taken", a, b)
			rtcpAt := [2]netip.AddrPort{A: c.toARTCP, B: c.toBRTCP}
			squatter, err := listen(t, rtcpAt[taken].Addr(), int(rtcpAt[taken].Port()))
			if err != nil {
				t.Fatalf("take %v: %v", rtcpAt[taken], err)
			}
			fds := openFDs(t)

			exchangeRTP(t, a, b, c.toA, c.toB, 20)
			eventually(t, "the failed RTCP bind to be counted", func() bool { return r.RTCPBindFailed() == 1 })
			if n := rtcpBound(t, r, c.id, 0); n != 0 {
				t.Errorf("%d RTCP sockets bound after the failure, want 0", n)
			}
			if got := r.poll.registered(); got != 2 {
				t.Errorf("registered %d, want 2 (RTP only)", got)
			}
			if got := openFDs(t); got != fds {
				t.Errorf("%d descriptors, want %d: the side that did bind let its socket go", got, fds)
			}
			if !portFree(t, rtcpAt[taken.Other()]) {
				t.Errorf("RTCP port %v of the other side still bound", rtcpAt[taken.Other()])
			}
			// The call goes on: RTP flows as before, and no bind is tried
			// again.
			exchangeRTP(t, a, b, c.toA, c.toB, 20)
			if n := r.RTCPBindFailed(); n != 1 {
				t.Errorf("RTCPBindFailed %d, want 1", n)
			}
			sendTo(t, b.rtcp, c.toBRTCP, rtcpPacket(1))
			if taken == B {
				if got := collect(squatter, 1, 5*time.Second, 0); len(got) != 1 {
					t.Errorf("the port's holder got %d datagrams, want B's RTCP", len(got))
				}
			}
			expectSilence(t, a.rtcp, 100*time.Millisecond, "A's RTCP port without relay RTCP")

			st, _ := r.Close(c.id, "bye")
			checkAccounting(t, st)
			if f := st.Streams[0].Sides[A].RTP; f.Forwarded != 40 {
				t.Errorf("side A RTP forwarded %d, want 40", f.Forwarded)
			}
			if r.poll.registered() != 0 || r.reading.Load() != 0 || r.pool.Allocated() != 0 {
				t.Errorf("after Close: registered %d, reading %d, allocated %d; want 0, 0, 0",
					r.poll.registered(), r.reading.Load(), r.pool.Allocated())
			}
			if got := openFDs(t); got != fds-2 {
				t.Errorf("after Close: %d descriptors, want %d", got, fds-2)
			}
			r.Shutdown()
			waitGoroutines(t, base)
		})
	}
}

// TestLazyRTCPStaleRequest serves RTCP requests that arrive too late: for
// a stream whose endpoints were retired (and enabled again with new ones),
// for a closed session, and twice for the same endpoints. None may bind a
// socket.
func TestLazyRTCPStaleRequest(t *testing.T) {
	a, b := newPhone(t, phoneAIP, false), newPhone(t, phoneBIP, true)
	fds := openFDs(t)
	r := newPollRelay(t, 1, nil)
	relayFDs := openFDs(t) - fds
	c := callWith(t, r, "call-stale", a, b)
	s := r.session(c.id)

	// Retired: A disables the stream, then enables it again.
	old := rtcpBindingOf(t, r, c.id, 0)
	if _, err := r.Offer(c.id, A, sdpBody(phoneAIP, 2, mline{kind: "audio", port: 0})); err != nil {
		t.Fatal(err)
	}
	bindOnce(s, old)
	if got := r.poll.registered(); got != 0 {
		t.Errorf("RTCP of a retired stream: registered %d, want 0", got)
	}
	out, err := r.Offer(c.id, A, a.sdp(3))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Answer(c.id, B, b.sdp(3)); err != nil {
		t.Fatal(err)
	}
	bindOnce(s, old)
	if n := rtcpBound(t, r, c.id, 0); n != 0 || r.poll.registered() != 2 {
		t.Errorf("the old endpoints' request bound %d RTCP sockets of the new ones (registered %d, want 2)", n, r.poll.registered())
	}
	if got := openFDs(t); got != fds+relayFDs+2 {
		t.Errorf("%d descriptors, want %d", got, fds+relayFDs+2)
	}

	// Served twice: the second finds them bound.
	cur := rtcpBindingOf(t, r, c.id, 0)
	bindOnce(s, cur)
	bindOnce(s, cur)
	if n := rtcpBound(t, r, c.id, 0); n != 2 || r.poll.registered() != 4 {
		t.Errorf("served twice: %d RTCP sockets bound, registered %d; want 2, 4", n, r.poll.registered())
	}
	toB, toBRTCP := anchorOf(t, out, 0)
	if toBRTCP.Port() != toB.Port()+1 {
		t.Fatalf("RTCP anchor %v is not RTP+1 of %v", toBRTCP, toB)
	}
	if portFree(t, toBRTCP) {
		t.Errorf("RTCP port %v not bound", toBRTCP)
	}

	// Closed: a request served after Close binds nothing.
	c2 := callWith(t, r, "call-stale-closed", a, b)
	late := rtcpBindingOf(t, r, c2.id, 0)
	s2 := r.session(c2.id)
	r.Close(c2.id, "bye")
	bindOnce(s2, late)
	if got := r.poll.registered(); got != 4 {
		t.Errorf("after a closed session's request: registered %d, want 4 (the first call's)", got)
	}
	for _, ap := range []netip.AddrPort{c2.toARTCP, c2.toBRTCP} {
		if !portFree(t, ap) {
			t.Errorf("RTCP port %v of a closed call is bound", ap)
		}
	}

	r.Close(c.id, "bye")
	if r.poll.registered() != 0 || r.reading.Load() != 0 || r.pool.Allocated() != 0 {
		t.Errorf("after Close: registered %d, reading %d, allocated %d; want 0, 0, 0",
			r.poll.registered(), r.reading.Load(), r.pool.Allocated())
	}
	if n := r.RTCPBindFailed(); n != 0 {
		t.Errorf("RTCPBindFailed %d, want 0: stale requests are no failures", n)
	}
	r.Shutdown()
	if got := openFDs(t); got != fds {
		t.Errorf("after Shutdown: %d descriptors, want %d", got, fds)
	}
}

// TestLazyRTCPCloseRacesFirstRTP ends calls while their first RTP arrives,
// so that the RTCP binder runs before, while and after their streams close
// or retire, in a range so small that ports and descriptors are reused at
// once; the last calls are left to Shutdown while their RTP flows. Run it
// with -race. Nothing may leak: no registration, no descriptor, no port,
// no goroutine.
func TestLazyRTCPCloseRacesFirstRTP(t *testing.T) {
	base := runtime.NumGoroutine()
	a, b := newPhone(t, phoneAIP, false), newPhone(t, phoneBIP, true)
	fds := openFDs(t)
	lo, _ := testPortRange(16)
	r := newPollRelay(t, 3, func(c *Config) {
		c.PortMin, c.PortMax = lo, lo+15
		c.Quarantine = time.Nanosecond
	})
	iterations := 60
	if testing.Short() {
		iterations = 20
	}
	pktA, pktB := rtpPacket(t, 0, 1, 0xA), rtpPacket(t, 0, 2, 0xB)
	var senders sync.WaitGroup
	for i := range iterations {
		c := callWith(t, r, SessionID(fmt.Sprintf("call-race-%d", i)), a, b)
		senders.Add(2)
		go func() { defer senders.Done(); blast(t, a.rtp, c.toA, pktA, 20) }()
		go func() { defer senders.Done(); blast(t, b.rtp, c.toB, pktB, 20) }()
		switch i % 4 {
		case 0: // as the first RTP arrives
		case 1: // a moment later: the binder may be at work, or done
			time.Sleep(time.Duration(i/4%8) * 250 * time.Microsecond)
		case 2: // retire the stream first, then close
			if _, err := r.Offer(c.id, A, sdpBody(phoneAIP, 2, mline{kind: "audio", port: 0})); err != nil {
				t.Fatal(err)
			}
		case 3: // once RTCP is bound
			waitRTCP(t, r, c.id, 0)
		}
		if _, ok := r.Close(c.id, "bye"); !ok {
			t.Fatalf("Close(%s) = false", c.id)
		}
		if got := r.poll.registered(); got != 0 {
			t.Fatalf("after Close(%s): registered %d, want 0", c.id, got)
		}
		senders.Wait()
	}
	// Calls left open, their RTP starting as the relay shuts down.
	for i := range 3 {
		c := callWith(t, r, SessionID(fmt.Sprintf("call-race-open-%d", i)), a, b)
		senders.Add(1)
		go func() { defer senders.Done(); blast(t, a.rtp, c.toA, pktA, 20) }()
	}
	r.Shutdown() // the binder has returned: no request is being served
	senders.Wait()
	if r.poll.registered() != 0 || r.reading.Load() != 0 || r.pool.Allocated() != 0 {
		t.Errorf("after Shutdown: registered %d, reading %d, allocated %d; want 0, 0, 0",
			r.poll.registered(), r.reading.Load(), r.pool.Allocated())
	}
	if got := openFDs(t); got != fds {
		t.Errorf("after Shutdown: %d descriptors, want %d", got, fds)
	}
	if n := r.RTCPBindFailed(); n != 0 {
		t.Errorf("RTCPBindFailed %d, want 0", n)
	}
	waitGoroutines(t, base)
}

// bindOnce serves one binding request the way the binder does, on a
// locked thread of its own.
func bindOnce(s *session, b *rtcpBinding) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := lockBinderThread()
		defer t.release()
		s.bindRTCP(b, &t)
	}()
	<-done
}
