package media

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"
)

// fakeOffloader records what the relay asks of an Offloader and serves
// counters the test sets. Packets still take the userspace path: only the
// relay's bookkeeping is under test here (firewall's integration tests move
// real packets).
type fakeOffloader struct {
	mu        sync.Mutex
	refuse    error
	installed map[Flow]bool
	offloads  []Flow
	withdraws []Flow
	counters  map[Flow]Counter
	kernel    map[Flow]bool // what Adopt finds installed
	onAdopt   func(Flow)    // called by Adopt, outside mu
}

func newFakeOffloader() *fakeOffloader {
	return &fakeOffloader{installed: map[Flow]bool{}, counters: map[Flow]Counter{}}
}

func (f *fakeOffloader) Offload(fl Flow, done func(error)) {
	f.mu.Lock()
	f.offloads = append(f.offloads, fl)
	err := f.refuse
	if err == nil {
		f.installed[fl] = true
	}
	f.mu.Unlock()
	go done(err)
}

func (f *fakeOffloader) Withdraw(fl Flow, done func(fwd, rev Counter)) {
	f.mu.Lock()
	f.withdraws = append(f.withdraws, fl)
	delete(f.installed, fl)
	fwd, rev := f.counters[fl], f.counters[fl.Reverse()]
	delete(f.counters, fl)
	delete(f.counters, fl.Reverse())
	f.mu.Unlock()
	if done != nil {
		go done(fwd, rev)
	}
}

func (f *fakeOffloader) Counters(out map[Flow]Counter) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	clear(out)
	for fl := range f.installed {
		out[fl] = f.counters[fl]
		out[fl.Reverse()] = f.counters[fl.Reverse()]
	}
	return nil
}

func (f *fakeOffloader) set(fl Flow, fwd, rev Counter) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.counters[fl], f.counters[fl.Reverse()] = fwd, rev
}

func (f *fakeOffloader) calls() (offloads, withdraws []Flow) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.offloads), slices.Clone(f.withdraws)
}

// offloadCall sets up a call on a relay with fake offload and exchanges one
// RTP packet each way, which latches both sides.
func offloadCall(t *testing.T, mod func(*Config)) (*Relay, *fakeOffloader, *call, Flow) {
	t.Helper()
	fake := newFakeOffloader()
	r := newTestRelay(t, ioDefault, func(c *Config) {
		c.Offloader = fake
		if mod != nil {
			mod(c)
		}
	})
	c := setupCall(t, r, "call-offload")
	sendTo(t, c.a.rtp, c.toA, rtpPacket(t, 0, 1, 0xA))
	if got := collect(c.b.rtp, 1, 5*time.Second, 0); len(got) != 1 {
		t.Fatalf("A to B: %d packets arrived, want 1", len(got))
	}
	if off, _ := fake.calls(); len(off) != 0 {
		t.Fatalf("offload requested with only side A latched: %v", off)
	}
	sendTo(t, c.b.rtp, c.toB, rtpPacket(t, 0, 1, 0xB))
	if got := collect(c.a.rtp, 1, 5*time.Second, 0); len(got) != 1 {
		t.Fatalf("B to A: %d packets arrived, want 1", len(got))
	}
	want := Flow{Src: addrOf(c.a.rtp), Local: c.toA, Out: c.toB, Dst: addrOf(c.b.rtp)}
	eventually(t, "the RTP component to be offloaded", func() bool { return r.OffloadedLinks() == 1 })
	off, _ := fake.calls()
	if len(off) != 1 || off[0] != want {
		t.Fatalf("offloads %v, want exactly [%v]", off, want)
	}
	return r, fake, c, want
}

