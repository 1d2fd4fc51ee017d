package sbc

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/emiago/sipgo/sip"

	"github.com/edgesbc/edgesbc/media"
)

// cseqMargin is added to each leg's own CSeq when a call is restored: the
// state on disk may be a little older than the last request the previous
// process sent, and CSeq must keep increasing (RFC 3261 §12.2.1.1); gaps
// are allowed.
const cseqMargin = 1000

// CallState is a confirmed call as a new process needs it to carry on
// managing it (media.keep_on_restart): both dialogs, the call record so
// far, the last offer/answer and each leg's session timer. It is plain data
// meant to be written to disk (JSON). Calls still being set up, and the
// transaction in progress of a call, are not part of it.
type CallState struct {
	ID        string      `json:"id"`
	Legs      [2]LegState `json:"legs"`
	From      string      `json:"from"`
	To        string      `json:"to"`
	InPeer    string      `json:"in_peer"`
	OutPeer   string      `json:"out_peer"`
	Start     time.Time   `json:"start"`
	Answer    time.Time   `json:"answer"`
	Status    int         `json:"status"`
	Transfers int         `json:"transfers,omitempty"`
	LastSDP   [2][]byte   `json:"last_sdp"`
	SentSDP   [2][]byte   `json:"sent_sdp"`
}

// LegState is one dialog of a CallState.
type LegState struct {
	Zone         string         `json:"zone"`
	Peer         string         `json:"peer"`
	CallID       string         `json:"call_id"`
	LocalTag     string         `json:"local_tag"`
	RemoteTag    string         `json:"remote_tag"`
	Local        string         `json:"local"`
	LocalName    string         `json:"local_name,omitempty"`
	Remote       string         `json:"remote"`
	RemoteName   string         `json:"remote_name,omitempty"`
	Target       string         `json:"target"`
	Routes       []string       `json:"routes,omitempty"`
	Dest         string         `json:"dest"`
	Transport    string         `json:"transport,omitempty"`
	LocalCSeq    uint32         `json:"local_cseq"`
	RemoteCSeq   uint32         `json:"remote_cseq"`
	LearnedAddrs []netip.Addr   `json:"learned_addrs,omitempty"`
	LearnedHosts []string       `json:"learned_hosts,omitempty"`
	AllowUpdate  bool           `json:"allow_update,omitempty"`
	PeerMinSE    time.Duration  `json:"peer_min_se,omitempty"`
	Timer        *LegTimerState `json:"timer,omitempty"`
}

// LegTimerState is a leg's session timer (RFC 4028).
type LegTimerState struct {
	Interval     time.Duration `json:"interval"`
	WeRefresh    bool          `json:"we_refresh"`
	PeerSupports bool          `json:"peer_supports"`
	Refreshed    time.Time     `json:"refreshed"`
}

// CallStates returns the state of every confirmed call.
func (s *Server) CallStates() []CallState {
	s.mu.RLock()
	calls := make([]*Call, 0, len(s.calls))
	for _, c := range s.calls {
		calls = append(calls, c)
	}
	s.mu.RUnlock()
	out := make([]CallState, 0, len(calls))
	for _, c := range calls {
		if st, ok := c.snapshot(); ok {
			out = append(out, st)
		}
	}
	return out
}

// snapshot returns the state of a confirmed call whose legs are both in the dialog.
func (c *Call) snapshot() (CallState, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state != stateConfirmed {
		return CallState{}, false
	}
	st := CallState{
		ID: c.id, From: c.rec.From, To: c.rec.To, InPeer: c.rec.InPeer, OutPeer: c.rec.OutPeer,
		Start: c.rec.Start, Answer: c.rec.Answer, Status: c.rec.Status, Transfers: c.rec.Transfers,
		LastSDP: c.lastSDP, SentSDP: c.sentSDP,
	}
	for side, l := range c.legs {
		if l == nil || l.gone {
			return CallState{}, false
		}
		ls := LegState{
			Zone: l.zone.cfg.Name, Peer: l.peer.cfg.Name,
			CallID: l.callID, LocalTag: l.localTag, RemoteTag: l.remoteTag,
			Local: l.local.String(), LocalName: l.localName,
			Remote: l.remote.String(), RemoteName: l.remoteName,
			Target: l.target.String(), Dest: l.dest, Transport: l.transport,
			LocalCSeq: l.localCSeq, RemoteCSeq: l.remoteCSeq,
			LearnedAddrs: append([]netip.Addr(nil), l.learned.addrs...),
			LearnedHosts: append([]string(nil), l.learned.hosts...),
			AllowUpdate:  l.allowUpdate, PeerMinSE: l.peerMinSE,
		}
		for _, r := range l.routes {
			ls.Routes = append(ls.Routes, r.String())
		}
		if t := l.st; t != nil {
			ls.Timer = &LegTimerState{Interval: t.interval, WeRefresh: t.weRefresh, PeerSupports: t.peerSupports, Refreshed: t.refreshed}
		}
		st.Legs[side] = ls
	}
	return st, true
}

