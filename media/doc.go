// Package media anchors the media of every call at the SBC: a userspace
// RTP/RTCP relay that stands between the two legs, so each side sees only
// the SBC's address and ports of its own zone and never the other side's.
//
// It owns:
//
//   - The PortPool: even RTP ports with RTCP on the next port (RFC 3550 §11),
//     bound on the local address of each side, quarantined for a while after
//     release so late packets of an ended call never reach a new one.
//   - Sessions (one per call, SessionID = the sbc CallID), each with one
//     Stream per m= line and, per Stream, one Endpoint facing each Side. An
//     Endpoint is an RTP and an RTCP socket. On Linux (the epoll path) the
//     RTCP sockets of a Stream are bound only once its RTP flows (the
//     first latch on either side), so a call that is being set up, rings
//     or never carries RTP holds two sockets per Stream instead of four;
//     the pool still reserves the RTCP port from the start. Should another
//     process hold it by then, the Stream relays RTP only (counted in
//     Relay.RTCPBindFailed). See rtcpBinding.
//   - SDP anchoring: Offer and Answer read what a side announced (through
//     package media/sdp) and return the body for the other side, rewritten
//     with the SBC's advertised address and the ports of the Endpoints
//     facing that side.
//   - Forwarding: a packet admitted on the Endpoint facing one side leaves
//     through the Endpoint facing the other side, RTP over the RTP sockets
//     and RTCP over the RTCP sockets, payload untouched (every codec,
//     RFC 4733 telephone-events, SRTP ciphertext alike). Reads and writes
//     are batched (recvmmsg/sendmmsg), without heap allocation per packet
//     on Linux; the sizing notes in batch.go explain how buffers stay
//     cheap with thousands of idle sockets.
//   - Latching with bleed protection (symmetric RTP, RFC 4961): an Endpoint
//     admits only the IP its side announced, learns the real source port
//     from the first packet (NAT friendly), and then admits only that
//     address:port. Everything else is dropped and counted. See admission.
//   - Activity: a session without admitted RTP for Config.Timeout is
//     reported once through Config.OnTimeout.
//
// It does not own SIP (package sbc decides when sessions open, which side
// offered and when calls end), address discovery (package nat provides the
// advertised addresses as plain data) or the firewall. Kernel forwarding
// goes through the Offloader seam (package firewall implements it with
// nftables): once both sides of a stream component are latched its two
// directions are fixed 5-tuples, and the first admitted batch after that
// hands them over (see link). New SDP addresses, hold and the end of the
// stream withdraw them first; the kernel's counters are polled into the
// stats and count as media activity. The userspace relay stays the
// fallback for everything the kernel does not take. An Offloader that is
// also a Pinholer closes the relay's ports of some zones in the kernel to
// all but the IP each socket's side announced: the relay opens and closes
// those pinholes as SDP comes and streams end (see Pinholer).
//
// Concurrency: Relay.mu guards the session map, each session's mu guards
// its streams, and the hot path (the poller worker or reader goroutine
// that reads a socket, one at a time per socket) takes neither: it uses atomics for the remote address and counters. Every
// method of Relay is safe for concurrent use.
package media
