zone "private" {
	address = "10.91.1"
}
zone "zöne" {
  address    = "203.0.113.1"
  transports = [
    "udp",
    {},
  ]
}
pbx "main" {
  zone    = "dmz"
  address = "10.91.1.2:5060"
}
trunk "carrier" {
  zone    = "public"
  address = "203.0.113.2:5060"
}
