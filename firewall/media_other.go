//go:build !linux

package firewall

import (
	"fmt"
	"net/netip"

	"github.com/edgesbc/edgesbc/media"
	"github.com/hashicorp/go-hclog"
)

// Media is the kernel media offload; it exists only on Linux.
type Media struct{}

// NewMedia returns ErrUnsupported outside Linux.
func NewMedia(cfg MediaConfig, log hclog.Logger) (*Media, error) {
	return nil, fmt.Errorf("media offload: %w", ErrUnsupported)
}

// Offload is never reached: NewMedia fails.
func (m *Media) Offload(f media.Flow, done func(error)) { go done(ErrUnsupported) }

// Withdraw is never reached: NewMedia fails.
func (m *Media) Withdraw(f media.Flow, done func(fwd, rev media.Counter)) {
	if done != nil {
		go done(media.Counter{}, media.Counter{})
	}
}

// Counters is never reached: NewMedia fails.
func (m *Media) Counters(into map[media.Flow]media.Counter) error { return ErrUnsupported }

// Close is never reached: NewMedia fails.
func (m *Media) Close(keep bool) error { return nil }

// Forwarding reports ErrUnsupported outside Linux.
func Forwarding(v6 bool) error { return ErrUnsupported }

// Adopt is never reached: NewMedia fails.
func (m *Media) Adopt(f media.Flow) bool { return false }

// Prune is never reached: NewMedia fails.
func (m *Media) Prune() error { return ErrUnsupported }

// OpenPinhole is never reached: NewMedia fails.
func (m *Media) OpenPinhole(local netip.AddrPort, remote netip.Addr, done func()) {
	if done != nil {
		done()
	}
}

// ClosePinhole is never reached: NewMedia fails.
func (m *Media) ClosePinhole(local netip.AddrPort, remote netip.Addr) {}
