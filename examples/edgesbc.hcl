# edgesbc example configuration.
#
# edgesbc is a Session Border Controller: it sits between an IP-PBX on a
# private LAN and a SIP trunk at a carrier on the internet, and terminates
# every call on both sides (a back-to-back user agent). Neither side ever
# sees the other's addresses; only the SBC's own addresses cross the border.
#
# This file describes the small lab the demo script builds in network
# namespaces:
#
#   PBX 10.91.1.2 ── 10.91.1.1 [ edgesbc ] 203.0.113.1 ── 203.0.113.2 carrier
#        private zone                           public zone
#
# Check a file without running it:  edgesbc check -config edgesbc.hcl
# Every key and its default is described in appliance/config/README.md.

# A zone is one network side of the SBC. "address" is the SBC's own address
# on that side: SIP listens on address:sip_port and RTP for that side's call
# legs is relayed from the same address.
zone "private" {
  address  = "10.91.1.1" # SBC address on the PBX side
  sip_port = 5060        # default 5060
}

zone "public" {
  address  = "203.0.113.1" # SBC address on the carrier side
  sip_port = 5060

  # If the SBC sat behind a static 1:1 NAT, the public address would go
  # here; it is then announced in SIP and SDP instead of "address".
  # advertise = "198.51.100.7"
}

# The PBX: calls it sends to the SBC are routed out to a trunk. The SBC
# recognises it by its source address, in the zone named here.
pbx "main" {
  zone    = "private"
  address = "10.91.1.2:5060" # where the SBC sends requests for the PBX
}

# The carrier's SIP trunk: calls from it are routed in to the PBX.
trunk "carrier" {
  zone    = "public"
  address = "203.0.113.2:5060"

  # Headers are dropped at the border unless listed here. The carrier
  # uses P-Asserted-Identity for the caller's number, so keep that one.
  keep_headers = ["P-Asserted-Identity"]

  # Session timers (RFC 4028) toward the carrier: the SBC keeps each call
  # leg alive on its own and hangs up calls whose far end went silent.
  session_expires = "1800s" # default; "0s" turns them off
  min_se          = "90s"   # default

  # Transfers from the carrier: "terminate" (the SBC performs them, the
  # default), "pass" (relayed, addresses hidden) or "reject" (603).
  refer = "terminate"
}

# The RTP relay. Each call takes an even/odd port pair per leg from this
# range; the firewall must allow it on the zone addresses.
media {
  port_range = "20000-29999" # default
  timeout    = "60s"         # no RTP either way for this long ends the call
  # Media ports closed in the kernel but to the IP each call announced
  # (default: the zones with trunks).
  pinhole_zones = ["public"]
}

# SIP signalling: the product string in User-Agent and Server headers.
sip {
  user_agent = "edgesbc"
}

# Logging: trace shows every SIP message; info shows calls starting and
# ending. Levels: trace, debug, info, warn, error.
log {
  level = "info"
}
