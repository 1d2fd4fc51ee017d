package media

import (
	"net"
	"net/netip"
)

// Socket is one bound relay socket. On the paths that give every socket a
// reader goroutine (ioMmsg, ioXNet) it is a *net.UDPConn; on Linux's
// default path (ioEpoll) it is a raw non-blocking descriptor that the
// relay's poller reads, which costs a socket and a bind instead of what
// net.ListenUDP does besides (options, getsockname, netpoller registration).
type Socket struct {
	local netip.AddrPort
	conn  *net.UDPConn // nil for a raw socket
	fd    int          // raw socket; -1 when conn is set or after Close
}

// unboundSocket is the Socket of a relay socket whose binding is deferred
// (the RTCP sockets of a stream on the ioEpoll path: see rtcpBinding). It
// knows the address it will be bound to; closing it does nothing.
func unboundSocket(ap netip.AddrPort) Socket { return Socket{local: ap, fd: -1} }

// LocalAddr returns the address and port the socket is bound to, or will
// be once bound.
func (s *Socket) LocalAddr() netip.AddrPort { return s.local }

// bound reports whether the socket holds a descriptor. The zero Socket
// counts as bound (descriptor 0): unbound ones come from unboundSocket.
func (s *Socket) bound() bool { return s.conn != nil || s.fd >= 0 }

// Close closes the socket. A raw socket registered with a poller is closed
// by the poller instead (see poller), never here.
func (s *Socket) Close() error {
	if s.conn != nil {
		return s.conn.Close()
	}
	if s.fd < 0 {
		return nil
	}
	fd := s.fd
	s.fd = -1
	return closeRaw(fd)
}

// listenSocket binds a UDP socket to ap the portable way.
func listenSocket(ap netip.AddrPort) (Socket, error) {
	network := "udp6"
	if ap.Addr().Is4() {
		network = "udp4"
	}
	c, err := net.ListenUDP(network, net.UDPAddrFromAddrPort(ap))
	if err != nil {
		return Socket{}, err
	}
	return Socket{local: ap, conn: c, fd: -1}, nil
}

// bindSocket binds a UDP socket to ap, raw or portable.
func bindSocket(raw bool, ap netip.AddrPort) (Socket, error) {
	if raw {
		fd, err := bindRaw(ap)
		if err != nil {
			return Socket{}, err
		}
		return Socket{local: ap, fd: fd}, nil
	}
	return listenSocket(ap)
}
