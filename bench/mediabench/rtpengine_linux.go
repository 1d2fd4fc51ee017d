//go:build linux

package main

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netns"
)

// rtpengineNG is rtpengine's control address inside the sbc namespace.
const rtpengineNG = "127.0.0.1:22222"

// setupRtpengine starts Debian's rtpengine in the sbc namespace in
// userspace-only mode (--table=-1), pinned to CPU 1 like edgesbc's relay,
// and opens n calls on it over the ng protocol, each offered from the left
// interface to the right one.
func (l *lab) setupRtpengine(n int) ([]netip.AddrPort, func(), time.Duration, error) {
	bin, err := exec.LookPath("rtpengine")
	if err != nil {
		return nil, nil, 0, fmt.Errorf("rtpengine not installed (apt-get install rtpengine-daemon): %w", err)
	}
	cmd := inNS(l.sbc, "taskset", "-c", "1", bin, "--foreground", "--log-stderr", "--log-level=3",
		"--table=-1", "--no-fallback",
		"--interface=left/"+sbcLeft.String(), "--interface=right/"+sbcRight.String(),
		"--listen-ng="+rtpengineNG, "--port-min="+strconv.Itoa(portMin), "--port-max="+strconv.Itoa(portMax),
		"--num-threads=1", "--pidfile=/dev/null", "--no-log-timestamps")
	// Its overload reports ("receive queue exceeded") are what the loss
	// column measures; keep them off the results.
	cmd.Stderr = nil
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, nil, 0, fmt.Errorf("start rtpengine: %w", err)
	}
	stop := func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	}
	h, err := netns.GetFromName(l.sbc)
	if err != nil {
		stop()
		return nil, nil, 0, err
	}
	defer h.Close()
	var conn *net.UDPConn
	if err := inNetns(h, func() (err error) {
		conn, err = net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		return err
	}); err != nil {
		stop()
		return nil, nil, 0, err
	}
	defer conn.Close()
	ng := &ngClient{conn: conn, to: net.UDPAddrFromAddrPort(netip.MustParseAddrPort(rtpengineNG))}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := ng.call(map[string]any{"command": "ping"}); err == nil {
			break
		}
		if time.Now().After(deadline) {
			stop()
			return nil, nil, 0, fmt.Errorf("rtpengine did not answer ping")
		}
		time.Sleep(100 * time.Millisecond)
	}
	targets := make([]netip.AddrPort, n)
	for i := range n {
		id := "c" + strconv.Itoa(i)
		if _, err := ng.call(map[string]any{"command": "offer", "call-id": id, "from-tag": "a" + id,
			"sdp": string(sdp(leftIP, srcBase+i)), "direction": []any{"left", "right"}}); err != nil {
			stop()
			return nil, nil, 0, fmt.Errorf("offer %d: %w", i, err)
		}
		// The answer's reply is the SDP for the left side: the address the
		// left side sends to.
		ans, err := ng.call(map[string]any{"command": "answer", "call-id": id, "from-tag": "a" + id, "to-tag": "b" + id,
			"sdp": string(sdp(rightIP, sinkPort))})
		if err != nil {
			stop()
			return nil, nil, 0, fmt.Errorf("answer %d: %w", i, err)
		}
		targets[i] = anchorOf([]byte(ans["sdp"]))
		if !targets[i].IsValid() {
			stop()
			return nil, nil, 0, fmt.Errorf("answer %d: no address in %q", i, ans["sdp"])
		}
	}
	l.cpu = func() time.Duration { return procCPU(cmd.Process.Pid) }
	return targets, stop, 0, nil
}

// ngClient speaks rtpengine's ng control protocol: "COOKIE BENCODE" datagrams.
type ngClient struct {
	conn *net.UDPConn
	to   *net.UDPAddr
	seq  int
}

func (c *ngClient) call(msg map[string]any) (map[string]string, error) {
	c.seq++
	cookie := strconv.Itoa(c.seq)
	var b bytes.Buffer
	b.WriteString(cookie + " ")
	bencode(&b, msg)
	if _, err := c.conn.WriteToUDP(b.Bytes(), c.to); err != nil {
		return nil, err
	}
	buf := make([]byte, 65536)
	for {
		_ = c.conn.SetReadDeadline(time.Now().Add(2 * time.Second))
		n, _, err := c.conn.ReadFromUDP(buf)
		if err != nil {
			return nil, err
		}
		got, rest, ok := strings.Cut(string(buf[:n]), " ")
		if !ok || got != cookie {
			continue
		}
		out := bdecodeStrings(rest)
		if out["result"] != "ok" && out["result"] != "pong" {
			return out, fmt.Errorf("rtpengine: %s %s", out["result"], out["error-reason"])
		}
		return out, nil
	}
}

func bencode(b *bytes.Buffer, v any) {
	switch x := v.(type) {
	case string:
		fmt.Fprintf(b, "%d:%s", len(x), x)
	case int:
		fmt.Fprintf(b, "i%de", x)
	case []any:
		b.WriteByte('l')
		for _, e := range x {
			bencode(b, e)
		}
		b.WriteByte('e')
	case map[string]any:
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		b.WriteByte('d')
		for _, k := range keys {
			bencode(b, k)
			bencode(b, x[k])
		}
		b.WriteByte('e')
	}
}

// bdecodeStrings returns the string values of a bencoded top-level
// dictionary; nested values are skipped.
func bdecodeStrings(s string) map[string]string {
	out := map[string]string{}
	if !strings.HasPrefix(s, "d") {
		return out
	}
	s = s[1:]
	for len(s) > 0 && s[0] != 'e' {
		k, rest, ok := bstring(s)
		if !ok {
			return out
		}
		s = rest
		if len(s) > 0 && s[0] >= '0' && s[0] <= '9' {
			v, rest, ok := bstring(s)
			if !ok {
				return out
			}
			out[k] = v
			s = rest
			continue
		}
		rest, ok = bskip(s)
		if !ok {
			return out
		}
		s = rest
	}
	return out
}

func bstring(s string) (string, string, bool) {
	colon := strings.IndexByte(s, ':')
	if colon < 0 {
		return "", "", false
	}
	n, err := strconv.Atoi(s[:colon])
	if err != nil || colon+1+n > len(s) {
		return "", "", false
	}
	return s[colon+1 : colon+1+n], s[colon+1+n:], true
}

func bskip(s string) (string, bool) {
	if s == "" {
		return "", false
	}
	switch s[0] {
	case 'i':
		e := strings.IndexByte(s, 'e')
		if e < 0 {
			return "", false
		}
		return s[e+1:], true
	case 'l', 'd':
		s = s[1:]
		for len(s) > 0 && s[0] != 'e' {
			var ok bool
			if s, ok = bskip(s); !ok {
				return "", false
			}
		}
		if s == "" {
			return "", false
		}
		return s[1:], true
	}
	_, rest, ok := bstring(s)
	return rest, ok
}

// procCPU is the user and system CPU time of process pid so far.
func procCPU(pid int) time.Duration {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	// Fields after the command name, which is in parentheses.
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * time.Second / 100 // USER_HZ
}
