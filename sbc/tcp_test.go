package sbc

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
	"github.com/hashicorp/go-hclog"

	"github.com/edgesbc/edgesbc/sbc/guard"
)

// tcpPhone is a SIP peer on TCP driven by the test: it listens on its own
// address (the port also open on UDP, for the RFC 3261 §18.1.1 switch)
// and reads every connection it accepts or opens. Messages are framed by
// sipgo's stream parser, not by the code under test.
type tcpPhone struct {
	t    testing.TB
	ln   *net.TCPListener
	udp  *phone
	addr netip.AddrPort
	msgs chan tcpMsg

	mu       sync.Mutex
	conns    []net.Conn
	last     net.Conn // the connection of the last message received
	accepted int
}

type tcpMsg struct {
	raw  string
	conn net.Conn
}

func newTCPPhone(t testing.TB, ip string) *tcpPhone {
	t.Helper()
	var ln *net.TCPListener
	var u *phone
	for i := 0; i < 20 && ln == nil; i++ {
		u = newPhone(t, ip)
		l, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.ParseIP(ip), Port: int(u.addr.Port())})
		if err == nil {
			ln = l
		}
	}
	if ln == nil {
		t.Skipf("no common udp/tcp port on %s", ip)
	}
	p := &tcpPhone{t: t, ln: ln, udp: u, addr: u.addr, msgs: make(chan tcpMsg, 64)}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.mu.Lock()
			p.accepted++
			p.mu.Unlock()
			p.track(c)
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		p.mu.Lock()
		for _, c := range p.conns {
			c.Close()
		}
		p.mu.Unlock()
	})
	return p
}

func (p *tcpPhone) track(c net.Conn) {
	p.mu.Lock()
	p.conns = append(p.conns, c)
	p.mu.Unlock()
	go func() {
		par := sip.NewParser().NewSIPStream()
		buf := make([]byte, 65535)
		for {
			n, err := c.Read(buf)
			if err != nil {
				return
			}
			_ = par.ParseSIPStream(buf[:n], func(m sip.Message) {
				select {
				case p.msgs <- tcpMsg{raw: m.String(), conn: c}:
				default:
				}
			})
		}
	}()
}

// dial opens a new connection from the phone's address to to.
func (p *tcpPhone) dial(to netip.AddrPort) net.Conn {
	p.t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IP(p.addr.Addr().AsSlice())}, Timeout: 2 * time.Second}
	c, err := d.Dial("tcp", to.String())
	if err != nil {
		p.t.Fatalf("dial %s: %v", to, err)
	}
	p.track(c)
	p.mu.Lock()
	p.last = c
	p.mu.Unlock()
	return c
}

// send writes msg on the connection of the last message, or a new one to to.
func (p *tcpPhone) send(to netip.AddrPort, msg string) {
	p.t.Helper()
	p.mu.Lock()
	c := p.last
	p.mu.Unlock()
	if c == nil {
		c = p.dial(to)
	}
	if _, err := c.Write([]byte(wire(msg))); err != nil {
		p.t.Fatalf("send: %v", err)
	}
}

// wire turns a test message into CRLF lines with its Content-Length.
func wire(msg string) string {
	msg = strings.ReplaceAll(msg, "\n", "\r\n")
	if i := strings.Index(msg, "\r\n\r\n"); i >= 0 {
		body := msg[i+4:]
		msg = strings.Replace(msg[:i], "Content-Length: %LEN%", fmt.Sprintf("Content-Length: %d", len(body)), 1) + "\r\n\r\n" + body
	}
	return msg
}

func (p *tcpPhone) recv(what string, skip ...string) (sip.Message, string) {
	p.t.Helper()
	deadline := time.After(5 * time.Second)
	for {
		select {
		case m := <-p.msgs:
			first := m.raw[:strings.Index(m.raw, "\r\n")]
			skipped := false
			for _, s := range skip {
				if strings.HasPrefix(first, s) {
					skipped = true
				}
			}
			if skipped {
				continue
			}
			if !strings.HasPrefix(first, what) {
				p.t.Fatalf("%s: want %q, got:\n%s", p.addr, what, m.raw)
			}
			p.mu.Lock()
			p.last = m.conn
			p.mu.Unlock()
			msg, err := sip.ParseMessage([]byte(m.raw))
			if err != nil {
				p.t.Fatalf("unparsable: %v\n%s", err, m.raw)
			}
			return msg, m.raw
		case <-deadline:
			p.t.Fatalf("%s: waiting for %s over tcp: timeout", p.addr, what)
		}
	}
}

func (p *tcpPhone) lastConn() net.Conn {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.last
}

// tcpRig is newRig with a TCP carrier (and, when pbxTCP, a TCP pbx) and
// zones that serve both transports.
type tcpRig struct {
	*rig
	tcar *tcpPhone
	tpbx *tcpPhone
}

