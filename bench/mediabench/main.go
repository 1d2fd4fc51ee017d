//go:build linux

// Command mediabench measures RTP forwarding through a middle namespace:
// how many RTP-sized packets per second pass with under 0.1% loss, for 1 to
// 10,000 concurrent streams, by
//
//	raw        hand-written nftables DNAT/SNAT map rules (the kernel's limit)
//	offload    edgesbc's relay with kernel offload (package firewall)
//	userspace  edgesbc's relay alone
//	rtpengine  Debian's rtpengine in userspace mode (--table=-1), driven over
//	           its ng control protocol with the same streams
//
// It builds its own namespaces (left ── sbc ── right), sends from left with
// a raw socket (one UDP source port per stream, 172-byte payloads) and
// counts what reaches right with an nft counter. The generator runs as a
// child process pinned to CPU 0 (the kernel path's softirq work follows it
// there); the relay runs in this process, which bench/run.sh pins to CPU 1.
// Run as root: bench/run.sh media-kernel does.
package main

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"flag"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/edgesbc/edgesbc/firewall"
	"github.com/edgesbc/edgesbc/media"
)

var (
	leftIP   = netip.MustParseAddr("10.94.1.2")
	sbcLeft  = netip.MustParseAddr("10.94.1.1")
	sbcRight = netip.MustParseAddr("10.94.2.1")
	rightIP  = netip.MustParseAddr("10.94.2.2")
)

const (
	payloadLen = 172 // RTP header + 20 ms of G.711
	sinkPort   = 9   // where every stream ends on the right
	srcBase    = 10000
	portMin    = 20000
	portMax    = 60999
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "gen" {
		os.Exit(generate(os.Args[2:]))
	}
	modes := flag.String("modes", "raw offload userspace rtpengine flowrate", "what to measure")
	streams := flag.String("streams", "1 100 1000 10000", "concurrent stream counts")
	rates := flag.String("rates", "25000 50000 100000 150000 200000 300000 400000 500000 700000 1000000", "offered packet rates (ladder)")
	secs := flag.Float64("seconds", 2, "seconds per rate step")
	flag.IntVar(&flowBatch, "batch", 20000, "flowrate: flows per netlink transaction (0: firewall.DefaultBatch)")
	flag.IntVar(&flowRounds, "rounds", 1, "flowrate: offload and withdraw rounds on one firewall.Media (later rounds find its tables grown)")
	flag.Parse()
	if path := os.Getenv("MEDIABENCH_CPUPROFILE"); path != "" {
		if f, err := os.Create(path); err == nil {
			_ = pprof.StartCPUProfile(f)
			defer pprof.StopCPUProfile()
		}
	}

	var l lab
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := l.build(); err != nil {
		fmt.Fprintln(os.Stderr, "mediabench:", err)
		l.remove()
		os.Exit(1)
	}
	defer l.remove()
	raiseFiles()

	fmt.Printf("%-10s %8s %12s %10s %8s %14s\n", "mode", "streams", "max_pps", "loss_%", "cpu_%", "setup")
	for _, mode := range strings.Fields(*modes) {
		for _, f := range strings.Fields(*streams) {
			n, _ := strconv.Atoi(f)
			if ctx.Err() != nil {
				return
			}
			if mode == "flowrate" {
				frs, err := l.flowRate(n, flowRounds)
				if err != nil {
					fmt.Fprintf(os.Stderr, "mediabench: flowrate %d: %v\n", n, err)
					continue
				}
				for i, fr := range frs {
					round := ""
					if len(frs) > 1 {
						round = fmt.Sprintf(" round %d:", i+1)
					}
					fmt.Printf("%-10s %8d%s offload %v (%.0f flows/s, cpu %v), withdraw %v (%.0f flows/s, cpu %v)\n", mode, n, round,
						fr.add.Round(time.Millisecond), float64(n)/fr.add.Seconds(), fr.addCPU.Round(time.Millisecond),
						fr.del.Round(time.Millisecond), float64(n)/fr.del.Seconds(), fr.delCPU.Round(time.Millisecond))
				}
				continue
			}
			res, err := l.measure(ctx, mode, n, fields(*rates), *secs)
			if err != nil {
				fmt.Fprintf(os.Stderr, "mediabench: %s %d streams: %v\n", mode, n, err)
				continue
			}
			fmt.Printf("%-10s %8d %12.0f %10.3f %8.1f %14s\n", mode, n, res.pps, res.loss*100, res.cpu, res.setup)
		}
	}
}

