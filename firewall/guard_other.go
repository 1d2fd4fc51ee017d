//go:build !linux

package firewall

import (
	"net/netip"
	"time"

	"github.com/hashicorp/go-hclog"
)

// Guard is the kernel side of the ban policies. Without Linux there is
// none: NewGuard returns ErrUnsupported.
type Guard struct{}

// NewGuard returns ErrUnsupported outside Linux.
func NewGuard(hclog.Logger) (*Guard, error) { return nil, ErrUnsupported }

// Apply returns ErrUnsupported.
func (g *Guard) Apply(GuardConfig) error { return ErrUnsupported }

// Ban returns ErrUnsupported.
func (g *Guard) Ban(netip.Addr, time.Duration) error { return ErrUnsupported }

// Unban returns ErrUnsupported.
func (g *Guard) Unban(netip.Addr) error { return ErrUnsupported }

// Close does nothing.
func (g *Guard) Close() error { return nil }