func newTCPRig(t *testing.T, pbxTCP bool, tweak func(*Config)) *tcpRig {
	t.Helper()
	tr := &tcpRig{}
	tr.tcar = newTCPPhone(t, "127.0.0.4")
	if pbxTCP {
		tr.tpbx = newTCPPhone(t, "127.0.0.3")
	}
	tr.rig = newRig(t, func(c *Config) {
		for i := range c.Zones {
			c.Zones[i].Transports = []string{TransportUDP, TransportTCP}
		}
		c.Peers[1].Address = tr.tcar.addr
		c.Peers[1].Transport = TransportTCP
		if pbxTCP {
			c.Peers[0].Address = tr.tpbx.addr
			c.Peers[0].Transport = TransportTCP
		}
		if tweak != nil {
			tweak(c)
		}
	})
	if pbxTCP {
		tr.pbx = tr.tpbx.udp
	}
	return tr
}

func (r *tcpRig) pbxUDPInvite(callID string) string {
	return r.pbxInvite(callID, "z9hG4bK-"+callID)
}

// TestTCPPBXOnUDPToCarrierOnTCP: a call from the pbx on UDP reaches the TCP
// carrier over a connection the SBC opened from its public address, with
// TCP in Via and Contact and nothing of the private side; the carrier's
// answer, the ACK and the BYE both ways keep to the one connection.
func TestTCPPBXOnUDPToCarrierOnTCP(t *testing.T) {
	r := newTCPRig(t, false, nil)
	r.pbx.send(r.priv, r.pbxUDPInvite("tcp-call-1"))
	inv, raw := r.tcar.recv("INVITE")
	assertHidden(t, raw)
	req := inv.(*sip.Request)
	if v := req.Via(); v.Transport != "TCP" || v.Host != "127.0.0.2" {
		t.Errorf("via %s: want SIP/2.0/TCP from the public address", v.Value())
	}
	if c := msgContact(req); c == nil || c.Address.UriParams.GetOr("transport", "") != "tcp" {
		t.Errorf("contact %v: want ;transport=tcp", c)
	}
	conn := r.tcar.lastConn()
	if h := conn.RemoteAddr().(*net.TCPAddr).IP.String(); h != "127.0.0.2" {
		t.Errorf("connection from %s, want the public zone's address", h)
	}
	r.tcar.send(r.pub, answer(inv, 200, "OK", "car-tag", fmt.Sprintf("<sip:carrier@%s;transport=tcp>", r.tcar.addr), carrierSDP))
	okA, _ := r.pbx.recv("SIP/2.0 200", "SIP/2.0 100")
	if c := msgContact(okA); c == nil || c.Address.UriParams.Has("transport") {
		t.Errorf("contact toward the udp pbx %v: want no transport", c)
	}
	r.tcar.recv("ACK")
	if r.tcar.lastConn() != conn {
		t.Error("ACK did not reuse the connection")
	}
	r.pbx.send(r.priv, r.pbxInDialog("ACK", 10, okA, "tcp-call-1", "", ""))

	// BYE from the pbx: over the carrier's connection
	r.pbx.send(r.priv, r.pbxInDialog("BYE", 11, okA, "tcp-call-1", "", ""))
	bye, raw := r.tcar.recv("BYE")
	assertHidden(t, raw)
	if r.tcar.lastConn() != conn {
		t.Error("BYE did not reuse the connection")
	}
	r.tcar.send(r.pub, answer(bye, 200, "OK", "", "", ""))
	r.pbx.recv("SIP/2.0 200", "SIP/2.0 100")
	r.waitIdle()
	r.tcar.mu.Lock()
	accepted := r.tcar.accepted
	r.tcar.mu.Unlock()
	if accepted != 1 {
		t.Errorf("carrier accepted %d connections, want 1 (reuse)", accepted)
	}
}

