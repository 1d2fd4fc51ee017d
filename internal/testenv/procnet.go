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
