// Package firewall owns the appliance's nftables table, `inet edgesbc`. It
// knows nothing about SIP or calls: it learns about media only as Flows
// (package media) and about abusive sources only as addresses.
//
// edgesbc owns exactly that one table and never touches other tables or the
// policies of the host's base chains. Each subsystem manages only its own
// objects inside the table, named by prefix: media offload uses `media_`.
//
// Media offload (Media, Linux only) forwards latched RTP/RTCP in the
// kernel with NAT maps, so established streams never reach userspace:
//
//	table inet edgesbc {
//	  set media_local4 { type ipv4_addr }                    # the relay's bind addresses
//	  map media_dnat4  { type ipv4_addr . inet_service . ipv4_addr . inet_service : ipv4_addr . inet_service }
//	  map media_snat4  { type ipv4_addr . inet_service . ipv4_addr . inet_service : ipv4_addr . inet_service }
//	  set media_count4 { type ipv4_addr . inet_service . ipv4_addr . inet_service; counter }
//	  chain media_notrack_in  { type filter hook prerouting priority raw; ... notrack }
//	  chain media_notrack_out { type filter hook output priority raw; ... notrack }
//	  chain media_dnat  { type nat hook prerouting priority dstnat; dnat ip to ip saddr . udp sport . ip daddr . udp dport map @media_dnat4 }
//	  chain media_count { type filter hook forward priority filter; ip saddr . udp sport . ip daddr . udp dport @media_count4 }
//	  chain media_snat  { type nat hook postrouting priority srcnat; snat ip to ip saddr . udp sport . ip daddr . udp dport map @media_snat4 }
//	}
//
// The relay's own traffic is not tracked (the notrack chains), so the
// kernel holds no connection-tracking state for streams that userspace
// forwards. Offloading a flow adds its elements; the next packet of the
// flow is then tracked, DNATed to the other side's address and SNATed to
// the relay's port facing that side, and every later packet of both
// directions follows that conntrack entry without any rule lookup. The
// relay sockets stay bound: no other flow can take their ports, and the
// kernel's tuple never collides with userspace's, which is untracked.
// Withdrawing deletes the elements and the conntrack entry, and packets
// reach the relay sockets again.
package firewall