// TestTCPCarrierOnTCPToPBXOnUDP: the carrier calls over its own connection;
// responses go back on it, the pbx sees UDP only, and a BYE toward the
// carrier after it closed that connection opens a new one to its
// configured address, never to its Contact.
func TestTCPCarrierOnTCPToPBXOnUDP(t *testing.T) {
	r := newTCPRig(t, false, nil)
	c := r.tcar.dial(r.pub)
	local := c.LocalAddr().(*net.TCPAddr)
	invite := fmt.Sprintf(`INVITE sip:2001@%s SIP/2.0
Via: SIP/2.0/TCP %s;branch=z9hG4bK-ct1;rport
Max-Forwards: 70
From: <sip:+15557654@carrier.example>;tag=car-from
To: <sip:2001@%s>
Call-ID: car-tcp-1
CSeq: 1 INVITE
Contact: <sip:+15557654@unreachable.carrier.example:5999;transport=tcp>
Content-Type: application/sdp
Content-Length: %%LEN%%

`, r.pub, local, r.pub) + carrierSDP
	r.tcar.send(r.pub, invite)
	inv, _ := r.pbx.recv("INVITE", "SIP/2.0 100")
	if v := inv.(*sip.Request).Via(); v.Transport != "UDP" {
		t.Errorf("via toward the udp pbx: %s", v.Value())
	}
	r.pbx.send(r.priv, answer(inv, 200, "OK", "pbx-tag", fmt.Sprintf("<sip:2001@%s>", r.pbx.addr), pbxSDP))
	ok, raw := r.tcar.recv("SIP/2.0 200", "SIP/2.0 100")
	assertHidden(t, raw)
	if r.tcar.lastConn() != c {
		t.Error("200 did not come back on the caller's connection")
	}
	if ct := msgContact(ok); ct == nil || ct.Address.UriParams.GetOr("transport", "") != "tcp" {
		t.Errorf("contact %v: want ;transport=tcp", ct)
	}
	r.pbx.recv("ACK", "SIP/2.0 200")
	r.tcar.send(r.pub, fmt.Sprintf(`ACK sip:%s;transport=tcp SIP/2.0
Via: SIP/2.0/TCP %s;branch=z9hG4bK-ct1ack;rport
Max-Forwards: 70
From: <sip:+15557654@carrier.example>;tag=car-from
To: %s
Call-ID: car-tcp-1
CSeq: 1 ACK
Content-Length: 0

`, r.pub, local, ok.To().Value()))
	// wait for the call to be confirmed before closing the connection
	time.Sleep(100 * time.Millisecond)
	c.Close()
	r.tcar.mu.Lock()
	r.tcar.last = nil
	r.tcar.mu.Unlock()
	time.Sleep(200 * time.Millisecond) // the SBC sees the close

	r.pbx.send(r.priv, fmt.Sprintf("BYE sip:%s SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.3:%d;branch=z9hG4bK-pb1;rport\nMax-Forwards: 70\nFrom: %s\nTo: %s\nCall-ID: %s\nCSeq: 2 BYE\nContent-Length: 0\n\n",
		r.priv, r.pbx.addr.Port(), answerFrom(inv, "pbx-tag"), inv.From().Value(), inv.CallID().Value()))
	bye, raw := r.tcar.recv("BYE")
	assertHidden(t, raw)
	if nc := r.tcar.lastConn(); nc == c || nc.LocalAddr().(*net.TCPAddr).Port != int(r.tcar.addr.Port()) {
		t.Error("BYE must come on a new connection to the carrier's configured address")
	}
	r.tcar.send(r.pub, answer(bye, 200, "OK", "", "", ""))
	r.pbx.recv("SIP/2.0 200")
	r.waitIdle()
}

// answerFrom is the To of inv with the callee's tag: the From of the
// callee's requests.
func answerFrom(inv sip.Message, tag string) string {
	return inv.To().Value() + ";tag=" + tag
}

// TestTCPBothLegsReinvite: pbx and carrier both on TCP; a re-INVITE from
// the carrier reaches the pbx over the pbx's connection and its answer
// comes back, then the carrier hangs up.
func TestTCPBothLegsReinvite(t *testing.T) {
	r := newTCPRig(t, true, nil)
	inviteA := strings.Replace(r.pbxUDPInvite("both-1"), "SIP/2.0/UDP", "SIP/2.0/TCP", 1)
	r.tpbx.send(r.priv, inviteA)
	inv, raw := r.tcar.recv("INVITE")
	assertHidden(t, raw)
	r.tcar.send(r.pub, answer(inv, 200, "OK", "car-tag", fmt.Sprintf("<sip:carrier@%s;transport=tcp>", r.tcar.addr), carrierSDP))
	okA, _ := r.tpbx.recv("SIP/2.0 200", "SIP/2.0 100")
	if ct := msgContact(okA); ct == nil || ct.Address.UriParams.GetOr("transport", "") != "tcp" {
		t.Errorf("contact toward the tcp pbx %v: want ;transport=tcp", ct)
	}
	r.tcar.recv("ACK")
	r.tpbx.send(r.priv, strings.Replace(r.pbxInDialog("ACK", 10, okA, "both-1", "", ""), "SIP/2.0/UDP", "SIP/2.0/TCP", 1))
	time.Sleep(50 * time.Millisecond)

	okB := inv.(*sip.Request)
	reinvite := fmt.Sprintf(`INVITE sip:%s;transport=tcp SIP/2.0
Via: SIP/2.0/TCP %s;branch=z9hG4bK-car-re1;rport
Max-Forwards: 70
From: %s;tag=car-tag
To: %s
Call-ID: %s
CSeq: 5 INVITE
Contact: <sip:carrier@%s;transport=tcp>
Content-Type: application/sdp
Content-Length: %%LEN%%

`, r.pub, r.tcar.addr, okB.To().Value(), okB.From().Value(), okB.CallID().Value(), r.tcar.addr) + strings.Replace(carrierSDP, "o=carrier 9 1", "o=carrier 9 2", 1)
	r.tcar.send(r.pub, reinvite)
	reA, raw := r.tpbx.recv("INVITE")
	if v := reA.(*sip.Request).Via(); v.Transport != "TCP" {
		t.Errorf("re-INVITE toward the tcp pbx: via %s", v.Value())
	}
	if strings.Contains(raw, "127.0.0.4") {
		t.Errorf("carrier address reached the pbx:\n%s", raw)
	}
	r.tpbx.send(r.priv, answer(reA, 200, "OK", "", fmt.Sprintf("<sip:2001@%s;transport=tcp>", r.tpbx.addr), pbxSDP))
	okRe, raw := r.tcar.recv("SIP/2.0 200", "SIP/2.0 100")
	assertHidden(t, raw)
	r.tcar.send(r.pub, fmt.Sprintf("ACK sip:%s;transport=tcp SIP/2.0\nVia: SIP/2.0/TCP %s;branch=z9hG4bK-car-re1ack\nMax-Forwards: 70\nFrom: %s\nTo: %s\nCall-ID: %s\nCSeq: 5 ACK\nContent-Length: 0\n\n",
		r.pub, r.tcar.addr, okRe.From().Value(), okRe.To().Value(), okRe.CallID().Value()))
	r.tpbx.recv("ACK")

	r.tcar.send(r.pub, fmt.Sprintf("BYE sip:%s;transport=tcp SIP/2.0\nVia: SIP/2.0/TCP %s;branch=z9hG4bK-car-bye\nMax-Forwards: 70\nFrom: %s\nTo: %s\nCall-ID: %s\nCSeq: 6 BYE\nContent-Length: 0\n\n",
		r.pub, r.tcar.addr, okRe.From().Value(), okRe.To().Value(), okRe.CallID().Value()))
	byeA, _ := r.tpbx.recv("BYE", "ACK")
	r.tpbx.send(r.priv, answer(byeA, 200, "OK", "", "", ""))
	r.tcar.recv("SIP/2.0 200")
	r.waitIdle()
}

