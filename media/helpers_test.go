package media

import (
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/edgesbc/edgesbc/media/sdp"
	"github.com/hashicorp/go-hclog"
	"github.com/pion/rtp"
)

// Loopback addresses of the tests: the relay binds side A on relayA and
// side B on relayB; the "phones" are phoneAIP and phoneBIP. Linux routes
// all of 127/8 to lo.
var (
	relayA    = netip.MustParseAddr("127.0.0.1")
	relayB    = netip.MustParseAddr("127.0.0.2")
	phoneAIP  = netip.MustParseAddr("127.0.0.3")
	phoneBIP  = netip.MustParseAddr("127.0.0.4")
	strangeIP = netip.MustParseAddr("127.0.0.5")
)

// testPortRange returns a random port range of n ports below the Linux
// ephemeral range (32768+), so that the phones' and other tests' ephemeral
// sockets never sit inside it.
func testPortRange(n int) (int, int) {
	// 14000-25999: the sbc package's tests take 26000-31999, and the
	// kernel's ephemeral ports start at 32768, so parallel packages never
	// take each other's relay ports.
	base := 14000 + 2*rand.IntN((26000-14000-n)/2)
	return base, base + n - 1
}

func testLogger() hclog.Logger {
	// Trace level exercises every log call site; the output is discarded
	// unless MEDIA_TEST_LOG is set.
	var out io.Writer = io.Discard
	if os.Getenv("MEDIA_TEST_LOG") != "" {
		out = os.Stderr
	}
	return hclog.New(&hclog.LoggerOptions{Level: hclog.Trace, Output: out})
}

// ioImpls lists the batch I/O implementations that run on this platform.
func ioImpls() []ioImpl {
	if runtime.GOOS == "linux" {
		return []ioImpl{ioEpoll, ioMmsg, ioXNet}
	}
	return []ioImpl{ioXNet}
}

func newTestRelay(t testing.TB, impl ioImpl, mod func(*Config)) *Relay {
	t.Helper()
	lo, hi := testPortRange(400)
	cfg := Config{PortMin: lo, PortMax: hi, Timeout: time.Hour, batchIO: impl}
	if mod != nil {
		mod(&cfg)
	}
	r, err := NewRelay(cfg, testLogger())
	if err != nil {
		t.Fatalf("NewRelay: %v", err)
	}
	t.Cleanup(r.Shutdown)
	return r
}

func openCall(t testing.TB, r *Relay, id SessionID) {
	t.Helper()
	if err := r.Open(id, Address{Bind: relayA}, Address{Bind: relayB}); err != nil {
		t.Fatalf("Open(%s): %v", id, err)
	}
}

// phone is a fake SIP phone's media: an RTP and an RTCP socket on one IP.
type phone struct {
	rtp, rtcp *net.UDPConn
	rtcpAttr  bool // RTCP is not on RTP+1: announce it with a=rtcp
}

func listen(t testing.TB, ip netip.Addr, port int) (*net.UDPConn, error) {
	t.Helper()
	network := "udp4"
	if ip.Is6() {
		network = "udp6"
	}
	c, err := net.ListenUDP(network, net.UDPAddrFromAddrPort(netip.AddrPortFrom(ip, uint16(port))))
	if err == nil {
		t.Cleanup(func() { c.Close() })
	}
	return c, err
}

// newPhone binds a phone on ip. With adjacent, RTCP is on RTP+1 (found by
// trying random even ports); otherwise both are ephemeral and RTCP is
// announced with a=rtcp (RFC 3605).
func newPhone(t testing.TB, ip netip.Addr, adjacent bool) *phone {
	t.Helper()
	if !adjacent {
		rtpc, err := listen(t, ip, 0)
		if err != nil {
			t.Fatal(err)
		}
		rtcpc, err := listen(t, ip, 0)
		if err != nil {
			t.Fatal(err)
		}
		return &phone{rtp: rtpc, rtcp: rtcpc, rtcpAttr: true}
	}
	for range 100 {
		port := 32000 - 2*rand.IntN(3000)
		rtpc, err := listen(t, ip, port)
		if err != nil {
			continue
		}
		rtcpc, err := listen(t, ip, port+1)
		if err != nil {
			rtpc.Close()
			continue
		}
		return &phone{rtp: rtpc, rtcp: rtcpc}
	}
	t.Fatalf("no adjacent port pair free on %v", ip)
	return nil
}