// Restore takes over a call a previous process left (see CallState): its
// dialogs answer in-dialog requests again, BYE from either side ends it
// and its session timers run on. The media session must have been
// restored first (media.Relay.Restore) under the same ID. Call it before
// Start.
func (s *Server) Restore(st CallState) error {
	s.mu.RLock()
	_, dup := s.calls[st.ID]
	s.mu.RUnlock()
	if dup || st.ID == "" {
		return fmt.Errorf("restore call %q: the ID is empty or already in use", st.ID)
	}
	c := &Call{
		id:      st.ID,
		srv:     s,
		state:   stateConfirmed,
		aborted: make(chan int, 1),
		done:    make(chan struct{}),
		lastSDP: st.LastSDP,
		sentSDP: st.SentSDP,
		rec: CallRecord{ID: st.ID, From: st.From, To: st.To, InPeer: st.InPeer, OutPeer: st.OutPeer,
			Start: st.Start, Answer: st.Answer, Status: st.Status, Transfers: st.Transfers},
		mediaOpen: true,
	}
	c.acked = sync.NewCond(&c.mu)
	c.log = newCallLog(s.callLog, c.id)
	for side := range st.Legs {
		l, err := s.restoreLeg(media.Side(side), st.Legs[side])
		if err != nil {
			return fmt.Errorf("restore call %s leg %v: %w", st.ID, media.Side(side), err)
		}
		c.legs[side] = l
	}
	if !s.addCall(c) {
		return fmt.Errorf("restore call %s: %w", st.ID, errDraining)
	}
	c.keys = []dialogKey{
		{zone: c.legs[media.A].zone, callID: c.legs[media.A].callID, localTag: c.legs[media.A].localTag},
		{zone: c.legs[media.B].zone, callID: c.legs[media.B].callID, localTag: c.legs[media.B].localTag},
	}
	s.register(c.keys[0], legRef{call: c, side: media.A})
	s.register(c.keys[1], legRef{call: c, side: media.B})

	c.mu.Lock()
	defer c.mu.Unlock()
	for side, ls := range st.Legs {
		if ls.Timer != nil {
			c.resumeTimer(c.legs[side], ls.Timer)
		}
	}
	c.log.Info("call restored", "from_peer", st.InPeer, "to_peer", st.OutPeer)
	return nil
}

var errDraining = errors.New("sbc: server is stopping")

func (s *Server) restoreLeg(side media.Side, ls LegState) (*Leg, error) {
	l := &Leg{
		side: side, callID: ls.CallID, localTag: ls.LocalTag, remoteTag: ls.RemoteTag,
		localName: ls.LocalName, remoteName: ls.RemoteName, dest: ls.Dest, transport: ls.Transport,
		localCSeq: ls.LocalCSeq + cseqMargin, remoteCSeq: ls.RemoteCSeq,
		allowUpdate: ls.AllowUpdate, peerMinSE: ls.PeerMinSE,
		// a restored leg B was opened by the SBC; a transfer that swapped
		// leg A is not told apart, which only changes a 491 retry wait
		originator: side == media.B,
	}
	for _, z := range s.zones {
		if z.cfg.Name == ls.Zone {
			l.zone = z
		}
	}
	for _, p := range s.peers {
		if p.cfg.Name == ls.Peer {
			l.peer = p
		}
	}
	switch {
	case l.zone == nil:
		return nil, fmt.Errorf("zone %q is not configured", ls.Zone)
	case l.peer == nil:
		return nil, fmt.Errorf("peer %q is not configured", ls.Peer)
	case l.peer.zone != l.zone:
		return nil, fmt.Errorf("peer %q is not in zone %q any more", ls.Peer, ls.Zone)
	case ls.CallID == "" || ls.LocalTag == "" || ls.Dest == "":
		return nil, fmt.Errorf("dialog identity incomplete")
	}
	for _, u := range []struct {
		s   string
		dst *sip.Uri
	}{{ls.Local, &l.local}, {ls.Remote, &l.remote}, {ls.Target, &l.target}} {
		if err := sip.ParseUri(u.s, u.dst); err != nil {
			return nil, fmt.Errorf("parse uri %q: %w", u.s, err)
		}
	}
	for _, r := range ls.Routes {
		var u sip.Uri
		if err := sip.ParseUri(r, &u); err != nil {
			return nil, fmt.Errorf("parse route %q: %w", r, err)
		}
		l.routes = append(l.routes, u)
	}
	l.learned.addrs = append(l.learned.addrs, ls.LearnedAddrs...)
	l.learned.hosts = append(l.learned.hosts, ls.LearnedHosts...)
	return l, nil
}

// resumeTimer re-arms a restored leg's session timer where the previous
// process left it: the refresh or the expiry is due relative to the last
// refresh, not to now. Caller holds mu.
func (c *Call) resumeTimer(l *Leg, ts *LegTimerState) {
	st := &sessionTimer{interval: ts.Interval, weRefresh: ts.WeRefresh, peerSupports: ts.PeerSupports, refreshed: ts.Refreshed}
	if st.interval <= 0 {
		return
	}
	l.st = st
	due := ts.Refreshed.Add(st.interval - expiryMargin(st.interval))
	if st.weRefresh {
		due = ts.Refreshed.Add(st.interval / 2)
	}
	// Not before the listeners are up (Restore runs before Start).
	c.armTimer(l, st, max(time.Until(due), time.Second))
}

// Detach stops the server without ending its calls: no BYE, no CANCEL, no
// call record. A new process restores the confirmed ones (CallStates,
// Restore); calls still being set up are abandoned, their peers' timers end
// them.
func (s *Server) Detach() {
	s.stopWaiting()
	s.mu.Lock()
	s.draining = true
	calls := make([]*Call, 0, len(s.calls))
	for _, c := range s.calls {
		calls = append(calls, c)
	}
	s.mu.Unlock()
	for _, c := range calls {
		c.mu.Lock()
		if c.state != stateEnded {
			c.state = stateEnded
			close(c.done)
			c.acked.Broadcast()
			if c.retrans != nil {
				c.retrans.Stop()
			}
			c.stopTimers()
			if u := c.update; u != nil && u.retrans != nil {
				u.retrans.Stop()
			}
			s.removeCall(c, c.keys)
		}
		c.mu.Unlock()
	}
	s.closeListeners()
	for _, z := range s.zones {
		if z.ua != nil {
			_ = z.ua.Close()
		}
	}
	s.log.Info("detached", "calls", len(calls))
}
