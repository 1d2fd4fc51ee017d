package media

import (
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
)

// Relay anchors the media of every call: it owns the PortPool, the sessions
// and their sockets, and the janitor that reports idle sessions.
//
// Locking: mu guards sessions and closed, and nothing else; it is never held
// while a session's own lock is taken, so a slow Offer or Close of one call
// does not stall the others. See session for what session.mu guards.
//
// Goroutines: one janitor per Relay (started by NewRelay, stopped by
// Shutdown); the readers of the relay sockets: on Linux (ioEpoll) a fixed
// set of poller workers per Relay (pollWorkers, started by NewRelay and
// stopped by Shutdown) and one goroutine binding the RTCP sockets of
// streams whose RTP starts flowing (serveRTCP, likewise), elsewhere four
// reader goroutines per active stream (one per socket, stopped by the
// stream's or session's close); and one
// short-lived goroutine per idle session, running OnTimeout or the relay's
// own Close (the latter waited for by Shutdown).
type Relay struct {
	cfg   Config
	log   hclog.Logger
	pool  *PortPool
	epoch time.Time // origin of nanotime; carries the monotonic clock

	mu       sync.Mutex
	sessions map[SessionID]*session
	closed   bool

	stop        chan struct{}
	janitorDone chan struct{}
	stopOnce    sync.Once
	closers     sync.WaitGroup // Close calls the janitor started for idle sessions
	// reading counts the sockets being read (registered with the poller,
	// or with a running reader goroutine), for tests and leak checks.
	reading atomic.Int64
	// poll reads every relay socket on the ioEpoll path; nil otherwise.
	poll *poller
	// rtcp binds the RTCP sockets of streams once their RTP flows, on the
	// ioEpoll path (see rtcpBinding); nil otherwise.
	rtcp *rtcpBinder

	// lanes bounds how many reader goroutines forward at once to
	// GOMAXPROCS-1 (at least one). Forwarding is almost all syscall time;
	// without a bound, thousands of readers woken by packets fill every
	// scheduler queue and the SIP goroutines of the same process wait
	// seconds behind them. With it, signaling always finds a processor.
	lanes chan struct{}

	// kmu guards klinks, the stream components the kernel forwards now
	// (see link). Taken after a link's mu, never before.
	kmu    sync.Mutex
	klinks map[*link]struct{}
	// keep is set by Detach: closing sessions leaves their kernel flows.
	keep atomic.Bool
	// pins is cfg.Offloader when it also keeps media pinholes, else nil.
	pins Pinholer
	// countersFailing is whether the last kernel counter poll failed.
	// Owned by the janitor.
	countersFailing bool
}

// NewRelay validates cfg, fills in defaults and starts the janitor.
func NewRelay(cfg Config, log hclog.Logger) (*Relay, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	if cfg.batchIO == ioDefault {
		cfg.batchIO = defaultIO
	}
	if log == nil {
		log = hclog.NewNullLogger()
	}
	pool, err := NewPortPool(cfg.PortMin, cfg.PortMax, cfg.Quarantine)
	if err != nil {
		return nil, err
	}
	r := &Relay{
		cfg:         cfg,
		log:         log.Named("media"),
		pool:        pool,
		epoch:       time.Now(),
		sessions:    make(map[SessionID]*session),
		stop:        make(chan struct{}),
		janitorDone: make(chan struct{}),
		lanes:       make(chan struct{}, max(1, runtime.GOMAXPROCS(0)-1)),
		klinks:      make(map[*link]struct{}),
	}
	r.pins, _ = cfg.Offloader.(Pinholer)
	if cfg.batchIO == ioEpoll {
		workers := cfg.workers
		if workers <= 0 {
			workers = pollWorkers()
		}
		if r.poll, err = newPoller(r.log, workers); err != nil {
			return nil, err
		}
		pool.raw = true
		r.rtcp = newRTCPBinder()
		ready := make(chan struct{})
		go r.serveRTCP(ready)
		<-ready
	}
	go r.janitor()
	r.log.Info("relay started", "port_min", cfg.PortMin, "port_max", cfg.PortMax, "pairs", pool.Size(),
		"io", cfg.batchIO)
	return r, nil
}

