package media

import (
	"fmt"
	"net"
	"net/netip"
)

// Buffer and batch sizing.
//
// The budget is 2,000 concurrent calls with one audio stream: 8,000 sockets,
// far below 200 MB. Buffers that a socket keeps while it waits for traffic
// would dominate that budget (8 × 1500 B per socket is 96 MB for buffers
// alone), so the I/O implementations size them differently:
//
//   - epoll (Linux, the default there) has no reader per socket: the
//     relay's poller workers (see poller) each own one batch of
//     mmsgBatchLen × maxDatagram and drain whichever socket is ready into
//     it, so the buffers follow the number of workers (GOMAXPROCS-1), not
//     the number of sockets.
//   - mmsg (Linux) gives each socket a reader goroutine that reads with a non-blocking recvmmsg
//     inside syscall.RawConn.Read and borrows its batch of buffers from a
//     shared pool only for the time between a read that found datagrams and
//     the end of forwarding them. A parked socket holds no buffer at all, so
//     the batch can be generous: mmsgBatchLen × maxDatagram. A socket woken
//     by the netpoller first takes one of the relay's forwarding lanes
//     (Relay.lanes) and only then a batch, so the batches in use never
//     outnumber the lanes (GOMAXPROCS-1), however many sockets have
//     datagrams waiting at the same instant; the pool keeps a few more
//     between garbage collections.
//   - xnet (portable, golang.org/x/net ReadBatch/WriteBatch) blocks inside
//     ReadBatch with its buffers, so each socket owns them: xnetBatchRTP
//     buffers on RTP sockets and xnetBatchRTCP on RTCP sockets, whose few
//     packets per second never fill a batch. That is 4 × 1.5 KB + 1.5 KB per
//     endpoint, about 30 MB of buffers at 8,000 sockets.
//
// maxDatagram is the Ethernet MTU: RTP senders packetize below the path MTU,
// so larger datagrams only arrive IP-fragmented, which no deployed RTP stack
// produces on purpose. A longer datagram is detected (MSG_TRUNC, or one spare
// byte on the portable path), dropped and counted, never forwarded cut.
const (
	maxDatagram   = 1500
	mmsgBatchLen  = 16
	xnetBatchRTP  = 4
	xnetBatchRTCP = 1
)

// batchIO is the datagram I/O of one relay socket on the goroutine-per-
// socket paths (mmsg, xnet): it reads datagrams from the socket and writes
// the admitted ones out of the peer socket (the socket of the same
// component facing the other side). Exactly one goroutine, the socket's
// reader, calls its methods; it needs no locking.
//
// A successful recv returns holding one of the relay's forwarding lanes
// (a token of the channel given to newBatchIO); release gives it back.
type batchIO interface {
	batchView
	// recv blocks until at least one datagram is read and returns how many
	// were, holding a lane. It returns an error wrapping net.ErrClosed once
	// the socket is closed, and holds no lane after an error.
	recv() (int, error)
	// release ends the use of the last recv's payloads and gives back the
	// lane.
	release()
}

// batchView is one batch of datagrams read from a relay socket, as
// relaySocket.forward sees it: a batchIO's last recv, or a poller worker's
// last recvmmsg.
type batchView interface {
	// datagram returns datagram i of the batch: its payload (valid until
	// the batch is released), its source and whether it was longer than
	// maxDatagram.
	datagram(i int) (payload []byte, src netip.AddrPort, truncated bool)
	// send writes pkts, slices of the batch's payloads, out of the peer
	// socket to dst. It returns how many datagrams and bytes the kernel
	// accepted; a datagram the kernel refuses is skipped, the rest are still
	// sent, and the first error is returned for logging.
	send(pkts [][]byte, dst netip.AddrPort) (packets, bytes int, err error)
}

// ioImpl names a batchIO implementation.
type ioImpl int

const (
	ioDefault ioImpl = iota // platform default: ioEpoll on Linux, ioXNet elsewhere
	ioMmsg                  // raw recvmmsg/sendmmsg, pooled buffers (Linux)
	ioXNet                  // golang.org/x/net ipv4/ipv6 ReadBatch/WriteBatch
	ioEpoll                 // raw sockets read by the relay's epoll poller (Linux)
)

func (i ioImpl) String() string {
	switch i {
	case ioMmsg:
		return "mmsg"
	case ioXNet:
		return "xnet"
	case ioEpoll:
		return "epoll"
	}
	return "default"
}

// newBatchIO returns the I/O of a socket reading conn and forwarding out of
// peer; lanes are the relay's forwarding lanes.
func newBatchIO(impl ioImpl, conn, peer *net.UDPConn, c component, lanes chan struct{}) (batchIO, error) {
	switch impl {
	case ioMmsg:
		return newMmsgIO(conn, peer, lanes)
	case ioXNet:
		n := xnetBatchRTP
		if c == compRTCP {
			n = xnetBatchRTCP
		}
		return newXNetIO(conn, peer, n, lanes), nil
	}
	return nil, fmt.Errorf("media: unknown batch i/o %d", impl)
}

// isIPv4Socket reports whether conn is an AF_INET socket. PortPool binds
// "udp4" for IPv4 addresses and "udp6" otherwise, so the local address tells.
func isIPv4Socket(conn *net.UDPConn) bool {
	ua, ok := conn.LocalAddr().(*net.UDPAddr)
	return ok && ua.IP.To4() != nil
}