func addrOf(c *net.UDPConn) netip.AddrPort {
	return c.LocalAddr().(*net.UDPAddr).AddrPort()
}

func (p *phone) sdp(version int, extra ...mline) []byte {
	rtpAddr := addrOf(p.rtp)
	lines := []mline{{kind: "audio", port: int(rtpAddr.Port())}}
	if p.rtcpAttr {
		lines[0].rtcp = int(addrOf(p.rtcp).Port())
	}
	return sdpBody(rtpAddr.Addr(), version, append(lines, extra...)...)
}

// mline is one m= line of a test SDP body.
type mline struct {
	kind  string // audio, video, message
	port  int
	rtcp  int    // a=rtcp port; 0: none
	proto string // default RTP/AVP
}

func sdpBody(ip netip.Addr, version int, ms ...mline) []byte {
	var b strings.Builder
	fam := "IP4"
	if ip.Is6() {
		fam = "IP6"
	}
	fmt.Fprintf(&b, "v=0\r\no=phone 4242 %d IN %s %v\r\ns=call\r\nc=IN %s %v\r\nt=0 0\r\n", version, fam, ip, fam, ip)
	for _, m := range ms {
		proto := m.proto
		if proto == "" {
			proto = "RTP/AVP"
		}
		switch m.kind {
		case "video":
			fmt.Fprintf(&b, "m=video %d %s 96\r\na=rtpmap:96 H264/90000\r\n", m.port, proto)
		case "message":
			fmt.Fprintf(&b, "m=message %d %s *\r\n", m.port, proto)
		default:
			fmt.Fprintf(&b, "m=audio %d %s 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\n", m.port, proto)
		}
		if m.rtcp != 0 {
			fmt.Fprintf(&b, "a=rtcp:%d\r\n", m.rtcp)
		}
		b.WriteString("a=sendrecv\r\n")
	}
	return []byte(b.String())
}

// parseOut parses a body the relay returned.
func parseOut(t testing.TB, body []byte) *sdp.Description {
	t.Helper()
	d, err := sdp.Parse(body)
	if err != nil {
		t.Fatalf("relay returned unparsable SDP: %v\n%s", err, body)
	}
	return d
}

// anchorOf returns the RTP and RTCP destination that a rewritten body
// tells its receiver to send stream i to.
func anchorOf(t testing.TB, body []byte, i int) (rtpAP, rtcpAP netip.AddrPort) {
	t.Helper()
	ms := parseOut(t, body).Media()
	if i >= len(ms) {
		t.Fatalf("rewritten SDP has %d m= lines, want > %d", len(ms), i)
	}
	m := ms[i]
	rtpAP = netip.AddrPortFrom(m.Addr, uint16(m.Port))
	rtcpAP = netip.AddrPortFrom(m.Addr, uint16(m.Port+1))
	if m.RTCP.IsValid() {
		rtcpAP = m.RTCP
	}
	return rtpAP, rtcpAP
}

// rtpPacket marshals an RTP packet whose payload is derived from seq, so
// the receiver can check it byte for byte.
func rtpPacket(t testing.TB, pt uint8, seq uint16, ssrc uint32) []byte {
	t.Helper()
	p := rtp.Packet{
		Header:  rtp.Header{Version: 2, PayloadType: pt, SequenceNumber: seq, Timestamp: uint32(seq) * 160, SSRC: ssrc},
		Payload: payloadFor(pt, seq),
	}
	b, err := p.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func payloadFor(pt uint8, seq uint16) []byte {
	if pt == 101 { // RFC 4733 telephone-event: event, E/R/volume, duration
		return []byte{byte(seq % 16), 0x0a, byte(seq >> 8), byte(seq)}
	}
	b := make([]byte, 160)
	for i := range b {
		b[i] = byte(int(seq) + i)
	}
	return b
}

// rtcpPacket is a minimal receiver report (RFC 3550 §6.4.2) with a marker in
// the SSRC so that it can be told apart.
func rtcpPacket(n uint32) []byte {
	return []byte{0x80, 201, 0, 1, byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)}
}

// datagram is one received datagram.
type datagram struct {
	from    netip.AddrPort
	payload []byte
}

