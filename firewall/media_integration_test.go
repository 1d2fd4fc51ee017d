//go:build linux

package firewall_test

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/vishvananda/netns"

	"github.com/edgesbc/edgesbc/firewall"
	"github.com/edgesbc/edgesbc/internal/testenv"
	"github.com/edgesbc/edgesbc/media"
	"github.com/edgesbc/edgesbc/media/sdp"
)

func TestMain(m *testing.M) { os.Exit(testenv.Main(m)) }

// lab is left ── sbc ── right, with forwarding on in sbc (the kernel path
// needs it) and media offload programmed into sbc's own ruleset.
type lab struct {
	left, sbc, right  *testenv.Netns
	leftIP, sbcLeft   netip.Addr
	sbcRight, rightIP netip.Addr
	nsFd              netns.NsHandle
}

func newLab(t *testing.T) *lab {
	t.Helper()
	testenv.Integration(t)
	testenv.RequireTool(t, "nft")
	l := &lab{
		left:     testenv.NewNetns(t, "esbc-fwl"),
		sbc:      testenv.NewNetns(t, "esbc-fws"),
		right:    testenv.NewNetns(t, "esbc-fwr"),
		leftIP:   netip.MustParseAddr("10.93.1.2"),
		sbcLeft:  netip.MustParseAddr("10.93.1.1"),
		sbcRight: netip.MustParseAddr("10.93.2.1"),
		rightIP:  netip.MustParseAddr("10.93.2.2"),
	}
	testenv.Link(t, l.left, "eth-s", netip.PrefixFrom(l.leftIP, 24), l.sbc, "eth-l", netip.PrefixFrom(l.sbcLeft, 24))
	testenv.Link(t, l.sbc, "eth-r", netip.PrefixFrom(l.sbcRight, 24), l.right, "eth-s", netip.PrefixFrom(l.rightIP, 24))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if out, err := l.sbc.Command(ctx, "sysctl", "-qw", "net.ipv4.ip_forward=1").CombinedOutput(); err != nil {
		t.Fatalf("enable forwarding: %v: %s", err, out)
	}
	h, err := netns.GetFromName(l.sbc.Name)
	if err != nil {
		t.Fatalf("open netns %s: %v", l.sbc, err)
	}
	t.Cleanup(func() { h.Close() })
	l.nsFd = h
	return l
}

// in runs fn on a thread moved into ns and moves the thread back before
// unlocking it. A thread that cannot be moved back stays locked and ends
// with the goroutine, so no other goroutine inherits ns; the main thread,
// which Go never ends, is always moved back, because the namespace's
// cleanup kills every process whose main thread is inside.
func in(t *testing.T, ns *testenv.Netns, fn func()) {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- fmt.Errorf("read current netns: %w", err)
			return
		}
		defer orig.Close()
		h, err := netns.GetFromName(ns.Name)
		if err == nil {
			defer h.Close()
			err = netns.Set(h)
		}
		if err != nil {
			errc <- fmt.Errorf("enter netns %s: %w", ns, err)
			return
		}
		fn()
		if err := netns.Set(orig); err != nil {
			errc <- fmt.Errorf("leave netns %s: %w", ns, err)
			return
		}
		runtime.UnlockOSThread()
		errc <- nil
	}()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

