//go:build unix

package sbc

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/edgesbc/edgesbc/media"
)

// BenchmarkCall measures the signalling cost of one whole call through a
// real Server: the pbx sends an INVITE with SDP, the carrier answers 100,
// 180 and 200 with SDP, the pbx ACKs and hangs up at once, the carrier
// answers the BYE. One op is one call. Calls run in a window of
// benchWindow calls in flight, so the server works under load.
//
// Both peers are raw UDP sockets answering from hand-written text, so most
// of the CPU measured is the server's. cpu-ns/op is the process CPU time
// (user+system, every goroutine) per call, steadier than ns/op on a shared
// machine. The sub-benchmarks differ in the media relay: "relay" binds
// relay ports for every call as in production, "nomedia" has no relay and
// shows the signalling path alone, and "nomedia-tcpzone" is that with
// both zones serving TCP as well (the calls stay on UDP).
//
// The addresses 127.0.0.71 to 127.0.0.74 are used by no other test.
func BenchmarkCall(b *testing.B) {
	b.Run("relay", func(b *testing.B) { benchCall(b, true, false) })
	b.Run("nomedia", func(b *testing.B) { benchCall(b, false, false) })
	b.Run("nomedia-tcpzone", func(b *testing.B) { benchCall(b, false, true) })
}

const benchWindow = 64

type benchRig struct {
	srv      *Server
	priv     netip.AddrPort
	pub      netip.AddrPort
	pbx, car *net.UDPConn
	pbxAddr  netip.AddrPort
	carAddr  netip.AddrPort
	// per call (index in the Call-ID): 1 = ACK and BYE sent, 2 = done
	state []atomic.Uint32
	slots chan struct{}
	done  atomic.Int64
	acks  atomic.Int64
}

func benchListen(b *testing.B, ip string) *net.UDPConn {
	b.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.ParseIP(ip)})
	if err != nil {
		b.Skipf("loopback address %s not usable here: %v", ip, err)
	}
	_ = c.SetReadBuffer(4 << 20)
	_ = c.SetWriteBuffer(4 << 20)
	b.Cleanup(func() { c.Close() })
	return c
}

func newBenchRig(b *testing.B, withMedia, tcpZones bool) *benchRig {
	b.Helper()
	r := &benchRig{}
	r.pbx, r.car = benchListen(b, "127.0.0.73"), benchListen(b, "127.0.0.74")
	r.pbxAddr = r.pbx.LocalAddr().(*net.UDPAddr).AddrPort()
	r.carAddr = r.car.LocalAddr().(*net.UDPAddr).AddrPort()
	privPort, pubPort := freePort(b, "127.0.0.71"), freePort(b, "127.0.0.72")
	r.priv = netip.AddrPortFrom(netip.MustParseAddr("127.0.0.71"), uint16(privPort))
	r.pub = netip.AddrPortFrom(netip.MustParseAddr("127.0.0.72"), uint16(pubPort))
	cfg := Config{
		Zones: []ZoneConfig{
			{Name: "private", Address: r.priv.Addr(), SIPPort: privPort},
			{Name: "public", Address: r.pub.Addr(), SIPPort: pubPort},
		},
		Peers: []PeerConfig{
			{Name: "main", Kind: PBX, Zone: "private", Address: r.pbxAddr},
			{Name: "carrier", Kind: Trunk, Zone: "public", Address: r.carAddr, KeepHeaders: []string{"P-Asserted-Identity"}},
		},
		InviteTimeout: 10 * time.Second,
		DrainTimeout:  time.Second,
	}
	if tcpZones {
		for i := range cfg.Zones {
			cfg.Zones[i].Transports = []string{TransportUDP, TransportTCP}
		}
	}
	// the daemon's levels: hclog at Info, sipgo's slog below Warn off
	log := hclog.New(&hclog.LoggerOptions{Level: hclog.Info, Output: io.Discard})
	sl := slog.New(warnHandler{})
	var m Media
	var relay *media.Relay
	if withMedia {
		var err error
		relay, err = media.NewRelay(media.Config{PortMin: 30000, PortMax: 39999, Quarantine: 100 * time.Millisecond}, log)
		if err != nil {
			b.Fatal(err)
		}
		m = relay
	}
	srv, err := NewServer(cfg, m, Hooks{}, log, sl)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	if err := srv.Start(ctx); err != nil {
		b.Fatal(err)
	}
	r.srv = srv
	b.Cleanup(func() {
		srv.Shutdown(context.Background())
		cancel()
		if relay != nil {
			relay.Shutdown()
		}
	})
	return r
}

