package media

import (
	"net/netip"
	"sync"
	"time"
)

// Pinholer is implemented by an Offloader that also closes the relay's
// media ports to everyone but the remotes it expects (package firewall:
// media pinholes). For every relay socket the relay opens one pinhole,
// (the socket's address and port, the IP its side announced), when the
// side's SDP names an address, and closes it when the announcement changes
// to another IP, when the side stops announcing one (hold with 0.0.0.0, a
// rejected stream) and when the socket closes. The pinhole has no source
// port: a NAT in front of the side may pick any, and latching (see
// admission) narrows it to one port in userspace. Latching never changes
// the IP, so it keeps the pinhole.
//
// Like Offload and Withdraw, both methods only queue the change: the
// Pinholer applies changes in the order they were made, so closing the
// pinhole of a socket always precedes opening one for the next socket on
// the same port (its port goes back to the pool only after). What the
// Pinholer does with a socket whose address it does not close (the private
// side) is up to it; nothing is the expected answer.
type Pinholer interface {
	// OpenPinhole queues a pinhole. done, when not nil, is called once
	// the kernel has it or will not have it (possibly before OpenPinhole
	// returns): Offer and Answer wait for it, bounded by pinWait, so that
	// a party may send as soon as the SDP is anchored.
	OpenPinhole(local netip.AddrPort, remote netip.Addr, done func())
	ClosePinhole(local netip.AddrPort, remote netip.Addr)
}

// pinWait bounds how long Offer and Answer wait for new pinholes. After
// that the SDP goes on regardless; the pinholes follow as soon as the
// Pinholer gets to them.
const pinWait = 100 * time.Millisecond

// pinIP is the remote IP a pinhole is kept for, given what a side
// announced: none while nothing (or an unspecified address) is announced.
func pinIP(expected netip.AddrPort) netip.Addr {
	if !expected.IsValid() || expected.Addr().IsUnspecified() {
		return netip.Addr{}
	}
	return expected.Addr().Unmap()
}

// repin moves the socket's pinhole from what its side announced before
// (old) to what it announces now (now). The caller holds the session lock,
// which orders the changes of one socket. The returned channel, nil when
// no pinhole opens, is closed once the new one is in place.
func (k *relaySocket) repin(old, now netip.AddrPort) <-chan struct{} {
	p := k.sess.relay.pins
	if p == nil {
		return nil
	}
	from, to := pinIP(old), pinIP(now)
	if from == to {
		return nil
	}
	if from.IsValid() {
		p.ClosePinhole(k.local, from)
	}
	if !to.IsValid() {
		return nil
	}
	done := make(chan struct{})
	var once sync.Once
	p.OpenPinhole(k.local, to, func() { once.Do(func() { close(done) }) })
	return done
}

// waitPins waits for the channels of repin, bounded by pinWait in all.
func waitPins(waits []<-chan struct{}) {
	if len(waits) == 0 {
		return
	}
	deadline := time.NewTimer(pinWait)
	defer deadline.Stop()
	for _, w := range waits {
		select {
		case <-w:
		case <-deadline.C:
			return
		}
	}
}

// unpin closes the socket's pinhole, if it has one, before its port is
// released. A detached relay leaves the pinholes to the next process, as
// it leaves its kernel flows.
func (k *relaySocket) unpin() {
	if k.sess.relay.keep.Load() {
		return
	}
	if r := k.remote.Load(); r != nil {
		k.repin(r.expected, netip.AddrPort{})
	}
}
