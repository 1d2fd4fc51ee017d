package media

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/pion/rtp"
)

// call is a relay session with two phones and the anchors the relay
// announced to each of them.
type call struct {
	id            SessionID
	a, b          *phone
	toA, toARTCP  netip.AddrPort // where phone A sends (SBC, side A)
	toB, toBRTCP  netip.AddrPort // where phone B sends (SBC, side B)
	offer, answer []byte         // bodies the relay returned
}

// setupCall opens id and runs an offer from A and an answer from B.
func setupCall(t testing.TB, r *Relay, id SessionID) *call {
	t.Helper()
	c := &call{id: id, a: newPhone(t, phoneAIP, false), b: newPhone(t, phoneBIP, true)}
	openCall(t, r, id)
	var err error
	if c.offer, err = r.Offer(id, A, c.a.sdp(1)); err != nil {
		t.Fatalf("Offer: %v", err)
	}
	c.toB, c.toBRTCP = anchorOf(t, c.offer, 0)
	if c.answer, err = r.Answer(id, B, c.b.sdp(1)); err != nil {
		t.Fatalf("Answer: %v", err)
	}
	c.toA, c.toARTCP = anchorOf(t, c.answer, 0)
	return c
}

func TestRelayForwardsBothWays(t *testing.T) {
	for _, impl := range ioImpls() {
		t.Run(impl.String(), func(t *testing.T) {
			r := newTestRelay(t, impl, nil)
			c := setupCall(t, r, "call-fwd")

			// The anchors are the SBC's own addresses of each side, on
			// even ports with RTCP on the next one.
			if c.toA.Addr() != relayA || c.toB.Addr() != relayB {
				t.Fatalf("anchors: A sends to %v, B sends to %v; want %v and %v", c.toA, c.toB, relayA, relayB)
			}
			for _, ap := range []netip.AddrPort{c.toA, c.toB} {
				if ap.Port()%2 != 0 {
					t.Errorf("anchor port %d is odd", ap.Port())
				}
			}
			if c.toARTCP.Port() != c.toA.Port()+1 || c.toBRTCP.Port() != c.toB.Port()+1 {
				t.Errorf("RTCP anchors %v, %v are not RTP+1 of %v, %v", c.toARTCP, c.toBRTCP, c.toA, c.toB)
			}

			const n = 300
			var wg sync.WaitGroup
			var atB, atA, rtcpAtB, rtcpAtA []datagram
			wg.Add(4)
			go func() { defer wg.Done(); atB = collect(c.b.rtp, n, 10*time.Second, 200*time.Millisecond) }()
			go func() { defer wg.Done(); atA = collect(c.a.rtp, n, 10*time.Second, 200*time.Millisecond) }()
			go func() { defer wg.Done(); rtcpAtB = collect(c.b.rtcp, 5, 10*time.Second, 200*time.Millisecond) }()
			go func() { defer wg.Done(); rtcpAtA = collect(c.a.rtcp, 5, 10*time.Second, 200*time.Millisecond) }()

			var fromA, fromB [][]byte
			for i := range n {
				pt := uint8(0)
				if i%10 == 9 {
					pt = 101 // telephone-event passes like any payload
				}
				fromA = append(fromA, rtpPacket(t, pt, uint16(1000+i), 0xA))
				fromB = append(fromB, rtpPacket(t, pt, uint16(5000+i), 0xB))
			}
			sendTo(t, c.a.rtp, c.toA, fromA...)
			sendTo(t, c.b.rtp, c.toB, fromB...)
			// RTP has latched: the RTCP sockets are bound now or soon.
			waitRTCP(t, r, c.id, 0)
			for i := range 5 {
				sendTo(t, c.a.rtcp, c.toARTCP, rtcpPacket(0xA0+uint32(i)))
				sendTo(t, c.b.rtcp, c.toBRTCP, rtcpPacket(0xB0+uint32(i)))
			}
			wg.Wait()

			checkRTP(t, "A→B", atB, 0xA, 1000, n, netip.AddrPortFrom(relayB, c.toB.Port()))
			checkRTP(t, "B→A", atA, 0xB, 5000, n, netip.AddrPortFrom(relayA, c.toA.Port()))
			checkRTCP(t, "A→B", rtcpAtB, 0xA0, c.toBRTCP)
			checkRTCP(t, "B→A", rtcpAtA, 0xB0, c.toARTCP)

			st, _ := r.Stats(c.id)
			checkAccounting(t, st)
			fa := st.Streams[0].Sides[A]
			fb := st.Streams[0].Sides[B]
			if fa.RTP.Forwarded != n || fb.RTP.Forwarded != n || fa.RTCP.Forwarded != 5 || fb.RTCP.Forwarded != 5 {
				t.Errorf("forwarded: A rtp %d rtcp %d, B rtp %d rtcp %d; want %d, 5, %d, 5",
					fa.RTP.Forwarded, fa.RTCP.Forwarded, fb.RTP.Forwarded, fb.RTCP.Forwarded, n, n)
			}
			if fa.RTP.Latched != addrOf(c.a.rtp) || fb.RTP.Latched != addrOf(c.b.rtp) {
				t.Errorf("latched: A %v, B %v; want %v, %v", fa.RTP.Latched, fb.RTP.Latched, addrOf(c.a.rtp), addrOf(c.b.rtp))
			}
			if fa.RTCP.Expected != addrOf(c.a.rtcp) {
				t.Errorf("A rtcp expected %v, want the a=rtcp port %v", fa.RTCP.Expected, addrOf(c.a.rtcp))
			}
			if fa.RTP.Local != c.toA || fb.RTP.Local != c.toB {
				t.Errorf("local: A %v, B %v; want %v, %v", fa.RTP.Local, fb.RTP.Local, c.toA, c.toB)
			}
			if fa.RTP.ForwardedBytes != fa.RTP.Bytes || fa.RTP.Bytes == 0 {
				t.Errorf("A rtp bytes: received %d, forwarded %d", fa.RTP.Bytes, fa.RTP.ForwardedBytes)
			}
		})
	}
}