// nanotime is the relay's monotonic clock in nanoseconds; it never goes
// back when the wall clock is set.
func (r *Relay) nanotime() int64 { return int64(time.Since(r.epoch)) }

// Open creates the session of a call. a and b are the SBC's addresses
// facing leg A (the caller) and leg B (the callee). No port is bound until
// the first Offer. The idle timer starts now.
func (r *Relay) Open(id SessionID, a, b Address) error {
	var err error
	if a, err = a.normalize(); err != nil {
		return fmt.Errorf("open session %s side A: %w", id, err)
	}
	if b, err = b.normalize(); err != nil {
		return fmt.Errorf("open session %s side B: %w", id, err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	switch {
	case r.closed:
		return fmt.Errorf("open session %s: %w", id, ErrRelayClosed)
	case r.sessions[id] != nil:
		return fmt.Errorf("open session %s: %w", id, ErrSessionExists)
	}
	r.sessions[id] = newSession(r, id, a, b)
	r.log.Debug("session opened", "call", string(id), "bind_a", a.Bind, "bind_b", b.Bind)
	return nil
}

func (r *Relay) session(id SessionID) *session {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.sessions[id]
}

// Offer anchors an SDP offer received from side from and returns the body
// to send to from.Other(): the same offer with the SBC's advertised address
// of that side and the ports of its endpoints. A re-offer with the same m=
// lines keeps every port; added m= lines get new streams; m= lines with port
// 0 get no sockets (and lose them if they had some).
func (r *Relay) Offer(id SessionID, from Side, body []byte) ([]byte, error) {
	return r.negotiate("offer", id, from, body, true, received)
}

// Answer anchors an SDP answer received from side from and returns the body
// to send to from.Other(). It may be called more than once for one offer
// (early media in a 183, then the 200): each call updates the expected
// remote and allocates nothing.
func (r *Relay) Answer(id SessionID, from Side, body []byte) ([]byte, error) {
	return r.negotiate("answer", id, from, body, false, received)
}

// OfferFor anchors an offer the SBC makes itself toward side to, for a call
// whose other side made none (an INVITE without SDP toward a peer that
// needs an offer in it). tmpl is an SDP offer written as if to.Other() had
// sent it: its streams and codecs are offered, its addresses are not used
// (the connection address must still be of the family of to.Other()'s
// bind address). Nothing is sent toward to.Other() until Settle gives its
// answer.
func (r *Relay) OfferFor(id SessionID, to Side, tmpl []byte) ([]byte, error) {
	if !to.valid() {
		return nil, fmt.Errorf("own offer for session %s: invalid side %v", id, to)
	}
	return r.negotiate("own offer", id, to.Other(), tmpl, true, template)
}

// AnswerFor anchors an answer the SBC gives itself toward side to, to an
// offer from to (received with Offer) that to.Other() cannot answer in
// time. tmpl is written as if to.Other() had sent it; its addresses are
// not used. The answer of to.Other() to the same streams, offered to it
// later, is given to Settle.
func (r *Relay) AnswerFor(id SessionID, to Side, tmpl []byte) ([]byte, error) {
	if !to.valid() {
		return nil, fmt.Errorf("own answer for session %s: invalid side %v", id, to)
	}
	return r.negotiate("own answer", id, to.Other(), tmpl, false, template)
}

// Settle anchors the last answer of an exchange the SBC began with
// OfferFor: side from answers the offer it got (the other side's answer,
// relayed), so its media address becomes known. No body goes anywhere, and
// the o= version toward the other side stays as it was.
func (r *Relay) Settle(id SessionID, from Side, body []byte) error {
	_, err := r.negotiate("settle answer", id, from, body, false, settled)
	return err
}

// negotiate runs one offer/answer step of session id, what naming it in
// errors: from is the side the SDP comes from (for the SBC's own offers
// and answers, the side opposite the one they go to).
func (r *Relay) negotiate(what string, id SessionID, from Side, body []byte, offer bool, how negotiation) ([]byte, error) {
	if !from.valid() {
		return nil, fmt.Errorf("%s for session %s: invalid side %v", what, id, from)
	}
	s := r.session(id)
	if s == nil {
		return nil, fmt.Errorf("%s for session %s: %w", what, id, ErrNoSession)
	}
	return s.negotiate(from, body, offer, how)
}

// Rename gives the open session from the ID to, which must not be open.
// A call that prepared the media of a new leg in a session of its own
// (the SBC's offer to a transfer target) makes it the call's session this
// way once the old one is closed. Counters, ports and latched addresses
// stay as they are.
func (r *Relay) Rename(from, to SessionID) error {
	r.mu.Lock()
	s := r.sessions[from]
	switch {
	case r.closed:
		// Shutdown closes the sessions it listed by name: a rename now
		// would hide one from it and leave its sockets open
		r.mu.Unlock()
		return fmt.Errorf("rename session %s: %w", from, ErrRelayClosed)
	case s == nil:
		r.mu.Unlock()
		return fmt.Errorf("rename session %s: %w", from, ErrNoSession)
	case r.sessions[to] != nil:
		r.mu.Unlock()
		return fmt.Errorf("rename session %s to %s: %w", from, to, ErrSessionExists)
	}
	delete(r.sessions, from)
	r.sessions[to] = s
	r.mu.Unlock()
	s.mu.Lock()
	s.id = to
	s.mu.Unlock()
	// the idle clock starts again under the new name: a timeout reported
	// for the old one reached nobody
	s.lastActivity.Store(r.nanotime())
	s.timedOut.Store(false)
	r.log.Debug("session renamed", "call", string(to), "was", string(from))
	return nil
}

// Close ends a session: its sockets are closed, nothing reads them any more
// and its ports are in quarantine when Close returns. It returns the
// final counters, and false if the session was not open. Close is
// idempotent and safe to call concurrently with any other method.
func (r *Relay) Close(id SessionID, reason string) (Stats, bool) {
	r.mu.Lock()
	s := r.sessions[id]
	delete(r.sessions, id)
	r.mu.Unlock()
	if s == nil {
		return Stats{}, false
	}
	st := s.close()
	t := st.Total()
	r.log.Debug("session closed", "call", string(id), "reason", reason, "streams", len(st.Streams),
		"packets", t.Packets, "forwarded", t.Forwarded, "dropped_stranger", t.DroppedStranger)
	return st, true
}

// Stats returns a snapshot of a session's counters, and false if it is not
// open.
func (r *Relay) Stats(id SessionID) (Stats, bool) {
	s := r.session(id)
	if s == nil {
		return Stats{}, false
	}
	return s.stats(), true
}

// Sessions returns the number of open sessions.
func (r *Relay) Sessions() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.sessions)
}

