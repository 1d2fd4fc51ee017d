package media

import (
	"net/netip"
	"sync/atomic"
)

// Stats is a snapshot of one session's media counters.
type Stats struct {
	ID      SessionID
	Streams []StreamStats // one per m= line, in SDP order
}

// StreamStats covers one m= line across both legs.
type StreamStats struct {
	Index  int    // m= line index, 0-based
	Kind   string // media kind of the last SDP: "audio", "video", ...
	Active bool   // false when the m= line is disabled (port 0) or the session closed
	// Sides holds what each endpoint received from its side and forwarded
	// to the other, indexed by Side: Sides[A] counts the caller's packets.
	Sides [2]EndpointStats
}

// EndpointStats is one endpoint's RTP and RTCP flows.
type EndpointStats struct {
	RTP  FlowStats
	RTCP FlowStats
}

// FlowStats counts one direction of one component (RTP or RTCP) of a
// stream: datagrams that arrived at the SBC's socket facing one side and
// what became of them. Every received datagram is counted exactly once as
// forwarded or under one drop reason:
//
//	Packets == Forwarded + DroppedStranger + DroppedNoDest + DroppedTruncated + DroppedSendError
//
// Counters survive a stream being disabled and enabled again; the addresses
// are those of the most recent endpoint.
type FlowStats struct {
	Local    netip.AddrPort // SBC socket the side sends to
	Expected netip.AddrPort // address the side announced in SDP
	Latched  netip.AddrPort // source learned from its first admitted packet

	Packets, Bytes            uint64 // all datagrams read, admitted or not
	Forwarded, ForwardedBytes uint64 // sent on to the other side
	Offloaded, OffloadedBytes uint64 // of Forwarded: forwarded by the kernel, not the relay socket
	DroppedStranger           uint64 // not from the side: SDP unknown, other IP, or not the latched address:port
	DroppedNoDest             uint64 // admitted, but the other side's address is unknown
	DroppedTruncated          uint64 // longer than the receive buffer
	DroppedSendError          uint64 // refused by the kernel on send
}

// add accumulates the counters of o into f and takes o's addresses.
func (f *FlowStats) add(o FlowStats) {
	f.Local, f.Expected, f.Latched = o.Local, o.Expected, o.Latched
	f.Packets += o.Packets
	f.Bytes += o.Bytes
	f.Forwarded += o.Forwarded
	f.ForwardedBytes += o.ForwardedBytes
	f.Offloaded += o.Offloaded
	f.OffloadedBytes += o.OffloadedBytes
	f.DroppedStranger += o.DroppedStranger
	f.DroppedNoDest += o.DroppedNoDest
	f.DroppedTruncated += o.DroppedTruncated
	f.DroppedSendError += o.DroppedSendError
}

// Total sums the counters of every flow of the session; its addresses are
// left empty.
func (s Stats) Total() FlowStats {
	var t FlowStats
	for _, st := range s.Streams {
		for _, e := range st.Sides {
			t.add(e.RTP)
			t.add(e.RTCP)
		}
	}
	t.Local, t.Expected, t.Latched = netip.AddrPort{}, netip.AddrPort{}, netip.AddrPort{}
	return t
}

// counters are the live counters of one relay socket. Only the socket's
// reader (see relaySocket) writes them, once per batch; Stats reads them at any
// time, hence atomics.
type counters struct {
	packets, bytes          atomic.Uint64
	forwarded, forwardedB   atomic.Uint64
	stranger, noDest, trunc atomic.Uint64
	sendErr                 atomic.Uint64
}

func (c *counters) snapshot() FlowStats {
	return FlowStats{
		Packets:          c.packets.Load(),
		Bytes:            c.bytes.Load(),
		Forwarded:        c.forwarded.Load(),
		ForwardedBytes:   c.forwardedB.Load(),
		DroppedStranger:  c.stranger.Load(),
		DroppedNoDest:    c.noDest.Load(),
		DroppedTruncated: c.trunc.Load(),
		DroppedSendError: c.sendErr.Load(),
	}
}
