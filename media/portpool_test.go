package media

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// poolIP is used by the pool tests only, so that no other test's socket can
// sit on the ports whose exact count they assert.
var poolIP = netip.MustParseAddr("127.0.0.61")

// fakeClock is an injectable clock for quarantine tests.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time          { return c.t }
func (c *fakeClock) advance(d time.Duration) { c.t = c.t.Add(d) }

func newTestPool(t *testing.T, lo, hi int, q time.Duration) (*PortPool, *fakeClock) {
	t.Helper()
	p, err := NewPortPool(lo, hi, q)
	if err != nil {
		t.Fatalf("NewPortPool(%d, %d): %v", lo, hi, err)
	}
	clk := &fakeClock{t: time.Unix(1_700_000_000, 0)}
	p.now = clk.now
	return p, clk
}

func closePair(pp PortPair) {
	pp.RTP.Close()
	pp.RTCP.Close()
}

func TestPortPoolPairsAreEvenAndBound(t *testing.T) {
	lo, _ := testPortRange(20)
	lo |= 1 // odd start: the first pair begins at lo+1
	hi := lo + 8
	// Pairs: lo+1, lo+3, lo+5, lo+7; lo+9 would need lo+10 > hi.
	p, _ := newTestPool(t, lo, hi, time.Second)
	if p.Size() != 4 {
		t.Fatalf("Size = %d, want 4", p.Size())
	}
	seen := map[int]bool{}
	for range 4 {
		pp, err := p.Allocate(poolIP)
		if err != nil {
			t.Fatalf("Allocate: %v", err)
		}
		defer closePair(pp)
		if pp.Port%2 != 0 || pp.Port < lo || pp.Port+1 > hi {
			t.Errorf("port %d: want even inside [%d, %d] with its RTCP port", pp.Port, lo, hi)
		}
		if seen[pp.Port] {
			t.Errorf("port %d handed out twice", pp.Port)
		}
		seen[pp.Port] = true
		if got, want := pp.RTP.LocalAddr(), netip.AddrPortFrom(poolIP, uint16(pp.Port)); got != want {
			t.Errorf("RTP socket bound to %v, want %v", got, want)
		}
		if got, want := pp.RTCP.LocalAddr(), netip.AddrPortFrom(poolIP, uint16(pp.Port+1)); got != want {
			t.Errorf("RTCP socket bound to %v, want %v", got, want)
		}
	}
	if _, err := p.Allocate(poolIP); !errors.Is(err, ErrPoolExhausted) {
		t.Fatalf("Allocate on a full pool: err = %v, want ErrPoolExhausted", err)
	}
	if p.Allocated() != 4 || p.InUse() != 4 {
		t.Errorf("Allocated = %d, InUse = %d, want 4, 4", p.Allocated(), p.InUse())
	}
}

func TestPortPoolQuarantine(t *testing.T) {
	const q = QuarantineFloor // a longer one would be cut short by the dry pool
	lo, _ := testPortRange(10)
	p, clk := newTestPool(t, lo, lo+3, q) // two pairs
	a, err := p.Allocate(poolIP)
	if err != nil {
		t.Fatal(err)
	}
	b, err := p.Allocate(poolIP)
	if err != nil {
		t.Fatal(err)
	}
	defer closePair(b)
	closePair(a)
	p.Release(a.Port)

	if got := p.InUse(); got != 2 {
		t.Errorf("InUse after release = %d, want 2 (one allocated, one quarantined)", got)
	}
	if p.Allocated() != 1 || p.Quarantined() != 1 {
		t.Errorf("Allocated = %d, Quarantined = %d, want 1, 1", p.Allocated(), p.Quarantined())
	}
	if _, err := p.Allocate(poolIP); !errors.Is(err, ErrPoolExhausted) {
		t.Fatalf("Allocate right after release: err = %v, want ErrPoolExhausted", err)
	}
	clk.advance(q - time.Nanosecond)
	if _, err := p.Allocate(poolIP); !errors.Is(err, ErrPoolExhausted) {
		t.Fatalf("Allocate just before quarantine ends: err = %v, want ErrPoolExhausted", err)
	}
	clk.advance(time.Nanosecond)
	c, err := p.Allocate(poolIP)
	if err != nil {
		t.Fatalf("Allocate after quarantine: %v", err)
	}
	defer closePair(c)
	if c.Port != a.Port {
		t.Errorf("Allocate after quarantine = %d, want the released %d", c.Port, a.Port)
	}
	if p.Quarantined() != 0 || p.Allocated() != 2 {
		t.Errorf("Allocated = %d, Quarantined = %d, want 2, 0", p.Allocated(), p.Quarantined())
	}
	if p.Shortened() != 0 {
		t.Errorf("Shortened = %d after a full quarantine, want 0", p.Shortened())
	}
}

