package testenv

import (
	"strconv"
	"strings"
)

// udpPortBound reports whether a /proc/net/udp or /proc/net/udp6 listing
// (several may be concatenated) has a socket whose local port is port.
//
// Each socket line reads "sl local_address rem_address st ...", with
// local_address as hex address, colon, hex port (the port in network order,
// printed big-endian). Header lines and anything malformed are skipped.
func udpPortBound(procNetUDP string, port uint16) bool {
	for line := range strings.Lines(procNetUDP) {
		fields := strings.Fields(line)
		if len(fields) < 2 || !strings.HasSuffix(fields[0], ":") {
			continue
		}
		_, hexPort, ok := strings.Cut(fields[1], ":")
		if !ok {
			continue
		}
		p, err := strconv.ParseUint(hexPort, 16, 16)
		if err == nil && uint16(p) == port {
			return true
		}
	}
	return false
}

// tcpPortListening reports whether a /proc/net/tcp or /proc/net/tcp6
// listing has a socket listening (state 0A) on local port port. The lines
// have the layout of /proc/net/udp.
func tcpPortListening(procNetTCP string, port uint16) bool {
	for line := range strings.Lines(procNetTCP) {
		fields := strings.Fields(line)
		if len(fields) < 4 || fields[3] != "0A" {
			continue
		}
		if udpPortBound(line, port) {
			return true
		}
	}
	return false
}