func TestOffloadOnceBothSidesLatched(t *testing.T) {
	r, fake, c, flow := offloadCall(t, nil)
	// More traffic does not ask again.
	sendTo(t, c.a.rtp, c.toA, rtpPacket(t, 0, 2, 0xA))
	collect(c.b.rtp, 1, 5*time.Second, 0)
	if off, _ := fake.calls(); len(off) != 1 {
		t.Errorf("offloads %v after more traffic, want only the first", off)
	}

	// Kernel counters show up in the stats once polled, on the side
	// whose packets they count, and the accounting identity still holds.
	fake.set(flow, Counter{Packets: 100, Bytes: 17200}, Counter{Packets: 70, Bytes: 12040})
	eventually(t, "kernel counters in the stats", func() bool {
		st, _ := r.Stats(c.id)
		return st.Streams[0].Sides[A].RTP.Offloaded == 100 && st.Streams[0].Sides[B].RTP.Offloaded == 70
	})
	st, _ := r.Stats(c.id)
	checkAccounting(t, st)
	if got := st.Streams[0].Sides[A].RTP.Forwarded; got != 102 {
		t.Errorf("side A forwarded %d, want 2 in userspace + 100 in the kernel", got)
	}

	// Close withdraws and keeps the final counters.
	fake.set(flow, Counter{Packets: 150, Bytes: 25800}, Counter{Packets: 90, Bytes: 15480})
	final, _ := r.Close(c.id, "test")
	if _, wd := fake.calls(); len(wd) != 1 || wd[0] != flow {
		t.Errorf("withdrawals %v on close, want [%v]", wd, flow)
	}
	if a, b := final.Streams[0].Sides[A].RTP, final.Streams[0].Sides[B].RTP; a.Offloaded != 150 || b.Offloaded != 90 {
		t.Errorf("final kernel counters A %d, B %d; want 150 and 90", a.Offloaded, b.Offloaded)
	}
	if n := r.OffloadedLinks(); n != 0 {
		t.Errorf("%d links still offloaded after close", n)
	}
}

func TestOffloadWithdrawnOnNewAddress(t *testing.T) {
	r, fake, c, flow := offloadCall(t, nil)
	fake.set(flow, Counter{Packets: 40, Bytes: 6880}, Counter{Packets: 30, Bytes: 5160})

	// Side B moves its media (a re-INVITE): the installed rewrite is stale.
	moved := newPhone(t, phoneBIP, true)
	if _, err := r.Offer(c.id, B, moved.sdp(2)); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Answer(c.id, A, c.a.sdp(2)); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the withdrawal", func() bool { return r.OffloadedLinks() == 0 })
	if _, wd := fake.calls(); len(wd) != 1 || wd[0] != flow {
		t.Fatalf("withdrawals %v, want [%v]", wd, flow)
	}
	eventually(t, "the withdrawn counters to be kept", func() bool {
		st, _ := r.Stats(c.id)
		return st.Streams[0].Sides[A].RTP.Offloaded == 40 && st.Streams[0].Sides[B].RTP.Offloaded == 30
	})

	// Once the new address is latched the component goes back.
	sendTo(t, moved.rtp, c.toB, rtpPacket(t, 0, 3, 0xB))
	collect(c.a.rtp, 1, 5*time.Second, 0)
	sendTo(t, c.a.rtp, c.toA, rtpPacket(t, 0, 3, 0xA))
	collect(moved.rtp, 1, 5*time.Second, 0)
	eventually(t, "the new flow to be offloaded", func() bool { return r.OffloadedLinks() == 1 })
	off, _ := fake.calls()
	want := Flow{Src: addrOf(c.a.rtp), Local: c.toA, Out: c.toB, Dst: addrOf(moved.rtp)}
	if len(off) != 2 || off[1] != want {
		t.Errorf("offloads %v, want the second to be %v", off, want)
	}
}

func TestOffloadRefusedStaysInUserspace(t *testing.T) {
	fake := newFakeOffloader()
	fake.refuse = errors.New("no room")
	r := newTestRelay(t, ioDefault, func(c *Config) { c.Offloader = fake })
	c := setupCall(t, r, "call-refused")
	for i := range 5 {
		sendTo(t, c.a.rtp, c.toA, rtpPacket(t, 0, uint16(i), 0xA))
		sendTo(t, c.b.rtp, c.toB, rtpPacket(t, 0, uint16(i), 0xB))
		collect(c.b.rtp, 1, 5*time.Second, 0)
		collect(c.a.rtp, 1, 5*time.Second, 0)
		time.Sleep(20 * time.Millisecond)
	}
	if off, _ := fake.calls(); len(off) != 1 {
		t.Errorf("offloads %v: a refused component must not be asked again for the same addresses", off)
	}
	if n := r.OffloadedLinks(); n != 0 {
		t.Errorf("%d links offloaded after a refusal", n)
	}
	st, _ := r.Stats(c.id)
	if f := st.Streams[0].Sides[A].RTP; f.Forwarded != 5 || f.Offloaded != 0 {
		t.Errorf("side A: forwarded %d, offloaded %d; want 5 in userspace", f.Forwarded, f.Offloaded)
	}
}

