package sbc

// SIP over TCP (RFC 3261 §18). Every TCP connection of a zone, accepted or
// opened by the SBC, is a framedConn: it cuts the byte stream into messages
// by Content-Length, runs each one through the same entry filter as a UDP
// datagram, and hands sipgo only whole messages that passed. sipgo serves
// the connections it is given through a connQueue and never dials itself,
// so no byte from a TCP connection reaches the SIP stack unfiltered.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/emiago/sipgo/sip"

	"github.com/edgesbc/edgesbc/sbc/guard"
)

// mtuLimit is the size above which a request must not go over UDP when the
// path MTU is unknown (RFC 3261 §18.1.1).
const mtuLimit = 1300

func init() {
	// sipgo refuses to send a UDP message above 1300 bytes. The SBC moves
	// such requests to TCP itself where the peer's zone serves TCP (see
	// direct); everything else (responses, peers on UDP only) still has to
	// reach the peer, fragmented by IP as before the RFC 3261 §18.1.1 rule.
	sip.UDPMTUSize = 65507 + 200
}

var (
	errStreamGarbage  = errors.New("sbc: not sip on a stream")
	errStreamFraming  = errors.New("sbc: stream message without a usable Content-Length")
	errStreamOversize = errors.New("sbc: stream message too large")
	errSipgoDial      = errors.New("sbc: tcp connections are opened by the sbc")
)

// tcpZone is the TCP side of a zone. open and perSource count the
// connections alive; mu guards perSource and dialing.
type tcpZone struct {
	ln    *net.TCPListener
	queue *connQueue
	open  atomic.Int64

	mu        sync.Mutex
	perSource map[netip.Addr]int
	dialing   map[string]*sync.Mutex // one dial at a time per destination
}

// dialLock returns the lock that makes one destination dialed once even
// when several calls want it at the same moment; a dead peer holds up
// only the calls toward it.
func (t *tcpZone) dialLock(dest string) *sync.Mutex {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.dialing == nil {
		t.dialing = map[string]*sync.Mutex{}
	}
	m := t.dialing[dest]
	if m == nil {
		if len(t.dialing) > 4096 {
			// destinations are configured peers; anything beyond is
			// stale, and a fresh map only costs a duplicate dial
			clear(t.dialing)
		}
		m = &sync.Mutex{}
		t.dialing[dest] = m
	}
	return m
}

// connQueue is the listener sipgo serves: it yields the framed connections
// the SBC accepted or opened.
type connQueue struct {
	addr  net.Addr
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
}

func newConnQueue(addr net.Addr) *connQueue {
	return &connQueue{addr: addr, conns: make(chan net.Conn), done: make(chan struct{})}
}

func (q *connQueue) Accept() (net.Conn, error) {
	select {
	case c := <-q.conns:
		return c, nil
	case <-q.done:
		return nil, net.ErrClosed
	}
}

func (q *connQueue) Close() error {
	q.once.Do(func() { close(q.done) })
	return nil
}

func (q *connQueue) Addr() net.Addr { return q.addr }

// hand gives c to sipgo's reader; false once the queue is closed, or when
// sipgo does not take it within a second.
func (q *connQueue) hand(c net.Conn) bool {
	t := time.NewTimer(time.Second)
	defer t.Stop()
	select {
	case q.conns <- c:
		return true
	case <-q.done:
		return false
	case <-t.C:
		return false
	}
}

// refuseDial is sipgo's TCP dialer: every connection must be a framedConn,
// so sipgo may only use the ones the SBC gives it.
func refuseDial(net.Addr) net.Dialer {
	return net.Dialer{
		Timeout: time.Second,
		Control: func(string, string, syscall.RawConn) error { return errSipgoDial },
	}
}

func (z *zone) servesTCP() bool { return z.tcp != nil }

