//go:build !linux

package media

import (
	"errors"
	"fmt"
	"net"
)

const defaultIO = ioXNet

// newMmsgIO exists on Linux only; elsewhere the portable xnetIO is used.
func newMmsgIO(conn, peer *net.UDPConn, lanes chan struct{}) (batchIO, error) {
	return nil, fmt.Errorf("media: recvmmsg i/o: %w", errors.ErrUnsupported)
}
