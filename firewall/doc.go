// Package firewall owns the appliance's nftables table, `inet edgesbc`. It
// knows nothing about SIP or calls: it learns about media only as Flows
// (package media) and about abusive sources only as addresses to ban,
// prefixes to allow and packet rates to enforce.
//
// edgesbc owns exactly that one table and never touches other tables or the
// policies of the host's base chains. Each subsystem creates the table
// without flushing it and manages only its own objects inside it, named by
// prefix: the guard (Guard) owns the chain guard_prerouting and the sets
// allow4, allow6, ban4, ban6 and rl_*; media offload (Media) owns media_*.
//
// Neither trusts the table to stay: a host firewall reload that runs
// `nft flush ruleset` removes it with everything in it. Each subsystem's
// owner goroutine remembers what it installed and puts it back when it
// finds its objects gone (the table alone proves nothing: the other
// subsystem may have recreated it), at its next change and at least every
// 10 seconds: the guard with its last configuration and every ban at its
// remaining time, Media with every offloaded flow and every pinhole.
//
// Media offload (Media, Linux only) forwards latched RTP/RTCP in the
// kernel with NAT maps, so established streams never reach userspace. The
// IPv4 objects are shown; IPv6 has the same with suffix 6 (ipv6_addr keys),
// and the chains carry one rule per family:
//
//	table inet edgesbc {
//	  set media_local4 { type ipv4_addr }                    # the relay's bind addresses
//	  map media_dnat4  { type ipv4_addr . inet_service . ipv4_addr . inet_service : ipv4_addr . inet_service; size 65536; counter }
//	  map media_snat4  { type ipv4_addr . inet_service . ipv4_addr . inet_service : ipv4_addr . inet_service; size 65536 }
//	  chain media_notrack_in  { type filter hook prerouting priority raw;
//	    ip saddr . udp sport . ip daddr . udp dport map @media_snat4 return
//	    ip daddr @media_local4 udp dport LO-HI notrack }
//	  chain media_notrack_out { type filter hook output priority raw; ... notrack }
//	  chain media_count { type filter hook prerouting priority mangle;
//	    ct status confirmed ip saddr . udp sport . ip daddr . udp dport map @media_dnat4 }
//	  chain media_dnat  { type nat hook prerouting priority dstnat; dnat ip to ip saddr . udp sport . ip daddr . udp dport map @media_dnat4 }
//	  chain media_snat  { type nat hook postrouting priority srcnat; snat ip to ct original ip saddr . ct original proto-src .
//	    ct original ip daddr . ct original proto-dst map @media_snat4 }
//	  set media_closed4 { type ipv4_addr }                   # MediaConfig.Closed: the public side
//	  set media_pin4    { type ipv4_addr . inet_service . ipv4_addr }
//	  chain media_pin   { type filter hook input priority filter;
//	    ip daddr @media_closed4 udp dport LO-HI ip daddr . udp dport . ip saddr != @media_pin4 counter drop }
//	}
//
// (nft prints the lookups of media_notrack_in and media_count, whose
// results no expression uses, as comments.)
//
// The relay's own traffic is not tracked (the notrack chains), so the
// kernel holds no connection-tracking state for streams that userspace
// forwards. Offloading a flow adds two elements per direction, one in each
// map, keyed by the tuple a packet of that direction arrives with, before
// DNAT: it names the relay port the packet was sent to, so streams of
// different calls between the same two far-end addresses and ports (as
// SIPp sends its calls' media) are told apart by the relay ports each has.
// The next packet of the flow passes the notrack chain (its key is in
// media_snatX) and is tracked, DNATed to the other side's address and
// SNATed, by the conntrack entry's original tuple, to the relay's port
// facing that side; every later packet of both directions follows that
// conntrack entry without any NAT lookup. Each media_dnatX element counts
// its direction: the DNAT rule's lookup counts the first packet of an
// entry, which is not yet confirmed, and media_count every later one,
// before DNAT has rewritten it. Whichever direction sends first creates
// the entry; the other is its reply. The relay sockets stay bound: no
// other flow can take their ports, and the kernel's tuple never collides
// with userspace's, which is untracked. Withdrawing deletes the elements
// and the conntrack entry, and packets reach the relay sockets again.
//
// Media pinholes (media.Pinholer) close the media port range of the relay
// addresses in MediaConfig.Closed to everyone but the remotes the relay
// expects: each relay socket there has one element in media_pinX, its
// address and port and the IP its side announced in SDP (no source port:
// a NAT may pick any; the relay's latching narrows it in userspace). The
// chain hooks input, not prerouting: an offloaded flow is DNATed in
// prerouting and forwarded, so it never meets the chain and cannot be cut
// by a pinhole that changed under it, while every datagram for a relay
// socket passes input, tracked or not (the relay's own traffic is
// notrack'd; the rule matches the packet, not conntrack state). The
// guard's chain at prerouting raw has dropped banned sources long before,
// and an accept there (the allow list) ends only that chain, so peers'
// media is held to the pinholes too. Pinholes go through Media's owner
// goroutine like flows, in the same transactions, and open ones are put
// back when the objects are rebuilt; with MediaConfig.Keep they start
// empty and the restored calls open them again.
package firewall
