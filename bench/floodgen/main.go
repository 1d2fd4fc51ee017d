//go:build linux

// Command floodgen sends a flood of SIP INVITEs over UDP to one address,
// cheaply enough that the flood's own CPU does not decide a benchmark run
// on the same cores as the system it floods. The security benchmark
// (TestIntegrationSecurityFloodBench in cmd/edgesbc, bench/security.sh)
// runs it inside its attacker namespace.
//
// Every source address gets one UDP socket bound to it; the total rate is
// shared evenly among them. Every packet is the same INVITE (an ordinary
// User-Agent, no body) with its own Call-ID, Via branch and From tag, as
// sipp's invite_flood.xml sends it. Packets leave in small batches, one
// sendmmsg per source and pacing interval, so 20,000 packets/s cost a few
// thousand system calls a second.
//
//	floodgen -to 203.0.113.1:5060 -from 198.51.100.100,198.51.100.101 -rate 20000 -duration 60s
//
// It runs for -duration or until SIGINT/SIGTERM, then prints how many
// packets it sent (and how many sends failed) on standard output.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"golang.org/x/net/ipv4"
)

// maxDuration bounds -duration: the generator never runs unattended for
// longer than this.
const maxDuration = time.Hour

// maxBatch bounds the packets one source sends in one system call (a late
// wake-up is caught up over several intervals rather than in one burst).
const maxBatch = 64

// counterWidth is the number of digits of the per-packet counter written
// into the Call-ID, branch and tag.
const counterWidth = 10

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintf(os.Stderr, "floodgen: %v\n", err)
		os.Exit(1)
	}
}

type options struct {
	to       netip.AddrPort
	from     []netip.Addr
	port     int
	rate     int
	duration time.Duration
	interval time.Duration
	service  string
}

func parseFlags(args []string) (options, error) {
	fs := flag.NewFlagSet("floodgen", flag.ContinueOnError)
	to := fs.String("to", "", "destination address:port of the INVITEs (required; the only address sent to)")
	from := fs.String("from", "", "comma-separated source addresses, each configured on a local interface (required)")
	port := fs.Int("port", 5070, "source UDP port on every source address")
	rate := fs.Int("rate", 20000, "packets per second in total, shared evenly among the sources")
	duration := fs.Duration("duration", 30*time.Second, "how long to send (at most 1h)")
	interval := fs.Duration("interval", 20*time.Millisecond, "pacing interval: each source sends its due packets in one batch per interval")
	service := fs.String("service", "100", "user part of the Request-URI and To")
	if err := fs.Parse(args); err != nil {
		return options{}, err
	}
	var o options
	var err error
	if o.to, err = netip.ParseAddrPort(*to); err != nil {
		return o, fmt.Errorf("-to %q: %w", *to, err)
	}
	for f := range strings.SplitSeq(*from, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		a, err := netip.ParseAddr(f)
		if err != nil {
			return o, fmt.Errorf("-from %q: %w", f, err)
		}
		if a.Is6() != o.to.Addr().Is6() {
			return o, fmt.Errorf("-from %s: not of the family of -to %s", a, o.to)
		}
		o.from = append(o.from, a)
	}
	if len(o.from) == 0 {
		return o, errors.New("-from: no source address")
	}
	if *port <= 0 || *port > 65535 {
		return o, fmt.Errorf("-port %d: not a port", *port)
	}
	if *rate <= 0 {
		return o, fmt.Errorf("-rate %d: must be positive", *rate)
	}
	if *duration <= 0 || *duration > maxDuration {
		return o, fmt.Errorf("-duration %s: must be positive and at most %s", *duration, maxDuration)
	}
	if *interval < time.Millisecond || *interval > time.Second {
		return o, fmt.Errorf("-interval %s: must be between 1ms and 1s", *interval)
	}
	if *service == "" || strings.ContainsAny(*service, " \r\n@:;<>") {
		return o, fmt.Errorf("-service %q: not a SIP user", *service)
	}
	o.port, o.rate, o.duration, o.interval, o.service = *port, *rate, *duration, *interval, *service
	return o, nil
}

// source is one sending socket with its batch of prepared packets.
type source struct {
	pc      *ipv4.PacketConn
	conn    *net.UDPConn
	msgs    []ipv4.Message
	offsets []int  // where the counter digits sit in each packet
	next    uint64 // counter of the next packet
	paced   int64  // packets due so far that were attempted
	sent    int64  // packets the kernel took
}