func fields(s string) []float64 {
	var out []float64
	for _, f := range strings.Fields(s) {
		v, err := strconv.ParseFloat(f, 64)
		if err == nil {
			out = append(out, v)
		}
	}
	return out
}

// raiseFiles lifts the descriptor limit: 10,000 streams are 40,000 relay
// sockets. Root may raise the hard limit too, up to fs.nr_open, unless a
// container forbids it.
func raiseFiles() {
	var r unix.Rlimit
	if unix.Getrlimit(unix.RLIMIT_NOFILE, &r) != nil {
		return
	}
	want := uint64(200000)
	if b, err := os.ReadFile("/proc/sys/fs/nr_open"); err == nil {
		if n, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64); err == nil {
			want = min(want, n)
		}
	}
	if r.Max < want && unix.Setrlimit(unix.RLIMIT_NOFILE, &unix.Rlimit{Cur: want, Max: want}) == nil {
		return
	}
	r.Cur = r.Max
	_ = unix.Setrlimit(unix.RLIMIT_NOFILE, &r)
}

type lab struct {
	left, sbc, right string
	// cpu reads the CPU time of whatever forwards in userspace in the
	// current mode (this process by default).
	cpu func() time.Duration
}

func ip(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return nil
}

func inNS(ns string, name string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", ns, name}, args...)...)
}

func run(ns string, name string, args ...string) (string, error) {
	out, err := inNS(ns, name, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s in %s: %v: %s", name, strings.Join(args, " "), ns, err, out)
	}
	return string(out), nil
}

func (l *lab) build() error {
	sfx := strconv.Itoa(rand.IntN(1 << 20))
	l.left, l.sbc, l.right = "mb-left-"+sfx, "mb-sbc-"+sfx, "mb-right-"+sfx
	for _, ns := range []string{l.left, l.sbc, l.right} {
		if err := ip("netns", "add", ns); err != nil {
			return err
		}
		if err := ip("-n", ns, "link", "set", "lo", "up"); err != nil {
			return err
		}
	}
	for _, lk := range []struct {
		a, aIf string
		aAddr  netip.Addr
		b, bIf string
		bAddr  netip.Addr
	}{{l.left, "v-sbc", leftIP, l.sbc, "v-left", sbcLeft}, {l.sbc, "v-right", sbcRight, l.right, "v-sbc", rightIP}} {
		if err := ip("link", "add", lk.aIf, "netns", lk.a, "type", "veth", "peer", "name", lk.bIf, "netns", lk.b); err != nil {
			return err
		}
		for _, e := range []struct {
			ns, ifn string
			a       netip.Addr
		}{{lk.a, lk.aIf, lk.aAddr}, {lk.b, lk.bIf, lk.bAddr}} {
			if err := ip("-n", e.ns, "addr", "add", e.a.String()+"/24", "dev", e.ifn); err != nil {
				return err
			}
			if err := ip("-n", e.ns, "link", "set", e.ifn, "up"); err != nil {
				return err
			}
		}
	}
	if _, err := run(l.sbc, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.core.rmem_max=8388608", "net.core.rmem_default=1048576"); err != nil {
		return err
	}
	// The sink: count and drop everything for the sink port on the right.
	rules := "table ip mbrx {\n chain in {\n  type filter hook prerouting priority raw; policy accept;\n  udp dport 9 counter drop\n }\n}\n"
	cmd := inNS(l.right, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("sink rules: %v: %s", err, out)
	}
	return nil
}

func (l *lab) remove() {
	for _, ns := range []string{l.left, l.sbc, l.right} {
		if ns != "" {
			_ = ip("netns", "del", ns)
		}
	}
}

