# Configuration of the integration tests (integration_test.go): the lab of
# testenv.NewTopology, with short timers so that every call path, including
# the 408 for a callee that never answers, runs in seconds.
#
#   PBX 10.91.1.2 ── 10.91.1.1 [ edgesbc ] 203.0.113.1 ── 203.0.113.2 carrier

zone "private" {
  address  = "10.91.1.1"
  sip_port = 5060
}

zone "public" {
  address  = "203.0.113.1"
  sip_port = 5060
}

pbx "main" {
  zone    = "private"
  address = "10.91.1.2:5060"
}

trunk "carrier" {
  zone    = "public"
  address = "203.0.113.2:5060"
}

media {
  # The tests read this range to tell relayed RTP from anything else.
  port_range = "20000-20099"
  timeout    = "60s"
  # Short, so the ports of the last call are free again soon after it.
  quarantine = "1s"
}

sip {
  # uac_expect_408.xml waits at most callBound (12 s) for the 408.
  invite_timeout = "4s"
}

log {
  level = "debug"
}
