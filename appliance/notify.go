package appliance

import (
	"fmt"
	"net"
	"os"
	"strings"
)

// notify sends a state string such as "READY=1" to the service manager
// (sd_notify(3) protocol: one datagram on the unix socket in
// $NOTIFY_SOCKET; a leading '@' names an abstract socket). Without
// $NOTIFY_SOCKET, when not started by systemd, it does nothing.
func notify(state string) error {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return nil
	}
	if strings.HasPrefix(path, "@") {
		path = "\x00" + path[1:]
	}
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return fmt.Errorf("connect to notify socket %s: %w", os.Getenv("NOTIFY_SOCKET"), err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte(state)); err != nil {
		return fmt.Errorf("send %q to notify socket: %w", state, err)
	}
	return nil
}
