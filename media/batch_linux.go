//go:build linux

package media

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

const defaultIO = ioEpoll

// mmsghdr is struct mmsghdr of recvmmsg(2)/sendmmsg(2). Go pads the struct to
// the alignment of unix.Msghdr, which gives the C layout on 32- and 64-bit
// platforms alike.
type mmsghdr struct {
	hdr unix.Msghdr
	len uint32
}

// sockaddrLen fits both sockaddr_in (16 bytes) and sockaddr_in6 (28 bytes).
const sockaddrLen = unix.SizeofSockaddrInet6

// mmsgBatch is everything one recvmmsg plus one sendmmsg need: headers,
// iovecs, source addresses and payload buffers. The header pointers are set
// once in newMmsgBatch and point into the batch itself, so a batch is reused
// without any per-packet setup beyond resetting the name lengths.
type mmsgBatch struct {
	rx    [mmsgBatchLen]mmsghdr
	rxIov [mmsgBatchLen]unix.Iovec
	names [mmsgBatchLen][sockaddrLen]byte
	bufs  [mmsgBatchLen][maxDatagram]byte
	tx    [mmsgBatchLen]mmsghdr
	txIov [mmsgBatchLen]unix.Iovec
	dst   [sockaddrLen]byte
}

func newMmsgBatch() *mmsgBatch {
	b := new(mmsgBatch)
	for i := range b.rx {
		b.rxIov[i].Base = &b.bufs[i][0]
		b.rxIov[i].SetLen(maxDatagram)
		b.rx[i].hdr.Name = &b.names[i][0]
		b.rx[i].hdr.Iov = &b.rxIov[i]
		b.rx[i].hdr.SetIovlen(1)
		b.tx[i].hdr.Name = &b.dst[0]
		b.tx[i].hdr.Iov = &b.txIov[i]
		b.tx[i].hdr.SetIovlen(1)
	}
	return b
}

// mmsgBatches is shared by every relay socket of the process. A socket holds
// a batch only from a read that found datagrams until it has forwarded
// them, so the number of live batches follows the number of sockets busy at
// once, not the number of sockets.
var mmsgBatches = sync.Pool{New: func() any { return newMmsgBatch() }}

// mmsgIO is the Linux batchIO: recvmmsg and sendmmsg issued directly through
// syscall.RawConn, so the Go netpoller still parks the reader and Close
// still wakes it. Unlike golang.org/x/net's ReadBatch it decodes source
// addresses into netip.AddrPort values instead of allocating a
// *net.UDPAddr per datagram, which keeps the forwarding path free of heap
// allocations.
type mmsgIO struct {
	rc, peer   syscall.RawConn
	peerFamily uint16
	lanes      chan struct{} // the relay's; one is held with b

	b   *mmsgBatch // borrowed from mmsgBatches between recv and release
	n   int        // result of the last syscall
	err error      // error of the last syscall
	txi int        // first tx header the next sendmmsg starts at
	txn int        // tx headers in flight

	// Bound once: method values passed to RawConn.Read/Write on every batch
	// would otherwise be allocated each time.
	readFn, writeFn func(fd uintptr) bool
}

func newMmsgIO(conn, peer *net.UDPConn, lanes chan struct{}) (batchIO, error) {
	rc, err := conn.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("raw conn %v: %w", conn.LocalAddr(), err)
	}
	prc, err := peer.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("raw conn %v: %w", peer.LocalAddr(), err)
	}
	m := &mmsgIO{rc: rc, peer: prc, peerFamily: unix.AF_INET6, lanes: lanes}
	if isIPv4Socket(peer) {
		m.peerFamily = unix.AF_INET
	}
	m.readFn = m.doRecv
	m.writeFn = m.doSend
	return m, nil
}

func (m *mmsgIO) recv() (int, error) {
	m.release()
	m.n, m.err = 0, nil
	if err := m.rc.Read(m.readFn); err != nil {
		return 0, err
	}
	if m.err != nil {
		return 0, m.err
	}
	return m.n, nil
}

// doRecv runs inside RawConn.Read. It takes a lane first and a batch
// second, so that sockets woken together wait for a lane without buffers.
// The socket is non-blocking: on EAGAIN the batch and the lane go back and
// false parks the goroutine in the netpoller until the socket is readable,
// so an idle socket holds no buffers.
func (m *mmsgIO) doRecv(fd uintptr) bool {
	m.lanes <- struct{}{}
	b := mmsgBatches.Get().(*mmsgBatch)
	n, errno := recvmmsg(fd, b)
	switch errno {
	case 0:
		m.b, m.n = b, n
		return true
	case unix.EAGAIN:
		mmsgBatches.Put(b)
		<-m.lanes
		return false
	default:
		mmsgBatches.Put(b)
		<-m.lanes
		m.err = os.NewSyscallError("recvmmsg", errno)
		return true
	}
}

// recvmmsg reads up to a batch of datagrams from the non-blocking socket fd
// into b, retrying a read interrupted by a signal a few times.
func recvmmsg(fd uintptr, b *mmsgBatch) (int, unix.Errno) {
	for i := range b.rx {
		b.rx[i].hdr.Namelen = sockaddrLen
		b.rx[i].hdr.Flags = 0
		b.rx[i].len = 0
	}
	for tries := 0; ; tries++ {
		n, _, errno := unix.Syscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&b.rx[0])), uintptr(len(b.rx)), 0, 0, 0)
		if errno == unix.EINTR && tries < 3 {
			continue
		}
		return int(n), errno
	}
}

