package firewall

import (
	"net/netip"
	"sync"
	"time"
)

// GuardFake is a portable stand-in for Guard that records what it is told,
// for tests of the code that drives the guard on any OS.
type GuardFake struct {
	mu      sync.Mutex
	applied []GuardConfig
	bans    map[netip.Addr]time.Duration
	closed  bool
	// ApplyErr, when set, is returned by Apply.
	ApplyErr error
}

// NewGuardFake returns an empty fake.
func NewGuardFake() *GuardFake { return &GuardFake{bans: map[netip.Addr]time.Duration{}} }

// Apply records cfg.
func (f *GuardFake) Apply(cfg GuardConfig) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.ApplyErr != nil {
		return f.ApplyErr
	}
	f.applied = append(f.applied, cfg)
	return nil
}

// Ban records a ban.
func (f *GuardFake) Ban(a netip.Addr, d time.Duration) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.bans[a.Unmap()] = d
	return nil
}

// Unban forgets a ban.
func (f *GuardFake) Unban(a netip.Addr) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.bans, a.Unmap())
	return nil
}

// Close marks the fake closed.
func (f *GuardFake) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closed = true
	return nil
}

// Bans returns the recorded bans and their durations.
func (f *GuardFake) Bans() map[netip.Addr]time.Duration {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make(map[netip.Addr]time.Duration, len(f.bans))
	for a, d := range f.bans {
		out[a] = d
	}
	return out
}

// Applied returns every configuration applied so far.
func (f *GuardFake) Applied() []GuardConfig {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]GuardConfig(nil), f.applied...)
}

// Closed reports whether Close was called.
func (f *GuardFake) Closed() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.closed
}
