//go:build linux

package media

import (
	"bufio"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/ipv4"
)

// TestMemoryBudget opens 2,000 calls with one audio stream each (8,000
// sockets), latches and forwards a packet in both
// directions of every call, and checks that the process stays far below
// 200 MB of resident memory.
func TestMemoryBudget(t *testing.T) {
	if testing.Short() {
		t.Skip("memory budget: skipped in -short mode")
	}
	if raceEnabled {
		t.Skip("memory budget: the race detector multiplies memory use")
	}
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil || lim.Cur < 4*memCalls+500 {
		t.Skipf("memory budget: needs %d file descriptors, limit is %d", 4*memCalls+500, lim.Cur)
	}
	for _, impl := range ioImpls() {
		t.Run(impl.String(), func(t *testing.T) { memoryBudget(t, impl) })
	}
}

const memCalls = 2000

func memoryBudget(t *testing.T, impl ioImpl) {
	const calls = memCalls
	base := runtime.NumGoroutine()
	runtime.GC()
	rss0 := residentBytes(t)

	lo, _ := testPortRange(4*calls + 1000)
	r := newTestRelay(t, impl, func(c *Config) { c.PortMin, c.PortMax = lo, lo+4*calls+999 })
	a, b := newPhone(t, phoneAIP, false), newPhone(t, phoneBIP, true)
	a.rtp.SetReadBuffer(4 << 20)
	b.rtp.SetReadBuffer(4 << 20)
	offer, answer := a.sdp(1), b.sdp(1)
	calls_ := make([]*call, calls)
	for i := range calls_ {
		c := &call{id: SessionID(fmt.Sprintf("call-mem-%d", i))}
		openCall(t, r, c.id)
		var err error
		if c.offer, err = r.Offer(c.id, A, offer); err != nil {
			t.Fatalf("Offer %d: %v", i, err)
		}
		if c.answer, err = r.Answer(c.id, B, answer); err != nil {
			t.Fatalf("Answer %d: %v", i, err)
		}
		c.toB, _ = anchorOf(t, c.offer, 0)
		c.toA, _ = anchorOf(t, c.answer, 0)
		calls_[i] = c
	}
	pa, pb := rtpPacket(t, 0, 1, 1), rtpPacket(t, 0, 1, 2)
	drained := make(chan int, 2)
	go func() { drained <- len(collect(b.rtp, calls, 30*time.Second, 0)) }()
	go func() { drained <- len(collect(a.rtp, calls, 30*time.Second, 0)) }()
	for _, c := range calls_ {
		sendTo(t, a.rtp, c.toA, pa)
		sendTo(t, b.rtp, c.toB, pb)
	}
	if got := <-drained + <-drained; got != 2*calls {
		t.Fatalf("phones got %d packets, want %d", got, 2*calls)
	}

	runtime.GC()
	rss := residentBytes(t)
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	t.Logf("%d calls, %d sockets, %d goroutines: RSS %.1f MB (%.1f MB above start), heap in use %.1f MB, stacks %.1f MB",
		calls, 4*calls, runtime.NumGoroutine(), mb(rss), mb(rss-rss0), mb(ms.HeapInuse), mb(ms.StackInuse))
	if rss > 200<<20 {
		t.Errorf("RSS %.1f MB exceeds the 200 MB budget", mb(rss))
	}

	r.Shutdown()
	if r.pool.Allocated() != 0 || r.Sessions() != 0 {
		t.Errorf("after Shutdown: Allocated %d, Sessions %d", r.pool.Allocated(), r.Sessions())
	}
	waitGoroutines(t, base)
}

func mb(n uint64) float64 { return float64(n) / (1 << 20) }

// residentBytes reads VmRSS from /proc/self/status.
func residentBytes(t *testing.T) uint64 {
	t.Helper()
	f, err := os.Open("/proc/self/status")
	if err != nil {
		t.Skipf("memory budget: %v", err)
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if rest, ok := strings.CutPrefix(s.Text(), "VmRSS:"); ok {
			kb, err := strconv.ParseUint(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			if err != nil {
				t.Fatalf("parse VmRSS %q: %v", rest, err)
			}
			return kb << 10
		}
	}
	t.Skip("memory budget: no VmRSS in /proc/self/status")
	return 0
}

// BenchmarkRelayMemory measures the relay's peak memory with 2,000 calls
// carrying RTP both ways at once, as in the daemon under load: every call's
// two RTP sockets get a 172-byte packet every 30 ms (about 133,000 packets
// per second in all) for three seconds. It reports the process's peak
// resident set (VmHWM, so run it alone: go test -run '^$' -bench
// RelayMemory -benchtime 1x ./media), the heap in use and the goroutine
// stacks at the end of the load, the packets the relay forwarded and the
// packets that came through.
func BenchmarkRelayMemory(b *testing.B) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil || lim.Cur < 4*memCalls+500 {
		b.Skipf("needs %d file descriptors, limit is %d", 4*memCalls+500, lim.Cur)
	}
	for range b.N {
		memoryUnderLoad(b, defaultIO)
	}
}