func listenIn(t *testing.T, ns *testenv.Netns, ap netip.AddrPort) *net.UDPConn {
	t.Helper()
	var c *net.UDPConn
	var err error
	in(t, ns, func() { c, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(ap)) })
	if err != nil {
		t.Fatalf("listen %v in %s: %v", ap, ns, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func (l *lab) offload(t *testing.T, lo, hi int) *firewall.Media {
	t.Helper()
	m, err := firewall.NewMedia(firewall.MediaConfig{
		Addrs: []netip.Addr{l.sbcLeft, l.sbcRight}, PortMin: lo, PortMax: hi, NetNS: int(l.nsFd),
	}, testLog(t))
	if err != nil {
		t.Fatalf("NewMedia: %v", err)
	}
	t.Cleanup(func() {
		if err := m.Close(false); err != nil {
			t.Errorf("close media offload: %v", err)
		}
	})
	return m
}

func testLog(t *testing.T) hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{Name: t.Name(), Level: hclog.Info, Output: testWriter{t}})
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// nftElements counts the elements of a set or map of table inet edgesbc in
// ns, read back with nft itself.
func nftElements(t *testing.T, ns *testenv.Netns, kind, name string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := ns.Command(ctx, "nft", "-j", "list", kind, "inet", firewall.TableName, name).Output()
	if err != nil {
		t.Fatalf("nft list %s %s: %v", kind, name, err)
	}
	var doc struct {
		Nftables []map[string]struct {
			Elem []json.RawMessage `json:"elem"`
		} `json:"nftables"`
	}
	if err := json.Unmarshal(out, &doc); err != nil {
		t.Fatalf("parse nft output: %v", err)
	}
	n := 0
	for _, o := range doc.Nftables {
		if s, ok := o[kind]; ok {
			n += len(s.Elem)
		}
	}
	return n
}

// sender sends count RTP-sized datagrams numbered 0..count-1 from c to dst,
// one every gap.
func sender(c *net.UDPConn, dst netip.AddrPort, first, count int, gap time.Duration) error {
	buf := make([]byte, 172)
	buf[0] = 0x80
	for i := first; i < first+count; i++ {
		binary.BigEndian.PutUint32(buf[4:], uint32(i))
		if _, err := c.WriteToUDPAddrPort(buf, dst); err != nil {
			return fmt.Errorf("send %d: %w", i, err)
		}
		time.Sleep(gap)
	}
	return nil
}

// receiver counts how often each sequence number arrives on c and where
// from, until c is closed or idle for idle.
type receiver struct {
	mu   sync.Mutex
	seen map[uint32]int
	from map[netip.AddrPort]int
	done chan struct{}
}

func receive(c *net.UDPConn) *receiver {
	r := &receiver{seen: map[uint32]int{}, from: map[netip.AddrPort]int{}, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		buf := make([]byte, 2048)
		for {
			_ = c.SetReadDeadline(time.Now().Add(time.Second))
			n, src, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			if n >= 8 {
				r.mu.Lock()
				r.seen[binary.BigEndian.Uint32(buf[4:])]++
				r.from[src]++
				r.mu.Unlock()
			}
		}
	}()
	return r
}

// check reports every sequence number in [first, first+count) that did not
// arrive exactly once.
func (r *receiver) check(t *testing.T, what string, first, count int) {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	var lost, dup []int
	for i := first; i < first+count; i++ {
		switch n := r.seen[uint32(i)]; {
		case n == 0:
			lost = append(lost, i)
		case n > 1:
			dup = append(dup, i)
		}
	}
	if len(lost) > 0 || len(dup) > 0 {
		t.Errorf("%s: %d of %d lost (first %v), %d duplicated (first %v)", what, len(lost), count,
			lost[:min(len(lost), 10)], len(dup), dup[:min(len(dup), 10)])
	}
}

func (r *receiver) sources() map[netip.AddrPort]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := map[netip.AddrPort]int{}
	for k, v := range r.from {
		out[k] = v
	}
	return out
}

func sdpFor(ip netip.Addr, port, version int) []byte {
	return fmt.Appendf(nil, "v=0\r\no=- 1 %d IN IP4 %v\r\ns=-\r\nc=IN IP4 %v\r\nt=0 0\r\nm=audio %d RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n",
		version, ip, ip, port)
}

func anchor(t *testing.T, body []byte) netip.AddrPort {
	t.Helper()
	d, err := sdp.Parse(body)
	if err != nil {
		t.Fatalf("parse relay sdp: %v", err)
	}
	m := d.Media()
	if len(m) != 1 {
		t.Fatalf("relay sdp has %d m= lines", len(m))
	}
	return netip.AddrPortFrom(m[0].Addr, uint16(m[0].Port))
}