func zoneServes(zc ZoneConfig, tp string) bool {
	if len(zc.Transports) == 0 {
		return tp == TransportUDP
	}
	for _, t := range zc.Transports {
		if strings.EqualFold(t, tp) {
			return true
		}
	}
	return false
}

// listenTCP opens the zone's TCP listener on the SIP port and starts
// serving it.
func (s *Server) listenTCP(z *zone) error {
	la := &net.TCPAddr{IP: net.IP(z.cfg.Address.AsSlice()), Port: z.cfg.SIPPort}
	ln, err := net.ListenTCP("tcp", la)
	if err != nil {
		return fmt.Errorf("listen tcp %s in zone %s: %w", la, z.cfg.Name, err)
	}
	z.tcp.ln = ln
	go func() {
		if err := z.server.ServeTCP(z.tcp.queue); err != nil && !errors.Is(err, net.ErrClosed) {
			s.log.Error("sip tcp server stopped", "zone", z.cfg.Name, "error", err)
		}
	}()
	go s.acceptTCP(z)
	s.log.Info("listening", "zone", z.cfg.Name, "addr", la.String(), "transport", "tcp", "advertise", z.host)
	return nil
}

// acceptTCP runs until the listener closes. The public side closes a
// stranger's connection before reading a byte of it.
func (s *Server) acceptTCP(z *zone) {
	t := z.tcp
	defer t.queue.Close()
	for {
		raw, err := t.ln.AcceptTCP()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// out of descriptors and the like: wait instead of spinning
			s.log.Warn("tcp accept", "zone", z.cfg.Name, "error", err)
			time.Sleep(50 * time.Millisecond)
			continue
		}
		src := addrPortOf(raw.RemoteAddr())
		p := s.peerBySource(z, src.Addr())
		if p == nil {
			if g := s.sec.Load(); g != nil && !g.Inbound(src.Addr(), guard.Request{Zone: z.cfg.Name, Metered: true}) {
				_ = raw.Close()
				continue
			}
			if !z.private {
				s.counters.unknownSource.Add(1)
				s.logUnknownSource(z, src)
				_ = raw.Close()
				continue
			}
		}
		fc := s.newFramedConn(z, raw, src, p != nil)
		if fc == nil {
			_ = raw.Close()
			continue
		}
		if !t.queue.hand(fc) {
			_ = fc.Close()
			return
		}
	}
}

// closeTCP stops accepting; the connections close with the user agent.
func (z *zone) closeTCP() {
	if z.tcp != nil && z.tcp.ln != nil {
		_ = z.tcp.ln.Close()
		z.tcp.queue.Close()
	}
}

// framedConn is one TCP connection as sipgo sees it. Read returns whole
// messages that passed the entry filter, one at a time; everything else is
// answered, dropped, or ends the connection. The reading goroutine (sipgo's)
// owns buf, ready and started; wmu serialises writes of sipgo and of the
// filter's stateless answers.
type framedConn struct {
	net.Conn
	srv  *Server
	z    *zone
	src  netip.AddrPort
	peer bool
	idle time.Duration

	buf     []byte // received, not yet framed
	ready   []byte // a vetted message, the rest not yet read by sipgo
	chunk   []byte
	started time.Time // when the first byte of the message in buf came

	wmu      sync.Mutex
	released atomic.Bool
}

// newFramedConn wraps raw, or returns nil when the zone or the source has
// no connection left.
func (s *Server) newFramedConn(z *zone, raw net.Conn, src netip.AddrPort, peer bool) *framedConn {
	t, lim := z.tcp, s.cfg.TCP
	if t.open.Add(1) > int64(lim.MaxConnections) {
		t.open.Add(-1)
		s.counters.entryDropped.Add(1)
		s.log.Warn("tcp connection refused: zone limit", "zone", z.cfg.Name, "src", src, "limit", lim.MaxConnections)
		return nil
	}
	idle := lim.IdleTimeout
	if !peer {
		idle = lim.MessageTimeout
		t.mu.Lock()
		if t.perSource[src.Addr()] >= lim.MaxPerSource {
			t.mu.Unlock()
			t.open.Add(-1)
			s.counters.entryDropped.Add(1)
			s.log.Debug("tcp connection refused: source limit", "zone", z.cfg.Name, "src", src)
			return nil
		}
		t.perSource[src.Addr()]++
		t.mu.Unlock()
	}
	return &framedConn{Conn: raw, srv: s, z: z, src: src, peer: peer, idle: idle, chunk: make([]byte, 4096)}
}

