//go:build linux

package media

import (
	"bytes"
	"net"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// BenchmarkSessionLifecycleMedia measures what one call that carries media
// costs the relay: Open, offer and answer, one RTP packet each way, a
// pause, RTCP from A until one reaches B, and Close. The pause stands for
// the seconds between a call's first RTP and its first RTCP report
// (RFC 3550 §6.2): on the ioEpoll path the RTCP sockets are bound once the
// first RTP has latched (see rtcpBinding), and a report sent before that
// is lost and sent again, which a real call never needs. The time per op
// is mostly the pause; cpu-µs/op is the CPU time of the whole process
// (relay, phones, runtime) per call. One op is one call.
func BenchmarkSessionLifecycleMedia(b *testing.B) {
	for _, impl := range ioImpls() {
		b.Run("io="+impl.String(), func(b *testing.B) { benchLifecycleMedia(b, impl) })
	}
}

// rtcpPause is the pause of BenchmarkSessionLifecycleMedia between RTP and
// RTCP.
const rtcpPause = 2 * time.Millisecond

func benchLifecycleMedia(b *testing.B, impl ioImpl) {
	r := newTestRelay(b, impl, func(c *Config) { c.Quarantine = time.Nanosecond })
	pa, pb := newPhone(b, phoneAIP, false), newPhone(b, phoneBIP, true)
	offer, answer := pa.sdp(1), pb.sdp(1)
	rtpA, rtpB := rtpPacket(b, 0, 1, 0xA), rtpPacket(b, 0, 1, 0xB)
	buf := make([]byte, 2048)
	// recv waits up to wait for want on c, skipping anything else (a
	// report of an earlier call sent twice).
	recv := func(c *net.UDPConn, want []byte, wait time.Duration) bool {
		c.SetReadDeadline(time.Now().Add(wait))
		for {
			n, _, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return false
			}
			if bytes.Equal(buf[:n], want) {
				return true
			}
		}
	}
	var before, after syscall.Rusage
	resent := 0
	b.ReportAllocs()
	b.ResetTimer()
	syscall.Getrusage(syscall.RUSAGE_SELF, &before)
	for i := range b.N {
		id := SessionID("bench-" + strconv.Itoa(i))
		if err := r.Open(id, Address{Bind: relayA}, Address{Bind: relayB}); err != nil {
			b.Fatal(err)
		}
		o, err := r.Offer(id, A, offer)
		if err != nil {
			b.Fatal(err)
		}
		ans, err := r.Answer(id, B, answer)
		if err != nil {
			b.Fatal(err)
		}
		toB, _ := anchorOf(b, o, 0)
		toA, toARTCP := anchorOf(b, ans, 0)
		pa.rtp.WriteToUDPAddrPort(rtpA, toA)
		if !recv(pb.rtp, rtpA, 5*time.Second) {
			b.Fatal("RTP from A lost")
		}
		pb.rtp.WriteToUDPAddrPort(rtpB, toB)
		if !recv(pa.rtp, rtpB, 5*time.Second) {
			b.Fatal("RTP from B lost")
		}
		time.Sleep(rtcpPause)
		report := rtcpPacket(uint32(i))
		got := false
		for try := 0; try < 500 && !got; try++ {
			if try > 0 {
				resent++
			}
			pa.rtcp.WriteToUDPAddrPort(report, toARTCP)
			got = recv(pb.rtcp, report, 10*time.Millisecond)
		}
		if !got {
			b.Fatal("RTCP from A never relayed")
		}
		if _, ok := r.Close(id, "bye"); !ok {
			b.Fatal("Close: session not open")
		}
	}
	syscall.Getrusage(syscall.RUSAGE_SELF, &after)
	b.StopTimer()
	cpu := time.Duration(after.Utime.Nano() + after.Stime.Nano() - before.Utime.Nano() - before.Stime.Nano())
	b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-µs/op")
	b.ReportMetric(float64(resent)/float64(b.N), "rtcp-resent/op")
}
