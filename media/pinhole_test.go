package media

import (
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"
)

// pinFake is a fakeOffloader that also keeps media pinholes, recording
// every change in order.
type pinFake struct {
	*fakeOffloader
	pmu  sync.Mutex
	open map[string]bool
	log  []string
	// delay is how long the fake takes to "apply" an open.
	delay time.Duration
}

func newPinFake() *pinFake {
	return &pinFake{fakeOffloader: newFakeOffloader(), open: map[string]bool{}}
}

func pinName(local netip.AddrPort, remote netip.Addr) string {
	return fmt.Sprintf("%v<%v", local, remote)
}

func (f *pinFake) OpenPinhole(local netip.AddrPort, remote netip.Addr, done func()) {
	f.pmu.Lock()
	k := pinName(local, remote)
	f.log = append(f.log, "open "+k)
	f.open[k] = true
	delay := f.delay
	f.pmu.Unlock()
	if done != nil {
		go func() { time.Sleep(delay); done() }()
	}
}

func (f *pinFake) ClosePinhole(local netip.AddrPort, remote netip.Addr) {
	f.pmu.Lock()
	defer f.pmu.Unlock()
	k := pinName(local, remote)
	f.log = append(f.log, "close "+k)
	if !f.open[k] {
		f.log = append(f.log, "ERROR closing a pinhole that is not open: "+k)
	}
	delete(f.open, k)
}

// state returns the open pinholes, sorted, and the number of changes.
func (f *pinFake) state() ([]string, int) {
	f.pmu.Lock()
	defer f.pmu.Unlock()
	var out []string
	for k := range f.open {
		out = append(out, k)
	}
	slices.Sort(out)
	return out, len(f.log)
}

func (f *pinFake) changes() []string {
	f.pmu.Lock()
	defer f.pmu.Unlock()
	return slices.Clone(f.log)
}

func wantPins(t *testing.T, f *pinFake, what string, want ...string) {
	t.Helper()
	slices.Sort(want)
	if got, _ := f.state(); !slices.Equal(got, want) {
		t.Errorf("%s: open pinholes %v, want %v (changes: %v)", what, got, want, f.changes())
	}
}

// TestPinholesFollowAnnouncements checks that each relay socket has one
// pinhole for the IP its side announced: opened by the SDP, kept by
// latching and by a new port on the same IP, moved by a new IP, closed by
// hold with 0.0.0.0 and by the end of the call.
func TestPinholesFollowAnnouncements(t *testing.T) {
	fake := newPinFake()
	r := newTestRelay(t, ioDefault, func(c *Config) { c.Offloader = fake })
	c := setupCall(t, r, "call-pins")
	wantPins(t, fake, "after offer and answer",
		pinName(c.toA, phoneAIP), pinName(c.toARTCP, phoneAIP),
		pinName(c.toB, phoneBIP), pinName(c.toBRTCP, phoneBIP))
	_, n := fake.state()
	if n != 4 {
		t.Errorf("%d pinhole changes for one call set up, want 4: %v", n, fake.changes())
	}

	// Latching both sides changes nothing: the IP stays.
	sendTo(t, c.a.rtp, c.toA, rtpPacket(t, 0, 1, 0xA))
	collect(c.b.rtp, 1, 5*time.Second, 0)
	sendTo(t, c.b.rtp, c.toB, rtpPacket(t, 0, 1, 0xB))
	collect(c.a.rtp, 1, 5*time.Second, 0)
	// A repeated answer and a new port on the same IP keep the pinholes.
	if _, err := r.Answer(c.id, B, c.b.sdp(1)); err != nil {
		t.Fatal(err)
	}
	samePlace := newPhone(t, phoneBIP, true)
	if _, err := r.Offer(c.id, B, samePlace.sdp(2)); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Answer(c.id, A, c.a.sdp(2)); err != nil {
		t.Fatal(err)
	}
	if _, m := fake.state(); m != n {
		t.Errorf("latching or a new port on the same IP changed pinholes: %v", fake.changes()[n:])
	}

	// Side B moves to another IP: its two pinholes move, each closed
	// before the new one opens.
	moved := newPhone(t, strangeIP, true)
	if _, err := r.Offer(c.id, B, moved.sdp(3)); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Answer(c.id, A, c.a.sdp(3)); err != nil {
		t.Fatal(err)
	}
	wantPins(t, fake, "after side B moved",
		pinName(c.toA, phoneAIP), pinName(c.toARTCP, phoneAIP),
		pinName(c.toB, strangeIP), pinName(c.toBRTCP, strangeIP))
	ch := fake.changes()
	if want := []string{"close " + pinName(c.toB, phoneBIP), "open " + pinName(c.toB, strangeIP),
		"close " + pinName(c.toBRTCP, phoneBIP), "open " + pinName(c.toBRTCP, strangeIP)}; !slices.Equal(ch[n:], want) {
		t.Errorf("changes for the move: %v, want %v", ch[n:], want)
	}

	// Hold with 0.0.0.0 (RFC 2543): side A announces no address.
	hold := sdpBody(netip.IPv4Unspecified(), 4, mline{kind: "audio", port: int(addrOf(c.a.rtp).Port())})
	if _, err := r.Offer(c.id, A, hold); err != nil {
		t.Fatal(err)
	}
	wantPins(t, fake, "side A on hold", pinName(c.toB, strangeIP), pinName(c.toBRTCP, strangeIP))
	if _, err := r.Offer(c.id, A, c.a.sdp(5)); err != nil {
		t.Fatal(err)
	}
	wantPins(t, fake, "side A resumed",
		pinName(c.toA, phoneAIP), pinName(c.toARTCP, phoneAIP),
		pinName(c.toB, strangeIP), pinName(c.toBRTCP, strangeIP))

	// The end of the call closes every pinhole.
	r.Close(c.id, "test")
	wantPins(t, fake, "after close")
	for _, c := range fake.changes() {
		if len(c) > 5 && c[:5] == "ERROR" {
			t.Error(c)
		}
	}
}