// warnHandler is a slog handler enabled from Warn up, like the daemon's,
// that writes nothing.
type warnHandler struct{}

func (warnHandler) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelWarn }
func (warnHandler) Handle(context.Context, slog.Record) error    { return nil }
func (h warnHandler) WithAttrs([]slog.Attr) slog.Handler         { return h }
func (h warnHandler) WithGroup(string) slog.Handler              { return h }

// liveHeap is the heap in use after a full collection.
func liveHeap() int64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return int64(ms.HeapAlloc)
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func benchCall(b *testing.B, withMedia, tcpZones bool) {
	r := newBenchRig(b, withMedia, tcpZones)
	// one warm-up call per slot, so that sockets, pools and goroutine
	// stacks are in their steady state before the clock runs
	warm := benchWindow
	r.state = make([]atomic.Uint32, warm+b.N)
	r.slots = make(chan struct{}, benchWindow)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); r.runCarrier(stop) }()
	go func() { defer wg.Done(); r.runPBX(stop) }()
	defer func() {
		close(stop)
		_ = r.pbx.SetReadDeadline(time.Now())
		_ = r.car.SetReadDeadline(time.Now())
		wg.Wait()
	}()

	buf := make([]byte, 0, 2048)
	run := func(from, to int) {
		deadline := time.Now().Add(time.Duration(to-from)*10*time.Millisecond + 10*time.Second)
		stall := time.NewTimer(time.Until(deadline))
		defer stall.Stop()
		for i := from; i < to; i++ {
			select {
			case r.slots <- struct{}{}:
			case <-stall.C:
				b.Fatalf("calls stalled: %d of %d done, status %+v", r.done.Load(), to, r.srv.Status())
			}
			buf = r.invite(buf[:0], i)
			if _, err := r.pbx.WriteToUDPAddrPort(buf, r.priv); err != nil {
				b.Fatal(err)
			}
		}
		for r.done.Load() < int64(to) {
			if time.Now().After(deadline) {
				b.Fatalf("calls stalled: %d of %d done, status %+v", r.done.Load(), to, r.srv.Status())
			}
			time.Sleep(200 * time.Microsecond)
		}
	}
	run(0, warm)
	heap0 := liveHeap()
	b.ReportAllocs()
	b.ResetTimer()
	cpu0 := cpuTime()
	run(warm, warm+b.N)
	cpu := cpuTime() - cpu0
	b.StopTimer()
	b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "cpu-ns/op")
	// what ended calls still hold once the INVITE transactions' short
	// linger is over: the BYE's transaction (Timer J, 64×T1), the INVITE
	// retransmission guard, and whatever else outlives a call
	time.Sleep(2 * acceptedLinger)
	b.ReportMetric(float64(liveHeap()-heap0)/float64(b.N), "retained-B/op")
	if n := r.srv.Status().LeakGuardFired; n != 0 {
		b.Fatalf("leak guard fired %d times", n)
	}
	if a := r.acks.Load(); a < int64(warm+b.N) {
		b.Fatalf("carrier got %d ACKs for %d calls", a, warm+b.N)
	}
}