// template is the INVITE from src, with counterWidth zeros wherever the
// per-packet counter goes; it returns the packet and those offsets.
func template(o options, src netip.Addr) ([]byte, []int) {
	const mark = "\x00"
	local := netip.AddrPortFrom(src, uint16(o.port)).String()
	remote := o.to.String()
	var b strings.Builder
	line := func(s string) { b.WriteString(s + "\r\n") }
	line("INVITE sip:" + o.service + "@" + remote + " SIP/2.0")
	line("Via: SIP/2.0/UDP " + local + ";branch=z9hG4bK-" + mark + ";rport")
	line("Max-Forwards: 70")
	line("From: <sip:flood@" + local + ">;tag=flood" + mark)
	line("To: <sip:" + o.service + "@" + remote + ">")
	line("Call-ID: " + mark + "-flood@" + src.String())
	line("CSeq: 1 INVITE")
	line("User-Agent: Softphone 1.0")
	line("Content-Length: 0")
	line("")
	parts := strings.Split(b.String(), mark)
	var pkt []byte
	var offsets []int
	for i, p := range parts {
		pkt = append(pkt, p...)
		if i < len(parts)-1 {
			offsets = append(offsets, len(pkt))
			pkt = append(pkt, strings.Repeat("0", counterWidth)...)
		}
	}
	return pkt, offsets
}

func newSource(o options, src netip.Addr) (*source, error) {
	// a connected socket: the kernel looks the route up once, not per
	// packet
	conn, err := net.DialUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(src, uint16(o.port))), net.UDPAddrFromAddrPort(o.to))
	if err != nil {
		return nil, fmt.Errorf("socket from %s to %s: %w", src, o.to, err)
	}
	// a large send buffer, as the sipp flood had: a batch never waits
	// for the link to drain
	_ = conn.SetWriteBuffer(4 << 20)
	s := &source{pc: ipv4.NewPacketConn(conn), conn: conn}
	pkt, offsets := template(o, src)
	s.offsets = offsets
	s.msgs = make([]ipv4.Message, maxBatch)
	for i := range s.msgs {
		s.msgs[i] = ipv4.Message{Buffers: [][]byte{append([]byte(nil), pkt...)}}
	}
	return s, nil
}

// send sends n packets (at most maxBatch), each with the next counter,
// and returns how many the kernel took.
func (s *source) send(n int) (int, error) {
	for i := range n {
		v := s.next
		s.next++
		var digits [counterWidth]byte
		for j := counterWidth - 1; j >= 0; j-- {
			digits[j] = '0' + byte(v%10)
			v /= 10
		}
		buf := s.msgs[i].Buffers[0]
		for _, off := range s.offsets {
			copy(buf[off:off+counterWidth], digits[:])
		}
	}
	msgs := s.msgs[:n]
	sent := 0
	// each call sends at least one message or fails: at most n calls
	for range n {
		if len(msgs) == 0 {
			break
		}
		k, err := s.pc.WriteBatch(msgs, 0)
		if k > 0 {
			sent += k
			msgs = msgs[k:]
		}
		if err != nil {
			return sent, err
		}
	}
	return sent, nil
}

func run(args []string) error {
	o, err := parseFlags(args)
	if err != nil {
		return err
	}
	var sources []*source
	defer func() {
		for _, s := range sources {
			_ = s.conn.Close()
		}
	}()
	for _, a := range o.from {
		s, err := newSource(o, a)
		if err != nil {
			return err
		}
		sources = append(sources, s)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, o.duration)
	defer cancel()

	// Each source is due rate/len(sources) packets a second since start;
	// every interval it sends what it is due, up to maxBatch.
	perSource := float64(o.rate) / float64(len(sources))
	start := time.Now()
	var failed int64
	var lastErr error
	ticker := time.NewTicker(o.interval)
	defer ticker.Stop()
	for done := false; !done; {
		select {
		case <-ctx.Done():
			done = true
		case <-ticker.C:
		}
		due := int64(perSource * time.Since(start).Seconds())
		for _, s := range sources {
			n := int(min(due-s.paced, maxBatch))
			if n <= 0 {
				continue
			}
			// packets a failed send did not take are not caught up
			s.paced += int64(n)
			k, err := s.send(n)
			s.sent += int64(k)
			if err != nil {
				failed++
				lastErr = err
			}
		}
	}
	elapsed := time.Since(start)
	var sent int64
	for _, s := range sources {
		sent += s.sent
	}
	fmt.Printf("floodgen: %d packets in %.1f s (%.0f/s) from %d sources to %s, %d failed sends\n",
		sent, elapsed.Seconds(), float64(sent)/elapsed.Seconds(), len(sources), o.to, failed)
	if lastErr != nil {
		fmt.Fprintf(os.Stderr, "floodgen: last send error: %v\n", lastErr)
	}
	return nil
}