// Close closes the socket and releases the connection's share of the
// limits, once: sipgo closes again what the framer closed already.
func (c *framedConn) Close() error {
	if !c.released.CompareAndSwap(false, true) {
		return nil
	}
	{
		t := c.z.tcp
		t.open.Add(-1)
		if !c.peer {
			t.mu.Lock()
			if t.perSource[c.src.Addr()]--; t.perSource[c.src.Addr()] <= 0 {
				delete(t.perSource, c.src.Addr())
			}
			t.mu.Unlock()
		}
	}
	return c.Conn.Close()
}

// SetReadDeadline is the framer's alone: it bounds messages and idleness.
func (c *framedConn) SetReadDeadline(time.Time) error { return nil }

// Write sends b whole, bounded in time: a peer that stops reading cannot
// hold a sender forever.
func (c *framedConn) Write(b []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	_ = c.Conn.SetWriteDeadline(time.Now().Add(c.srv.cfg.TCP.MessageTimeout))
	return c.Conn.Write(b)
}

// Read hands sipgo the next vetted message. Any end of the stream, a
// timeout or a framing error closes the connection and reads as EOF, which
// sipgo takes as an orderly close.
func (c *framedConn) Read(p []byte) (int, error) {
	for len(c.ready) == 0 {
		msg, err := c.next()
		if err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
				c.srv.log.Debug("tcp connection closed", "zone", c.z.cfg.Name, "src", c.src, "reason", err)
			}
			_ = c.Close()
			return 0, io.EOF
		}
		c.ready = msg
	}
	n := copy(p, c.ready)
	c.ready = c.ready[n:]
	return n, nil
}

// next reads until one message passes the entry filter.
func (c *framedConn) next() ([]byte, error) {
	for {
		c.skipKeepalives()
		if len(c.buf) > 0 {
			msg, err := c.frame()
			if err != nil {
				return nil, err
			}
			if msg != nil {
				c.started = time.Time{}
				if len(c.buf) > 0 {
					c.started = time.Now()
				}
				pass, err := c.admit(msg)
				if err != nil {
					return nil, err
				}
				if pass {
					return msg, nil
				}
				continue
			}
		}
		deadline := time.Now().Add(c.idle)
		if len(c.buf) > 0 {
			deadline = c.started.Add(c.srv.cfg.TCP.MessageTimeout)
		}
		_ = c.Conn.SetReadDeadline(deadline)
		n, err := c.Conn.Read(c.chunk)
		if n > 0 {
			if len(c.buf) == 0 {
				c.started = time.Now()
			}
			c.buf = append(c.buf, c.chunk[:n]...)
		}
		if err != nil {
			return nil, err
		}
	}
}

// skipKeepalives drops CRLFs between messages (RFC 3261 §7.5) and answers
// a double-CRLF ping with a CRLF pong (RFC 5626 §3.5.1).
func (c *framedConn) skipKeepalives() {
	i := 0
	for i < len(c.buf) && (c.buf[i] == '\r' || c.buf[i] == '\n') {
		i++
	}
	if i == 0 {
		return
	}
	if i >= 4 {
		_, _ = c.Write([]byte("\r\n"))
	}
	c.buf = append(c.buf[:0], c.buf[i:]...)
	if len(c.buf) == 0 {
		c.started = time.Time{}
	}
}