// TestTCPLargeRequestSwitchesTransport: toward a UDP carrier, a request
// above 1300 bytes goes over TCP when the public zone serves TCP (RFC 3261
// §18.1.1) and over UDP when it does not.
func TestTCPLargeRequestSwitchesTransport(t *testing.T) {
	big := pbxSDP + strings.Repeat("a=x-pad:0123456789abcdef0123456789abcdef\n", 40)
	for _, tc := range []struct {
		name string
		tcp  bool
	}{{"zone serves tcp", true}, {"udp only", false}} {
		t.Run(tc.name, func(t *testing.T) {
			tcar := newTCPPhone(t, "127.0.0.4")
			r := newRig(t, func(c *Config) {
				if tc.tcp {
					c.Zones[1].Transports = []string{TransportUDP, TransportTCP}
				}
				c.Peers[1].Address = tcar.addr
			})
			r.car = tcar.udp
			inv := strings.Replace(r.pbxInvite("big-1", "z9hG4bK-big1"), pbxSDP, big, 1)
			r.pbx.send(r.priv, inv)
			var got sip.Message
			if tc.tcp {
				got, _ = tcar.recv("INVITE")
				if v := got.(*sip.Request).Via(); v.Transport != "TCP" {
					t.Errorf("via %s: a large request must name TCP", v.Value())
				}
				if c := msgContact(got); c == nil || c.Address.UriParams.Has("transport") {
					t.Errorf("contact %v: the leg stays UDP", c)
				}
				tcar.send(r.pub, answer(got, 486, "Busy Here", "car-tag", "", ""))
				tcar.recv("ACK")
			} else {
				got, _ = r.car.recv("INVITE", "SIP/2.0 100")
				r.car.send(r.pub, answer(got, 486, "Busy Here", "car-tag", "", ""))
				r.car.recv("ACK")
			}
			r.pbx.recv("SIP/2.0 486", "SIP/2.0 100")
			r.waitIdle()
		})
	}
}

// rawTCP opens a plain connection to the SBC from ip.
func rawTCP(t *testing.T, ip string, to netip.AddrPort) *net.TCPConn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 2 * time.Second}
	c, err := d.Dial("tcp", to.String())
	if err != nil {
		t.Fatalf("dial %s: %v", to, err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn)
}

// readClosed reads what c gets until the SBC closes it, within d.
func readClosed(t *testing.T, c net.Conn, d time.Duration) (string, bool) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(d))
	b, err := io.ReadAll(c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return string(b), false
	}
	return string(b), true
}

// readResponse reads one response from c within 3 seconds.
func readResponse(t *testing.T, c net.Conn) string {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
	br := bufio.NewReader(c)
	var b strings.Builder
	for {
		line, err := br.ReadString('\n')
		b.WriteString(line)
		if err != nil {
			t.Fatalf("reading response: %v (got %q)", err, b.String())
		}
		if line == "\r\n" {
			return b.String()
		}
	}
}

func options(from, to, callID string) string {
	return fmt.Sprintf("OPTIONS sip:%s SIP/2.0\r\nVia: SIP/2.0/TCP %s;branch=z9hG4bK-%s\r\nMax-Forwards: 70\r\nFrom: <sip:x@%s>;tag=1\r\nTo: <sip:%s>\r\nCall-ID: %s\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
		to, from, callID, from, to, callID)
}