func memoryUnderLoad(b *testing.B, impl ioImpl) {
	const (
		calls  = memCalls
		every  = 30 * time.Millisecond
		period = 3 * time.Second
	)
	lo, _ := testPortRange(4*calls + 1000)
	r := newTestRelay(b, impl, func(c *Config) { c.PortMin, c.PortMax = lo, lo+4*calls+999 })
	defer r.Shutdown()
	a, bp := newPhone(b, phoneAIP, false), newPhone(b, phoneBIP, true)
	a.rtp.SetReadBuffer(4 << 20)
	bp.rtp.SetReadBuffer(4 << 20)
	a.rtp.SetWriteBuffer(4 << 20)
	bp.rtp.SetWriteBuffer(4 << 20)
	offer, answer := a.sdp(1), bp.sdp(1)
	toA := make([]netip.AddrPort, calls) // where phone A sends
	toB := make([]netip.AddrPort, calls)
	for i := range calls {
		id := SessionID(fmt.Sprintf("call-load-%d", i))
		openCall(b, r, id)
		o, err := r.Offer(id, A, offer)
		if err != nil {
			b.Fatalf("Offer %d: %v", i, err)
		}
		ans, err := r.Answer(id, B, answer)
		if err != nil {
			b.Fatalf("Answer %d: %v", i, err)
		}
		toB[i], _ = anchorOf(b, o, 0)
		toA[i], _ = anchorOf(b, ans, 0)
	}
	var got atomic.Int64
	drain := func(c *net.UDPConn) {
		buf := make([]byte, 2048)
		for {
			c.SetReadDeadline(time.Now().Add(time.Second))
			if _, _, err := c.ReadFromUDPAddrPort(buf); err != nil {
				return
			}
			got.Add(1)
		}
	}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); drain(a.rtp) }()
	go func() { defer wg.Done(); drain(bp.rtp) }()

	pkt := rtpPacket(b, 0, 1, 0x10AD)
	send := func(c *net.UDPConn, to []netip.AddrPort) int {
		pc := ipv4.NewPacketConn(c)
		msgs := make([]ipv4.Message, 64)
		for i := range msgs {
			msgs[i].Buffers = [][]byte{pkt}
		}
		sent := 0
		for off := 0; off < len(to); off += len(msgs) {
			n := min(len(msgs), len(to)-off)
			for i := range n {
				msgs[i].Addr = net.UDPAddrFromAddrPort(to[off+i])
			}
			k, _ := pc.WriteBatch(msgs[:n], 0)
			sent += k
		}
		return sent
	}
	b.ResetTimer()
	sent := 0
	start := time.Now()
	for tick := time.Now(); time.Since(start) < period; tick = tick.Add(every) {
		sent += send(a.rtp, toA) + send(bp.rtp, toB)
		time.Sleep(time.Until(tick.Add(every)))
	}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	goroutines := runtime.NumGoroutine()
	wg.Wait()
	b.StopTimer()
	b.ReportMetric(float64(procStatus(b, "VmHWM:"))/(1<<20), "peak-RSS-MB")
	b.ReportMetric(float64(ms.HeapInuse)/(1<<20), "heap-MB")
	b.ReportMetric(float64(ms.StackInuse)/(1<<20), "stacks-MB")
	b.ReportMetric(float64(goroutines), "goroutines")
	b.ReportMetric(float64(got.Load())/float64(max(sent, 1)), "delivered")
	// What the relay itself forwarded: delivered below relayed means the
	// phones of the benchmark lost packets, not the relay.
	var relayed uint64
	for i := range calls {
		if st, ok := r.Stats(SessionID(fmt.Sprintf("call-load-%d", i))); ok {
			relayed += st.Total().Forwarded
		}
	}
	b.ReportMetric(float64(relayed)/float64(max(sent, 1)), "relayed")
}

// procStatus reads a size field (in kB) of /proc/self/status, in bytes.
func procStatus(t testing.TB, field string) uint64 {
	t.Helper()
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Skipf("read /proc/self/status: %v", err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, field); ok {
			kb, err := strconv.ParseUint(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			if err != nil {
				t.Fatalf("parse %s %q: %v", field, rest, err)
			}
			return kb << 10
		}
	}
	t.Skipf("no %s in /proc/self/status", field)
	return 0
}
