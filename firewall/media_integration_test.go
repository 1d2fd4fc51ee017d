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
	// The right side is the public one: its media ports are closed but
	// for pinholes.
	m, err := firewall.NewMedia(firewall.MediaConfig{
		Addrs: []netip.Addr{l.sbcLeft, l.sbcRight}, PortMin: lo, PortMax: hi, NetNS: int(l.nsFd),
		Closed: []netip.Addr{l.sbcRight},
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
	src  map[uint32]netip.AddrPort // where each sequence number came from last
	done chan struct{}
}

func receive(c *net.UDPConn) *receiver {
	r := &receiver{seen: map[uint32]int{}, from: map[netip.AddrPort]int{}, src: map[uint32]netip.AddrPort{},
		done: make(chan struct{})}
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
				seq := binary.BigEndian.Uint32(buf[4:])
				r.seen[seq]++
				r.from[src]++
				r.src[seq] = src
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

// checkFrom reports every sequence number in [first, first+count) that
// came from another source than want.
func (r *receiver) checkFrom(t *testing.T, what string, first, count int, want netip.AddrPort) {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	wrong := map[netip.AddrPort]int{}
	for i := first; i < first+count; i++ {
		if src, ok := r.src[uint32(i)]; ok && src != want {
			wrong[src]++
		}
	}
	if len(wrong) > 0 {
		t.Errorf("%s: packets came from %v, want all from %v", what, wrong, want)
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

// openCall opens session id on relay between left 4000 and right 5000 and
// returns the relay's addresses that left and right send to.
func (l *lab) openCall(t *testing.T, relay *media.Relay, id media.SessionID) (relayA, relayB netip.AddrPort) {
	t.Helper()
	if err := relay.Open(id, media.Address{Bind: l.sbcLeft}, media.Address{Bind: l.sbcRight}); err != nil {
		t.Fatal(err)
	}
	var toRight, toLeft []byte
	var err error
	in(t, l.sbc, func() {
		toRight, err = relay.Offer(id, media.A, sdpFor(l.leftIP, 4000, 1))
		if err == nil {
			toLeft, err = relay.Answer(id, media.B, sdpFor(l.rightIP, 5000, 1))
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	return anchor(t, toLeft), anchor(t, toRight)
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
	relayA, relayB := l.openCall(t, relay, id)

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
	waitFor(t, "kernel counters to be polled", 15*time.Second, func() bool {
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
	if n := nftElements(t, l.sbc, "map", "media_dnat4"); n != 0 {
		t.Errorf("after the call, map media_dnat4 holds %d elements", n)
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
	c := make(map[media.Flow]media.Counter)
	if err := fw.Counters(c); err != nil {
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
	if got := nftElements(t, l.sbc, "map", "media_dnat4"); got != 0 {
		t.Errorf("after withdrawing everything, media_dnat4 holds %d elements", got)
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

// TestIntegrationMediaStaleRemoved starts media offload over what a killed
// daemon left behind (flows in the maps, no Close): the new instance
// starts from empty maps.
func TestIntegrationMediaStaleRemoved(t *testing.T) {
	l := newLab(t)
	old, err := firewall.NewMedia(firewall.MediaConfig{
		Addrs: []netip.Addr{l.sbcLeft, l.sbcRight}, PortMin: 30000, PortMax: 30099, NetNS: int(l.nsFd),
	}, testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	// Its goroutine outlives the "death"; stop it at the end without
	// touching the kernel.
	t.Cleanup(func() { _ = old.Close(true) })
	done := make(chan error, 1)
	old.Offload(media.Flow{
		Src: netip.AddrPortFrom(l.leftIP, 4000), Local: netip.AddrPortFrom(l.sbcLeft, 30000),
		Out: netip.AddrPortFrom(l.sbcRight, 30002), Dst: netip.AddrPortFrom(l.rightIP, 5000),
	}, func(err error) { done <- err })
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if n := nftElements(t, l.sbc, "map", "media_dnat4"); n != 2 {
		t.Fatalf("media_dnat4 holds %d elements after one offload, want 2", n)
	}
	// No Close: the process "died". A new instance takes over.
	l.offload(t, 30000, 30099)
	for _, name := range []string{"media_dnat4", "media_snat4"} {
		if n := nftElements(t, l.sbc, "map", name); n != 0 {
			t.Errorf("%s holds %d elements after a restart, want 0", name, n)
		}
	}
}

// TestIntegrationMediaKeepOldLayout starts media offload with Keep over the
// objects of an earlier version, which counted in sets of their own and
// keyed its SNAT map after DNAT: their flows cannot be adopted, so the new
// instance starts afresh with its own layout, and the calls' media goes
// through userspace until it is offloaded again.
func TestIntegrationMediaKeepOldLayout(t *testing.T) {
	l := newLab(t)
	const tuple4 = "ipv4_addr . inet_service . ipv4_addr . inet_service"
	const tuple6 = "ipv6_addr . inet_service . ipv6_addr . inet_service"
	old := fmt.Sprintf(`table inet %s {
	set media_local4 { type ipv4_addr; elements = { %v, %v } }
	map media_dnat4 { type %s : ipv4_addr . inet_service; elements = { %v . 4000 . %v . 30000 : %v . 5000 } }
	map media_snat4 { type %s : ipv4_addr . inet_service; elements = { %v . 4000 . %v . 5000 : %v . 30002 } }
	set media_count4 { type %s; counter; elements = { %v . 4000 . %v . 5000 } }
	set media_local6 { type ipv6_addr; }
	map media_dnat6 { type %s : ipv6_addr . inet_service; }
	map media_snat6 { type %s : ipv6_addr . inet_service; }
	set media_count6 { type %s; counter; }
}
`, firewall.TableName, l.sbcLeft, l.sbcRight,
		tuple4, l.leftIP, l.sbcLeft, l.rightIP,
		tuple4, l.leftIP, l.rightIP, l.sbcRight,
		tuple4, l.leftIP, l.rightIP,
		tuple6, tuple6, tuple6)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cmd := l.sbc.Command(ctx, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(old)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("load the old layout: %v: %s", err, out)
	}
	fw, err := firewall.NewMedia(firewall.MediaConfig{Addrs: []netip.Addr{l.sbcLeft, l.sbcRight},
		PortMin: 30000, PortMax: 30099, NetNS: int(l.nsFd), Keep: true}, testLog(t))
	if err != nil {
		t.Fatalf("NewMedia over the old layout: %v", err)
	}
	t.Cleanup(func() { _ = fw.Close(false) })
	f := media.Flow{Src: netip.AddrPortFrom(l.leftIP, 4000), Local: netip.AddrPortFrom(l.sbcLeft, 30000),
		Out: netip.AddrPortFrom(l.sbcRight, 30002), Dst: netip.AddrPortFrom(l.rightIP, 5000)}
	if fw.Adopt(f) {
		t.Error("Adopt claimed a flow of the old layout")
	}
	if n := nftElements(t, l.sbc, "map", "media_dnat4"); n != 0 {
		t.Errorf("media_dnat4 holds %d elements, want 0: the old ones are gone", n)
	}
	out, err := l.sbc.Command(ctx, "nft", "list", "table", "inet", firewall.TableName).Output()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(out), "media_count4") {
		t.Errorf("the old count set is still there:\n%s", out)
	}
	// The new layout works: the flow can be offloaded again.
	done := make(chan error, 1)
	fw.Offload(f, func(err error) { done <- err })
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if n := nftElements(t, l.sbc, "map", "media_dnat4"); n != 2 {
		t.Errorf("media_dnat4 holds %d elements after an offload, want 2", n)
	}
}

// TestIntegrationMediaKeep restarts the relay and the firewall in the
// middle of a call, as a daemon with keep_on_restart does: RTP keeps
// flowing through the kernel the whole time without a single loss, the new
// instance adopts the call's flow, prunes a flow nobody claims, and
// removes the call's elements when it ends.
func TestIntegrationMediaKeep(t *testing.T) {
	l := newLab(t)
	const lo, hi = 30000, 30099
	newRelay := func(fw *firewall.Media) *media.Relay {
		r, err := media.NewRelay(media.Config{PortMin: lo, PortMax: hi, Offloader: fw, Timeout: time.Minute,
			Quarantine: time.Second}, testLog(t))
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	cfg := firewall.MediaConfig{Addrs: []netip.Addr{l.sbcLeft, l.sbcRight}, PortMin: lo, PortMax: hi,
		NetNS: int(l.nsFd), Keep: true}
	fw1, err := firewall.NewMedia(cfg, testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	relay1 := newRelay(fw1)

	leftC := listenIn(t, l.left, netip.AddrPortFrom(l.leftIP, 4000))
	rightC := listenIn(t, l.right, netip.AddrPortFrom(l.rightIP, 5000))
	const id = media.SessionID("kept")
	relayA, relayB := l.openCall(t, relay1, id)
	// A flow no call will claim after the restart.
	orphan := make(chan error, 1)
	fw1.Offload(media.Flow{
		Src: netip.AddrPortFrom(l.leftIP, 7000), Local: netip.AddrPortFrom(l.sbcLeft, 30090),
		Out: netip.AddrPortFrom(l.sbcRight, 30092), Dst: netip.AddrPortFrom(l.rightIP, 7002),
	}, func(err error) { orphan <- err })
	if err := <-orphan; err != nil {
		t.Fatal(err)
	}

	const n = 2500 // 5 s at 2 ms: the restart happens in the middle
	atRight, atLeft := receive(rightC), receive(leftC)
	errs := make(chan error, 2)
	go func() { errs <- sender(leftC, relayA, 0, n, 2*time.Millisecond) }()
	go func() { errs <- sender(rightC, relayB, 0, n, 2*time.Millisecond) }()
	waitFor(t, "the stream to be offloaded", 5*time.Second, func() bool { return relay1.OffloadedLinks() == 1 })
	time.Sleep(500 * time.Millisecond)

	// The restart: state out, old instance detached, new one in.
	state, ok := relay1.State(id)
	if !ok {
		t.Fatal("State: no session")
	}
	relay1.Detach()
	if err := fw1.Close(true); err != nil {
		t.Fatal(err)
	}
	fw2, err := firewall.NewMedia(cfg, testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = fw2.Close(false) })
	relay2 := newRelay(fw2)
	t.Cleanup(relay2.Shutdown)
	in(t, l.sbc, func() { err = relay2.Restore(state) })
	if err != nil {
		t.Fatalf("Restore: %v", err)
	}
	if err := fw2.Prune(); err != nil {
		t.Fatal(err)
	}
	if got := relay2.OffloadedLinks(); got != 1 {
		t.Errorf("%d links offloaded after the restart, want the adopted one", got)
	}
	if got := nftElements(t, l.sbc, "map", "media_dnat4"); got != 2 {
		t.Errorf("media_dnat4 holds %d elements after the prune, want the call's 2", got)
	}

	for range 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(200 * time.Millisecond)
	atRight.check(t, "left to right across the restart", 0, n)
	atLeft.check(t, "right to left across the restart", 0, n)
	<-atRight.done
	<-atLeft.done

	final, ok := relay2.Close(id, "test")
	if !ok {
		t.Fatal("close: no session")
	}
	if got := final.Streams[0].Sides[media.A].RTP.Forwarded; got != n {
		t.Errorf("side A forwarded %d over both instances, want %d", got, n)
	}
	if got := nftElements(t, l.sbc, "map", "media_dnat4"); got != 0 {
		t.Errorf("media_dnat4 holds %d elements after the call, want 0", got)
	}
}

// TestIntegrationMediaSharedEnds offloads several calls whose streams join
// the same two far-end endpoints (one port per side for every call, as
// SIPp's media scenarios send) through different relay ports: every one
// goes to the kernel, every packet reaches the right far end from the relay
// port of its own call, and each direction of each call has its own exact
// counter.
func TestIntegrationMediaSharedEnds(t *testing.T) {
	l := newLab(t)
	const lo, hi = 31000, 31099
	fw := l.offload(t, lo, hi)
	relay, err := media.NewRelay(media.Config{PortMin: lo, PortMax: hi, Offloader: fw, Timeout: time.Minute,
		Quarantine: time.Second}, testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(relay.Shutdown)
	leftAP, rightAP := netip.AddrPortFrom(l.leftIP, 4000), netip.AddrPortFrom(l.rightIP, 5000)
	leftC, rightC := listenIn(t, l.left, leftAP), listenIn(t, l.right, rightAP)

	const calls = 4
	type call struct {
		id              media.SessionID
		relayA, relayB  netip.AddrPort
		toRight, toLeft int // packets each way once offloaded: distinct per call
	}
	cs := make([]call, calls)
	for i := range cs {
		c := &cs[i]
		c.id = media.SessionID(fmt.Sprintf("shared-%d", i))
		c.relayA, c.relayB = l.openCall(t, relay, c.id)
		c.toRight, c.toLeft = 40+10*i, 25+10*i
	}
	// seq is where the sequence numbers of call i in one direction start.
	seq := func(i int) int { return 1000 * (i + 1) }

	// Latching: one packet each way per call, through userspace; the
	// second one's arrival queues the offload.
	atRight, atLeft := receive(rightC), receive(leftC)
	for i, c := range cs {
		if err := sender(leftC, c.relayA, seq(i), 1, 0); err != nil {
			t.Fatal(err)
		}
		if err := sender(rightC, c.relayB, seq(i), 1, 0); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "every call's RTP to be offloaded", 5*time.Second, func() bool { return relay.OffloadedLinks() == calls })
	if got := nftElements(t, l.sbc, "map", "media_dnat4"); got != 2*calls {
		t.Errorf("media_dnat4 holds %d elements, want %d (both directions of every call)", got, 2*calls)
	}

	// In the kernel: each call sends its own number of packets each way,
	// all calls at once.
	var wg sync.WaitGroup
	errs := make(chan error, 2*calls)
	for i, c := range cs {
		wg.Add(2)
		go func() { defer wg.Done(); errs <- sender(leftC, c.relayA, seq(i)+1, c.toRight, time.Millisecond) }()
		go func() { defer wg.Done(); errs <- sender(rightC, c.relayB, seq(i)+1, c.toLeft, time.Millisecond) }()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(200 * time.Millisecond)
	for i, c := range cs {
		atRight.check(t, fmt.Sprintf("call %d left to right", i), seq(i), 1+c.toRight)
		atLeft.check(t, fmt.Sprintf("call %d right to left", i), seq(i), 1+c.toLeft)
		atRight.checkFrom(t, fmt.Sprintf("call %d at right", i), seq(i), 1+c.toRight, c.relayB)
		atLeft.checkFrom(t, fmt.Sprintf("call %d at left", i), seq(i), 1+c.toLeft, c.relayA)
	}

	// The kernel's counters: one per direction of each call, each exactly
	// what that direction sent after the offload.
	counters := make(map[media.Flow]media.Counter)
	if err := fw.Counters(counters); err != nil {
		t.Fatal(err)
	}
	if len(counters) != 2*calls {
		t.Errorf("Counters returned %d directions, want %d", len(counters), 2*calls)
	}
	for i, c := range cs {
		f := media.Flow{Src: leftAP, Local: c.relayA, Out: c.relayB, Dst: rightAP}
		if got := counters[f].Packets; got != uint64(c.toRight) {
			t.Errorf("call %d: kernel counted %d packets left to right, want %d", i, got, c.toRight)
		}
		if got := counters[f.Reverse()].Packets; got != uint64(c.toLeft) {
			t.Errorf("call %d: kernel counted %d packets right to left, want %d", i, got, c.toLeft)
		}
	}

	// Closing each call gives its exact totals and removes its elements.
	for i, c := range cs {
		final, ok := relay.Close(c.id, "test")
		if !ok {
			t.Fatalf("close call %d: no session", i)
		}
		sides := final.Streams[0].Sides
		if got, want := sides[media.A].RTP.Forwarded, uint64(1+c.toRight); got != want {
			t.Errorf("call %d: side A forwarded %d, want %d", i, got, want)
		}
		if got, want := sides[media.B].RTP.Forwarded, uint64(1+c.toLeft); got != want {
			t.Errorf("call %d: side B forwarded %d, want %d", i, got, want)
		}
		if got, want := sides[media.A].RTP.Offloaded, uint64(c.toRight); got != want {
			t.Errorf("call %d: side A offloaded %d, want %d", i, got, want)
		}
	}
	if got := nftElements(t, l.sbc, "map", "media_dnat4"); got != 0 {
		t.Errorf("after the calls, media_dnat4 holds %d elements", got)
	}
}

// TestIntegrationMediaOffload6 is the handover of TestIntegrationMediaOffload
// over IPv6: the same relay, the family's own maps and NAT.
func TestIntegrationMediaOffload6(t *testing.T) {
	testenv.Integration(t)
	testenv.RequireTool(t, "nft")
	left, sbc, right := testenv.NewNetns(t, "esbc-fwl6"), testenv.NewNetns(t, "esbc-fws6"), testenv.NewNetns(t, "esbc-fwr6")
	// No duplicate address detection: the addresses are usable at once.
	for _, ns := range []*testenv.Netns{left, sbc, right} {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		out, err := ns.Command(ctx, "sysctl", "-qw", "net.ipv6.conf.default.accept_dad=0", "net.ipv6.conf.all.accept_dad=0").CombinedOutput()
		cancel()
		if err != nil {
			t.Fatalf("disable DAD in %s: %v: %s", ns, err, out)
		}
	}
	leftIP, sbcLeft := netip.MustParseAddr("fd00:93:1::2"), netip.MustParseAddr("fd00:93:1::1")
	sbcRight, rightIP := netip.MustParseAddr("fd00:93:2::1"), netip.MustParseAddr("fd00:93:2::2")
	testenv.Link(t, left, "eth-s", netip.PrefixFrom(leftIP, 64), sbc, "eth-l", netip.PrefixFrom(sbcLeft, 64))
	testenv.Link(t, sbc, "eth-r", netip.PrefixFrom(sbcRight, 64), right, "eth-s", netip.PrefixFrom(rightIP, 64))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if out, err := sbc.Command(ctx, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1").CombinedOutput(); err != nil {
		t.Fatalf("enable forwarding: %v: %s", err, out)
	}
	h, err := netns.GetFromName(sbc.Name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	const lo, hi = 30000, 30099
	// The right side is closed: its RTP passes through pinholes.
	fw, err := firewall.NewMedia(firewall.MediaConfig{Addrs: []netip.Addr{sbcLeft, sbcRight}, PortMin: lo, PortMax: hi,
		NetNS: int(h), Closed: []netip.Addr{sbcRight}}, testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = fw.Close(false) })
	relay, err := media.NewRelay(media.Config{PortMin: lo, PortMax: hi, Offloader: fw, Timeout: time.Minute}, testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(relay.Shutdown)

	listen6 := func(ns *testenv.Netns, ap netip.AddrPort) *net.UDPConn {
		var c *net.UDPConn
		var err error
		in(t, ns, func() { c, err = net.ListenUDP("udp6", net.UDPAddrFromAddrPort(ap)) })
		if err != nil {
			t.Fatalf("listen %v: %v", ap, err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	leftC := listen6(left, netip.AddrPortFrom(leftIP, 4000))
	rightC := listen6(right, netip.AddrPortFrom(rightIP, 5000))
	sdp6 := func(ip netip.Addr, port int) []byte {
		return fmt.Appendf(nil, "v=0\r\no=- 1 1 IN IP6 %v\r\ns=-\r\nc=IN IP6 %v\r\nt=0 0\r\nm=audio %d RTP/AVP 0\r\n", ip, ip, port)
	}
	const id = media.SessionID("call-v6")
	if err := relay.Open(id, media.Address{Bind: sbcLeft}, media.Address{Bind: sbcRight}); err != nil {
		t.Fatal(err)
	}
	var toRight, toLeft []byte
	in(t, sbc, func() {
		toRight, err = relay.Offer(id, media.A, sdp6(leftIP, 4000))
		if err == nil {
			toLeft, err = relay.Answer(id, media.B, sdp6(rightIP, 5000))
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	relayA, relayB := anchor(t, toLeft), anchor(t, toRight)
	if got := nftElements(t, sbc, "set", "media_pin6"); got != 2 {
		t.Errorf("media_pin6 holds %d pinholes, want the right side's RTP and RTCP", got)
	}
	// A stranger on the right is dropped by the kernel: the relay never
	// sees it.
	strangerIP := netip.MustParseAddr("fd00:93:2::3")
	addAddr(t, right, "eth-s", netip.PrefixFrom(strangerIP, 64))
	strangerC := listen6(right, netip.AddrPortFrom(strangerIP, 6000))
	if err := sender(strangerC, relayB, 0, 20, time.Millisecond); err != nil {
		t.Fatal(err)
	}

	const n = 1000
	atRight, atLeft := receive(rightC), receive(leftC)
	errs := make(chan error, 2)
	go func() { errs <- sender(leftC, relayA, 0, n, 2*time.Millisecond) }()
	go func() { errs <- sender(rightC, relayB, 0, n, 2*time.Millisecond) }()
	waitFor(t, "the IPv6 stream to be offloaded", 5*time.Second, func() bool { return relay.OffloadedLinks() == 1 })
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(200 * time.Millisecond)
	atRight.check(t, "left to right", 0, n)
	atLeft.check(t, "right to left", 0, n)
	if src := atRight.sources(); len(src) != 1 || src[relayB] != n {
		t.Errorf("right received from %v, want all %d from %v", src, n, relayB)
	}
	waitFor(t, "kernel counters", 15*time.Second, func() bool {
		st, _ := relay.Stats(id)
		return st.Streams[0].Sides[media.A].RTP.Offloaded > n/2
	})
	if st, _ := relay.Stats(id); st.Streams[0].Sides[media.B].RTP.DroppedStranger != 0 {
		t.Errorf("the relay saw %d packets of the IPv6 stranger, want none", st.Streams[0].Sides[media.B].RTP.DroppedStranger)
	}
	if got := pinDrops(t, sbc); got != 20 {
		t.Errorf("media_pin dropped %d IPv6 packets, want the stranger's 20", got)
	}
	relay.Close(id, "test")
	if got := nftElements(t, sbc, "map", "media_dnat6"); got != 0 {
		t.Errorf("media_dnat6 holds %d elements after the call", got)
	}
}

// TestIntegrationMediaRebuild removes the edgesbc table from outside while a
// flow is offloaded (a host firewall reload does that with its ruleset
// flush): the next counter read rebuilds the table with the flow in it.
func TestIntegrationMediaRebuild(t *testing.T) {
	l := newLab(t)
	fw := l.offload(t, 30000, 30099)
	f := media.Flow{
		Src: netip.AddrPortFrom(l.leftIP, 4000), Local: netip.AddrPortFrom(l.sbcLeft, 30000),
		Out: netip.AddrPortFrom(l.sbcRight, 30002), Dst: netip.AddrPortFrom(l.rightIP, 5000),
	}
	done := make(chan error, 1)
	fw.Offload(f, func(err error) { done <- err })
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	// A pinhole on the closed side, and one on the open side that is not
	// kept at all.
	fw.OpenPinhole(f.Out, f.Dst.Addr(), nil)
	fw.OpenPinhole(f.Local, f.Src.Addr(), nil)
	waitFor(t, "the pinhole", 2*time.Second, func() bool { return nftElements(t, l.sbc, "set", "media_pin4") == 1 })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if out, err := l.sbc.Command(ctx, "nft", "flush", "ruleset").CombinedOutput(); err != nil {
		t.Fatalf("nft flush ruleset: %v: %s", err, out)
	}
	c := make(map[media.Flow]media.Counter)
	if err := fw.Counters(c); err != nil {
		t.Fatalf("Counters after the table was removed: %v", err)
	}
	if _, ok := c[f]; !ok {
		t.Errorf("Counters after the rebuild lack the offloaded flow: %v", c)
	}
	if n := nftElements(t, l.sbc, "map", "media_dnat4"); n != 2 {
		t.Errorf("media_dnat4 holds %d elements after the rebuild, want 2", n)
	}
	if n := nftElements(t, l.sbc, "set", "media_pin4"); n != 1 {
		t.Errorf("media_pin4 holds %d elements after the rebuild, want the pinhole", n)
	}
	if n := nftElements(t, l.sbc, "set", "media_closed4"); n != 1 {
		t.Errorf("media_closed4 holds %d elements after the rebuild, want 1", n)
	}
	// Closing the pinhole after the rebuild works as before.
	fw.ClosePinhole(f.Out, f.Dst.Addr())
	waitFor(t, "the pinhole to close", 2*time.Second, func() bool { return nftElements(t, l.sbc, "set", "media_pin4") == 0 })
}

// TestIntegrationMediaRebuildOnOffload removes the table while nothing is
// offloaded: the next offload rebuilds it instead of failing.
func TestIntegrationMediaRebuildOnOffload(t *testing.T) {
	l := newLab(t)
	fw := l.offload(t, 30000, 30099)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if out, err := l.sbc.Command(ctx, "nft", "delete", "table", "inet", firewall.TableName).CombinedOutput(); err != nil {
		t.Fatalf("nft delete table: %v: %s", err, out)
	}
	done := make(chan error, 1)
	fw.Offload(media.Flow{
		Src: netip.AddrPortFrom(l.leftIP, 4000), Local: netip.AddrPortFrom(l.sbcLeft, 30000),
		Out: netip.AddrPortFrom(l.sbcRight, 30002), Dst: netip.AddrPortFrom(l.rightIP, 5000),
	}, func(err error) { done <- err })
	if err := <-done; err != nil {
		t.Fatalf("offload after the table was removed: %v", err)
	}
	if n := nftElements(t, l.sbc, "map", "media_dnat4"); n != 2 {
		t.Errorf("media_dnat4 holds %d elements, want 2", n)
	}
}

// addAddr adds a second address to a namespace's interface.
func addAddr(t *testing.T, ns *testenv.Netns, dev string, p netip.Prefix) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if out, err := ns.Command(ctx, "ip", "addr", "add", p.String(), "dev", dev).CombinedOutput(); err != nil {
		t.Fatalf("ip addr add %v dev %s in %s: %v: %s", p, dev, ns, err, out)
	}
}

// pinDrops reads the packets counted by the drop rules of chain media_pin.
func pinDrops(t *testing.T, ns *testenv.Netns) uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := ns.Command(ctx, "nft", "-j", "list", "chain", "inet", firewall.TableName, "media_pin").Output()
	if err != nil {
		t.Fatalf("nft list chain media_pin: %v", err)
	}
	var doc struct {
		Nftables []struct {
			Rule *struct {
				Expr []struct {
					Counter *struct {
						Packets uint64 `json:"packets"`
					} `json:"counter"`
				} `json:"expr"`
			} `json:"rule"`
		} `json:"nftables"`
	}
	if err := json.Unmarshal(out, &doc); err != nil {
		t.Fatalf("parse nft output: %v", err)
	}
	var n uint64
	for _, o := range doc.Nftables {
		if o.Rule == nil {
			continue
		}
		for _, e := range o.Rule.Expr {
			if e.Counter != nil {
				n += e.Counter.Packets
			}
		}
	}
	return n
}

// TestIntegrationMediaPinholes runs a call through the real relay with the
// right side closed: a stranger on the right reaches none of the relay's
// ports there (the kernel drops its datagrams, the relay never sees them),
// the announced party's RTP and RTCP pass, the left side stays open (the
// relay sees and drops the left stranger itself), and the end of the call
// closes the pinholes.
func TestIntegrationMediaPinholes(t *testing.T) {
	l := newLab(t)
	const lo, hi = 30000, 30099
	fw := l.offload(t, lo, hi)
	relay, err := media.NewRelay(media.Config{PortMin: lo, PortMax: hi, Offloader: fw, Timeout: time.Minute,
		Quarantine: time.Second}, testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(relay.Shutdown)
	strangerR, strangerL := netip.MustParseAddr("10.93.2.3"), netip.MustParseAddr("10.93.1.3")
	addAddr(t, l.right, "eth-s", netip.PrefixFrom(strangerR, 24))
	addAddr(t, l.left, "eth-s", netip.PrefixFrom(strangerL, 24))

	leftC := listenIn(t, l.left, netip.AddrPortFrom(l.leftIP, 4000))
	rightC := listenIn(t, l.right, netip.AddrPortFrom(l.rightIP, 5000))
	rightRTCP := listenIn(t, l.right, netip.AddrPortFrom(l.rightIP, 5001))
	strangerRC := listenIn(t, l.right, netip.AddrPortFrom(strangerR, 6000))
	strangerLC := listenIn(t, l.left, netip.AddrPortFrom(strangerL, 6000))

	const id = media.SessionID("call-pins")
	relayA, relayB := l.openCall(t, relay, id)
	relayBRTCP := netip.AddrPortFrom(relayB.Addr(), relayB.Port()+1)
	// The right side's RTP and RTCP sockets got a pinhole each before
	// Answer returned; the left side is not closed, so it gets none.
	if n := nftElements(t, l.sbc, "set", "media_pin4"); n != 2 {
		t.Fatalf("media_pin4 holds %d pinholes once the answer is anchored, want 2", n)
	}
	if n := nftElements(t, l.sbc, "set", "media_closed4"); n != 1 {
		t.Errorf("media_closed4 holds %d addresses, want the right one", n)
	}

	// Strangers first, while nothing is latched: on the right to the
	// call's RTP and RTCP ports and to a port no call uses, on the left
	// to the call's RTP port.
	const n = 50
	unused := netip.AddrPortFrom(l.sbcRight, hi-1)
	for _, dst := range []netip.AddrPort{relayB, relayBRTCP, unused} {
		if err := sender(strangerRC, dst, 0, n, time.Millisecond); err != nil {
			t.Fatal(err)
		}
	}
	if err := sender(strangerLC, relayA, 0, n, time.Millisecond); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the left stranger to reach the relay", 2*time.Second, func() bool {
		st, _ := relay.Stats(id)
		return st.Streams[0].Sides[media.A].RTP.DroppedStranger == n
	})
	if got := pinDrops(t, l.sbc); got != 3*n {
		t.Errorf("media_pin dropped %d packets, want the right stranger's %d", got, 3*n)
	}
	st, _ := relay.Stats(id)
	for what, f := range map[string]media.FlowStats{"rtp": st.Streams[0].Sides[media.B].RTP, "rtcp": st.Streams[0].Sides[media.B].RTCP} {
		if f.Packets != 0 || f.DroppedStranger != 0 {
			t.Errorf("right side %s: the relay saw %d packets (%d from strangers), want none: the kernel drops them", what, f.Packets, f.DroppedStranger)
		}
	}

	// The announced parties pass both ways, RTP and RTCP.
	atRight, atLeft := receive(rightC), receive(leftC)
	errs := make(chan error, 2)
	go func() { errs <- sender(leftC, relayA, 0, 200, 2*time.Millisecond) }()
	go func() { errs <- sender(rightC, relayB, 0, 200, 2*time.Millisecond) }()
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if err := sender(rightRTCP, relayBRTCP, 0, 5, time.Millisecond); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	atRight.check(t, "left to right", 0, 200)
	atLeft.check(t, "right to left", 0, 200)
	<-atRight.done
	<-atLeft.done
	st, _ = relay.Stats(id)
	if f := st.Streams[0].Sides[media.B].RTCP; f.Forwarded != 5 {
		t.Errorf("right side RTCP: %d of 5 forwarded", f.Forwarded)
	}
	// the RTCP sockets, bound once RTP flowed, are in the sbc namespace
	// like the RTP sockets beside them, though the relay's own goroutines
	// run outside it
	if n := relay.RTCPBindFailed(); n != 0 {
		t.Errorf("%d streams lost their RTCP sockets", n)
	}
	if got := pinDrops(t, l.sbc); got != 3*n {
		t.Errorf("media_pin dropped %d packets after the call's own media, want still %d", got, 3*n)
	}

	relay.Close(id, "test")
	waitFor(t, "the pinholes to close", 2*time.Second, func() bool { return nftElements(t, l.sbc, "set", "media_pin4") == 0 })
}

// TestIntegrationMediaRebuildIdle removes the ruleset while only pinholes
// are in the kernel and nothing else happens: the owner goroutine's idle
// check puts them back. Then the table alone is recreated (as the guard
// does after a flush) without the media objects: the next change (or
// check) still finds them missing, and the change succeeds.
func TestIntegrationMediaRebuildIdle(t *testing.T) {
	l := newLab(t)
	m, err := firewall.NewMedia(firewall.MediaConfig{
		Addrs: []netip.Addr{l.sbcLeft, l.sbcRight}, PortMin: 30000, PortMax: 30099, NetNS: int(l.nsFd),
		Closed: []netip.Addr{l.sbcRight}, CheckEvery: 200 * time.Millisecond,
	}, testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Close(false) })
	pinned := make(chan struct{})
	m.OpenPinhole(netip.AddrPortFrom(l.sbcRight, 30002), l.rightIP, func() { close(pinned) })
	<-pinned
	nft := func(args ...string) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if out, err := l.sbc.Command(ctx, "nft", args...).CombinedOutput(); err != nil {
			t.Fatalf("nft %v: %v: %s", args, err, out)
		}
	}
	nft("flush", "ruleset")
	waitFor(t, "the idle check to rebuild the pinholes", 5*time.Second, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if l.sbc.Command(ctx, "nft", "list", "set", "inet", firewall.TableName, "media_pin4").Run() != nil {
			return false
		}
		return nftElements(t, l.sbc, "set", "media_pin4") == 1
	})
	if n := nftElements(t, l.sbc, "set", "media_closed4"); n != 1 {
		t.Errorf("media_closed4 holds %d addresses after the rebuild, want 1", n)
	}

	nft("flush", "ruleset")
	nft("add", "table", "inet", firewall.TableName)
	done := make(chan error, 1)
	m.Offload(media.Flow{
		Src: netip.AddrPortFrom(l.leftIP, 4000), Local: netip.AddrPortFrom(l.sbcLeft, 30000),
		Out: netip.AddrPortFrom(l.sbcRight, 30002), Dst: netip.AddrPortFrom(l.rightIP, 5000),
	}, func(err error) { done <- err })
	if err := <-done; err != nil {
		t.Fatalf("offload with the table there but the media objects gone: %v", err)
	}
	if n := nftElements(t, l.sbc, "map", "media_dnat4"); n != 2 {
		t.Errorf("media_dnat4 holds %d elements, want 2", n)
	}
	if n := nftElements(t, l.sbc, "set", "media_pin4"); n != 1 {
		t.Errorf("media_pin4 holds %d elements, want the pinhole", n)
	}
}

// TestIntegrationMediaPinholesMany opens and closes 4,000 pinholes (2,000
// calls' worth of RTP and RTCP on the closed side) and measures how long
// the kernel takes to have them.
func TestIntegrationMediaPinholesMany(t *testing.T) {
	l := newLab(t)
	fw := l.offload(t, 20000, 29999)
	const n = 4000
	var wg sync.WaitGroup
	start := time.Now()
	wg.Add(n)
	for i := range n {
		remote := netip.AddrFrom4([4]byte{10, 93, 2, byte(2 + i%200)})
		fw.OpenPinhole(netip.AddrPortFrom(l.sbcRight, uint16(20000+i)), remote, wg.Done)
	}
	wg.Wait()
	opened := time.Since(start)
	if got := nftElements(t, l.sbc, "set", "media_pin4"); got != n {
		t.Fatalf("media_pin4 holds %d pinholes, want %d", got, n)
	}
	start = time.Now()
	for i := range n {
		remote := netip.AddrFrom4([4]byte{10, 93, 2, byte(2 + i%200)})
		fw.ClosePinhole(netip.AddrPortFrom(l.sbcRight, uint16(20000+i)), remote)
	}
	waitFor(t, "every pinhole to close", 10*time.Second, func() bool { return nftElements(t, l.sbc, "set", "media_pin4") == 0 })
	t.Logf("opened %d pinholes in %v, closed them in %v (including the polling of nft)", n, opened, time.Since(start))
}