// TestPinholesRejectedStream: an answer that rejects a stream (port 0)
// closes the answerer's pinholes of it; the offerer's stay, as its
// endpoints do.
func TestPinholesRejectedStream(t *testing.T) {
	fake := newPinFake()
	r := newTestRelay(t, ioDefault, func(c *Config) { c.Offloader = fake })
	c := setupCall(t, r, "call-reject")
	if _, err := r.Offer(c.id, A, c.a.sdp(2)); err != nil {
		t.Fatal(err)
	}
	rejected := sdpBody(phoneBIP, 2, mline{kind: "audio", port: 0})
	if _, err := r.Answer(c.id, B, rejected); err != nil {
		t.Fatal(err)
	}
	wantPins(t, fake, "after the rejecting answer", pinName(c.toA, phoneAIP), pinName(c.toARTCP, phoneAIP))
	r.Close(c.id, "test")
	wantPins(t, fake, "after close")
}

// TestPinholesSurviveDetach: a detached relay leaves its pinholes, as it
// leaves its kernel flows; the relay that restores the call opens them.
func TestPinholesSurviveDetach(t *testing.T) {
	fake1 := newPinFake()
	var lo, hi int
	r1 := newTestRelay(t, ioDefault, func(c *Config) { c.Offloader = fake1; lo, hi = c.PortMin, c.PortMax })
	c := setupCall(t, r1, "call-detach")
	state, _ := r1.State(c.id)
	r1.Detach()
	if _, n := fake1.state(); n != 4 {
		t.Errorf("detach changed pinholes: %v", fake1.changes())
	}
	fake2 := newPinFake()
	r2 := newTestRelay(t, ioDefault, func(cfg *Config) {
		cfg.PortMin, cfg.PortMax = lo, hi
		cfg.Offloader = fake2
	})
	if err := r2.Restore(state); err != nil {
		t.Fatal(err)
	}
	wantPins(t, fake2, "after restore",
		pinName(c.toA, phoneAIP), pinName(c.toARTCP, phoneAIP),
		pinName(c.toB, phoneBIP), pinName(c.toBRTCP, phoneBIP))
	r2.Close(c.id, "test")
	wantPins(t, fake2, "after close")
}

// TestPinholesAwaited: Offer and Answer return once the new pinholes are
// applied, and no later than pinWait when the Pinholer is slow.
func TestPinholesAwaited(t *testing.T) {
	fake := newPinFake()
	fake.delay = 60 * time.Millisecond
	r := newTestRelay(t, ioDefault, func(c *Config) { c.Offloader = fake })
	openCall(t, r, "call-wait")
	a := newPhone(t, phoneAIP, true)
	start := time.Now()
	if _, err := r.Offer("call-wait", A, a.sdp(1)); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < fake.delay {
		t.Errorf("Offer returned after %v, before its pinholes were applied (%v)", d, fake.delay)
	}
	// Unchanged: nothing to wait for.
	start = time.Now()
	if _, err := r.Offer("call-wait", A, a.sdp(2)); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d >= fake.delay {
		t.Errorf("a re-offer without new pinholes took %v", d)
	}
	fake.pmu.Lock()
	fake.delay = 5 * pinWait
	fake.pmu.Unlock()
	b := newPhone(t, phoneBIP, true)
	start = time.Now()
	if _, err := r.Answer("call-wait", B, b.sdp(1)); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < pinWait || d >= 5*pinWait {
		t.Errorf("Answer with a stuck Pinholer returned after %v, want about %v", d, pinWait)
	}
}