// exchangeRTP sends n RTP packets each way at once, a to the relay's toA
// and b to its toB, and checks that each side receives the other's n
// packets in order from the relay port it talks to.
func exchangeRTP(t *testing.T, a, b *phone, toA, toB netip.AddrPort, n int) {
	t.Helper()
	var wg sync.WaitGroup
	var atA, atB []datagram
	wg.Add(2)
	go func() { defer wg.Done(); atA = collect(a.rtp, n, 5*time.Second, 100*time.Millisecond) }()
	go func() { defer wg.Done(); atB = collect(b.rtp, n, 5*time.Second, 100*time.Millisecond) }()
	var fromA, fromB [][]byte
	for i := range n {
		fromA = append(fromA, rtpPacket(t, 0, uint16(100+i), 0xA))
		fromB = append(fromB, rtpPacket(t, 0, uint16(500+i), 0xB))
	}
	sendTo(t, a.rtp, toA, fromA...)
	sendTo(t, b.rtp, toB, fromB...)
	wg.Wait()
	checkRTP(t, "A→B", atB, 0xA, 100, n, toB)
	checkRTP(t, "B→A", atA, 0xB, 500, n, toA)
}

// checkRTP asserts that got holds exactly the packets seq first..first+n-1
// of ssrc, each once, with intact payloads, all sent by from.
func checkRTP(t *testing.T, what string, got []datagram, ssrc uint32, first, n int, from netip.AddrPort) {
	t.Helper()
	seen := make(map[uint16]int)
	for _, d := range got {
		if d.from != from {
			t.Errorf("%s: packet from %v, want the SBC's %v", what, d.from, from)
			continue
		}
		var p rtp.Packet
		if err := p.Unmarshal(d.payload); err != nil {
			t.Errorf("%s: unmarshal: %v", what, err)
			continue
		}
		if p.SSRC != ssrc {
			t.Errorf("%s: ssrc %#x, want %#x", what, p.SSRC, ssrc)
		}
		if !bytes.Equal(p.Payload, payloadFor(p.PayloadType, p.SequenceNumber)) {
			t.Errorf("%s: payload of seq %d changed", what, p.SequenceNumber)
		}
		seen[p.SequenceNumber]++
	}
	for i := range n {
		if c := seen[uint16(first+i)]; c != 1 {
			t.Errorf("%s: seq %d arrived %d times, want once", what, first+i, c)
		}
	}
	if len(got) != n {
		t.Errorf("%s: %d datagrams, want %d", what, len(got), n)
	}
}

func checkRTCP(t *testing.T, what string, got []datagram, first uint32, from netip.AddrPort) {
	t.Helper()
	if len(got) != 5 {
		t.Errorf("%s rtcp: %d datagrams, want 5", what, len(got))
	}
	seen := map[string]bool{}
	for _, d := range got {
		if d.from != from {
			t.Errorf("%s rtcp: from %v, want the SBC's %v", what, d.from, from)
		}
		seen[string(d.payload)] = true
	}
	for i := range 5 {
		if !seen[string(rtcpPacket(first+uint32(i)))] {
			t.Errorf("%s rtcp: report %#x missing or altered", what, first+uint32(i))
		}
	}
}

func TestRelayBleedProtection(t *testing.T) {
	for _, impl := range ioImpls() {
		t.Run(impl.String(), func(t *testing.T) {
			r := newTestRelay(t, impl, nil)
			const id = SessionID("call-bleed")
			a, b := newPhone(t, phoneAIP, false), newPhone(t, phoneBIP, true)
			stranger, err := listen(t, strangeIP, 0)
			if err != nil {
				t.Fatal(err)
			}
			// natA is phone A seen through a NAT: its announced IP, another port.
			natA, err := listen(t, phoneAIP, 0)
			if err != nil {
				t.Fatal(err)
			}
			openCall(t, r, id)
			offer, err := r.Offer(id, A, a.sdp(1))
			if err != nil {
				t.Fatal(err)
			}
			toB, _ := anchorOf(t, offer, 0)
			toA := flow(t, r, id, 0, A, compRTP).Local
			pkt := func(seq int) []byte { return rtpPacket(t, 0, uint16(seq), 0x5) }

			// A stranger before anything latched: dropped.
			sendTo(t, stranger, toA, pkt(1), pkt(2), pkt(3))
			eventually(t, "3 stranger drops on side A", func() bool { return flow(t, r, id, 0, A, compRTP).DroppedStranger == 3 })
			// Side B's SDP is not known yet: even B's own packets are dropped.
			sendTo(t, b.rtp, toB, pkt(4), pkt(5))
			eventually(t, "2 drops on side B before its answer", func() bool { return flow(t, r, id, 0, B, compRTP).DroppedStranger == 2 })
			// A behind a NAT latches from another port of its announced IP;
			// with no answer yet there is nowhere to send.
			sendTo(t, natA, toA, pkt(6), pkt(7))
			eventually(t, "A latched", func() bool { return flow(t, r, id, 0, A, compRTP).Latched == addrOf(natA) })
			eventually(t, "2 no-destination drops", func() bool { return flow(t, r, id, 0, A, compRTP).DroppedNoDest == 2 })

			if _, err := r.Answer(id, B, b.sdp(1)); err != nil {
				t.Fatal(err)
			}
			sendTo(t, natA, toA, pkt(8), pkt(9), pkt(10))
			if got := collect(b.rtp, 3, 5*time.Second, 100*time.Millisecond); len(got) != 3 {
				t.Fatalf("B got %d packets from the latched A, want 3", len(got))
			}
			// Symmetric RTP: B's packets go to where A really is, not to
			// the announced port.
			sendTo(t, b.rtp, toB, pkt(11), pkt(12))
			if got := collect(natA, 2, 5*time.Second, 100*time.Millisecond); len(got) != 2 {
				t.Errorf("latched A got %d packets from B, want 2", len(got))
			}
			expectSilence(t, a.rtp, 100*time.Millisecond, "announced but unlatched port of A")

			// After latching: the stranger, and even A's announced port, are
			// dropped and never reach B.
			sendTo(t, stranger, toA, pkt(13), pkt(14), pkt(15), pkt(16))
			sendTo(t, a.rtp, toA, pkt(17))
			eventually(t, "stranger drops after latching", func() bool { return flow(t, r, id, 0, A, compRTP).DroppedStranger == 3+4+1 })
			expectSilence(t, b.rtp, 200*time.Millisecond, "B while strangers send")

			// A re-offer from A with a new address starts over: the old
			// latch no longer admits, the new address latches.
			moved := newPhone(t, phoneAIP, false)
			if _, err := r.Offer(id, A, moved.sdp(2)); err != nil {
				t.Fatal(err)
			}
			if f := flow(t, r, id, 0, A, compRTP); f.Latched.IsValid() || f.Expected != addrOf(moved.rtp) {
				t.Fatalf("after re-offer with a new address: latched %v, expected %v; want none, %v", f.Latched, f.Expected, addrOf(moved.rtp))
			}
			sendTo(t, moved.rtp, toA, pkt(18))
			if got := collect(b.rtp, 1, 5*time.Second, 100*time.Millisecond); len(got) != 1 {
				t.Errorf("B got %d packets from A's new address, want 1", len(got))
			}
			sendTo(t, natA, toA, pkt(19))
			eventually(t, "old latch dropped", func() bool { return flow(t, r, id, 0, A, compRTP).DroppedStranger == 9 })
			expectSilence(t, b.rtp, 100*time.Millisecond, "B after A moved")

			st, _ := r.Stats(id)
			checkAccounting(t, st)
		})
	}
}

