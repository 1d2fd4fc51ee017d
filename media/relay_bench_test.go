package media

import (
	"net"
	"runtime"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/ipv4"
)

// BenchmarkRelayForward measures packets per second through one stream of
// one session over loopback: phone A sends 172-byte RTP packets (G.711,
// 20 ms) in batches of 32 with sendmmsg, the relay forwards them to phone B,
// which counts them. The sender keeps at most `window` packets in flight so
// the benchmark measures forwarding, not loss in overrun socket buffers.
// One op is one packet; allocs/pkt counts every heap allocation in the
// process during the run (sender and receiver use allocation-free calls).
func BenchmarkRelayForward(b *testing.B) {
	for _, impl := range ioImpls() {
		b.Run("io="+impl.String(), func(b *testing.B) { benchForward(b, impl) })
	}
}

func benchForward(b *testing.B, impl ioImpl) {
	const (
		batch = 32
		// window stays below what a default 208 KiB socket buffer holds
		// of these packets (about 200 at their kernel truesize).
		window = 128
	)
	r := newTestRelay(b, impl, nil)
	c := setupCall(b, r, "bench")
	c.b.rtp.SetReadBuffer(4 << 20)
	pkt := rtpPacket(b, 0, 1, 0xBE)

	var received atomic.Int64
	var last time.Time // written by the receiver, read after done
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 2048)
		for received.Load() < int64(b.N) {
			c.b.rtp.SetReadDeadline(time.Now().Add(time.Second))
			if _, _, err := c.b.rtp.ReadFromUDPAddrPort(buf); err != nil {
				return // loss: the sender finished and nothing more comes
			}
			last = time.Now()
			received.Add(1)
		}
	}()

	pc := ipv4.NewPacketConn(c.a.rtp)
	dst := net.UDPAddrFromAddrPort(c.toA)
	msgs := make([]ipv4.Message, batch)
	for i := range msgs {
		msgs[i].Buffers = [][]byte{pkt}
		msgs[i].Addr = dst
	}

	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	for sent := 0; sent < b.N; {
		// Wait for room in the window; give up waiting after a while so a
		// lost packet cannot stall the sender for good.
		for wait := 0; int64(sent)-received.Load() > window && wait < 1000; wait++ {
			time.Sleep(20 * time.Microsecond)
		}
		n := min(batch, b.N-sent)
		k, err := pc.WriteBatch(msgs[:n], 0)
		if err != nil {
			b.Fatalf("send: %v", err)
		}
		sent += k
	}
	<-done
	b.StopTimer()
	elapsed := last.Sub(start)
	runtime.ReadMemStats(&after)

	got := received.Load()
	if got == 0 {
		b.Fatal("nothing arrived")
	}
	b.ReportMetric(float64(got)/elapsed.Seconds(), "pkts/s")
	b.ReportMetric(float64(after.Mallocs-before.Mallocs)/float64(b.N), "allocs/pkt")
	if lost := int64(b.N) - got; lost > 0 {
		b.ReportMetric(float64(lost)/float64(b.N), "loss")
	}
}

// BenchmarkSessionLifecycle measures what one call costs the relay when it
// carries no packet, as most calls of a call-rate benchmark do: Open, an
// offer from A and an answer from B (two port pairs; two RTP sockets bound
// and read on the ioEpoll path, whose RTCP sockets wait for RTP that never
// comes, four sockets elsewhere), and Close. One op is one call.
func BenchmarkSessionLifecycle(b *testing.B) {
	for _, impl := range ioImpls() {
		b.Run("io="+impl.String(), func(b *testing.B) { benchLifecycle(b, impl) })
	}
}

func benchLifecycle(b *testing.B, impl ioImpl) {
	// A quarantine of 1ns lets the pool hand a pair out again at once, so
	// any b.N fits the test range.
	r := newTestRelay(b, impl, func(c *Config) { c.Quarantine = time.Nanosecond })
	pa, pb := newPhone(b, phoneAIP, false), newPhone(b, phoneBIP, true)
	offer, answer := pa.sdp(1), pb.sdp(1)
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		id := SessionID("bench-" + strconv.Itoa(i))
		if err := r.Open(id, Address{Bind: relayA}, Address{Bind: relayB}); err != nil {
			b.Fatal(err)
		}
		if _, err := r.Offer(id, A, offer); err != nil {
			b.Fatal(err)
		}
		if _, err := r.Answer(id, B, answer); err != nil {
			b.Fatal(err)
		}
		if _, ok := r.Close(id, "bye"); !ok {
			b.Fatal("Close: session not open")
		}
	}
}