// frame cuts the first message out of buf, or returns nil when it is not
// complete yet. A stream that cannot be framed ends the connection: there
// is no boundary left to resynchronise on.
func (c *framedConn) frame() ([]byte, error) {
	max := c.srv.cfg.MaxMessageSize
	end := bytes.Index(c.buf, []byte("\r\n\r\n"))
	if end < 0 {
		if len(c.buf) > max {
			c.srv.counters.entryDropped.Add(1)
			return nil, errStreamOversize
		}
		if i := bytes.IndexByte(c.buf, '\n'); (i >= 0 && !startLineOK(c.buf[:i+1])) || (i < 0 && len(c.buf) > 1024) {
			c.srv.counters.entryDropped.Add(1)
			return nil, errStreamGarbage
		}
		return nil, nil
	}
	head := c.buf[:end+4]
	if !startLineOK(head) {
		c.srv.counters.entryDropped.Add(1)
		return nil, errStreamGarbage
	}
	n, ok := contentLength(head, max)
	if !ok {
		// RFC 3261 §18.3: on a stream, Content-Length is mandatory
		c.refuse(head, 400)
		return nil, errStreamFraming
	}
	total := len(head) + n
	if total > max {
		c.refuse(head, 513)
		return nil, errStreamOversize
	}
	if len(c.buf) < total {
		return nil, nil
	}
	msg := append([]byte(nil), c.buf[:total]...)
	c.buf = append(c.buf[:0], c.buf[total:]...)
	return msg, nil
}

// refuse answers a request that cannot be framed, when it can be answered.
func (c *framedConn) refuse(head []byte, code int) {
	if bytes.HasPrefix(head, []byte("SIP/")) || bytes.HasPrefix(head, []byte("ACK ")) {
		c.srv.counters.entryDropped.Add(1)
		return
	}
	reply := statelessResponse(head, code)
	if reply == nil {
		c.srv.counters.entryDropped.Add(1)
		return
	}
	c.srv.counters.entryAnswered.Add(1)
	_, _ = c.Write(reply)
}

// admit runs one framed message through the entry filter: pass reports
// whether sipgo gets it; an error ends the connection.
func (c *framedConn) admit(msg []byte) (bool, error) {
	v := c.srv.admit(c.z, c.src, msg, false)
	if v.reply != nil {
		if _, err := c.Write(v.reply); err != nil {
			return false, err
		}
	}
	if v.garbage {
		return false, errStreamGarbage
	}
	if v.pass && bytes.HasPrefix(msg, []byte("SIP/")) {
		// responses skip the request checks; one sipgo cannot parse would
		// end the stream inside sipgo, so it ends here, counted
		if _, err := c.srv.parser.ParseSIP(msg); err != nil {
			c.srv.counters.entryDropped.Add(1)
			return false, errStreamGarbage
		}
	}
	return v.pass, nil
}

// startLineOK reports whether b begins with a status line or something
// shaped like a request line.
func startLineOK(b []byte) bool {
	if bytes.HasPrefix(b, []byte("SIP/")) {
		return bytes.IndexByte(b, '\n') > 0
	}
	_, _, ok, _ := requestLine(b)
	return ok
}

// contentLength reads the one Content-Length of a header section: missing,
// repeated with another value, not a number or above max is not usable.
func contentLength(head []byte, max int) (int, bool) {
	n, found := -1, false
	for _, line := range bytes.Split(head, []byte("\r\n"))[1:] {
		colon := bytes.IndexByte(line, ':')
		if colon <= 0 {
			continue
		}
		name := string(bytes.ToLower(bytes.TrimSpace(line[:colon])))
		if name != "content-length" && name != "l" {
			continue
		}
		v, err := strconv.Atoi(string(bytes.TrimSpace(line[colon+1:])))
		if err != nil || v < 0 || v > max || (found && v != n) {
			return 0, false
		}
		n, found = v, true
	}
	return n, found
}