// TestRelayMixedFamilies relays between an IPv4 side and an IPv6 side,
// which exercises both socket address encodings of each I/O path.
func TestRelayMixedFamilies(t *testing.T) {
	v6 := netip.IPv6Loopback()
	if c, err := listen(t, v6, 0); err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	} else {
		c.Close()
	}
	for _, impl := range ioImpls() {
		t.Run(impl.String(), func(t *testing.T) {
			r := newTestRelay(t, impl, nil)
			const id = SessionID("call-v4v6")
			a, b := newPhone(t, phoneAIP, false), newPhone(t, v6, false)
			if err := r.Open(id, Address{Bind: relayA}, Address{Bind: v6}); err != nil {
				t.Fatal(err)
			}
			offer, err := r.Offer(id, A, a.sdp(1))
			if err != nil {
				t.Fatal(err)
			}
			answer, err := r.Answer(id, B, b.sdp(1))
			if err != nil {
				t.Fatal(err)
			}
			toB, toBRTCP := anchorOf(t, offer, 0)
			toA, _ := anchorOf(t, answer, 0)
			if !toB.Addr().Is6() || toA.Addr() != relayA {
				t.Fatalf("anchors: B sends to %v, A sends to %v", toB, toA)
			}
			sendTo(t, a.rtp, toA, rtpPacket(t, 0, 1, 1), rtpPacket(t, 0, 2, 1))
			checkRTP(t, "v4→v6", collect(b.rtp, 2, 5*time.Second, 50*time.Millisecond), 1, 1, 2, toB)
			sendTo(t, b.rtp, toB, rtpPacket(t, 0, 7, 2))
			checkRTP(t, "v6→v4", collect(a.rtp, 1, 5*time.Second, 50*time.Millisecond), 2, 7, 1, toA)
			waitRTCP(t, r, id, 0)
			sendTo(t, b.rtcp, toBRTCP, rtcpPacket(1))
			if got := collect(a.rtcp, 1, 5*time.Second, 50*time.Millisecond); len(got) != 1 {
				t.Errorf("v6→v4 rtcp: got %d, want 1", len(got))
			}
			if f := flow(t, r, id, 0, B, compRTP); f.Latched != addrOf(b.rtp) {
				t.Errorf("B latched %v, want %v", f.Latched, addrOf(b.rtp))
			}
			// A v4 body on the v6 side cannot be relayed.
			if _, err := r.Answer(id, B, a.sdp(2)); !errors.Is(err, ErrBadSDP) {
				t.Errorf("IPv4 answer on the IPv6 side: %v, want ErrBadSDP", err)
			}
		})
	}
}

// TestRelayDatagramSizes checks the edges of the receive buffers: a
// datagram of exactly maxDatagram passes intact, a longer one is dropped
// and counted (never forwarded cut), an empty one passes.
func TestRelayDatagramSizes(t *testing.T) {
	for _, impl := range ioImpls() {
		t.Run(impl.String(), func(t *testing.T) {
			r := newTestRelay(t, impl, nil)
			c := setupCall(t, r, "call-sizes")
			full := bytes.Repeat([]byte{0x80, 0x00, 0x12, 0x34}, maxDatagram/4)
			sendTo(t, c.a.rtp, c.toA, full, make([]byte, maxDatagram+1), make([]byte, 4000), []byte{})
			got := collect(c.b.rtp, 2, 5*time.Second, 200*time.Millisecond)
			if len(got) != 2 || !bytes.Equal(got[0].payload, full) || len(got[1].payload) != 0 {
				t.Fatalf("B got %d datagrams (want the full-size one intact, then the empty one)", len(got))
			}
			f := flow(t, r, c.id, 0, A, compRTP)
			if f.DroppedTruncated != 2 || f.Forwarded != 2 || f.Packets != 4 {
				t.Errorf("flow %+v: want 4 packets, 2 forwarded, 2 dropped as truncated", f)
			}
		})
	}
}

