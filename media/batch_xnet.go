package media

import (
	"errors"
	"net"
	"net/netip"

	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

// batchConn is what ipv4.PacketConn and ipv6.PacketConn have in common:
// their Message types are both aliases of the same internal type.
type batchConn interface {
	ReadBatch(ms []ipv4.Message, flags int) (int, error)
	WriteBatch(ms []ipv4.Message, flags int) (int, error)
}

func newBatchConn(conn *net.UDPConn) batchConn {
	if isIPv4Socket(conn) {
		return ipv4.NewPacketConn(conn)
	}
	return ipv6.NewPacketConn(conn)
}

// xnetIO is the portable batchIO on golang.org/x/net: recvmmsg/sendmmsg on
// Linux, one recvmsg/sendmsg per call elsewhere. Its buffers belong to the
// socket because ReadBatch blocks with them. ReadBatch allocates the source
// *net.UDPAddr of every datagram, which is why Linux uses mmsgIO instead.
type xnetIO struct {
	conn, peer batchConn
	peerIs4    bool
	rx         []ipv4.Message
	tx         []ipv4.Message
	dst        net.UDPAddr
	dstIP      [16]byte
	lanes      chan struct{}
	laned      bool // a lane is held
}

func newXNetIO(conn, peer *net.UDPConn, batch int, lanes chan struct{}) *xnetIO {
	x := &xnetIO{
		conn:    newBatchConn(conn),
		peer:    newBatchConn(peer),
		peerIs4: isIPv4Socket(peer),
		rx:      make([]ipv4.Message, batch),
		tx:      make([]ipv4.Message, batch),
		lanes:   lanes,
	}
	// One spare byte per buffer: a datagram that fills it was longer than
	// maxDatagram and has been cut by the kernel.
	const size = maxDatagram + 1
	bufs := make([]byte, batch*size)
	views := make([][]byte, 2*batch)
	for i := range x.rx {
		views[i] = bufs[i*size : (i+1)*size : (i+1)*size]
		x.rx[i].Buffers = views[i : i+1 : i+1]
		x.tx[i].Buffers = views[batch+i : batch+i+1 : batch+i+1]
		x.tx[i].Addr = &x.dst
	}
	return x
}

func (x *xnetIO) recv() (int, error) {
	x.release()
	n, err := x.conn.ReadBatch(x.rx, 0)
	if err == nil {
		x.lanes <- struct{}{}
		x.laned = true
	}
	return n, err
}

func (x *xnetIO) datagram(i int) ([]byte, netip.AddrPort, bool) {
	m := &x.rx[i]
	n := min(m.N, maxDatagram)
	var src netip.AddrPort
	if ua, ok := m.Addr.(*net.UDPAddr); ok {
		ap := ua.AddrPort()
		src = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	return m.Buffers[0][:n], src, m.N > maxDatagram
}

var errFamily = errors.New("media: destination address family differs from socket")

func (x *xnetIO) send(pkts [][]byte, dst netip.AddrPort) (int, int, error) {
	pkts = pkts[:min(len(pkts), len(x.tx))]
	a := dst.Addr().Unmap()
	switch {
	case x.peerIs4 && a.Is4():
		a4 := a.As4()
		copy(x.dstIP[:], a4[:])
		x.dst.IP = x.dstIP[:4]
	case !x.peerIs4:
		x.dstIP = a.As16()
		x.dst.IP = x.dstIP[:16]
	default:
		return 0, 0, errFamily
	}
	x.dst.Port = int(dst.Port())
	for i, p := range pkts {
		x.tx[i].Buffers[0] = p
	}
	var sent, bytes int
	var first error
	// Every round moves off forward by at least one datagram.
	for off := 0; off < len(pkts); {
		n, err := x.peer.WriteBatch(x.tx[off:len(pkts)], 0)
		n = max(0, min(n, len(pkts)-off))
		for _, p := range pkts[off : off+n] {
			bytes += len(p)
		}
		sent += n
		off += n
		if err == nil && n == 0 {
			break // no progress and no error: never spin
		}
		if err != nil {
			if first == nil {
				first = err
			}
			if errors.Is(err, net.ErrClosed) {
				break
			}
			off++ // skip the datagram the kernel refused
		}
	}
	for i := range pkts {
		x.tx[i].Buffers[0] = nil
	}
	return sent, bytes, first
}

func (x *xnetIO) release() {
	if x.laned {
		<-x.lanes
		x.laned = false
	}
}