// PortsInUse returns the port pairs that cannot be allocated right now:
// bound to a stream or waiting out their quarantine.
func (r *Relay) PortsInUse() int { return r.pool.InUse() }

// QuarantineShortened returns how many port pairs went to a new stream
// before their quarantine was over because none was free (see PortPool).
func (r *Relay) QuarantineShortened() uint64 { return r.pool.Shortened() }

// Shutdown stops the janitor and the RTCP binder, closes every session and
// stops the poller.
// Open fails with ErrRelayClosed afterwards. It does not wait for OnTimeout
// callbacks that are still running: they belong to the caller, which may
// itself be shutting down.
func (r *Relay) Shutdown() {
	r.stopOnce.Do(func() { close(r.stop) })
	<-r.janitorDone
	if r.rtcp != nil {
		<-r.rtcp.done
	}
	r.closers.Wait()
	r.mu.Lock()
	r.closed = true
	ids := make([]SessionID, 0, len(r.sessions))
	for id := range r.sessions {
		ids = append(ids, id)
	}
	r.mu.Unlock()
	for _, id := range ids {
		r.Close(id, "shutdown")
	}
	if r.poll != nil {
		r.poll.shutdown()
	}
	r.log.Info("relay stopped", "sessions", len(ids))
}

// janitorTick is how often idle sessions are looked for: about a second,
// finer for short timeouts so they are reported within a quarter of their
// length.
func janitorTick(timeout time.Duration) time.Duration {
	return min(time.Second, max(timeout/4, 10*time.Millisecond))
}