func TestRelayReofferKeepsPorts(t *testing.T) {
	r := newTestRelay(t, ioDefault, nil)
	c := setupCall(t, r, "call-reoffer")
	o1 := parseOut(t, c.offer).Origin()
	if r.pool.Allocated() != 2 {
		t.Fatalf("Allocated = %d, want 2", r.pool.Allocated())
	}

	// Same offer again (a session refresh): same ports, same o= session,
	// next version.
	out, err := r.Offer(c.id, A, c.a.sdp(2))
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := anchorOf(t, out, 0); got != c.toB {
		t.Errorf("re-offer anchor %v, want unchanged %v", got, c.toB)
	}
	o2 := parseOut(t, out).Origin()
	if o2.SessionID != o1.SessionID || o2.Version != o1.Version+1 || o2.Username != DefaultUsername {
		t.Errorf("o= after re-offer %+v, want session %d version %d user %q", o2, o1.SessionID, o1.Version+1, DefaultUsername)
	}
	// The A-facing origin is separate from the B-facing one.
	if oa := parseOut(t, c.answer).Origin(); oa.SessionID == o1.SessionID {
		t.Errorf("both sides got o= session id %d", oa.SessionID)
	}

	// A re-INVITE from B: B's offer goes to A with A's existing anchor.
	out, err = r.Offer(c.id, B, c.b.sdp(2))
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := anchorOf(t, out, 0); got != c.toA {
		t.Errorf("offer from B anchored at %v, want A's existing %v", got, c.toA)
	}
	if _, err := r.Answer(c.id, A, c.a.sdp(3)); err != nil {
		t.Fatal(err)
	}

	// Adding video: audio keeps its ports, video gets new ones. No RTP
	// has flowed: on the ioEpoll path each stream reads only its two RTP
	// sockets.
	base := runtime.NumGoroutine()
	idle := idleSockets(r)
	if r.reading.Load() != idle {
		t.Fatalf("sockets read %d, want %d", r.reading.Load(), idle)
	}
	video := newPhone(t, phoneAIP, true)
	out, err = r.Offer(c.id, A, c.a.sdp(4, mline{kind: "video", port: int(addrOf(video.rtp).Port())}))
	if err != nil {
		t.Fatal(err)
	}
	audio, _ := anchorOf(t, out, 0)
	vid, _ := anchorOf(t, out, 1)
	if audio != c.toB || vid.Port() == 0 || vid == audio {
		t.Errorf("audio+video offer anchored at %v and %v, want audio %v and a new video port", audio, vid, c.toB)
	}
	if r.pool.Allocated() != 4 {
		t.Errorf("Allocated = %d, want 4", r.pool.Allocated())
	}
	if got := r.reading.Load(); got != 2*idle {
		t.Errorf("sockets read %d, want %d (%d more for the new stream)", got, 2*idle, idle)
	}

	// Disabling video: port 0 out, its sockets and readers gone, ports
	// quarantined.
	out, err = r.Offer(c.id, A, c.a.sdp(5, mline{kind: "video", port: 0}))
	if err != nil {
		t.Fatal(err)
	}
	if ms := parseOut(t, out).Media(); len(ms) != 2 || ms[1].Port != 0 || ms[0].Port != int(c.toB.Port()) {
		t.Errorf("offer disabling video: %+v", ms)
	}
	if r.pool.Allocated() != 2 || r.pool.Quarantined() != 2 {
		t.Errorf("Allocated = %d, Quarantined = %d; want 2, 2", r.pool.Allocated(), r.pool.Quarantined())
	}
	if got := r.reading.Load(); got != idle {
		t.Errorf("sockets read %d after disabling video, want %d", got, idle)
	}
	waitGoroutines(t, base)
	st, _ := r.Stats(c.id)
	if len(st.Streams) != 2 || !st.Streams[0].Active || st.Streams[1].Active || st.Streams[1].Kind != "video" {
		t.Errorf("stats after disabling video: %+v", st.Streams)
	}
}

func TestRelayAnswerTwice(t *testing.T) {
	r := newTestRelay(t, ioDefault, nil)
	const id = SessionID("call-183")
	a, early, final := newPhone(t, phoneAIP, false), newPhone(t, phoneBIP, true), newPhone(t, phoneBIP, true)
	openCall(t, r, id)
	offer, err := r.Offer(id, A, a.sdp(1))
	if err != nil {
		t.Fatal(err)
	}
	toB, _ := anchorOf(t, offer, 0)

	// 183 with early media from one address.
	ans183, err := r.Answer(id, B, early.sdp(1))
	if err != nil {
		t.Fatal(err)
	}
	toA, _ := anchorOf(t, ans183, 0)
	sendTo(t, a.rtp, toA, rtpPacket(t, 0, 1, 1))
	if got := collect(early.rtp, 1, 5*time.Second, 50*time.Millisecond); len(got) != 1 {
		t.Fatalf("early media: B got %d packets, want 1", len(got))
	}
	sendTo(t, early.rtp, toB, rtpPacket(t, 0, 2, 2))
	if got := collect(a.rtp, 1, 5*time.Second, 50*time.Millisecond); len(got) != 1 {
		t.Fatalf("early media: A got %d packets, want 1", len(got))
	}
	waitRTCP(t, r, id, 0) // RTP flowed: RTCP sockets too from now on
	allocated, readers := r.pool.Allocated(), r.reading.Load()

	// 200 with the final answer from another address: same anchor, no new
	// sockets, media now goes to the new address.
	ans200, err := r.Answer(id, B, final.sdp(1))
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := anchorOf(t, ans200, 0); got != toA {
		t.Errorf("200 anchored at %v, want the 183's %v", got, toA)
	}
	if o183, o200 := parseOut(t, ans183).Origin(), parseOut(t, ans200).Origin(); o200.SessionID != o183.SessionID || o200.Version <= o183.Version {
		t.Errorf("o= 183 %+v then 200 %+v: want same session, higher version", o183, o200)
	}
	if r.pool.Allocated() != allocated || r.reading.Load() != readers || readers != 4 {
		t.Errorf("after the second answer: Allocated %d → %d, sockets read %d → %d; want unchanged (2 pairs, 4 sockets)",
			allocated, r.pool.Allocated(), readers, r.reading.Load())
	}
	sendTo(t, a.rtp, toA, rtpPacket(t, 0, 3, 1))
	if got := collect(final.rtp, 1, 5*time.Second, 50*time.Millisecond); len(got) != 1 {
		t.Errorf("after 200: final B got %d packets, want 1", len(got))
	}
	expectSilence(t, early.rtp, 100*time.Millisecond, "early-media address after the 200")
	sendTo(t, final.rtp, toB, rtpPacket(t, 0, 4, 2))
	if got := collect(a.rtp, 1, 5*time.Second, 50*time.Millisecond); len(got) != 1 {
		t.Errorf("after 200: A got %d packets from the final B, want 1", len(got))
	}
}