// ensureTCP makes sure sipgo holds a connection to dest in zone z, opening
// one from the zone's address when there is none. It may run under a
// call's mu: the dial is bounded by the message timeout.
func (s *Server) ensureTCP(z *zone, dest string) error {
	if z.tcp == nil {
		return fmt.Errorf("zone %s does not serve tcp", z.cfg.Name)
	}
	if s.hasTCP(z, dest) {
		return nil
	}
	t := z.tcp
	mu := t.dialLock(dest)
	mu.Lock()
	defer mu.Unlock()
	if s.hasTCP(z, dest) {
		return nil
	}
	ap, err := netip.ParseAddrPort(dest)
	if err != nil {
		return fmt.Errorf("tcp destination %q: %w", dest, err)
	}
	timeout := s.cfg.TCP.MessageTimeout
	if timeout > 3*time.Second {
		timeout = 3 * time.Second
	}
	d := net.Dialer{Timeout: timeout, LocalAddr: &net.TCPAddr{IP: net.IP(z.cfg.Address.AsSlice())}}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	raw, err := d.DialContext(ctx, "tcp", ap.String())
	if err != nil {
		return fmt.Errorf("connect tcp %s: %w", dest, err)
	}
	fc := s.newFramedConn(z, raw, addrPortOf(raw.RemoteAddr()), true)
	if fc == nil {
		_ = raw.Close()
		return fmt.Errorf("connect tcp %s: zone connection limit", dest)
	}
	if !t.queue.hand(fc) {
		_ = fc.Close()
		return fmt.Errorf("connect tcp %s: %w", dest, net.ErrClosed)
	}
	// sipgo registers the connection from its accept loop
	deadline := time.Now().Add(time.Second)
	for !s.hasTCP(z, dest) {
		if time.Now().After(deadline) {
			return fmt.Errorf("connect tcp %s: not registered", dest)
		}
		time.Sleep(time.Millisecond)
	}
	s.log.Debug("tcp connection opened", "zone", z.cfg.Name, "dest", dest, "local", raw.LocalAddr().String())
	return nil
}

// hasTCP reports whether sipgo holds an open connection to dest.
func (s *Server) hasTCP(z *zone, dest string) bool {
	c, err := z.ua.TransportLayer().GetConnection("tcp", dest)
	if err != nil || c == nil {
		return false
	}
	_, _ = c.TryClose() // GetConnection took a reference
	return true
}

// direct decides how a request leaves toward peer p on a leg of transport
// tp whose requests go to *dest, and makes sure it can: the top Via and
// our Contact name the transport, a UDP request goes from the zone's
// socket, a TCP one over a connection to *dest (reused while it is open,
// else opened to the peer's configured address, never a Contact host).
// A UDP request larger than the RFC 3261 §18.1.1 limit goes over TCP when
// the zone serves TCP. size is req's size on the wire if the caller knows
// it (the leak guard measured it), else -1. Caller may hold a call's mu.
func (s *Server) direct(z *zone, p *peer, dest *string, tp string, req *sip.Request, size int) {
	via := tp
	switch {
	case req.Method == sip.CANCEL && req.Via() != nil:
		// a CANCEL goes the way of its INVITE (RFC 3261 §9.1)
		via = strings.ToLower(req.Via().Transport)
	case tp == TransportUDP && z.servesTCP() && req.Method != sip.ACK && sizeOf(req, size) > mtuLimit:
		via = TransportTCP
	}
	setTransport(req, z, via, tp)
	if via != TransportTCP {
		req.SetTransport("UDP")
		req.Laddr = z.laddr
		req.SetDestination(*dest)
		return
	}
	req.SetTransport("TCP")
	req.Laddr = sip.Addr{}
	to := *dest
	if tp != TransportTCP || !s.hasTCP(z, to) {
		// the UDP leg's source port need not listen on TCP, and a TCP
		// leg's connection may be gone: the peer's own address is where
		// it takes connections
		to = p.dest
		if tp == TransportTCP {
			*dest = to
		}
	}
	req.SetDestination(to)
	if err := s.ensureTCP(z, to); err != nil {
		s.log.Debug("no tcp connection", "zone", z.cfg.Name, "peer", p.cfg.Name, "error", err)
	}
}