// TestTCPEntryFilter: the stream gets the same entry filter as datagrams,
// and what cannot be framed ends the connection.
func TestTCPEntryFilter(t *testing.T) {
	r := newTCPRig(t, false, func(c *Config) {
		c.TCP.MessageTimeout = 400 * time.Millisecond
		c.MaxMessageSize = 4096
	})

	t.Run("public stranger closed unanswered", func(t *testing.T) {
		c := rawTCP(t, "127.0.0.9", r.pub)
		_, _ = c.Write([]byte(options("127.0.0.9:5060", r.pub.String(), "s1")))
		got, closed := readClosed(t, c, 2*time.Second)
		if !closed || got != "" {
			t.Errorf("stranger on the public side: closed=%v got %q", closed, got)
		}
	})
	t.Run("private stranger gets 403", func(t *testing.T) {
		c := rawTCP(t, "127.0.0.9", r.priv)
		raw := strings.Replace(options("127.0.0.9:5060", r.priv.String(), "s2"), "OPTIONS", "INVITE", -1)
		_, _ = c.Write([]byte(raw))
		if res := readResponse(t, c); !strings.HasPrefix(res, "SIP/2.0 403") {
			t.Errorf("want 403, got %q", res)
		}
	})
	t.Run("malformed gets 400 and the connection stays", func(t *testing.T) {
		c := rawTCP(t, "127.0.0.4", r.pub)
		bad := strings.Replace(options("127.0.0.4:5060", r.pub.String(), "m1"), "Call-ID: m1\r\n", "", 1)
		_, _ = c.Write([]byte(bad))
		if res := readResponse(t, c); !strings.HasPrefix(res, "SIP/2.0 400") {
			t.Fatalf("want 400, got %q", res)
		}
		_, _ = c.Write([]byte(options("127.0.0.4:5060", r.pub.String(), "m2")))
		if res := readResponse(t, c); !strings.HasPrefix(res, "SIP/2.0 200") {
			t.Errorf("want 200 on the same connection, got %q", res)
		}
	})
	t.Run("keepalive ping gets pong", func(t *testing.T) {
		c := rawTCP(t, "127.0.0.4", r.pub)
		_, _ = c.Write([]byte("\r\n\r\n"))
		_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
		b := make([]byte, 2)
		if _, err := io.ReadFull(c, b); err != nil || string(b) != "\r\n" {
			t.Errorf("pong: %q %v", b, err)
		}
	})
	cases := []struct {
		name, data, reply string
	}{
		{"garbage", "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n", ""},
		{"no content-length", strings.Replace(options("127.0.0.4:5060", r.pub.String(), "n1"), "Content-Length: 0\r\n", "", 1), "SIP/2.0 400"},
		{"content-length not a number", strings.Replace(options("127.0.0.4:5060", r.pub.String(), "n2"), "Content-Length: 0", "Content-Length: -5", 1), "SIP/2.0 400"},
		{"content-length beyond the limit", strings.Replace(options("127.0.0.4:5060", r.pub.String(), "n3"), "Content-Length: 0", "Content-Length: 100000", 1), "SIP/2.0 400"},
		{"oversize body", strings.Replace(options("127.0.0.4:5060", r.pub.String(), "n4"), "Content-Length: 0", "Content-Length: 4000", 1), "SIP/2.0 513"},
		{"endless header", "OPTIONS sip:x SIP/2.0\r\n" + strings.Repeat("X-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n", 200), ""},
		{"content-length lie", strings.Replace(options("127.0.0.4:5060", r.pub.String(), "n5"), "Content-Length: 0", "Content-Length: 200", 1) + "short", ""},
		{"slow header", "OPTIONS sip:x SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.4", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := rawTCP(t, "127.0.0.4", r.pub)
			start := time.Now()
			_, _ = c.Write([]byte(tc.data))
			got, closed := readClosed(t, c, 3*time.Second)
			if !closed {
				t.Fatalf("connection not closed after %v", time.Since(start))
			}
			if !strings.HasPrefix(got, tc.reply) || (tc.reply == "" && got != "") {
				t.Errorf("want %q before the close, got %q", tc.reply, got)
			}
		})
	}
	t.Run("slow loris bounded", func(t *testing.T) {
		c := rawTCP(t, "127.0.0.4", r.pub)
		start := time.Now()
		msg := options("127.0.0.4:5060", r.pub.String(), "loris")
		closedAt := time.Duration(0)
		for i := 0; i < len(msg) && i < 100; i++ {
			if _, err := c.Write([]byte{msg[i]}); err != nil {
				closedAt = time.Since(start)
				break
			}
			_ = c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
			if _, err := c.Read(make([]byte, 1)); err != nil && !isTimeout(err) {
				closedAt = time.Since(start)
				break
			}
		}
		if closedAt == 0 || closedAt > 2*time.Second {
			t.Errorf("a trickled message must end the connection after the message timeout; closed after %v", closedAt)
		}
	})
	// the rig still carries calls after all of that
	r.pbx.send(r.priv, r.pbxUDPInvite("after-1"))
	inv, _ := r.tcar.recv("INVITE")
	r.tcar.send(r.pub, answer(inv, 486, "Busy Here", "car-tag", "", ""))
	r.pbx.recv("SIP/2.0 486", "SIP/2.0 100")
	r.waitIdle()
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// TestTCPManyConnectionsNoLeak opens many connections that stop halfway,
// lie about Content-Length or send garbage, and checks that every one is
// closed within the message timeout, the per-source limit holds, and no
// goroutine stays behind.
func TestTCPManyConnectionsNoLeak(t *testing.T) {
	r := newTCPRig(t, false, func(c *Config) {
		c.TCP.MessageTimeout = 300 * time.Millisecond
		c.TCP.MaxPerSource = 3
	})
	time.Sleep(50 * time.Millisecond)
	base := runtime.NumGoroutine()
	payloads := []string{
		"OPTIONS sip:x SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1",
		strings.Replace(options("127.0.0.4:5060", r.pub.String(), "l1"), "Content-Length: 0", "Content-Length: 900", 1),
		"\x00\x01\x02garbage\r\n",
		options("127.0.0.4:5060", r.pub.String(), "ok1")[:40],
	}
	var conns []net.Conn
	for i := 0; i < 40; i++ {
		c := rawTCP(t, "127.0.0.4", r.pub)
		_, _ = c.Write([]byte(payloads[i%len(payloads)]))
		conns = append(conns, c)
	}
	// strangers on the private side: at most MaxPerSource at a time
	var held []net.Conn
	for i := 0; i < 6; i++ {
		c := rawTCP(t, "127.0.0.10", r.priv)
		held = append(held, c)
	}
	open := 0
	for _, c := range held {
		_ = c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		if _, err := c.Read(make([]byte, 1)); isTimeout(err) {
			open++
		}
	}
	if open > 3 {
		t.Errorf("%d connections from one stranger stayed open, limit 3", open)
	}
	for _, c := range conns {
		if _, closed := readClosed(t, c, 3*time.Second); !closed {
			t.Fatal("connection not closed by the SBC")
		}
	}
	for _, c := range append(conns, held...) {
		c.Close()
	}
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > base+2 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > base+2 {
		buf := make([]byte, 1<<20)
		t.Fatalf("goroutines: %d before, %d after\n%s", base, n, buf[:runtime.Stack(buf, true)])
	}
	if n := r.srv.zones[1].tcp.open.Load(); n != 0 {
		t.Errorf("%d public connections still counted", n)
	}
}

