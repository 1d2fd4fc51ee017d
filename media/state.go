package media

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/edgesbc/edgesbc/media/sdp"
)

// SessionState is what a relay in a new process needs to carry on with a
// session whose streams the kernel may still be forwarding: its addresses,
// the o= lines it has sent, and per stream the ports, what each side
// announced and latched, the flows in the kernel and the counters so far.
// It is plain data, meant to be written to disk (JSON).
type SessionState struct {
	ID      SessionID     `json:"id"`
	Addrs   [2]Address    `json:"addrs"`
	Origins [2]sdp.Origin `json:"origins"`
	Duplex  [2]bool       `json:"duplex"`
	Known   [2]bool       `json:"known"`
	Streams []StreamState `json:"streams"`
}

// StreamState is one m= line of a SessionState. Arrays indexed by side
// use Side; those indexed by component hold RTP first, then RTCP.
type StreamState struct {
	Kind string `json:"kind"`
	// Ports are the RTP ports facing each side; zero when the m= line is
	// disabled.
	Ports  [2]int            `json:"ports"`
	Remote [2][2]RemoteState `json:"remote"` // [side][component]
	// Kernel holds, per component, the flow (A to B) the kernel forwards;
	// nil when userspace does.
	Kernel [2]*Flow `json:"kernel,omitempty"`
	// Counted are the counters so far, per side and component, without
	// what the kernel counts for the flows in Kernel (their elements keep
	// counting across the restart); KernelBase is what earlier offloads of
	// each component counted, per side.
	Counted    [2][2]FlowStats `json:"counted"`
	KernelBase [2][2]Counter   `json:"kernel_base"` // [component][side]
}

// RemoteState is what one relay socket knew of its side.
type RemoteState struct {
	Expected netip.AddrPort `json:"expected"`
	Latched  netip.AddrPort `json:"latched"`
}

// Adopter is implemented by an Offloader that can take over flows a
// previous process left in the kernel. Adopt reports whether f (with its
// reverse) is installed there and is now managed as if offloaded here.
type Adopter interface {
	Adopt(f Flow) bool
}

// State returns the session's state, and false if it is not open.
func (r *Relay) State(id SessionID) (SessionState, bool) {
	s := r.session(id)
	if s == nil {
		return SessionState{}, false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return SessionState{}, false
	}
	out := SessionState{ID: s.id, Addrs: s.addrs, Origins: s.origins, Duplex: s.duplex, Known: s.known}
	for _, st := range s.streams {
		ss := StreamState{Kind: st.kind}
		for side := range 2 {
			for c := range 2 {
				ss.Counted[side][c] = st.retired[side][c]
			}
		}
		if st.active() {
			for side, ep := range st.eps {
				ss.Ports[side] = ep.port
				for c, k := range ep.socks {
					if rm := k.remote.Load(); rm != nil {
						ss.Remote[side][c] = RemoteState{Expected: rm.expected, Latched: rm.latched}
					}
					f := k.c.snapshot()
					ss.Counted[side][c].add(f)
				}
			}
			for c, k := range st.eps[A].socks {
				lk := k.link
				lk.mu.Lock()
				if lk.state == linkKernel {
					f := lk.flow
					ss.Kernel[c] = &f
				}
				ss.KernelBase[c] = lk.base
				lk.mu.Unlock()
			}
		}
		out.Streams = append(out.Streams, ss)
	}
	return out, true
}

// Restore rebuilds a session from st in this relay: it binds the same
// ports, knows the same remotes and, where the Offloader adopts them, treats
// the flows in st.Kernel as offloaded. Call it before traffic of new calls
// could take the ports, that is before the first Open after start.
func (r *Relay) Restore(st SessionState) error {
	var err error
	for side := range st.Addrs {
		if st.Addrs[side], err = st.Addrs[side].normalize(); err != nil {
			return fmt.Errorf("restore session %s: %w", st.ID, err)
		}
	}
	r.mu.Lock()
	switch {
	case r.closed:
		r.mu.Unlock()
		return fmt.Errorf("restore session %s: %w", st.ID, ErrRelayClosed)
	case r.sessions[st.ID] != nil:
		r.mu.Unlock()
		return fmt.Errorf("restore session %s: %w", st.ID, ErrSessionExists)
	}
	s := newSession(r, st.ID, st.Addrs[A], st.Addrs[B])
	r.sessions[st.ID] = s
	r.mu.Unlock()

	s.mu.Lock()
	defer s.mu.Unlock()
	s.origins, s.duplex, s.known = st.Origins, st.Duplex, st.Known
	held := s.known[A] && s.known[B] && !(s.duplex[A] && s.duplex[B])
	s.held.Store(held)
	var errs []error
	adopter, _ := r.cfg.Offloader.(Adopter)
	var pinned []<-chan struct{}
	defer func() { waitPins(pinned) }()
	for i, ss := range st.Streams {
		stream := &stream{index: i, kind: ss.Kind}
		stream.retired = ss.Counted
		s.streams = append(s.streams, stream)
		if ss.Ports[A] == 0 || ss.Ports[B] == 0 {
			continue
		}
		eps, err := s.endpoints(i, func(side Side) (PortPair, error) {
			return r.pool.Reserve(s.addrs[side].Bind, ss.Ports[side])
		})
		if err != nil {
			// The stream is lost (its ports are taken); the others may
			// still be carried on.
			errs = append(errs, fmt.Errorf("stream %d: %w", i, err))
			continue
		}
		// The links first: the sockets are read already (see endpoints),
		// and once they know their remotes a datagram may ask for an
		// offload, which must find the link held or adopted.
		for c, k := range eps[A].socks {
			lk := k.link
			lk.mu.Lock()
			lk.base = ss.KernelBase[c]
			lk.held = held
			if f := ss.Kernel[c]; f != nil && adopter != nil && adopter.Adopt(*f) {
				lk.state, lk.flow = linkKernel, *f
				r.trackLink(lk, true)
			}
			lk.refreshLocked()
			lk.mu.Unlock()
		}
		for side, ep := range eps {
			for c, k := range ep.socks {
				rm := ss.Remote[side][c]
				k.remote.Store(&remote{expected: rm.Expected, latched: rm.Latched})
				if w := k.repin(netip.AddrPort{}, rm.Expected); w != nil {
					pinned = append(pinned, w)
				}
			}
		}
		s.start(stream, eps)
	}
	r.log.Info("session restored", "call", string(st.ID), "streams", len(st.Streams), "offloaded", r.OffloadedLinks())
	if len(errs) > 0 {
		return fmt.Errorf("restore session %s: %w", st.ID, errors.Join(errs...))
	}
	return nil
}

// Detach stops the relay like Shutdown, except that flows in the kernel
// stay there: a new process restores the sessions (see State and Restore)
// and the calls' media never stops.
func (r *Relay) Detach() {
	r.keep.Store(true)
	r.Shutdown()
}