// received reads the sink's counter.
func (l *lab) received() (uint64, error) {
	out, err := run(l.right, "nft", "-j", "list", "chain", "ip", "mbrx", "in")
	if err != nil {
		return 0, err
	}
	var doc struct {
		Nftables []map[string]json.RawMessage `json:"nftables"`
	}
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		return 0, err
	}
	for _, o := range doc.Nftables {
		raw, ok := o["rule"]
		if !ok {
			continue
		}
		var rule struct {
			Expr []map[string]json.RawMessage `json:"expr"`
		}
		if err := json.Unmarshal(raw, &rule); err != nil {
			return 0, err
		}
		for _, e := range rule.Expr {
			if c, ok := e["counter"]; ok {
				var cv struct {
					Packets uint64 `json:"packets"`
				}
				if err := json.Unmarshal(c, &cv); err != nil {
					return 0, err
				}
				return cv.Packets, nil
			}
		}
	}
	return 0, fmt.Errorf("no counter in the sink chain")
}

type result struct {
	pps, loss, cpu float64
	setup          string
}

// measure sets mode up for n streams, then climbs the rate ladder until
// loss reaches 0.1%, and reports the highest clean rate.
func (l *lab) measure(ctx context.Context, mode string, n int, rates []float64, secs float64) (result, error) {
	var res result
	l.cpu = rusage
	targets, teardown, setup, err := l.setup(mode, n)
	if err != nil {
		return res, err
	}
	defer teardown()
	res.setup = setup.Round(time.Millisecond).String()
	for _, rate := range rates {
		if ctx.Err() != nil {
			break
		}
		before, err := l.received()
		if err != nil {
			return res, err
		}
		ru0 := l.cpu()
		t0 := time.Now()
		sent, err := l.send(targets, rate, secs)
		if err != nil {
			return res, err
		}
		time.Sleep(300 * time.Millisecond) // let queues drain
		cpu := (l.cpu() - ru0).Seconds() / time.Since(t0).Seconds() * 100
		after, err := l.received()
		if err != nil {
			return res, err
		}
		got := after - before
		loss := 1 - float64(got)/float64(max(sent, 1))
		achieved := float64(sent) / secs
		if loss > 0.001 || achieved < 0.9*rate {
			if res.pps == 0 {
				res.loss = loss
			}
			break
		}
		res.pps, res.loss, res.cpu = achieved, max(loss, 0), cpu
	}
	return res, nil
}