// collect reads from c until want datagrams arrived or timeout passed, then
// keeps reading for linger to catch duplicates.
func collect(c *net.UDPConn, want int, timeout, linger time.Duration) []datagram {
	var got []datagram
	deadline := time.Now().Add(timeout)
	lingering := false
	buf := make([]byte, 2048)
	for {
		if !lingering && len(got) >= want {
			deadline, lingering = time.Now().Add(linger), true
		}
		c.SetReadDeadline(deadline)
		n, from, err := c.ReadFromUDPAddrPort(buf)
		if err != nil {
			return got
		}
		got = append(got, datagram{from: from, payload: append([]byte(nil), buf[:n]...)})
	}
}

// expectSilence asserts that nothing arrives on c within d.
func expectSilence(t testing.TB, c *net.UDPConn, d time.Duration, what string) {
	t.Helper()
	if got := collect(c, 1, d, 0); len(got) > 0 {
		t.Errorf("%s: got %d datagrams, want none (first from %v)", what, len(got), got[0].from)
	}
}

func sendTo(t testing.TB, c *net.UDPConn, to netip.AddrPort, pkts ...[]byte) {
	t.Helper()
	for i, p := range pkts {
		if _, err := c.WriteToUDPAddrPort(p, to); err != nil {
			t.Fatalf("send to %v: %v", to, err)
		}
		if i%16 == 15 {
			time.Sleep(time.Millisecond) // pace: never overrun loopback socket buffers
		}
	}
}

// eventually polls cond until it holds or the (generous) deadline passes.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// flow returns one flow of a session's current stats.
func flow(t testing.TB, r *Relay, id SessionID, stream int, side Side, c component) FlowStats {
	t.Helper()
	st, ok := r.Stats(id)
	if !ok {
		t.Fatalf("Stats(%s): session not open", id)
	}
	if stream >= len(st.Streams) {
		t.Fatalf("Stats(%s): %d streams, want > %d", id, len(st.Streams), stream)
	}
	e := st.Streams[stream].Sides[side]
	if c == compRTCP {
		return e.RTCP
	}
	return e.RTP
}

// checkAccounting asserts the FlowStats invariant on every flow.
func checkAccounting(t testing.TB, st Stats) {
	t.Helper()
	for _, s := range st.Streams {
		for side, e := range s.Sides {
			for c, f := range []FlowStats{e.RTP, e.RTCP} {
				sum := f.Forwarded + f.DroppedStranger + f.DroppedNoDest + f.DroppedTruncated + f.DroppedSendError
				if f.Packets != sum {
					t.Errorf("stream %d side %v %v: packets %d != forwarded+dropped %d (%+v)",
						s.Index, Side(side), component(c), f.Packets, sum, f)
				}
			}
		}
	}
}

// waitGoroutines waits until the goroutine count is back to base.
func waitGoroutines(t testing.TB, base int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		n := runtime.NumGoroutine()
		if n <= base {
			return
		}
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<16)
			buf = buf[:runtime.Stack(buf, true)]
			t.Fatalf("goroutines: %d, want <= %d\n%s", n, base, buf)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// rtcpBound counts the bound RTCP sockets of stream i of session id: on
// the ioEpoll path they are bound (and read) only once RTP has latched on
// the stream (see rtcpBinding), elsewhere from the start.
func rtcpBound(t testing.TB, r *Relay, id SessionID, i int) int {
	t.Helper()
	s := r.session(id)
	if s == nil {
		t.Fatalf("session %s not open", id)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if i >= len(s.streams) {
		t.Fatalf("session %s has %d streams, want > %d", id, len(s.streams), i)
	}
	n := 0
	for _, ep := range s.streams[i].eps {
		if ep != nil && ep.socks[compRTCP].sock.bound() {
			n++
		}
	}
	return n
}

// waitRTCP waits until both RTCP sockets of stream i of session id are
// bound and read, which on the ioEpoll path follows the first RTP latched
// on the stream. The binder registers both with the poller under the
// session lock that rtcpBound takes, so bound means read.
func waitRTCP(t testing.TB, r *Relay, id SessionID, i int) {
	t.Helper()
	eventually(t, fmt.Sprintf("rtcp sockets of %s stream %d to be bound", id, i), func() bool {
		return rtcpBound(t, r, id, i) == 2
	})
}

// idleSockets is how many sockets a stream reads before RTP flows: two
// (RTP on each side) on the ioEpoll path, where RTCP waits for RTP, four
// elsewhere.
func idleSockets(r *Relay) int64 {
	if r.poll != nil {
		return 2
	}
	return 4
}