// FuzzTCPFraming feeds arbitrary bytes, in arbitrary pieces, through a
// framed connection: it must end (no hang), never panic, and hand on only
// whole messages sipgo can parse.
func FuzzTCPFraming(f *testing.F) {
	f.Add([]byte(options("127.0.0.4:5060", "127.0.0.2:5060", "f1")+options("127.0.0.4:5060", "127.0.0.2:5060", "f2")), uint8(7))
	f.Add([]byte("SIP/2.0 200 OK\r\nContent-Length: 3\r\n\r\nabc"), uint8(1))
	f.Add([]byte("\r\n\r\nINVITE sip:a SIP/2.0\r\nl: 10\r\n\r\n"), uint8(3))
	f.Add([]byte("OPTIONS sip:x SIP/2.0\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello"), uint8(2))
	f.Fuzz(func(t *testing.T, data []byte, piece uint8) { runFraming(t, data, piece) })
}

var (
	framingSrv  = &Server{parser: sip.NewParser(), log: hclog.NewNullLogger(), cfg: Config{MaxMessageSize: 2048, MaxCalls: 10, TCP: TCPLimits{MessageTimeout: 20 * time.Millisecond, IdleTimeout: 20 * time.Millisecond, MaxConnections: 10, MaxPerSource: 10}}}
	framingZone = &zone{cfg: ZoneConfig{Name: "fuzz"}, private: true, tcp: &tcpZone{perSource: map[netip.Addr]int{}}}
)

// runFraming is one FuzzTCPFraming case.
func runFraming(t *testing.T, data []byte, piece uint8) {
	{
		s, z := framingSrv, framingZone
		a, b := net.Pipe()
		fc := s.newFramedConn(z, a, netip.MustParseAddrPort("127.0.0.9:1"), true)
		go func() {
			step := int(piece)%64 + 1
			for i := 0; i < len(data); i += step {
				end := min(i+step, len(data))
				_ = b.SetWriteDeadline(time.Now().Add(time.Second))
				if _, err := b.Write(data[i:end]); err != nil {
					break
				}
			}
		}()
		go func() { _, _ = io.Copy(io.Discard, b) }() // stateless answers
		var got bytes.Buffer
		done := make(chan struct{})
		go func() {
			defer close(done)
			buf := make([]byte, 32768)
			for {
				n, err := fc.Read(buf)
				got.Write(buf[:n])
				if err != nil {
					return
				}
			}
		}()
		select {
		case <-done:
		case <-time.After(1 * time.Second):
			t.Fatal("framed read did not end")
		}
		b.Close()
		if got.Len() > 0 {
			perr := make(chan error, 1)
			go func() {
				par := sip.NewParser().NewSIPStream()
				perr <- par.ParseSIPStream(got.Bytes(), func(sip.Message) {})
			}()
			select {
			case err := <-perr:
				if err != nil {
					t.Fatalf("handed on bytes sipgo cannot parse: %v\n%q", err, got.String())
				}
			case <-time.After(2 * time.Second):
				t.Fatalf("sipgo's stream parser hangs on what was handed on:\n%q", got.String())
			}
		}
		if n := z.tcp.open.Load(); n != 0 {
			t.Fatalf("connection still counted: %d", n)
		}
	}
}

