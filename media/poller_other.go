//go:build !linux

package media

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/hashicorp/go-hclog"
)

// The epoll poller and raw sockets exist on Linux only; elsewhere every
// relay socket is a *net.UDPConn with a reader goroutine of its own.

func bindRaw(ap netip.AddrPort) (int, error) {
	return -1, fmt.Errorf("media: raw socket %v: %w", ap, errors.ErrUnsupported)
}

func closeRaw(int) error { return nil }

type pollReg struct{}

type poller struct{}

func pollWorkers() int { return 1 }

func newPoller(hclog.Logger, int) (*poller, error) {
	return nil, fmt.Errorf("media: epoll poller: %w", errors.ErrUnsupported)
}

func (p *poller) register(k *relaySocket) error {
	return fmt.Errorf("media: epoll poller: %w", errors.ErrUnsupported)
}
func (p *poller) stop(*relaySocket)   {}
func (p *poller) free(k *relaySocket) { k.sock.Close() }
func (p *poller) registered() int     { return 0 }
func (p *poller) shutdown()           {}