// kernelPollEvery is how often the janitor reads the kernel counters of
// offloaded links. They serve the media timeout, which only needs a sign
// of life well within cfg.Timeout, and the live stats of a call (its final
// counters are read when it ends, whatever the interval): a twelfth of the
// timeout, at most 5 s (the default 60 s timeout) and at least a janitor
// tick. Each poll dumps every counter of the kernel, so at thousands of
// offloaded streams a second-by-second poll was most of the daemon's CPU.
func kernelPollEvery(timeout time.Duration) time.Duration {
	return min(5*time.Second, max(janitorTick(timeout), timeout/12))
}

// janitor reports sessions without admitted RTP for cfg.Timeout. It reads
// each session's activity clock atomically and holds r.mu only to copy the
// session list.
func (r *Relay) janitor() {
	defer close(r.janitorDone)
	t := time.NewTicker(janitorTick(r.cfg.Timeout))
	defer t.Stop()
	type entry struct {
		id SessionID // the map key: a session's own id may change (Rename)
		s  *session
	}
	var batch []entry
	pollEvery := kernelPollEvery(r.cfg.Timeout)
	var lastPoll time.Time
	var links []*link
	var counters map[Flow]Counter
	if r.cfg.Offloader != nil {
		counters = make(map[Flow]Counter)
	}
	var shortened uint64 // as last logged
	var shortenedLog time.Time
	for {
		select {
		case <-r.stop:
			return
		case <-t.C:
		}
		if n := r.pool.Shortened(); n > shortened && time.Since(shortenedLog) >= time.Minute {
			r.log.Warn("port pool ran dry: pairs reused before their quarantine ended",
				"pairs", n-shortened, "total", n, "floor", min(r.cfg.Quarantine, QuarantineFloor),
				"quarantine", r.cfg.Quarantine, "hint", "widen media.port_range")
			shortened, shortenedLog = n, time.Now()
		}
		if r.cfg.Offloader != nil && time.Since(lastPoll) >= pollEvery-pollEvery/8 {
			lastPoll = time.Now()
			links = r.pollKernel(links, counters)
		}
		batch = batch[:0]
		r.mu.Lock()
		for id, s := range r.sessions {
			batch = append(batch, entry{id, s})
		}
		r.mu.Unlock()
		now := r.nanotime()
		for _, e := range batch {
			s := e.s
			if s.held.Load() {
				s.lastActivity.Store(now) // on hold: the clock restarts on resume
				continue
			}
			idle := time.Duration(now - s.lastActivity.Load())
			if idle < r.cfg.Timeout || !s.timedOut.CompareAndSwap(false, true) {
				continue
			}
			r.log.Info("media timeout", "call", string(e.id), "idle", idle.Round(time.Millisecond))
			if cb := r.cfg.OnTimeout; cb != nil {
				go cb(e.id)
			} else {
				r.closers.Add(1)
				go func(id SessionID) {
					defer r.closers.Done()
					r.Close(id, "media timeout")
				}(e.id)
			}
		}
		clear(batch) // do not keep closed sessions reachable
	}
}
