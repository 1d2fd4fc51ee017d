# Configuration that scripts/boot-test.sh writes into a copy of the image
# before booting it. The two virtio NICs of the test VM carry the MACs below;
# edgesbc names them lan0 and wan0 and addresses them. On the host side the
# PBX (10.91.1.2) and the carrier (203.0.113.2) are tap devices inside a
# network namespace the test creates.

zone "private" {
  address = "10.91.1.1"
  device  = "lan0"
  mac     = "52:54:00:e5:bc:01"
}

zone "public" {
  address       = "203.0.113.1"
  device        = "wan0"
  mac           = "52:54:00:e5:bc:02"
  prefix_length = 24
  gateway       = "203.0.113.254"
}

pbx "main" {
  zone    = "private"
  address = "10.91.1.2:5060"
}

trunk "carrier" {
  zone    = "public"
  address = "203.0.113.2:5060"
}