// messageSize is the size of msg on the wire.
func messageSize(msg sip.Message) int {
	var b bytes.Buffer
	msg.StringWrite(&b)
	return b.Len()
}

// sizeOf is msg's size on the wire: known, when it is not negative, or
// measured.
func sizeOf(msg sip.Message, known int) int {
	if known >= 0 {
		return known
	}
	return messageSize(msg)
}

// setTransport names the transport in the top Via (via) and in the
// Contacts that point at the SBC in zone z (contact: the leg's own
// transport, which in-dialog requests toward us should keep).
func setTransport(msg sip.Message, z *zone, via, contact string) {
	if req, ok := msg.(*sip.Request); ok {
		if v := req.Via(); v != nil {
			v.Transport = strings.ToUpper(via)
		}
	}
	for h := range headersNamed(msg, "Contact") {
		ct, ok := h.(*sip.ContactHeader)
		if !ok || ct.Address.Host != z.host || ct.Address.Port != z.port {
			continue
		}
		if contact == TransportTCP {
			if ct.Address.UriParams == nil {
				ct.Address.UriParams = sip.NewParams()
			}
			ct.Address.UriParams.Add("transport", "tcp")
		} else if ct.Address.UriParams != nil {
			ct.Address.UriParams.Remove("transport")
		}
	}
}

// transportOf is the transport a request came on, lower case.
func transportOf(req *sip.Request) string {
	if strings.EqualFold(req.Transport(), "tcp") {
		return TransportTCP
	}
	return TransportUDP
}

// respondTx sends res in the server transaction tx of req. Over TCP, a
// response whose connection has closed goes on a new connection to the
// request's sent-by: its source address with the port of the top Via, 5060
// without one (RFC 3261 §18.2.2). The source address, not the Via host,
// is what the SBC connects to, so a request cannot make it dial elsewhere.
// Caller may hold a call's mu: the dial is bounded.
func (s *Server) respondTx(z *zone, req *sip.Request, tx sip.ServerTransaction, res *sip.Response) error {
	err := tx.Respond(res)
	if err == nil || !errors.Is(err, sip.ErrTransactionTransport) || transportOf(req) != TransportTCP || !z.servesTCP() {
		return err
	}
	dest, ok := sentBy(req)
	if !ok {
		return fmt.Errorf("respond %d: no sent-by to reconnect to: %w", res.StatusCode, err)
	}
	if derr := s.ensureTCP(z, dest); derr != nil {
		return fmt.Errorf("respond %d on a new connection to %s: %w", res.StatusCode, dest, derr)
	}
	res.SetTransport("TCP")
	res.SetDestination(dest)
	if werr := z.ua.TransportLayer().WriteMsgTo(res, dest, "tcp"); werr != nil {
		return fmt.Errorf("respond %d on a new connection to %s: %w", res.StatusCode, dest, werr)
	}
	s.log.Debug("response sent on a new connection", "zone", z.cfg.Name, "code", res.StatusCode, "dest", dest)
	return nil
}

// sentBy is where a response to req goes when its connection is gone:
// the request's source address and the port of its top Via.
func sentBy(req *sip.Request) (string, bool) {
	v := req.Via()
	src, err := netip.ParseAddrPort(req.Source())
	if v == nil || err != nil {
		return "", false
	}
	port := v.Port
	if port <= 0 || port > 65535 {
		port = 5060
	}
	return netip.AddrPortFrom(src.Addr().Unmap(), uint16(port)).String(), true
}