func TestOffloadWithdrawnOnHold(t *testing.T) {
	r, fake, c, flow := offloadCall(t, nil)
	hold := []byte(fmt.Sprintf("v=0\r\no=- 1 2 IN IP4 %v\r\ns=-\r\nc=IN IP4 %v\r\nt=0 0\r\nm=audio %d RTP/AVP 0\r\na=sendonly\r\n",
		phoneAIP, phoneAIP, addrOf(c.a.rtp).Port()))
	if _, err := r.Offer(c.id, A, hold); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Answer(c.id, B, c.b.sdp(2)); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the withdrawal on hold", func() bool { return r.OffloadedLinks() == 0 })
	if _, wd := fake.calls(); len(wd) != 1 || wd[0] != flow {
		t.Errorf("withdrawals %v, want [%v]", wd, flow)
	}
	// Held: traffic does not offload it again.
	sendTo(t, c.a.rtp, c.toA, rtpPacket(t, 0, 5, 0xA))
	collect(c.b.rtp, 1, 5*time.Second, 0)
	time.Sleep(50 * time.Millisecond)
	if off, _ := fake.calls(); len(off) != 1 {
		t.Errorf("offloads %v while on hold", off)
	}
}

func TestOffloadKernelActivityKeepsCallAlive(t *testing.T) {
	fired := make(chan SessionID, 4)
	r, fake, c, flow := offloadCall(t, func(cfg *Config) {
		cfg.Timeout = 400 * time.Millisecond
		cfg.OnTimeout = func(id SessionID) { fired <- id }
	})
	// The kernel forwards (counters move), userspace sees nothing.
	deadline := time.Now().Add(1500 * time.Millisecond)
	for i := uint64(1); time.Now().Before(deadline); i++ {
		fake.set(flow, Counter{Packets: 10 * i, Bytes: 1720 * i}, Counter{Packets: 10 * i, Bytes: 1720 * i})
		select {
		case id := <-fired:
			t.Fatalf("OnTimeout(%s) while the kernel counters move", id)
		case <-time.After(50 * time.Millisecond):
		}
	}
	// Counters stop: the call times out like a silent one.
	select {
	case id := <-fired:
		if id != c.id {
			t.Errorf("OnTimeout(%s), want %s", id, c.id)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no timeout after the kernel counters stopped")
	}
	_ = r
}

// TestFlowReverse pins the direction algebra the firewall relies on.
func TestFlowReverse(t *testing.T) {
	f := Flow{
		Src:   netip.MustParseAddrPort("10.0.0.2:4000"),
		Local: netip.MustParseAddrPort("10.0.0.1:20000"),
		Out:   netip.MustParseAddrPort("192.0.2.1:20002"),
		Dst:   netip.MustParseAddrPort("192.0.2.2:5000"),
	}
	r := f.Reverse()
	if r.Src != f.Dst || r.Local != f.Out || r.Out != f.Local || r.Dst != f.Src || r.Reverse() != f {
		t.Errorf("Reverse(%v) = %v", f, r)
	}
	if !f.Is4() {
		t.Errorf("%v: Is4 false", f)
	}
	if v6 := (Flow{Src: netip.MustParseAddrPort("[2001:db8::1]:1"), Local: f.Local, Out: f.Out, Dst: f.Dst}); v6.Is4() {
		t.Errorf("%v: Is4 true", v6)
	}
}

// Adopt makes fakeOffloader an Adopter: it takes over the flows listed in
// kernel, the fake's picture of what a previous process left installed.
func (f *fakeOffloader) Adopt(fl Flow) bool {
	f.mu.Lock()
	adopted, hook := f.kernel[fl], f.onAdopt
	if adopted {
		f.installed[fl] = true
	}
	f.mu.Unlock()
	if hook != nil {
		hook(fl)
	}
	return adopted
}

// TestDetachAndRestore moves a call with an offloaded stream from one relay
// to a new one, as a restart with keep_on_restart does: the first relay
// leaves the kernel flow alone, the second binds the same ports, knows the
// latched remotes at once, adopts the flow and keeps the counters.
func TestDetachAndRestore(t *testing.T) {
	var lo, hi int
	r1, fake1, c, flow := offloadCall(t, func(cfg *Config) { lo, hi = cfg.PortMin, cfg.PortMax })
	fake1.set(flow, Counter{Packets: 500, Bytes: 86000}, Counter{Packets: 400, Bytes: 68800})
	eventually(t, "kernel counters polled", func() bool {
		st, _ := r1.Stats(c.id)
		return st.Streams[0].Sides[A].RTP.Offloaded == 500
	})
	state, ok := r1.State(c.id)
	if !ok {
		t.Fatal("State: no session")
	}
	if k := state.Streams[0].Kernel[compRTP]; k == nil || *k != flow {
		t.Fatalf("state's RTP kernel flow %v, want %v", k, flow)
	}
	r1.Detach()
	if _, wd := fake1.calls(); len(wd) != 0 {
		t.Fatalf("Detach withdrew %v: the kernel flows must survive it", wd)
	}

	fake2 := newFakeOffloader()
	fake2.kernel = map[Flow]bool{flow: true}
	fake2.set(flow, Counter{Packets: 650, Bytes: 111800}, Counter{Packets: 520, Bytes: 89440})
	r2 := newTestRelay(t, ioDefault, func(cfg *Config) {
		cfg.PortMin, cfg.PortMax = lo, hi
		cfg.Offloader = fake2
	})
	if err := r2.Restore(state); err != nil {
		t.Fatalf("Restore: %v", err)
	}
	if n := r2.OffloadedLinks(); n != 1 {
		t.Errorf("%d links offloaded after restore, want the adopted one", n)
	}
	// The same ports, the latched remotes known: a packet from A is
	// forwarded to B's latched address at once.
	sendTo(t, c.a.rtp, c.toA, rtpPacket(t, 0, 99, 0xA))
	if got := collect(c.b.rtp, 1, 5*time.Second, 0); len(got) != 1 {
		t.Fatalf("after restore, A to B: %d packets, want 1", len(got))
	}
	// Counters: the userspace ones carried over, the kernel ones polled
	// from the element that kept counting.
	eventually(t, "restored counters", func() bool {
		st, _ := r2.Stats(c.id)
		a := st.Streams[0].Sides[A].RTP
		return a.Offloaded == 650 && a.Forwarded == 650+1+1 // kernel + one userspace packet each side of the restart
	})
	final, _ := r2.Close(c.id, "test")
	if _, wd := fake2.calls(); len(wd) != 1 || wd[0] != flow {
		t.Errorf("withdrawals after restore and close: %v, want [%v]", wd, flow)
	}
	if got := final.Streams[0].Sides[B].RTP.Offloaded; got != 520 {
		t.Errorf("final kernel count of side B %d, want 520", got)
	}
}

func TestRestoreWithoutAdoption(t *testing.T) {
	var lo, hi int
	r1, _, c, _ := offloadCall(t, func(cfg *Config) { lo, hi = cfg.PortMin, cfg.PortMax })
	state, _ := r1.State(c.id)
	r1.Detach()
	// The kernel lost the flow (the firewall was flushed meanwhile): the
	// restored stream is in userspace and offloads again on traffic.
	fake2 := newFakeOffloader()
	r2 := newTestRelay(t, ioDefault, func(cfg *Config) {
		cfg.PortMin, cfg.PortMax = lo, hi
		cfg.Offloader = fake2
	})
	if err := r2.Restore(state); err != nil {
		t.Fatalf("Restore: %v", err)
	}
	if n := r2.OffloadedLinks(); n != 0 {
		t.Errorf("%d links offloaded without adoption", n)
	}
	sendTo(t, c.a.rtp, c.toA, rtpPacket(t, 0, 7, 0xA))
	collect(c.b.rtp, 1, 5*time.Second, 0)
	eventually(t, "a new offload", func() bool { return r2.OffloadedLinks() == 1 })
	// A second restore of the same session is refused.
	if err := r2.Restore(state); !errors.Is(err, ErrSessionExists) {
		t.Errorf("second Restore: %v, want ErrSessionExists", err)
	}
}