func waitFor(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func userspace(f media.FlowStats) uint64 { return f.Forwarded - f.Offloaded }

// TestIntegrationMediaOffload runs the real relay with kernel offload in a
// namespace between two endpoints: RTP both ways is handed to the kernel
// once latched without losing or duplicating a packet, userspace stops
// seeing it while the kernel counters grow, a new port from one side (a
// re-INVITE) brings the stream back to userspace and then into the kernel
// again, and closing the call leaves no element behind.
func TestIntegrationMediaOffload(t *testing.T) {
	l := newLab(t)
	const lo, hi = 30000, 30099
	fw := l.offload(t, lo, hi)
	relay, err := media.NewRelay(media.Config{PortMin: lo, PortMax: hi, Offloader: fw, Timeout: time.Minute,
		Quarantine: time.Second}, testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(relay.Shutdown)

	leftAP := netip.AddrPortFrom(l.leftIP, 4000)
	rightAP := netip.AddrPortFrom(l.rightIP, 5000)
	leftC := listenIn(t, l.left, leftAP)
	rightC := listenIn(t, l.right, rightAP)

	const id = media.SessionID("call-1")
	if err := relay.Open(id, media.Address{Bind: l.sbcLeft}, media.Address{Bind: l.sbcRight}); err != nil {
		t.Fatal(err)
	}
	var toRight, toLeft []byte
	in(t, l.sbc, func() {
		toRight, err = relay.Offer(id, media.A, sdpFor(l.leftIP, 4000, 1))
		if err == nil {
			toLeft, err = relay.Answer(id, media.B, sdpFor(l.rightIP, 5000, 1))
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	relayA, relayB := anchor(t, toLeft), anchor(t, toRight)

	// Phase 1: 1,500 packets each way, 2 ms apart; the handover happens
	// after the first packet of each side.
	const n1 = 1500
	atRight, atLeft := receive(rightC), receive(leftC)
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	wg.Add(2)
	go func() { defer wg.Done(); errs <- sender(leftC, relayA, 0, n1, 2*time.Millisecond) }()
	go func() { defer wg.Done(); errs <- sender(rightC, relayB, 0, n1, 2*time.Millisecond) }()
	waitFor(t, "the RTP link to be offloaded", 5*time.Second, func() bool { return relay.OffloadedLinks() == 1 })
	time.Sleep(300 * time.Millisecond)
	st, _ := relay.Stats(id)
	userA, userB := userspace(st.Streams[0].Sides[media.A].RTP), userspace(st.Streams[0].Sides[media.B].RTP)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(200 * time.Millisecond)
	atRight.check(t, "left to right", 0, n1)
	atLeft.check(t, "right to left", 0, n1)
	for what, src := range map[string]map[netip.AddrPort]int{"at right": atRight.sources(), "at left": atLeft.sources()} {
		if len(src) != 1 {
			t.Errorf("%s: packets came from %v, want only the relay's port", what, src)
		}
	}
	if got := atRight.sources()[relayB]; got != n1 {
		t.Errorf("right received %d packets from the relay's port %v, want %d", got, relayB, n1)
	}

	// The relay's counters in the kernel era: userspace froze, the kernel
	// counted the rest, and together they add up to everything.
	waitFor(t, "kernel counters to be polled", 5*time.Second, func() bool {
		st, _ := relay.Stats(id)
		return st.Streams[0].Sides[media.A].RTP.Forwarded == n1 && st.Streams[0].Sides[media.B].RTP.Forwarded == n1
	})
	st, _ = relay.Stats(id)
	for side, user := range map[media.Side]uint64{media.A: userA, media.B: userB} {
		f := st.Streams[0].Sides[side].RTP
		if userspace(f) != user {
			t.Errorf("side %v: userspace forwarded %d after the handover, %d before: it should have stopped", side, userspace(f), user)
		}
		if f.Offloaded < n1-200 {
			t.Errorf("side %v: kernel forwarded %d of %d packets", side, f.Offloaded, n1)
		}
		t.Logf("side %v: %d packets in userspace, %d in the kernel", side, userspace(f), f.Offloaded)
	}
	<-atRight.done
	<-atLeft.done

	// Phase 2: the right side moves to port 5002 (a re-INVITE). The stream
	// is withdrawn, relearned in userspace and offloaded again.
	right2AP := netip.AddrPortFrom(l.rightIP, 5002)
	right2C := listenIn(t, l.right, right2AP)
	in(t, l.sbc, func() {
		_, err = relay.Offer(id, media.B, sdpFor(l.rightIP, 5002, 2))
		if err == nil {
			_, err = relay.Answer(id, media.A, sdpFor(l.leftIP, 4000, 2))
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	// Packets sent before the kernel has applied the withdrawal still
	// follow the old rewrite; wait for it, as the far end's new port only
	// starts receiving after the re-INVITE's answer anyway.
	waitFor(t, "the withdrawal", 2*time.Second, func() bool {
		return relay.OffloadedLinks() == 0 && nftElements(t, l.sbc, "map", "media_dnat4") == 0
	})
	time.Sleep(100 * time.Millisecond) // and for its conntrack deletion, which follows
	const n2 = 500
	atRight2, atLeft2 := receive(right2C), receive(leftC)
	errs = make(chan error, 2)
	wg.Add(2)
	go func() { defer wg.Done(); errs <- sender(leftC, relayA, n1, n2, 2*time.Millisecond) }()
	go func() { defer wg.Done(); errs <- sender(right2C, relayB, n1, n2, 2*time.Millisecond) }()
	waitFor(t, "the new flow to be offloaded", 5*time.Second, func() bool { return relay.OffloadedLinks() == 1 })
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(200 * time.Millisecond)
	atRight2.check(t, "left to right's new port", n1, n2)
	atLeft2.check(t, "right's new port to left", n1, n2)
	<-atRight2.done
	<-atLeft2.done

	// Closing the call removes every element of it.
	final, ok := relay.Close(id, "test")
	if !ok {
		t.Fatal("close: no session")
	}
	for side, want := range map[media.Side]uint64{media.A: n1 + n2, media.B: n1 + n2} {
		if got := final.Streams[0].Sides[side].RTP.Forwarded; got != want {
			t.Errorf("final stats side %v: forwarded %d, want %d (userspace and kernel together)", side, got, want)
		}
	}
	for _, name := range []string{"media_dnat4", "media_snat4"} {
		if n := nftElements(t, l.sbc, "map", name); n != 0 {
			t.Errorf("after the call, map %s holds %d elements", name, n)
		}
	}
	if n := nftElements(t, l.sbc, "set", "media_count4"); n != 0 {
		t.Errorf("after the call, set media_count4 holds %d elements", n)
	}
}

// TestIntegrationMediaOffloadMany offloads and withdraws 1,000 flows in
// batches and checks the maps are filled and then empty.
func TestIntegrationMediaOffloadMany(t *testing.T) {
	l := newLab(t)
	fw := l.offload(t, 40000, 49999)
	const n = 1000
	flows := make([]media.Flow, n)
	for i := range flows {
		flows[i] = media.Flow{
			Src:   netip.AddrPortFrom(l.leftIP, uint16(10000+i)),
			Local: netip.AddrPortFrom(l.sbcLeft, uint16(40000+2*i)),
			Out:   netip.AddrPortFrom(l.sbcRight, uint16(42000+2*i)),
			Dst:   netip.AddrPortFrom(l.rightIP, uint16(20000+i)),
		}
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var failed []error
	start := time.Now()
	wg.Add(n)
	for _, f := range flows {
		fw.Offload(f, func(err error) {
			defer wg.Done()
			if err != nil {
				mu.Lock()
				failed = append(failed, err)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	t.Logf("offloaded %d flows in %v", n, time.Since(start))
	if len(failed) > 0 {
		t.Fatalf("%d offloads failed, first: %v", len(failed), failed[0])
	}
	if got := nftElements(t, l.sbc, "map", "media_dnat4"); got != 2*n {
		t.Errorf("media_dnat4 holds %d elements, want %d", got, 2*n)
	}
	c, err := fw.Counters()
	if err != nil {
		t.Fatal(err)
	}
	if len(c) != 2*n {
		t.Errorf("Counters returned %d flows, want %d", len(c), 2*n)
	}
	start = time.Now()
	wg.Add(n)
	for _, f := range flows {
		fw.Withdraw(f, func(fwd, rev media.Counter) { wg.Done() })
	}
	wg.Wait()
	t.Logf("withdrew %d flows in %v", n, time.Since(start))
	for _, name := range []string{"media_dnat4", "media_snat4"} {
		if got := nftElements(t, l.sbc, "map", name); got != 0 {
			t.Errorf("after withdrawing everything, %s holds %d elements", name, got)
		}
	}
	if got := nftElements(t, l.sbc, "set", "media_count4"); got != 0 {
		t.Errorf("after withdrawing everything, media_count4 holds %d elements", got)
	}
}

// TestIntegrationMediaRuleset checks how the kernel reads back what
// NewMedia programs: nft's listing of the table must be the golden text,
// the nft syntax the rule encodings of TestMediaRulesGolden stand for.
func TestIntegrationMediaRuleset(t *testing.T) {
	l := newLab(t)
	l.offload(t, 20000, 29999)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := l.sbc.Command(ctx, "nft", "list", "table", "inet", firewall.TableName).Output()
	if err != nil {
		t.Fatalf("nft list table: %v", err)
	}
	golden := "testdata/media_ruleset.nft"
	if f := flag.Lookup("update"); f != nil && f.Value.String() == "true" {
		if err := os.WriteFile(golden, out, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if string(out) != string(want) {
		t.Errorf("nft list table inet %s:\n%s\nwant (%s):\n%s", firewall.TableName, out, golden, want)
	}
}