// invite is call i's INVITE from the pbx.
func (r *benchRig) invite(buf []byte, i int) []byte {
	id := strconv.Itoa(i)
	body := pbxBenchSDP
	buf = append(buf, "INVITE sip:+15551234@"...)
	buf = r.priv.AppendTo(buf)
	buf = append(buf, " SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.73:"...)
	buf = strconv.AppendUint(buf, uint64(r.pbxAddr.Port()), 10)
	buf = append(buf, ";branch=z9hG4bK-i"...)
	buf = append(buf, id...)
	buf = append(buf, ";rport\r\nMax-Forwards: 70\r\nFrom: \"Alice Corp\" <sip:2001@corp.internal>;tag=pt"...)
	buf = append(buf, id...)
	buf = append(buf, "\r\nTo: <sip:+15551234@"...)
	buf = r.priv.AppendTo(buf)
	buf = append(buf, ">\r\nCall-ID: bench-"...)
	buf = append(buf, id...)
	buf = append(buf, "\r\nCSeq: 10 INVITE\r\nContact: <sip:2001@127.0.0.73:"...)
	buf = strconv.AppendUint(buf, uint64(r.pbxAddr.Port()), 10)
	buf = append(buf, ">\r\nUser-Agent: CorpPBX 4.2\r\nP-Asserted-Identity: <sip:2001@corp.internal>\r\n"+
		"Content-Type: application/sdp\r\nContent-Length: "...)
	buf = strconv.AppendInt(buf, int64(len(body)), 10)
	buf = append(buf, "\r\n\r\n"...)
	return append(buf, body...)
}

// The SDP addresses are not the peers' own: without a relay the bodies
// pass unchanged, and the leak guard must have nothing to remove.
const pbxBenchSDP = "v=0\r\no=corp 123 1 IN IP4 192.0.2.73\r\ns=-\r\nc=IN IP4 192.0.2.73\r\nt=0 0\r\n" +
	"m=audio 40000 RTP/AVP 8 101\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\n" +
	"a=fmtp:101 0-16\r\na=sendrecv\r\n"

const carBenchSDP = "v=0\r\no=carrier 9 1 IN IP4 198.51.100.74\r\ns=-\r\nc=IN IP4 198.51.100.74\r\nt=0 0\r\n" +
	"m=audio 41000 RTP/AVP 8 101\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\n" +
	"a=sendrecv\r\n"

// headerLine returns the value of the first header line of msg whose name
// is name (exact case, full name: the server writes full names).
func headerLine(msg []byte, name string) []byte {
	for len(msg) > 0 {
		end := bytes.IndexByte(msg, '\n')
		if end < 0 {
			end = len(msg)
		}
		line := bytes.TrimRight(msg[:end], "\r")
		if len(line) == 0 {
			return nil
		}
		if len(line) > len(name)+1 && string(line[:len(name)]) == name && line[len(name)] == ':' {
			return bytes.TrimSpace(line[len(name)+1:])
		}
		if end == len(msg) {
			return nil
		}
		msg = msg[end+1:]
	}
	return nil
}

// appendResponse writes a response to req copying its Via, From, To,
// Call-ID and CSeq (all Vias: the server sends one).
func appendResponse(buf, req []byte, status, toTag, contact, body string) []byte {
	buf = append(buf, "SIP/2.0 "...)
	buf = append(buf, status...)
	buf = append(buf, "\r\nVia: "...)
	buf = append(buf, headerLine(req, "Via")...)
	buf = append(buf, "\r\nFrom: "...)
	buf = append(buf, headerLine(req, "From")...)
	buf = append(buf, "\r\nTo: "...)
	to := headerLine(req, "To")
	buf = append(buf, to...)
	if toTag != "" && !bytes.Contains(to, []byte("tag=")) {
		buf = append(buf, ";tag="...)
		buf = append(buf, toTag...)
	}
	buf = append(buf, "\r\nCall-ID: "...)
	buf = append(buf, headerLine(req, "Call-ID")...)
	buf = append(buf, "\r\nCSeq: "...)
	buf = append(buf, headerLine(req, "CSeq")...)
	if contact != "" {
		buf = append(buf, "\r\nContact: "...)
		buf = append(buf, contact...)
	}
	if body != "" {
		buf = append(buf, "\r\nContent-Type: application/sdp"...)
	}
	buf = append(buf, "\r\nContent-Length: "...)
	buf = strconv.AppendInt(buf, int64(len(body)), 10)
	buf = append(buf, "\r\n\r\n"...)
	return append(buf, body...)
}