func TestRelayDisabledStreams(t *testing.T) {
	r := newTestRelay(t, ioDefault, nil)
	const id = SessionID("call-port0")
	a := newPhone(t, phoneAIP, false)
	openCall(t, r, id)
	body := a.sdp(1,
		mline{kind: "video", port: 0},
		mline{kind: "message", port: 9, proto: "TCP/MSRP"},
	)
	out, err := r.Offer(id, A, body)
	if err != nil {
		t.Fatal(err)
	}
	ms := parseOut(t, out).Media()
	if len(ms) != 3 || ms[0].Port == 0 || ms[1].Port != 0 || ms[2].Port != 0 {
		t.Fatalf("rewritten m= lines %+v: want audio anchored, video and TCP disabled", ms)
	}
	if r.pool.Allocated() != 2 {
		t.Errorf("Allocated = %d, want 2 (audio only)", r.pool.Allocated())
	}
	// The answer rejects audio too: the endpoints stay (a later answer may
	// accept), but nothing is sent toward B any more.
	b := newPhone(t, phoneBIP, true)
	if _, err := r.Answer(id, B, b.sdp(1, mline{kind: "video", port: 0}, mline{kind: "message", port: 0})); err != nil {
		t.Fatal(err)
	}
	rej := sdpBody(phoneBIP, 2, mline{kind: "audio", port: 0}, mline{kind: "video", port: 0}, mline{kind: "message", port: 0})
	out, err = r.Answer(id, B, rej)
	if err != nil {
		t.Fatal(err)
	}
	if ms := parseOut(t, out).Media(); ms[0].Port != 0 {
		t.Errorf("rejected audio rewritten with port %d, want 0", ms[0].Port)
	}
	if f := flow(t, r, id, 0, B, compRTP); f.Expected.IsValid() {
		t.Errorf("side B still expected at %v after rejecting", f.Expected)
	}
	toA := flow(t, r, id, 0, A, compRTP).Local
	sendTo(t, a.rtp, toA, rtpPacket(t, 0, 1, 1))
	eventually(t, "no-destination drop", func() bool { return flow(t, r, id, 0, A, compRTP).DroppedNoDest == 1 })
	expectSilence(t, b.rtp, 100*time.Millisecond, "B after rejecting audio")
}

func TestRelayErrors(t *testing.T) {
	r := newTestRelay(t, ioDefault, nil)
	a := newPhone(t, phoneAIP, false)
	openCall(t, r, "call-err")

	if err := r.Open("call-err", Address{Bind: relayA}, Address{Bind: relayB}); !errors.Is(err, ErrSessionExists) {
		t.Errorf("Open twice: %v, want ErrSessionExists", err)
	}
	if err := r.Open("call-x", Address{}, Address{Bind: relayB}); err == nil {
		t.Errorf("Open without a bind address: want an error")
	}
	if err := r.Open("call-x", Address{Bind: netip.IPv4Unspecified()}, Address{Bind: relayB}); err == nil {
		t.Errorf("Open on 0.0.0.0 without advertise address: want an error")
	}
	if _, err := r.Offer("nope", A, a.sdp(1)); !errors.Is(err, ErrNoSession) {
		t.Errorf("Offer for unknown session: %v, want ErrNoSession", err)
	}
	if _, err := r.Answer("nope", B, a.sdp(1)); !errors.Is(err, ErrNoSession) {
		t.Errorf("Answer for unknown session: %v, want ErrNoSession", err)
	}
	if _, err := r.Offer("call-err", Side(2), a.sdp(1)); err == nil {
		t.Errorf("Offer from side 2: want an error")
	}
	if _, err := r.Offer("call-err", A, []byte("not sdp")); !errors.Is(err, ErrBadSDP) {
		t.Errorf("Offer with garbage: %v, want ErrBadSDP", err)
	}
	if _, err := r.Answer("call-err", B, a.sdp(1)); !errors.Is(err, ErrBadSDP) {
		t.Errorf("Answer before any offer: %v, want ErrBadSDP", err)
	}
	v6 := []byte("v=0\r\no=- 1 1 IN IP6 ::1\r\ns=-\r\nc=IN IP6 ::1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n")
	if _, err := r.Offer("call-err", A, v6); !errors.Is(err, ErrBadSDP) {
		t.Errorf("IPv6 offer on an IPv4 side: %v, want ErrBadSDP", err)
	}
	if _, err := r.Offer("call-err", A, a.sdp(1)); err != nil {
		t.Fatal(err)
	}
	two := a.sdp(1, mline{kind: "video", port: 5000})
	if _, err := r.Answer("call-err", B, two); !errors.Is(err, ErrBadSDP) {
		t.Errorf("answer with more m= lines than the offer: %v, want ErrBadSDP", err)
	}
	if r.pool.Allocated() != 2 {
		t.Errorf("failed calls changed allocation: %d, want 2", r.pool.Allocated())
	}
	if _, ok := r.Close("nope", "test"); ok {
		t.Errorf("Close of an unknown session reported true")
	}

	r.Shutdown()
	if err := r.Open("call-late", Address{Bind: relayA}, Address{Bind: relayB}); !errors.Is(err, ErrRelayClosed) {
		t.Errorf("Open after Shutdown: %v, want ErrRelayClosed", err)
	}
}