func rusage() time.Duration {
	var ru unix.Rusage
	_ = unix.Getrusage(unix.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// send runs the generator in the left namespace, pinned to CPU 0, and
// returns how many packets it sent.
func (l *lab) send(targets []netip.AddrPort, rate, secs float64) (uint64, error) {
	f, err := os.CreateTemp("", "mediabench-targets")
	if err != nil {
		return 0, err
	}
	defer os.Remove(f.Name())
	for _, t := range targets {
		fmt.Fprintln(f, t)
	}
	f.Close()
	self, _ := os.Executable()
	out, err := run(l.left, "taskset", "-c", "0", self, "gen", f.Name(), strconv.FormatFloat(rate, 'f', 0, 64),
		strconv.FormatFloat(secs, 'f', 3, 64))
	if err != nil {
		return 0, err
	}
	return strconv.ParseUint(strings.TrimSpace(out), 10, 64)
}

// setup prepares mode for n streams and returns the relay-side address each
// stream's packets go to (stream i sends from left port srcBase+i).
func (l *lab) setup(mode string, n int) ([]netip.AddrPort, func(), time.Duration, error) {
	switch mode {
	case "raw":
		return l.setupRaw(n)
	case "offload", "userspace":
		return l.setupRelay(n, mode == "offload")
	case "rtpengine":
		return l.setupRtpengine(n)
	}
	return nil, nil, 0, fmt.Errorf("unknown mode %q", mode)
}

// setupRaw writes the hand-written rules: the same maps edgesbc uses, in a
// table of their own, filled by one nft -f.
func (l *lab) setupRaw(n int) ([]netip.AddrPort, func(), time.Duration, error) {
	var b strings.Builder
	b.WriteString("table ip mbraw {\n map dn { type ipv4_addr . inet_service . ipv4_addr . inet_service : ipv4_addr . inet_service; }\n")
	b.WriteString(" map sn { type ipv4_addr . inet_service . ipv4_addr . inet_service : ipv4_addr . inet_service; }\n")
	b.WriteString(" chain pre { type nat hook prerouting priority dstnat; dnat ip to ip saddr . udp sport . ip daddr . udp dport map @dn; }\n")
	b.WriteString(" chain post { type nat hook postrouting priority srcnat; snat ip to ip saddr . udp sport . ip daddr . udp dport map @sn; }\n}\n")
	targets := make([]netip.AddrPort, n)
	for i := range n {
		local := netip.AddrPortFrom(sbcLeft, uint16(portMin+2*i))
		out := netip.AddrPortFrom(sbcRight, uint16(portMin+2*i))
		src := netip.AddrPortFrom(leftIP, uint16(srcBase+i))
		targets[i] = local
		fmt.Fprintf(&b, "add element ip mbraw dn { %v . %d . %v . %d : %v . %d }\n", src.Addr(), src.Port(), local.Addr(), local.Port(), rightIP, sinkPort)
		fmt.Fprintf(&b, "add element ip mbraw sn { %v . %d . %v . %d : %v . %d }\n", src.Addr(), src.Port(), rightIP, sinkPort, out.Addr(), out.Port())
	}
	t0 := time.Now()
	cmd := inNS(l.sbc, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(b.String())
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, nil, 0, fmt.Errorf("raw rules: %v: %s", err, out)
	}
	setup := time.Since(t0)
	return targets, func() {
		_, _ = run(l.sbc, "nft", "delete", "table", "ip", "mbraw")
		_, _ = run(l.sbc, "conntrack", "-F")
	}, setup, nil
}

// setupRelay opens n calls on edgesbc's relay in the sbc namespace, latches
// both sides of each and, with offload, waits for the kernel to take them.
// The setup time it returns is from the last latching packet to the last
// stream in the kernel (offload) or to the end of latching (userspace).
func (l *lab) setupRelay(n int, offload bool) ([]netip.AddrPort, func(), time.Duration, error) {
	h, err := netns.GetFromName(l.sbc)
	if err != nil {
		return nil, nil, 0, err
	}
	log := hclog.New(&hclog.LoggerOptions{Level: hclog.Warn, Output: os.Stderr})
	var fw *firewall.Media
	cfg := media.Config{PortMin: portMin, PortMax: portMax, Timeout: time.Hour, Quarantine: time.Millisecond}
	if offload {
		fw, err = firewall.NewMedia(firewall.MediaConfig{Addrs: []netip.Addr{sbcLeft, sbcRight},
			PortMin: portMin, PortMax: portMax, NetNS: int(h)}, log)
		if err != nil {
			h.Close()
			return nil, nil, 0, err
		}
		cfg.Offloader = fw
	}
	relay, err := media.NewRelay(cfg, log)
	if err != nil {
		h.Close()
		return nil, nil, 0, err
	}
	teardown := func() {
		relay.Shutdown()
		if fw != nil {
			_ = fw.Close(false)
		}
		h.Close()
	}
	targets := make([]netip.AddrPort, n)
	outs := make([]netip.AddrPort, n)
	err = inNetns(h, func() error {
		for i := range n {
			id := media.SessionID("s" + strconv.Itoa(i))
			if err := relay.Open(id, media.Address{Bind: sbcLeft}, media.Address{Bind: sbcRight}); err != nil {
				return err
			}
			toRight, err := relay.Offer(id, media.A, sdp(leftIP, srcBase+i))
			if err != nil {
				return err
			}
			toLeft, err := relay.Answer(id, media.B, sdp(rightIP, sinkPort))
			if err != nil {
				return err
			}
			targets[i], outs[i] = anchorOf(toLeft), anchorOf(toRight)
		}
		return nil
	})
	if err != nil {
		teardown()
		return nil, nil, 0, err
	}
	// Latch: one packet per stream from each side, paced well below any
	// limit.
	if _, err := l.send(targets, 20000, float64(n)/20000+0.05); err != nil {
		teardown()
		return nil, nil, 0, err
	}
	self, _ := os.Executable()
	f, _ := os.CreateTemp("", "mediabench-outs")
	defer os.Remove(f.Name())
	for _, o := range outs {
		fmt.Fprintln(f, o)
	}
	f.Close()
	if _, err := run(l.right, self, "gen", f.Name(), "20000", strconv.FormatFloat(float64(n)/20000+0.05, 'f', 3, 64), "from-sink"); err != nil {
		teardown()
		return nil, nil, 0, err
	}
	t0 := time.Now()
	if offload {
		deadline := time.Now().Add(60 * time.Second)
		for relay.OffloadedLinks() < n {
			if time.Now().After(deadline) {
				teardown()
				return nil, nil, 0, fmt.Errorf("only %d of %d streams offloaded after 60 s", relay.OffloadedLinks(), n)
			}
			time.Sleep(time.Millisecond)
		}
	}
	return targets, teardown, time.Since(t0), nil
}

// flowBatch is MediaConfig.Batch in flowrate mode; flowRounds is how
// often it offloads and withdraws the flows on one firewall.Media.
var flowBatch, flowRounds int

// flowTimes are what flowRate measures: wall-clock time and the CPU time
// of this process (user and system, so including the kernel's work done
// in its netlink calls) for each step.
type flowTimes struct{ add, addCPU, del, delCPU time.Duration }

// flowRate offloads n flows (no traffic) through firewall.Media and
// withdraws them again, timing each until the last callback, rounds times
// on the same Media: the first round includes the growth of its Go maps,
// later ones show a daemon that has carried as many flows before.
func (l *lab) flowRate(n, rounds int) ([]flowTimes, error) {
	h, err := netns.GetFromName(l.sbc)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	fw, err := firewall.NewMedia(firewall.MediaConfig{Addrs: []netip.Addr{sbcLeft, sbcRight},
		PortMin: portMin, PortMax: portMax, NetNS: int(h), Batch: flowBatch},
		hclog.New(&hclog.LoggerOptions{Level: hclog.Warn, Output: os.Stderr}))
	if err != nil {
		return nil, err
	}
	defer fw.Close(false)
	flows := make([]media.Flow, n)
	for i := range flows {
		flows[i] = media.Flow{
			Src:   netip.AddrPortFrom(leftIP, uint16(srcBase+i)),
			Local: netip.AddrPortFrom(sbcLeft, uint16(portMin+2*i)),
			Out:   netip.AddrPortFrom(sbcRight, uint16(portMin+2*i)),
			Dst:   netip.AddrPortFrom(rightIP, sinkPort),
		}
	}
	var out []flowTimes
	for range max(rounds, 1) {
		ft, err := offloadRound(fw, flows)
		if err != nil {
			return out, err
		}
		out = append(out, ft)
	}
	return out, nil
}

// offloadRound offloads flows and withdraws them again.
func offloadRound(fw *firewall.Media, flows []media.Flow) (ft flowTimes, err error) {
	n := len(flows)
	errs := make(chan error, n)
	c0 := rusage()
	t0 := time.Now()
	for _, f := range flows {
		fw.Offload(f, func(err error) { errs <- err })
	}
	for range n {
		if e := <-errs; e != nil && err == nil {
			err = e
		}
	}
	ft.add, ft.addCPU = time.Since(t0), rusage()-c0
	if err != nil {
		return ft, err
	}
	done := make(chan struct{}, n)
	c0 = rusage()
	t0 = time.Now()
	for _, f := range flows {
		fw.Withdraw(f, func(_, _ media.Counter) { done <- struct{}{} })
	}
	for range n {
		<-done
	}
	ft.del, ft.delCPU = time.Since(t0), rusage()-c0
	return ft, nil
}

// inNetns runs fn on a thread inside ns (sockets it creates stay there) and
// moves the thread back afterwards.
func inNetns(h netns.NsHandle, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- err
			return
		}
		defer orig.Close()
		if err := netns.Set(h); err != nil {
			errc <- err
			return
		}
		err = fn()
		if serr := netns.Set(orig); serr != nil {
			errc <- serr // the thread stays locked and dies with the goroutine
			return
		}
		runtime.UnlockOSThread()
		errc <- err
	}()
	return <-errc
}