// runCarrier answers every INVITE with 100, 180 and 200 and every BYE with
// 200, statelessly (a retransmission gets the same answers again).
func (r *benchRig) runCarrier(stop <-chan struct{}) {
	out := make([]byte, 0, 2048)
	contact := "<sip:carrier@" + r.carAddr.String() + ">"
	readLoop(r.car, stop, func(msg []byte, src netip.AddrPort) {
		switch {
		case bytes.HasPrefix(msg, []byte("INVITE ")):
			for _, st := range [...]struct{ status, tag, contact, body string }{
				{"100 Trying", "", "", ""},
				{"180 Ringing", "car-tag", contact, ""},
				{"200 OK", "car-tag", contact, carBenchSDP},
			} {
				out = appendResponse(out[:0], msg, st.status, st.tag, st.contact, st.body)
				_, _ = r.car.WriteToUDPAddrPort(out, src)
			}
		case bytes.HasPrefix(msg, []byte("ACK ")):
			r.acks.Add(1)
		case bytes.HasPrefix(msg, []byte("BYE ")):
			out = appendResponse(out[:0], msg, "200 OK", "", "", "")
			_, _ = r.car.WriteToUDPAddrPort(out, src)
		}
	})
}

// readLoop hands every datagram read on conn to handle until stop is
// closed (the caller then sets a past read deadline to end the read).
func readLoop(conn *net.UDPConn, stop <-chan struct{}, handle func(msg []byte, src netip.AddrPort)) {
	in := make([]byte, 65535)
	for {
		n, src, err := conn.ReadFromUDPAddrPort(in)
		if err != nil {
			select {
			case <-stop:
				return
			default:
				continue
			}
		}
		handle(in[:n], src)
	}
}

// runPBX ACKs each 200 to an INVITE and hangs up at once; the 200 to the
// BYE completes the call.
func (r *benchRig) runPBX(stop <-chan struct{}) {
	out := make([]byte, 0, 2048)
	readLoop(r.pbx, stop, func(msg []byte, _ netip.AddrPort) {
		if !bytes.HasPrefix(msg, []byte("SIP/2.0 200")) {
			return // 100 and 180
		}
		id := headerLine(msg, "Call-ID")
		i, err := strconv.Atoi(string(bytes.TrimPrefix(id, []byte("bench-"))))
		if err != nil || i < 0 || i >= len(r.state) {
			return
		}
		cseq := headerLine(msg, "CSeq")
		switch {
		case bytes.HasSuffix(cseq, []byte("INVITE")):
			out = r.inDialog(out[:0], msg, "ACK", "10", "a", i)
			_, _ = r.pbx.WriteToUDPAddrPort(out, r.priv)
			if r.state[i].CompareAndSwap(0, 1) {
				out = r.inDialog(out[:0], msg, "BYE", "11", "b", i)
				_, _ = r.pbx.WriteToUDPAddrPort(out, r.priv)
			}
		case bytes.HasSuffix(cseq, []byte("BYE")):
			if r.state[i].CompareAndSwap(1, 2) {
				r.done.Add(1)
				<-r.slots
			}
		}
	})
}

// inDialog builds the pbx's ACK or BYE in the dialog the 200 ok set up.
func (r *benchRig) inDialog(buf, ok []byte, method, seq, branch string, i int) []byte {
	buf = append(buf, method...)
	buf = append(buf, " sip:"...)
	buf = r.priv.AppendTo(buf)
	buf = append(buf, " SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.73:"...)
	buf = strconv.AppendUint(buf, uint64(r.pbxAddr.Port()), 10)
	buf = append(buf, ";branch=z9hG4bK-"...)
	buf = append(buf, branch...)
	buf = strconv.AppendInt(buf, int64(i), 10)
	buf = append(buf, ";rport\r\nMax-Forwards: 70\r\nFrom: "...)
	buf = append(buf, headerLine(ok, "From")...)
	buf = append(buf, "\r\nTo: "...)
	buf = append(buf, headerLine(ok, "To")...)
	buf = append(buf, "\r\nCall-ID: "...)
	buf = append(buf, headerLine(ok, "Call-ID")...)
	buf = append(buf, "\r\nCSeq: "...)
	buf = append(buf, seq...)
	buf = append(buf, ' ')
	buf = append(buf, method...)
	buf = append(buf, "\r\nContent-Length: 0\r\n\r\n"...)
	return buf
}