func TestRelayPoolExhaustionRollsBack(t *testing.T) {
	lo, _ := testPortRange(10)
	r := newTestRelay(t, ioDefault, func(c *Config) {
		c.PortMin, c.PortMax = lo, lo+5 // three pairs
		c.Quarantine = 50 * time.Millisecond
	})
	a := newPhone(t, phoneAIP, false)
	openCall(t, r, "call-big")
	// Two streams need four pairs.
	_, err := r.Offer("call-big", A, a.sdp(1, mline{kind: "video", port: 5000}))
	if !errors.Is(err, ErrPoolExhausted) {
		t.Fatalf("Offer needing 4 of 3 pairs: %v, want ErrPoolExhausted", err)
	}
	if r.pool.Allocated() != 0 {
		t.Errorf("Allocated = %d after a failed offer, want 0", r.pool.Allocated())
	}
	if st, _ := r.Stats("call-big"); len(st.Streams) != 0 {
		t.Errorf("failed offer left %d streams", len(st.Streams))
	}
	// The pairs bound by the failed attempt come back after quarantine and
	// a smaller offer then fits.
	eventually(t, "pairs back from quarantine", func() bool { return r.PortsInUse() == 0 })
	if _, err := r.Offer("call-big", A, a.sdp(2)); err != nil {
		t.Fatalf("one-stream offer after rollback: %v", err)
	}
	if r.pool.Allocated() != 2 {
		t.Errorf("Allocated = %d, want 2", r.pool.Allocated())
	}
}

func TestRelayTimeout(t *testing.T) {
	fired := make(chan SessionID, 16)
	r := newTestRelay(t, ioDefault, func(c *Config) {
		c.Timeout = 400 * time.Millisecond
		c.OnTimeout = func(id SessionID) { fired <- id }
	})
	idle := setupCall(t, r, "call-idle")
	active := setupCall(t, r, "call-active")

	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for seq := uint16(0); ; seq++ {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			active.a.rtp.WriteToUDPAddrPort(rtpPacket(t, 0, seq, 7), active.toA)
		}
	}()
	defer func() { close(stop); <-done }()

	select {
	case id := <-fired:
		if id != idle.id {
			t.Fatalf("OnTimeout(%s), want %s first", id, idle.id)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("OnTimeout never fired for the idle session")
	}
	// Several more timeouts long: the active session must not fire and the
	// idle one must not fire again.
	select {
	case id := <-fired:
		t.Fatalf("OnTimeout(%s) fired again or for the active session", id)
	case <-time.After(5 * r.cfg.Timeout):
	}
	if r.Sessions() != 2 {
		t.Errorf("Sessions = %d: OnTimeout must not close sessions by itself", r.Sessions())
	}
	if f := flow(t, r, active.id, 0, A, compRTP); f.Forwarded == 0 {
		t.Errorf("active session forwarded nothing: %+v", f)
	}
}

func TestRelayTimeoutDefaultCloses(t *testing.T) {
	r := newTestRelay(t, ioDefault, func(c *Config) { c.Timeout = 200 * time.Millisecond })
	openCall(t, r, "call-orphan")
	eventually(t, "idle session closed by the relay", func() bool { return r.Sessions() == 0 })
}

func TestRelayCloseAndShutdownLeakNothing(t *testing.T) {
	base := runtime.NumGoroutine()
	r := newTestRelay(t, ioDefault, nil)
	var calls []*call
	for i := range 5 {
		c := setupCall(t, r, SessionID(fmt.Sprintf("call-leak-%d", i)))
		sendTo(t, c.a.rtp, c.toA, rtpPacket(t, 0, 1, 1))
		calls = append(calls, c)
	}
	for _, c := range calls {
		if got := collect(c.b.rtp, 1, 5*time.Second, 0); len(got) != 1 {
			t.Fatalf("%s: B got %d packets, want 1", c.id, len(got))
		}
		waitRTCP(t, r, c.id, 0)
	}
	if r.Sessions() != 5 || r.PortsInUse() != 10 {
		t.Fatalf("Sessions = %d, PortsInUse = %d; want 5, 10", r.Sessions(), r.PortsInUse())
	}
	if got := r.reading.Load(); got != 5*4 {
		t.Errorf("sockets read %d, want 20 (4 per call)", got)
	}

	for _, c := range calls[:2] {
		st, ok := r.Close(c.id, "bye")
		if !ok {
			t.Fatalf("Close(%s) = false", c.id)
		}
		if f := st.Streams[0].Sides[A].RTP; f.Forwarded != 1 || f.Latched != addrOf(c.a.rtp) || st.Streams[0].Active {
			t.Errorf("final stats of %s: %+v active=%v", c.id, f, st.Streams[0].Active)
		}
		if _, ok := r.Close(c.id, "bye"); ok {
			t.Errorf("second Close(%s) = true, want false", c.id)
		}
		if _, ok := r.Stats(c.id); ok {
			t.Errorf("Stats(%s) after Close = true", c.id)
		}
	}
	if r.Sessions() != 3 || r.pool.Allocated() != 6 || r.PortsInUse() != 10 {
		t.Errorf("after 2 closes: Sessions %d, Allocated %d, PortsInUse %d; want 3, 6, 10 (4 quarantined)",
			r.Sessions(), r.pool.Allocated(), r.PortsInUse())
	}
	// A closed call's ports no longer relay anything.
	sendTo(t, calls[0].a.rtp, calls[0].toA, rtpPacket(t, 0, 2, 1))
	expectSilence(t, calls[0].b.rtp, 100*time.Millisecond, "B of a closed call")

	r.Shutdown()
	r.Shutdown() // idempotent
	if r.reading.Load() != 0 {
		t.Errorf("sockets read %d after Shutdown, want 0", r.reading.Load())
	}
	if r.poll != nil && r.poll.registered() != 0 {
		t.Errorf("sockets registered with the poller after Shutdown: %d, want 0", r.poll.registered())
	}
	if r.Sessions() != 0 || r.pool.Allocated() != 0 || r.PortsInUse() != 10 {
		t.Errorf("after Shutdown: Sessions %d, Allocated %d, PortsInUse %d; want 0, 0, 10",
			r.Sessions(), r.pool.Allocated(), r.PortsInUse())
	}
	waitGoroutines(t, base)
}