func sdp(ip netip.Addr, port int) []byte {
	return fmt.Appendf(nil, "v=0\r\no=- 1 1 IN IP4 %v\r\ns=-\r\nc=IN IP4 %v\r\nt=0 0\r\nm=audio %d RTP/AVP 0\r\n", ip, ip, port)
}

func anchorOf(body []byte) netip.AddrPort {
	var addr netip.Addr
	var port int
	for _, line := range strings.Split(string(body), "\r\n") {
		switch {
		case strings.HasPrefix(line, "c=IN IP4 "):
			addr, _ = netip.ParseAddr(strings.TrimPrefix(line, "c=IN IP4 "))
		case strings.HasPrefix(line, "m=audio "):
			port, _ = strconv.Atoi(strings.Fields(line)[1])
		}
	}
	return netip.AddrPortFrom(addr, uint16(port))
}

// generate is the generator child: gen TARGETS-FILE RATE SECONDS [from-sink].
// It sends RTP-sized UDP datagrams round-robin to the targets at RATE per
// second for SECONDS, with a raw socket so that stream i's source port is
// srcBase+i (or, with from-sink, every source is the sink port: the right
// side latching), and prints how many it sent.
func generate(args []string) int {
	if len(args) < 3 {
		fmt.Fprintln(os.Stderr, "usage: gen TARGETS RATE SECONDS [from-sink]")
		return 2
	}
	b, err := os.ReadFile(args[0])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	var targets []netip.AddrPort
	for _, line := range strings.Fields(string(b)) {
		if ap, err := netip.ParseAddrPort(line); err == nil {
			targets = append(targets, ap)
		}
	}
	rate, _ := strconv.ParseFloat(args[1], 64)
	secs, _ := strconv.ParseFloat(args[2], 64)
	fromSink := len(args) > 3 && args[3] == "from-sink"
	src := leftIP
	if fromSink {
		src = rightIP
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_RAW)
	if err != nil {
		fmt.Fprintln(os.Stderr, "raw socket:", err)
		return 1
	}
	defer unix.Close(fd)
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, 8<<20)

	// One prebuilt packet per target.
	pkts := make([][]byte, len(targets))
	for i, t := range targets {
		sport := uint16(srcBase + i)
		if fromSink {
			sport = sinkPort
		}
		pkts[i] = packet(src, t.Addr(), sport, t.Port())
	}
	const batch = 64
	msgs := make([]mmsghdr, batch)
	iovs := make([]unix.Iovec, batch)
	names := make([]unix.RawSockaddrInet4, batch)
	total := uint64(rate * secs)
	start := time.Now()
	var sent uint64
	next := 0
	for sent < total {
		// Pace: never ahead of rate.
		due := uint64(time.Since(start).Seconds() * rate)
		if due <= sent {
			time.Sleep(200 * time.Microsecond)
			continue
		}
		k := int(min(uint64(batch), due-sent, total-sent))
		for j := range k {
			p := pkts[next]
			t := targets[next]
			next = (next + 1) % len(pkts)
			names[j] = unix.RawSockaddrInet4{Family: unix.AF_INET, Addr: t.Addr().As4()}
			iovs[j] = unix.Iovec{Base: &p[0]}
			iovs[j].SetLen(len(p))
			msgs[j] = mmsghdr{hdr: unix.Msghdr{Name: (*byte)(unsafePointer(&names[j])), Namelen: unix.SizeofSockaddrInet4,
				Iov: &iovs[j], Iovlen: 1}}
		}
		n, err := sendmmsg(fd, msgs[:k])
		if err != nil {
			if err == unix.ENOBUFS || err == unix.EAGAIN {
				time.Sleep(50 * time.Microsecond)
				continue
			}
			fmt.Fprintln(os.Stderr, "sendmmsg:", err)
			return 1
		}
		sent += uint64(n)
	}
	fmt.Println(sent)
	return 0
}

// packet builds an IPv4/UDP datagram with a payloadLen payload; the UDP
// checksum is left 0 (none), which IPv4 allows.
func packet(src, dst netip.Addr, sport, dport uint16) []byte {
	p := make([]byte, 20+8+payloadLen)
	p[0] = 0x45
	binary.BigEndian.PutUint16(p[2:], uint16(len(p)))
	p[8] = 64
	p[9] = unix.IPPROTO_UDP
	s4, d4 := src.As4(), dst.As4()
	copy(p[12:], s4[:])
	copy(p[16:], d4[:])
	binary.BigEndian.PutUint16(p[10:], ipChecksum(p[:20]))
	binary.BigEndian.PutUint16(p[20:], sport)
	binary.BigEndian.PutUint16(p[22:], dport)
	binary.BigEndian.PutUint16(p[24:], uint16(8+payloadLen))
	p[28] = 0x80 // RTP version 2
	return p
}

func ipChecksum(h []byte) uint16 {
	var sum uint32
	for i := 0; i < len(h); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(h[i:]))
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}