// With no free pair, a quarantined pair is taken back once it has waited
// QuarantineFloor, oldest first, and counted; before the floor the pool is
// exhausted.
func TestPortPoolQuarantineShortenedWhenDry(t *testing.T) {
	const q = 5 * time.Second
	lo, _ := testPortRange(10)
	p, clk := newTestPool(t, lo, lo+5, q) // three pairs
	var pairs []PortPair
	for range 3 {
		pp, err := p.Allocate(poolIP)
		if err != nil {
			t.Fatal(err)
		}
		pairs = append(pairs, pp)
	}
	defer closePair(pairs[2])
	closePair(pairs[0])
	p.Release(pairs[0].Port)
	clk.advance(300 * time.Millisecond)
	closePair(pairs[1])
	p.Release(pairs[1].Port)

	clk.advance(QuarantineFloor - 300*time.Millisecond - time.Nanosecond)
	if _, err := p.Allocate(poolIP); !errors.Is(err, ErrPoolExhausted) {
		t.Fatalf("Allocate before the floor: err = %v, want ErrPoolExhausted", err)
	}
	clk.advance(time.Nanosecond)
	got, err := p.Allocate(poolIP)
	if err != nil {
		t.Fatalf("Allocate at the floor with no free pair: %v", err)
	}
	defer closePair(got)
	if got.Port != pairs[0].Port {
		t.Errorf("early reuse took %d, want the oldest quarantined %d", got.Port, pairs[0].Port)
	}
	if p.Shortened() != 1 || p.Quarantined() != 1 || p.Allocated() != 2 {
		t.Errorf("Shortened = %d, Quarantined = %d, Allocated = %d, want 1, 1, 2",
			p.Shortened(), p.Quarantined(), p.Allocated())
	}
	// The second one has waited only 700 ms.
	if _, err := p.Allocate(poolIP); !errors.Is(err, ErrPoolExhausted) {
		t.Fatalf("Allocate of a pair under the floor: err = %v, want ErrPoolExhausted", err)
	}
}

// A quarantine shorter than the floor is never cut.
func TestPortPoolShortQuarantineNotCut(t *testing.T) {
	const q = 200 * time.Millisecond
	lo, _ := testPortRange(10)
	p, clk := newTestPool(t, lo, lo+1, q) // one pair
	a, err := p.Allocate(poolIP)
	if err != nil {
		t.Fatal(err)
	}
	closePair(a)
	p.Release(a.Port)
	clk.advance(q - time.Nanosecond)
	if _, err := p.Allocate(poolIP); !errors.Is(err, ErrPoolExhausted) {
		t.Fatalf("Allocate before a short quarantine ends: err = %v, want ErrPoolExhausted", err)
	}
	clk.advance(time.Nanosecond)
	b, err := p.Allocate(poolIP)
	if err != nil {
		t.Fatalf("Allocate after the quarantine: %v", err)
	}
	closePair(b)
	if p.Shortened() != 0 {
		t.Errorf("Shortened = %d, want 0", p.Shortened())
	}
}

func TestPortPoolQuarantineIsFIFO(t *testing.T) {
	const q = time.Second
	lo, _ := testPortRange(10)
	p, clk := newTestPool(t, lo, lo+5, q) // three pairs
	var pairs []PortPair
	for range 3 {
		pp, err := p.Allocate(poolIP)
		if err != nil {
			t.Fatal(err)
		}
		closePair(pp)
		pairs = append(pairs, pp)
	}
	// Released at t0, t0+400ms, t0+800ms: free at t0+1s, +1.4s, +1.8s.
	for _, pp := range pairs {
		p.Release(pp.Port)
		clk.advance(400 * time.Millisecond)
	}
	// Now t0+1.2s: only the first is free again.
	got, err := p.Allocate(poolIP)
	if err != nil {
		t.Fatalf("Allocate: %v", err)
	}
	closePair(got)
	if got.Port != pairs[0].Port {
		t.Errorf("first pair out of quarantine = %d, want %d", got.Port, pairs[0].Port)
	}
	if _, err := p.Allocate(poolIP); !errors.Is(err, ErrPoolExhausted) {
		t.Errorf("second Allocate at t0+1.2s: err = %v, want ErrPoolExhausted", err)
	}
	if p.Quarantined() != 2 {
		t.Errorf("Quarantined = %d, want 2", p.Quarantined())
	}
}