// TestRelayConcurrentUse runs the control API from many goroutines against
// live traffic; with -race it checks the locking described in the docs.
func TestRelayConcurrentUse(t *testing.T) {
	base := runtime.NumGoroutine()
	r := newTestRelay(t, ioDefault, nil)
	shared := setupCall(t, r, "call-shared")
	var wg sync.WaitGroup
	for w := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			a, b := newPhone(t, phoneAIP, false), newPhone(t, phoneBIP, true)
			for i := range 15 {
				id := SessionID(fmt.Sprintf("call-c-%d-%d", w, i))
				if err := r.Open(id, Address{Bind: relayA}, Address{Bind: relayB}); err != nil {
					t.Errorf("Open: %v", err)
					return
				}
				if _, err := r.Offer(id, A, a.sdp(i)); err != nil {
					t.Errorf("Offer: %v", err)
				}
				ans, err := r.Answer(id, B, b.sdp(i))
				if err != nil {
					t.Errorf("Answer: %v", err)
					continue
				}
				if to, _ := anchorOf(t, ans, 0); to.IsValid() {
					a.rtp.WriteToUDPAddrPort(rtpPacket(t, 0, uint16(i), 1), to)
				}
				r.Stats(id)
				r.Stats(shared.id)
				r.Offer(shared.id, A, shared.a.sdp(100+i))
				r.Close(id, "done")
			}
		}()
	}
	for i := range 100 {
		shared.a.rtp.WriteToUDPAddrPort(rtpPacket(t, 0, uint16(i), 1), shared.toA)
		shared.b.rtp.WriteToUDPAddrPort(rtpPacket(t, 0, uint16(i), 2), shared.toB)
		time.Sleep(time.Millisecond)
	}
	wg.Wait()
	if r.Sessions() != 1 {
		t.Errorf("Sessions = %d, want 1", r.Sessions())
	}
	st, _ := r.Close(shared.id, "done")
	checkAccounting(t, st)
	r.Shutdown()
	waitGoroutines(t, base)
}