// TestTCPPeerByTransport: two peers on one address, one per transport; a
// call is from the one whose transport it arrived on.
func TestTCPPeerByTransport(t *testing.T) {
	s, err := NewServer(Config{
		Zones: []ZoneConfig{{Name: "public", Address: netip.MustParseAddr("127.0.0.2"), SIPPort: 5999, Transports: []string{"udp", "tcp"}}},
		Peers: []PeerConfig{
			{Name: "udp-trunk", Kind: Trunk, Zone: "public", Address: netip.MustParseAddrPort("127.0.0.4:5060")},
			{Name: "tcp-trunk", Kind: Trunk, Zone: "public", Address: netip.MustParseAddrPort("127.0.0.4:5060"), Transport: "TCP"},
		},
	}, nil, Hooks{}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, tp := range []string{"UDP", "TCP"} {
		req, err := sip.ParseMessage([]byte(options("127.0.0.4:5060", "127.0.0.2:5999", "pt")))
		if err != nil {
			t.Fatal(err)
		}
		req.SetTransport(tp)
		req.SetSource("127.0.0.4:40001")
		p := s.peerFor(s.zones[0], req.(*sip.Request))
		if p == nil || p.cfg.Name != strings.ToLower(tp)+"-trunk" {
			t.Errorf("%s request matched %v", tp, p)
		}
	}
	if _, err := NewServer(Config{
		Zones: []ZoneConfig{{Name: "public", Address: netip.MustParseAddr("127.0.0.2")}},
		Peers: []PeerConfig{{Name: "t", Kind: Trunk, Zone: "public", Address: netip.MustParseAddrPort("127.0.0.4:5060"), Transport: "tcp"}},
	}, nil, Hooks{}, nil, nil); err == nil {
		t.Error("a tcp peer in a udp-only zone must be refused")
	}
}

// TestTCPDialOnce: calls that want a connection to the same peer at the
// same moment share one; a destination that refuses fails fast.
func TestTCPDialOnce(t *testing.T) {
	r := newTCPRig(t, false, nil)
	z := r.srv.zones[1]
	var wg sync.WaitGroup
	errs := make(chan error, 10)
	for i := 0; i < 10; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- r.srv.ensureTCP(z, r.tcar.addr.String())
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(50 * time.Millisecond)
	r.tcar.mu.Lock()
	n := r.tcar.accepted
	r.tcar.mu.Unlock()
	if n != 1 {
		t.Errorf("carrier accepted %d connections, want 1", n)
	}
	start := time.Now()
	dead := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.4"), uint16(freePort(t, "127.0.0.4")))
	if err := r.srv.ensureTCP(z, dead.String()); err == nil {
		t.Error("dial to a closed port succeeded")
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("refused dial took %v", d)
	}
}

// TestTCPResponseAfterConnectionClosed: the carrier calls over a
// connection it closes before the answer; the SBC sends the 200 on a new
// connection to the INVITE's sent-by, the carrier's address with the Via
// port (RFC 3261 §18.2.2), here another listener than the configured one.
func TestTCPResponseAfterConnectionClosed(t *testing.T) {
	r := newTCPRig(t, false, nil)
	sentByPhone := newTCPPhone(t, "127.0.0.4") // listens where the Via says
	if sentByPhone.addr == r.tcar.addr {
		t.Skip("no second port free on 127.0.0.4")
	}
	c := r.tcar.dial(r.pub)
	invite := fmt.Sprintf(`INVITE sip:2001@%s SIP/2.0
Via: SIP/2.0/TCP %s;branch=z9hG4bK-rc1;rport
Max-Forwards: 70
From: <sip:+15557654@carrier.example>;tag=car-from
To: <sip:2001@%s>
Call-ID: car-tcp-closed
CSeq: 1 INVITE
Contact: <sip:+15557654@unreachable.carrier.example:5999;transport=tcp>
Content-Type: application/sdp
Content-Length: %%LEN%%

`, r.pub, sentByPhone.addr, r.pub) + carrierSDP
	r.tcar.send(r.pub, invite)
	inv, _ := r.pbx.recv("INVITE", "SIP/2.0 100")
	r.tcar.recv("SIP/2.0 100")
	c.Close()
	// the SBC notices the close: its read of the connection ends
	deadline := time.Now().Add(2 * time.Second)
	for r.srv.hasTCP(r.srv.zones[1], c.LocalAddr().String()) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	r.pbx.send(r.priv, answer(inv, 200, "OK", "pbx-tag", fmt.Sprintf("<sip:2001@%s>", r.pbx.addr), pbxSDP))
	ok, raw := sentByPhone.recv("SIP/2.0 200", "SIP/2.0 100")
	assertHidden(t, raw)
	nc := sentByPhone.lastConn()
	if got := nc.RemoteAddr().(*net.TCPAddr).IP.String(); got != "127.0.0.2" {
		t.Errorf("new connection from %s, want the public zone's address", got)
	}
	sentByPhone.mu.Lock()
	accepted := sentByPhone.accepted
	sentByPhone.mu.Unlock()
	if accepted != 1 {
		t.Errorf("sent-by listener accepted %d connections, want 1", accepted)
	}
	r.pbx.recv("ACK", "SIP/2.0 200")
	// the caller goes on over the new connection: ACK, then BYE
	sentByPhone.send(r.pub, fmt.Sprintf(`ACK sip:%s;transport=tcp SIP/2.0
Via: SIP/2.0/TCP %s;branch=z9hG4bK-rc1ack;rport
Max-Forwards: 70
From: <sip:+15557654@carrier.example>;tag=car-from
To: %s
Call-ID: car-tcp-closed
CSeq: 1 ACK
Content-Length: 0

`, r.pub, sentByPhone.addr, ok.To().Value()))
	sentByPhone.send(r.pub, fmt.Sprintf(`BYE sip:%s;transport=tcp SIP/2.0
Via: SIP/2.0/TCP %s;branch=z9hG4bK-rc1bye;rport
Max-Forwards: 70
From: <sip:+15557654@carrier.example>;tag=car-from
To: %s
Call-ID: car-tcp-closed
CSeq: 2 BYE
Content-Length: 0

`, r.pub, sentByPhone.addr, ok.To().Value()))
	bye, _ := r.pbx.recv("BYE", "ACK", "SIP/2.0 200")
	r.pbx.send(r.priv, answer(bye, 200, "OK", "", "", ""))
	sentByPhone.recv("SIP/2.0 200")
	r.waitIdle()
}

func TestSentBy(t *testing.T) {
	for _, tt := range []struct{ via, src, want string }{
		{"SIP/2.0/TCP 198.51.100.7:5070;branch=z9hG4bK-1", "198.51.100.7:40001", "198.51.100.7:5070"},
		{"SIP/2.0/TCP carrier.example;branch=z9hG4bK-1", "198.51.100.7:40001", "198.51.100.7:5060"},
		// the Via host is never dialled: only the source address
		{"SIP/2.0/TCP 10.0.0.9:5080;branch=z9hG4bK-1;received=10.0.0.9", "198.51.100.7:40001", "198.51.100.7:5080"},
	} {
		msg, err := sip.ParseMessage([]byte("OPTIONS sip:192.0.2.1 SIP/2.0\r\nVia: " + tt.via + "\r\nContent-Length: 0\r\n\r\n"))
		if err != nil {
			t.Fatal(err)
		}
		req := msg.(*sip.Request)
		req.SetSource(tt.src)
		if got, ok := sentBy(req); !ok || got != tt.want {
			t.Errorf("sentBy(Via %q from %s) = %q, %v; want %q", tt.via, tt.src, got, ok, tt.want)
		}
	}
}

// TestTCPUserspaceRateLimit: without the kernel meter, a stranger's TCP
// connections and the messages framed on them draw from the same
// per-source bucket as its datagrams; the message over the limit closes
// the connection instead of being dropped from the middle of a stream.
func TestTCPUserspaceRateLimit(t *testing.T) {
	r := newTCPRig(t, false, nil)
	g := guard.New(guard.Config{
		RateLimits: []guard.RateLimit{{Name: "sip-private", Zone: "private", Rate: 1, Per: time.Hour, Burst: 4}},
	})
	r.srv.SetGuard(&policyGuard{g: g})
	t.Cleanup(func() { r.srv.SetGuard(nil) })

	// The accept takes one token, each INVITE one: 403, 403, 403, then
	// the fifth token is missing and the connection ends unanswered.
	c := rawTCP(t, "127.0.0.11", r.priv)
	for i := range 3 {
		raw := strings.Replace(options("127.0.0.11:5060", r.priv.String(), fmt.Sprintf("tl%d", i)), "OPTIONS", "INVITE", -1)
		_, _ = c.Write([]byte(raw))
		if res := readResponse(t, c); !strings.HasPrefix(res, "SIP/2.0 403") {
			t.Fatalf("INVITE %d within the burst: want 403, got %q", i, res)
		}
	}
	raw := strings.Replace(options("127.0.0.11:5060", r.priv.String(), "tl3"), "OPTIONS", "INVITE", -1)
	_, _ = c.Write([]byte(raw))
	if got, closed := readClosed(t, c, 3*time.Second); !closed || got != "" {
		t.Errorf("message over the limit: closed=%v, got %q; want closed unanswered", closed, got)
	}
	// A new connection from the same source: refused at accept.
	c2 := rawTCP(t, "127.0.0.11", r.priv)
	if got, closed := readClosed(t, c2, 3*time.Second); !closed || got != "" {
		t.Errorf("connection over the limit: closed=%v, got %q; want closed", closed, got)
	}
	if st := g.Stats(); st.RateLimited["sip-private"] != 2 {
		t.Errorf("rate_limited = %d, want 2 (one message, one connection)", st.RateLimited["sip-private"])
	}
	// Another source has its own bucket.
	c3 := rawTCP(t, "127.0.0.12", r.priv)
	_, _ = c3.Write([]byte(strings.Replace(options("127.0.0.12:5060", r.priv.String(), "tl9"), "OPTIONS", "INVITE", -1)))
	if res := readResponse(t, c3); !strings.HasPrefix(res, "SIP/2.0 403") {
		t.Errorf("another stranger: want 403, got %q", res)
	}
	r.waitIdle()
}
