# Configuration of TestIntegrationTransferPolicies (transfer_integration_test.go):
# the lab of testenv.NewTopology with the PBX's REFERs relayed to the
# carrier (refer = "pass") and the carrier's REFERs declined (refer = "reject").
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
  refer   = "pass"
}

trunk "carrier" {
  zone    = "public"
  address = "203.0.113.2:5060"
  refer   = "reject"
}

media {
  # The tests read this range to tell relayed RTP from anything else.
  port_range = "20000-20099"
  timeout    = "60s"
  quarantine = "1s"
}

sip {
  invite_timeout = "4s"
}

log {
  level = "debug"
}