// sendmmsg writes the n tx headers of b from off out of fd, retrying a
// write interrupted by a signal a few times.
func sendmmsg(fd uintptr, b *mmsgBatch, off, n int) (int, unix.Errno) {
	for tries := 0; ; tries++ {
		k, _, errno := unix.Syscall6(unix.SYS_SENDMMSG, fd, uintptr(unsafe.Pointer(&b.tx[off])), uintptr(n), 0, 0, 0)
		if errno == unix.EINTR && tries < 3 {
			continue
		}
		return int(k), errno
	}
}

func (m *mmsgIO) datagram(i int) ([]byte, netip.AddrPort, bool) { return m.b.datagram(i) }

// datagram returns datagram i of the last recvmmsg into b.
func (b *mmsgBatch) datagram(i int) ([]byte, netip.AddrPort, bool) {
	h := &b.rx[i]
	n := min(int(h.len), maxDatagram)
	nl := min(int(h.hdr.Namelen), sockaddrLen)
	return b.bufs[i][:n], decodeSockaddr(b.names[i][:nl]), h.hdr.Flags&unix.MSG_TRUNC != 0
}

// prepareTx points the tx headers of b at pkts, all to dst as a sockaddr
// of family. It returns how many headers it set, at most a batch, and
// false when dst cannot be reached from a socket of family.
func (b *mmsgBatch) prepareTx(pkts [][]byte, family uint16, dst netip.AddrPort) (int, bool) {
	pkts = pkts[:min(len(pkts), len(b.tx))]
	nl, ok := encodeSockaddr(&b.dst, family, dst)
	if !ok {
		return 0, false
	}
	for i, p := range pkts {
		// SliceData, not &p[0]: an empty datagram is legal UDP.
		b.txIov[i].Base = unsafe.SliceData(p)
		b.txIov[i].SetLen(len(p))
		b.tx[i].hdr.Namelen = nl
		b.tx[i].len = 0
	}
	return len(pkts), true
}

func (m *mmsgIO) send(pkts [][]byte, dst netip.AddrPort) (int, int, error) {
	b := m.b
	if b == nil || len(pkts) == 0 {
		return 0, 0, nil
	}
	n, ok := b.prepareTx(pkts, m.peerFamily, dst)
	if !ok {
		return 0, 0, errFamily
	}
	pkts = pkts[:n]
	var sent, bytes int
	var first error
	// Every round moves off forward by at least one datagram.
	for off := 0; off < len(pkts); {
		m.txi, m.txn, m.n, m.err = off, len(pkts)-off, 0, nil
		if err := m.peer.Write(m.writeFn); err != nil {
			if first == nil {
				first = err
			}
			break // peer socket closed
		}
		n := max(0, min(m.n, len(pkts)-off))
		for _, p := range pkts[off : off+n] {
			bytes += len(p)
		}
		sent += n
		off += n
		if m.err != nil {
			if first == nil {
				first = m.err
			}
			off++ // skip the datagram the kernel refused
		} else if n == 0 {
			break // no progress and no error: never spin
		}
	}
	return sent, bytes, first
}

func (m *mmsgIO) doSend(fd uintptr) bool {
	n, errno := sendmmsg(fd, m.b, m.txi, m.txn)
	switch errno {
	case 0:
		m.n = n
		return true
	case unix.EAGAIN:
		return false // send buffer full: wait until writable
	default:
		m.err = os.NewSyscallError("sendmmsg", errno)
		return true
	}
}

func (m *mmsgIO) release() {
	if m.b != nil {
		mmsgBatches.Put(m.b)
		m.b = nil
		<-m.lanes
	}
}

// decodeSockaddr reads a sockaddr_in or sockaddr_in6 filled in by the
// kernel. IPv6 scope ids are dropped: remotes are compared with addresses
// from SDP, which has no zones.
func decodeSockaddr(sa []byte) netip.AddrPort {
	if len(sa) < 2 {
		return netip.AddrPort{}
	}
	switch binary.NativeEndian.Uint16(sa[:2]) {
	case unix.AF_INET:
		if len(sa) >= unix.SizeofSockaddrInet4 {
			return netip.AddrPortFrom(netip.AddrFrom4([4]byte(sa[4:8])), binary.BigEndian.Uint16(sa[2:4]))
		}
	case unix.AF_INET6:
		if len(sa) >= unix.SizeofSockaddrInet6 {
			return netip.AddrPortFrom(netip.AddrFrom16([16]byte(sa[8:24])).Unmap(), binary.BigEndian.Uint16(sa[2:4]))
		}
	}
	return netip.AddrPort{}
}

// encodeSockaddr writes ap as a sockaddr of family into sa and returns its
// length. An IPv4 address on an IPv6 socket becomes v4-mapped; an IPv6
// address cannot be reached from an IPv4 socket.
func encodeSockaddr(sa *[sockaddrLen]byte, family uint16, ap netip.AddrPort) (uint32, bool) {
	*sa = [sockaddrLen]byte{}
	a := ap.Addr().Unmap()
	binary.NativeEndian.PutUint16(sa[:2], family)
	binary.BigEndian.PutUint16(sa[2:4], ap.Port())
	switch {
	case family == unix.AF_INET && a.Is4():
		a4 := a.As4()
		copy(sa[4:8], a4[:])
		return unix.SizeofSockaddrInet4, true
	case family == unix.AF_INET6 && a.IsValid():
		a16 := a.As16()
		copy(sa[8:24], a16[:])
		return unix.SizeofSockaddrInet6, true
	}
	return 0, false
}