// TestRelayHoldSuspendsTimeout: a call on hold sends no RTP in many
// deployments, so it must not be timed out; once resumed, the idle clock
// runs again.
func TestRelayHoldSuspendsTimeout(t *testing.T) {
	fired := make(chan SessionID, 16)
	r := newTestRelay(t, ioDefault, func(c *Config) {
		c.Timeout = 300 * time.Millisecond
		c.OnTimeout = func(id SessionID) { fired <- id }
	})
	body := func(ip, dir string, port int) []byte {
		return []byte(fmt.Sprintf("v=0\r\no=- 1 1 IN IP4 %s\r\ns=-\r\nc=IN IP4 %s\r\nt=0 0\r\nm=audio %d RTP/AVP 8\r\na=%s\r\n", ip, ip, port, dir))
	}
	a := Address{Bind: netip.MustParseAddr("127.0.0.1")}
	b := Address{Bind: netip.MustParseAddr("127.0.0.2")}
	negotiate := func(id SessionID, offerDir, answerDir string) {
		t.Helper()
		if _, err := r.Offer(id, A, body("127.0.0.3", offerDir, 40000)); err != nil {
			t.Fatal(err)
		}
		if _, err := r.Answer(id, B, body("127.0.0.4", answerDir, 41000)); err != nil {
			t.Fatal(err)
		}
	}
	for _, id := range []SessionID{"held", "talking"} {
		if err := r.Open(id, a, b); err != nil {
			t.Fatal(err)
		}
	}
	negotiate("held", "sendonly", "recvonly")
	negotiate("talking", "sendrecv", "sendrecv")

	select {
	case id := <-fired:
		if id != "talking" {
			t.Fatalf("OnTimeout(%s): the held call must not time out", id)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("OnTimeout never fired for the idle call that is not on hold")
	}
	select {
	case id := <-fired:
		t.Fatalf("OnTimeout(%s) while on hold", id)
	case <-time.After(5 * r.cfg.Timeout):
	}
	// resume: the silent call now times out like any other
	negotiate("held", "sendrecv", "sendrecv")
	select {
	case id := <-fired:
		if id != "held" {
			t.Fatalf("OnTimeout(%s), want the resumed call", id)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("resumed call never timed out")
	}
}

// TestRelayOwnOffer: the SBC offers toward B itself (a template from "A"
// whose address means nothing), B answers, and A's answer to that answer is
// settled. Nothing goes toward A before it is known; afterwards media flows
// both ways, and the o= version toward B counts only bodies sent to B.
func TestRelayOwnOffer(t *testing.T) {
	r := newTestRelay(t, ioImpls()[0], nil)
	const id = SessionID("call-own-offer")
	a, b := newPhone(t, phoneAIP, false), newPhone(t, phoneBIP, true)
	openCall(t, r, id)

	// the template names the SBC's own side A address and a discard port
	tmpl := sdpBody(relayA, 1, mline{kind: "audio", port: 9})
	offer, err := r.OfferFor(id, B, tmpl)
	if err != nil {
		t.Fatalf("OfferFor: %v", err)
	}
	toB, _ := anchorOf(t, offer, 0)
	if toB.Addr() != relayB {
		t.Fatalf("own offer toward B anchors at %v, want %v:\n%s", toB, relayB, offer)
	}
	if v := parseOut(t, offer).Origin().Version; v != 1 {
		t.Errorf("own offer o= version %d, want 1", v)
	}
	toAbody, err := r.Answer(id, B, b.sdp(1))
	if err != nil {
		t.Fatalf("Answer from B: %v", err)
	}
	toA, _ := anchorOf(t, toAbody, 0)

	// B talks before A's answer is known: nothing reaches A, and above all
	// nothing goes to the template's address
	sendTo(t, b.rtp, toB, rtpPacket(t, 0, 1, 0xB))
	expectSilence(t, a.rtp, 200*time.Millisecond, "RTP toward A before its answer")

	if err := r.Settle(id, A, a.sdp(1)); err != nil {
		t.Fatalf("Settle: %v", err)
	}
	if err := r.Settle(id+"-none", A, a.sdp(1)); !errors.Is(err, ErrNoSession) {
		t.Errorf("Settle on no session: %v, want ErrNoSession", err)
	}
	exchangeRTP(t, a, b, toA, toB, 20)

	// the next body toward B (a re-offer from A) is version 2: the
	// settled answer sent nothing to B
	re, err := r.Offer(id, A, a.sdp(2))
	if err != nil {
		t.Fatalf("re-offer from A: %v", err)
	}
	if v := parseOut(t, re).Origin().Version; v != 2 {
		t.Errorf("re-offer toward B has o= version %d, want 2", v)
	}
}

// TestRelayRename: a renamed session keeps its ports and relays on under
// the new ID only; a timeout reported under the old name does not stop
// one under the new.
func TestRelayRename(t *testing.T) {
	fired := make(chan SessionID, 16)
	r := newTestRelay(t, ioDefault, func(c *Config) {
		c.Timeout = 300 * time.Millisecond
		c.OnTimeout = func(id SessionID) { fired <- id }
	})
	c := setupCall(t, r, "call-spare")
	select {
	case id := <-fired:
		if id != "call-spare" {
			t.Fatalf("first timeout for %s", id)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no timeout for the idle spare session")
	}
	openCall(t, r, "call-main")
	if err := r.Rename("call-spare", "call-main"); !errors.Is(err, ErrSessionExists) {
		t.Fatalf("rename onto an open session: %v, want ErrSessionExists", err)
	}
	if _, ok := r.Close("call-main", "replaced"); !ok {
		t.Fatal("close call-main")
	}
	if err := r.Rename("call-spare", "call-main"); err != nil {
		t.Fatalf("Rename: %v", err)
	}
	if err := r.Rename("call-spare", "call-other"); !errors.Is(err, ErrNoSession) {
		t.Errorf("rename of a gone session: %v, want ErrNoSession", err)
	}
	if _, ok := r.Stats("call-spare"); ok {
		t.Error("old name still open")
	}
	if st, ok := r.Stats("call-main"); !ok || st.ID != "call-main" {
		t.Fatalf("Stats under the new name: %+v %v", st, ok)
	}
	for len(fired) > 0 {
		<-fired // anything the old call-main reported
	}
	sendTo(t, c.a.rtp, c.toA, rtpPacket(t, 0, 1, 0xA))
	eventually(t, "RTP relayed by the renamed session", func() bool {
		return flow(t, r, "call-main", 0, A, compRTP).Forwarded > 0
	})
	select {
	case id := <-fired:
		if id != "call-main" {
			t.Fatalf("timeout for %s after the rename, want call-main", id)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the renamed session never timed out: its idle clock did not restart")
	}
}

// TestRelayOwnAnswer: B offers, the SBC answers B itself from a template
// (A cannot answer yet), and A's answer to the same streams, offered to it
// later, is settled: then RTP flows both ways.
func TestRelayOwnAnswer(t *testing.T) {
	r := newTestRelay(t, ioImpls()[0], nil)
	const id = SessionID("call-own-answer")
	a, b := newPhone(t, phoneAIP, false), newPhone(t, phoneBIP, true)
	openCall(t, r, id)
	toAbody, err := r.Offer(id, B, b.sdp(1))
	if err != nil {
		t.Fatalf("Offer from B: %v", err)
	}
	toA, _ := anchorOf(t, toAbody, 0)
	ans, err := r.AnswerFor(id, B, sdpBody(relayA, 1, mline{kind: "audio", port: 9}))
	if err != nil {
		t.Fatalf("AnswerFor: %v", err)
	}
	toB, _ := anchorOf(t, ans, 0)
	if toB.Addr() != relayB {
		t.Fatalf("own answer toward B anchors at %v, want %v:\n%s", toB, relayB, ans)
	}
	if _, err := r.AnswerFor(id+"-none", B, ans); !errors.Is(err, ErrNoSession) {
		t.Errorf("AnswerFor on no session: %v, want ErrNoSession", err)
	}
	sendTo(t, b.rtp, toB, rtpPacket(t, 0, 1, 0xB))
	expectSilence(t, a.rtp, 200*time.Millisecond, "RTP toward A before its answer")
	if err := r.Settle(id, A, a.sdp(1)); err != nil {
		t.Fatalf("Settle: %v", err)
	}
	exchangeRTP(t, a, b, toA, toB, 10)
}

// TestRelayRenameAfterShutdownBegan: once Shutdown has listed the sessions
// to close, a rename is refused, so the session is still found (and its
// sockets closed) under the name Shutdown listed.
func TestRelayRenameAfterShutdownBegan(t *testing.T) {
	r := newTestRelay(t, ioDefault, nil)
	openCall(t, r, "call-listed")
	r.mu.Lock()
	r.closed = true // what Shutdown sets when it lists the sessions
	r.mu.Unlock()
	if err := r.Rename("call-listed", "call-hidden"); !errors.Is(err, ErrRelayClosed) {
		t.Fatalf("rename during shutdown: %v, want ErrRelayClosed", err)
	}
	if _, ok := r.Close("call-listed", "shutdown"); !ok {
		t.Fatal("the listed session is gone under its listed name")
	}
}