func TestPortPoolSkipsBusyPair(t *testing.T) {
	lo, _ := testPortRange(10)
	p, clk := newTestPool(t, lo, lo+3, time.Second) // pairs lo and lo+2 (lo is even)
	// Something else holds the RTCP port of the first pair.
	busy, err := listen(t, poolIP, lo+1)
	if err != nil {
		t.Skipf("cannot occupy port %d for the test: %v", lo+1, err)
	}
	pp, err := p.Allocate(poolIP)
	if err != nil {
		t.Fatalf("Allocate with one busy pair: %v", err)
	}
	if pp.Port != lo+2 {
		t.Errorf("Allocate = %d, want the free pair %d", pp.Port, lo+2)
	}
	if _, err := p.Allocate(poolIP); !errors.Is(err, ErrPoolExhausted) {
		t.Errorf("Allocate: err = %v, want ErrPoolExhausted", err)
	}
	// The busy pair waits out a quarantine instead of being retried at
	// every allocation, and the RTP socket of the failed attempt was closed.
	if p.Quarantined() != 1 {
		t.Errorf("Quarantined = %d, want 1 (the busy pair)", p.Quarantined())
	}
	if c, err := listen(t, poolIP, lo); err != nil {
		t.Errorf("RTP port %d of the skipped pair is still bound: %v", lo, err)
	} else {
		c.Close()
	}
	busy.Close()
	clk.advance(time.Second)
	again, err := p.Allocate(poolIP)
	if err != nil {
		t.Fatalf("Allocate after the holder left: %v", err)
	}
	if again.Port != lo {
		t.Errorf("Allocate = %d, want %d", again.Port, lo)
	}
	closePair(again)
	closePair(pp)
}

func TestPortPoolBindErrorIsNotExhaustion(t *testing.T) {
	lo, _ := testPortRange(10)
	p, _ := newTestPool(t, lo, lo+3, time.Second)
	// 192.0.2.1 (TEST-NET-1) is not a local address: a configuration fault.
	_, err := p.Allocate(netip.MustParseAddr("192.0.2.1"))
	if err == nil || errors.Is(err, ErrPoolExhausted) {
		t.Fatalf("Allocate on a non-local address: err = %v, want a bind error", err)
	}
	if p.InUse() != 0 {
		t.Errorf("InUse = %d after a failed bind, want 0: the pair must stay free", p.InUse())
	}
	if _, err := p.Allocate(netip.Addr{}); err == nil {
		t.Errorf("Allocate with no address: want an error")
	}
}

func TestPortPoolReleaseIgnoresForeignPorts(t *testing.T) {
	lo, _ := testPortRange(10)
	p, _ := newTestPool(t, lo, lo+3, time.Second)
	pp, err := p.Allocate(poolIP)
	if err != nil {
		t.Fatal(err)
	}
	closePair(pp)
	for _, port := range []int{0, -2, lo - 2, pp.Port + 1, lo + 100, 70000} {
		p.Release(port)
	}
	if p.Allocated() != 1 || p.Quarantined() != 0 {
		t.Fatalf("after bogus releases: Allocated = %d, Quarantined = %d, want 1, 0", p.Allocated(), p.Quarantined())
	}
	p.Release(pp.Port)
	p.Release(pp.Port) // double release
	if p.Allocated() != 0 || p.Quarantined() != 1 {
		t.Fatalf("after double release: Allocated = %d, Quarantined = %d, want 0, 1", p.Allocated(), p.Quarantined())
	}
}

func TestPortPoolRangeValidation(t *testing.T) {
	for _, tc := range []struct {
		lo, hi int
		q      time.Duration
		want   string
	}{
		{0, 100, time.Second, "not inside"},
		{100, 65536, time.Second, "not inside"},
		{200, 100, time.Second, "not inside"},
		{101, 101, time.Second, "no even"},
		{101, 102, time.Second, "no even"},
		{100, 100, time.Second, "no even"},
		{100, 101, -time.Second, "negative"},
	} {
		_, err := NewPortPool(tc.lo, tc.hi, tc.q)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("NewPortPool(%d, %d, %v): err = %v, want %q", tc.lo, tc.hi, tc.q, err, tc.want)
		}
	}
	if p, err := NewPortPool(101, 103, 0); err != nil || p.Size() != 1 {
		t.Errorf("NewPortPool(101, 103): size %v, err %v; want one pair (102, 103)", p, err)
	}
}

func TestConfigValidation(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"no range", Config{}, "not inside"},
		{"inverted", Config{PortMin: 30000, PortMax: 20000}, "not inside"},
		{"no pair", Config{PortMin: 30001, PortMax: 30001}, "no even"},
		{"negative quarantine", Config{PortMin: 30000, PortMax: 30001, Quarantine: -1}, "quarantine"},
		{"negative timeout", Config{PortMin: 30000, PortMax: 30001, Timeout: -1}, "timeout"},
		{"username", Config{PortMin: 30000, PortMax: 30001, Username: "edge sbc"}, "whitespace"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := NewRelay(tc.cfg, nil)
			if err == nil {
				r.Shutdown()
				t.Fatalf("NewRelay accepted %+v", tc.cfg)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v, want it to mention %q", err, tc.want)
			}
		})
	}
	cfg, err := Config{PortMin: 30000, PortMax: 30001}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Quarantine != DefaultQuarantine || cfg.Timeout != DefaultTimeout || cfg.Username != DefaultUsername {
		t.Errorf("defaults = %v, %v, %q", cfg.Quarantine, cfg.Timeout, cfg.Username)
	}
}
