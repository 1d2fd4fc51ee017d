package sbc

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"
	"github.com/hashicorp/go-hclog"

	"github.com/edgesbc/edgesbc/media"
)

// Server is the B2BUA. It owns one SIP user agent per zone, the table of
// calls and the dialog index that routes in-dialog requests to them.
type Server struct {
	cfg    Config
	log    hclog.Logger
	slog   *slog.Logger
	media  Media
	hooks  Hooks
	parser *sip.Parser
	zones  []*zone
	peers  []*peer
	guard  leakGuard
	sec    atomic.Pointer[guardBox] // ban policies; nil means none

	// mu guards calls, dialogs and draining.
	mu       sync.RWMutex
	calls    map[string]*Call
	dialogs  map[dialogKey]legRef
	draining bool

	callWG sync.WaitGroup // one per call until it is fully released
	// quit is closed once Shutdown or Detach begins: work that waits on
	// its own (relayed REGISTERs) stops waiting.
	quit     chan struct{}
	quitOnce sync.Once
	active   atomic.Int64 // len(calls), readable without mu by the entry filter

	counters counters
	started  atomic.Bool
	// seenTx answers retransmissions that outlive their transaction
	// (retrans.go)
	seenTx *seenSet

	callLog hclog.Logger // log named "call": the base of each Call's log
	// hdrServer and hdrUA are the Server and User-Agent headers of every
	// message (see hdrAllow)
	hdrServer, hdrUA sip.Header
}

// counters are exported through Status. All fields are atomics.
type counters struct {
	callsTotal      atomic.Uint64
	overload        atomic.Uint64
	callsAnswered   atomic.Uint64
	entryDropped    atomic.Uint64
	entryAnswered   atomic.Uint64
	unknownSource   atomic.Uint64
	noDialog        atomic.Uint64
	leakGuardFired  atomic.Uint64
	retransAbsorbed atomic.Uint64
	lastUnknownLogN atomic.Int64 // unix seconds of the last "unknown source" log line
}

type zone struct {
	cfg     ZoneConfig
	ua      *sipgo.UserAgent
	server  *sipgo.Server
	client  *sipgo.Client
	conn    *net.UDPConn
	laddr   sip.Addr
	host    string // advertised host for Via/Contact
	ownHost string // host without brackets, for isOwnHost
	ownAddr string // cfg.Address as text, for isOwnHost
	port    int
	peers   []*peer
	foreign []netip.Prefix // networks of every other zone
	private bool           // answers unknown sources with 403 instead of silence
	tcp     *tcpZone       // nil when the zone serves UDP only
	access  *access        // remote phones registering through us; nil when none
}

type peer struct {
	cfg     PeerConfig
	zone    *zone
	sources []netip.Prefix
	keep    map[string]bool // lower-case header names
	dest    string          // ip:port to send to
	host    string          // Request-URI / To host
	// access is set for a registered phone of an access mode (access.go):
	// a peer made for its binding, never listed in a zone's peers.
	access *access
}

// dialogKey identifies one leg: our own tag is unique per leg, and the
// Call-ID scopes it (RFC 3261 §12: a dialog is Call-ID + both tags; the
// remote tag is not known for early legs, so it is not part of the key).
type dialogKey struct {
	zone     *zone
	callID   string
	localTag string
}

type legRef struct {
	call *Call
	side media.Side
}

// Status is a snapshot of the server for the admin socket and tests.
type Status struct {
	Calls          int    `json:"calls"`
	Dialogs        int    `json:"dialogs"`
	CallsTotal     uint64 `json:"calls_total"`
	CallsAnswered  uint64 `json:"calls_answered"`
	EntryDropped   uint64 `json:"entry_dropped"`
	EntryAnswered  uint64 `json:"entry_answered"`
	UnknownSource  uint64 `json:"unknown_source"`
	NoDialog       uint64 `json:"no_dialog"`
	LeakGuardFired uint64 `json:"leak_guard_fired"`
	Overload       uint64 `json:"overload_rejected"`
	// RetransAbsorbed counts requests repeated after their transaction
	// had ended: INVITEs dropped, BYEs answered 200 again (retrans.go).
	RetransAbsorbed uint64 `json:"retransmissions_absorbed"`
	// Registrations and RegistrationsPending are the phone bindings of
	// the access modes: registered, and attempts not registered yet.
	Registrations        int `json:"registrations"`
	RegistrationsPending int `json:"registrations_pending"`
}

// NewServer validates cfg and builds the zones. It opens no socket: Start does.
func NewServer(cfg Config, m Media, hooks Hooks, log hclog.Logger, sl *slog.Logger) (*Server, error) {
	if log == nil {
		log = hclog.NewNullLogger()
	}
	if sl == nil {
		sl = slog.New(slog.DiscardHandler)
	}
	if cfg.UserAgent == "" {
		cfg.UserAgent = "edgesbc"
	}
	if cfg.MaxMessageSize <= 0 {
		cfg.MaxMessageSize = 16384
	}
	if cfg.InviteTimeout <= 0 {
		cfg.InviteTimeout = 180 * time.Second
	}
	if cfg.MaxCalls <= 0 {
		cfg.MaxCalls = 10000
	}
	if cfg.inDialogWait <= 0 {
		cfg.inDialogWait = 64 * sip.T1
	}
	if cfg.DrainTimeout <= 0 {
		cfg.DrainTimeout = 5 * time.Second
	}
	if cfg.TCP.MessageTimeout <= 0 {
		cfg.TCP.MessageTimeout = 10 * time.Second
	}
	if cfg.TCP.IdleTimeout <= 0 {
		cfg.TCP.IdleTimeout = 10 * time.Minute
	}
	if cfg.TCP.MaxConnections <= 0 {
		cfg.TCP.MaxConnections = 1024
	}
	if cfg.TCP.MaxPerSource <= 0 {
		cfg.TCP.MaxPerSource = 4
	}
	s := &Server{
		cfg:     cfg,
		log:     log,
		callLog: log.Named("call"),
		slog:    sl,
		media:   m,
		hooks:   hooks,
		parser:  sip.NewParser(),
		calls:   make(map[string]*Call),
		dialogs: make(map[dialogKey]legRef),
		quit:    make(chan struct{}),
		seenTx:  newSeenSet(retransWindow, maxSeenTx),
	}
	s.hdrServer, s.hdrUA = sip.NewHeader("Server", cfg.UserAgent), sip.NewHeader("User-Agent", cfg.UserAgent)
	byName := map[string]*zone{}
	for _, zc := range cfg.Zones {
		if !zc.Address.IsValid() {
			return nil, fmt.Errorf("zone %q: no address", zc.Name)
		}
		if _, dup := byName[zc.Name]; dup {
			return nil, fmt.Errorf("zone %q: defined twice", zc.Name)
		}
		if zc.SIPPort == 0 {
			zc.SIPPort = 5060
		}
		adv := zc.Advertise
		if !adv.IsValid() {
			adv = zc.Address
		}
		z := &zone{cfg: zc, host: adv.String(), port: zc.SIPPort}
		if adv.Is6() && !adv.Is4In6() {
			z.host = "[" + adv.String() + "]"
		}
		z.ownHost, z.ownAddr = strings.Trim(z.host, "[]"), zc.Address.String()
		z.laddr = sip.Addr{IP: net.IP(zc.Address.AsSlice()), Port: zc.SIPPort}
		for _, t := range zc.Transports {
			if !strings.EqualFold(t, TransportUDP) && !strings.EqualFold(t, TransportTCP) {
				return nil, fmt.Errorf("zone %q: unknown transport %q", zc.Name, t)
			}
		}
		if zoneServes(zc, TransportTCP) {
			z.tcp = &tcpZone{
				perSource: map[netip.Addr]int{},
				queue:     newConnQueue(&net.TCPAddr{IP: net.IP(zc.Address.AsSlice()), Port: zc.SIPPort}),
			}
		}
		byName[zc.Name] = z
		s.zones = append(s.zones, z)
	}
	for _, pc := range cfg.Peers {
		z := byName[pc.Zone]
		if z == nil {
			return nil, fmt.Errorf("peer %q: unknown zone %q", pc.Name, pc.Zone)
		}
		if pc.Kind != PBX && pc.Kind != Trunk {
			return nil, fmt.Errorf("peer %q: unknown kind %q", pc.Name, pc.Kind)
		}
		switch strings.ToLower(pc.Transport) {
		case "", TransportUDP:
			pc.Transport = TransportUDP
		case TransportTCP:
			pc.Transport = TransportTCP
			if !z.servesTCP() {
				return nil, fmt.Errorf("peer %q: transport tcp, but zone %q does not serve tcp", pc.Name, pc.Zone)
			}
		default:
			return nil, fmt.Errorf("peer %q: unknown transport %q", pc.Name, pc.Transport)
		}
		p := &peer{cfg: pc, zone: z, keep: map[string]bool{}}
		ip := pc.Address.Addr().Unmap()
		p.sources = append([]netip.Prefix{netip.PrefixFrom(ip, ip.BitLen())}, pc.Sources...)
		for _, h := range pc.KeepHeaders {
			p.keep[strings.ToLower(h)] = true
		}
		p.dest = pc.Address.String()
		p.host = pc.Host
		if p.host == "" {
			p.host = ip.String()
			if ip.Is6() {
				p.host = "[" + p.host + "]"
			}
		}
		z.peers = append(z.peers, p)
		s.peers = append(s.peers, p)
		// a zone that hosts a PBX is the private side: unknown sources
		// there get an explicit 403, while the public side stays silent
		// so that scanners learn nothing.
		if pc.Kind == PBX {
			z.private = true
		}
	}
	if err := s.setupAccess(byName); err != nil {
		return nil, err
	}
	for _, z := range s.zones {
		for _, o := range s.zones {
			if o == z {
				continue
			}
			z.foreign = append(z.foreign, zoneNetworks(o)...)
		}
	}
	for _, z := range s.zones {
		if err := s.buildUA(z); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// zoneNetworks is the zone's configured networks, or by default the SBC's
// own address in it and the addresses of its peers.
func zoneNetworks(z *zone) []netip.Prefix {
	if len(z.cfg.Networks) > 0 {
		return z.cfg.Networks
	}
	var out []netip.Prefix
	a := z.cfg.Address.Unmap()
	out = append(out, netip.PrefixFrom(a, a.BitLen()))
	for _, p := range z.peers {
		out = append(out, p.sources...)
	}
	return out
}

func (s *Server) buildUA(z *zone) error {
	ua, err := sipgo.NewUA(
		sipgo.WithUserAgent(s.cfg.UserAgent),
		sipgo.WithUserAgentHostname(z.host),
		sipgo.WithUserAgentTransportLayerOptions(
			sip.WithTransportLayerReadFilter(s.readFilter(z)),
			sip.WithTransportLayerLogger(s.slog.With("zone", z.cfg.Name)),
			sip.WithTransportLayerTransports(sip.TransportsConfig{TCP: &sip.TransportTCP{DialerCreate: refuseDial}}),
		),
		sipgo.WithUserAgentTransactionLayerOptions(
			sip.WithTransactionLayerUnhandledResponseHandler(func(r *sip.Response) { s.onStrayResponse(z, r) }),
			sip.WithTransactionLayerLogger(s.slog.With("zone", z.cfg.Name)),
		),
	)
	if err != nil {
		return fmt.Errorf("create user agent for zone %s: %w", z.cfg.Name, err)
	}
	srv, err := sipgo.NewServer(ua, sipgo.WithServerLogger(s.slog.With("zone", z.cfg.Name)))
	if err != nil {
		return fmt.Errorf("create sip server for zone %s: %w", z.cfg.Name, err)
	}
	cl, err := sipgo.NewClient(ua, sipgo.WithClientLogger(s.slog.With("zone", z.cfg.Name)))
	if err != nil {
		return fmt.Errorf("create sip client for zone %s: %w", z.cfg.Name, err)
	}
	z.ua, z.server, z.client = ua, srv, cl
	srv.OnInvite(func(r *sip.Request, tx sip.ServerTransaction) { s.onInvite(z, r, tx) })
	srv.OnAck(func(r *sip.Request, tx sip.ServerTransaction) { s.onAck(z, r) })
	srv.OnBye(func(r *sip.Request, tx sip.ServerTransaction) { s.onBye(z, r, tx) })
	srv.OnCancel(func(r *sip.Request, tx sip.ServerTransaction) {
		// CANCELs that match an INVITE transaction never get here: sipgo
		// answers them and fires OnCancel on that transaction.
		s.respond(z, r, tx, 481, nil)
	})
	srv.OnOptions(func(r *sip.Request, tx sip.ServerTransaction) { s.onOptions(z, r, tx) })
	srv.OnRegister(func(r *sip.Request, tx sip.ServerTransaction) { s.onRegister(z, r, tx) })
	for _, m := range []sip.RequestMethod{sip.UPDATE, sip.INFO, sip.MESSAGE, sip.NOTIFY, sip.REFER, sip.PRACK} {
		srv.OnRequest(m, func(r *sip.Request, tx sip.ServerTransaction) { s.onOther(z, r, tx) })
	}
	srv.OnNoRoute(func(r *sip.Request, tx sip.ServerTransaction) { s.onOther(z, r, tx) })
	return nil
}

// Start opens the listeners of every zone and returns once all of them
// accept packets. The listeners stop when ctx ends or on Shutdown.
func (s *Server) Start(ctx context.Context) error {
	// TCP first: once a UDP listener runs, a call may need any zone's TCP
	for _, z := range s.zones {
		if z.servesTCP() {
			if err := s.listenTCP(z); err != nil {
				s.closeListeners()
				return err
			}
		}
	}
	for _, z := range s.zones {
		if !zoneServes(z.cfg, TransportUDP) {
			continue
		}
		ua := &net.UDPAddr{IP: net.IP(z.cfg.Address.AsSlice()), Port: z.cfg.SIPPort}
		conn, err := net.ListenUDP("udp", ua)
		if err != nil {
			s.closeListeners()
			return fmt.Errorf("listen udp %s in zone %s: %w", ua, z.cfg.Name, err)
		}
		// a burst of calls must not overflow the socket queue
		_ = conn.SetReadBuffer(4 << 20)
		_ = conn.SetWriteBuffer(4 << 20)
		z.conn = conn
		go func(z *zone) {
			if err := z.server.ServeUDP(conn); err != nil && !errors.Is(err, net.ErrClosed) {
				s.log.Error("sip listener stopped", "zone", z.cfg.Name, "error", err)
			}
		}(z)
		// ServeUDP registers the socket in sipgo's connection pool from its
		// own goroutine; until then requests on leg B cannot be sent from
		// it, so Start (and "ready") waits for that
		if err := waitListening(z, ua.String()); err != nil {
			s.closeListeners()
			return err
		}
		s.log.Info("listening", "zone", z.cfg.Name, "addr", ua.String(), "transport", "udp", "advertise", z.host)
	}
	s.started.Store(true)
	for _, z := range s.zones {
		if z.access != nil {
			go s.runReaper(ctx, 5*time.Second)
			break
		}
	}
	go func() {
		<-ctx.Done()
		s.closeListeners()
	}()
	return nil
}

func waitListening(z *zone, addr string) error {
	deadline := time.Now().Add(5 * time.Second)
	for {
		if c, err := z.ua.TransportLayer().GetConnection("udp", addr); err == nil && c != nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("zone %s: sip listener %s did not come up", z.cfg.Name, addr)
		}
		time.Sleep(time.Millisecond)
	}
}

func (s *Server) closeListeners() {
	for _, z := range s.zones {
		if z.conn != nil {
			_ = z.conn.Close()
		}
		z.closeTCP()
	}
}

// Shutdown stops taking new calls, ends every call in progress (BYE on both
// legs of answered calls, CANCEL/487 on ringing ones), waits for them up to
// ctx or the drain timeout, and closes the user agents.
func (s *Server) Shutdown(ctx context.Context) {
	s.stopWaiting()
	s.mu.Lock()
	s.draining = true
	calls := make([]*Call, 0, len(s.calls))
	for _, c := range s.calls {
		calls = append(calls, c)
	}
	s.mu.Unlock()
	s.log.Info("draining calls", "calls", len(calls))
	for _, c := range calls {
		c.hangup("shutdown", 503)
	}
	done := make(chan struct{})
	go func() { s.callWG.Wait(); close(done) }()
	ctx, cancel := context.WithTimeout(ctx, s.cfg.DrainTimeout)
	defer cancel()
	select {
	case <-done:
	case <-ctx.Done():
		s.log.Warn("drain timed out", "calls_left", s.Status().Calls)
	}
	s.closeListeners()
	for _, z := range s.zones {
		if z.ua != nil {
			_ = z.ua.Close()
		}
	}
}

// stopWaiting ends the waits of relayed REGISTERs. It is idempotent.
func (s *Server) stopWaiting() { s.quitOnce.Do(func() { close(s.quit) }) }

// Status returns counters and table sizes.
func (s *Server) Status() Status {
	s.mu.RLock()
	st := Status{Calls: len(s.calls), Dialogs: len(s.dialogs)}
	s.mu.RUnlock()
	st.CallsTotal = s.counters.callsTotal.Load()
	st.CallsAnswered = s.counters.callsAnswered.Load()
	st.EntryDropped = s.counters.entryDropped.Load()
	st.EntryAnswered = s.counters.entryAnswered.Load()
	st.UnknownSource = s.counters.unknownSource.Load()
	st.NoDialog = s.counters.noDialog.Load()
	st.LeakGuardFired = s.guard.fired.Load()
	st.Overload = s.counters.overload.Load()
	st.RetransAbsorbed = s.counters.retransAbsorbed.Load()
	for _, z := range s.zones {
		if z.access != nil {
			r, p := z.access.count()
			st.Registrations += r
			st.RegistrationsPending += p
		}
	}
	return st
}

// readFilter runs in the listener's read goroutine for every datagram,
// before sipgo parses it. It must never return an error: that would stop
// the listener. TCP data passes: each connection's framedConn has run every
// message through admit already.
func (s *Server) readFilter(z *zone) sip.TransportReadFilter {
	return func(info sip.TransportReadProps, data []byte) ([]byte, error) {
		if !strings.EqualFold(info.Transport, "udp") {
			return data, nil
		}
		src := addrPortOf(info.RemoteAddr)
		v := s.admit(z, src, data, true)
		if v.reply != nil && z.conn != nil && src.IsValid() {
			if _, err := z.conn.WriteToUDPAddrPort(v.reply, src); err != nil {
				s.log.Debug("stateless reply failed", "zone", z.cfg.Name, "src", src, "error", err)
			}
		}
		if v.pass {
			return data, nil
		}
		return nil, nil
	}
}

// admission is the entry filter's decision on one message.
type admission struct {
	pass    bool   // hand it to sipgo
	reply   []byte // a stateless answer to send back first
	garbage bool   // not SIP at all, or dropped by the guard: a stream that carries it is closed
}

// admit is the entry filter, the same for a UDP datagram and a message
// framed on a TCP connection: ban policies (and, for a datagram, the rate
// limits the kernel could not take), the public side's silence toward
// strangers, admission control, then inspect.
func (s *Server) admit(z *zone, src netip.AddrPort, data []byte, datagram bool) admission {
	peer := s.peerBySource(z, src.Addr()) != nil
	// a stranger's REGISTER, or anything from a registered phone, in a
	// zone with an access mode (access.go); looked up once per message
	accessed := !peer && z.access != nil && z.access.admits(src, data)
	if g := s.sec.Load(); !peer && g != nil && !s.guardInbound(g.Guard, z, src, data, accessed) {
		// banned, rate limited, or banned now; a stream from such a
		// source is closed rather than read on
		return admission{garbage: !datagram}
	}
	if !z.private && !peer && !accessed {
		// The public side never answers strangers: a scanner learns
		// nothing, and the flood costs no parsing. Only a zone with an
		// access mode takes their REGISTERs (access.go).
		s.counters.unknownSource.Add(1)
		s.logUnknownSource(z, src)
		return admission{}
	}
	res := inspect(s.parser, data, s.cfg.MaxMessageSize)
	if res.NewCall && s.active.Load() >= int64(s.cfg.MaxCalls) {
		// admission control: refuse before any call state, timer or
		// goroutine exists, so the calls already up stay healthy
		s.counters.overload.Add(1)
		return admission{reply: statelessResponse(bytes.TrimLeft(data, "\r\n\x00"), 503)}
	}
	var out admission
	switch res.Action {
	case entryPass:
		return admission{pass: true}
	case entryRespond:
		s.counters.entryAnswered.Add(1)
		out.reply = res.Reply
	default:
		s.counters.entryDropped.Add(1)
	}
	out.garbage = res.Reason == "not sip"
	s.log.Debug("request refused before parsing", "zone", z.cfg.Name, "src", src, "reason", res.Reason, "bytes", len(data))
	return out
}

// logUnknownSource logs at most one line every 10 seconds, so a scan cannot
// flood the log; the counter keeps the full count.
func (s *Server) logUnknownSource(z *zone, src netip.AddrPort) {
	if !logTurn(&s.counters.lastUnknownLogN) {
		return
	}
	s.log.Warn("dropping requests from unknown sources", "zone", z.cfg.Name, "src", src, "dropped_total", s.counters.unknownSource.Load())
}

// logTurn reports whether a warning that may repeat at a stranger's pace
// may be logged now: at most once every 10 seconds per last, which holds
// the unix second of the last line logged.
func logTurn(last *atomic.Int64) bool {
	now, prev := time.Now().Unix(), last.Load()
	return now-prev >= 10 && last.CompareAndSwap(prev, now)
}

func addrPortOf(a net.Addr) netip.AddrPort {
	switch v := a.(type) {
	case *net.UDPAddr:
		ap := v.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	case *net.TCPAddr:
		ap := v.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	if a == nil {
		return netip.AddrPort{}
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap
}

func sourceOf(req *sip.Request) netip.AddrPort {
	ap, err := netip.ParseAddrPort(req.Source())
	if err != nil {
		return netip.AddrPort{}
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// peerBySource finds the configured peer a packet from src belongs to.
func (s *Server) peerBySource(z *zone, src netip.Addr) *peer {
	src = src.Unmap()
	for _, p := range z.peers {
		for _, pre := range p.sources {
			if pre.Contains(src) {
				return p
			}
		}
	}
	return nil
}

// peerFor is peerBySource for a request that opens a call: two peers may
// share an address when their transports differ (RFC 3261 §18 keeps UDP
// and TCP apart), so the one whose transport the request came on wins.
func (s *Server) peerFor(z *zone, req *sip.Request) *peer {
	src, tp := sourceOf(req).Addr().Unmap(), transportOf(req)
	var first *peer
	for _, p := range z.peers {
		for _, pre := range p.sources {
			if !pre.Contains(src) {
				continue
			}
			if p.cfg.Transport == tp {
				return p
			}
			if first == nil {
				first = p
			}
		}
	}
	return first
}

// route picks the outbound peer of a new call: for now calls from a pbx go
// to the first trunk and calls from a trunk go to the first pbx.
func (s *Server) route(from *peer) (*peer, error) {
	want := Trunk
	if from.cfg.Kind == Trunk {
		want = PBX
	}
	for _, p := range s.peers {
		if p.cfg.Kind == want {
			return p, nil
		}
	}
	return nil, fmt.Errorf("%w: from %s %s", ErrNoRoute, from.cfg.Kind, from.cfg.Name)
}

func (s *Server) lookupDialog(z *zone, req *sip.Request) (legRef, bool) {
	to := req.To()
	id := req.CallID()
	if to == nil || id == nil {
		return legRef{}, false
	}
	tag, _ := to.Params.Get("tag")
	if tag == "" {
		return legRef{}, false
	}
	s.mu.RLock()
	ref, ok := s.dialogs[dialogKey{zone: z, callID: id.Value(), localTag: tag}]
	s.mu.RUnlock()
	return ref, ok
}

// dialogOf finds the call of an in-dialog request, answering 481 when there
// is none (RFC 3261 §12.2.2).
func (s *Server) dialogOf(z *zone, req *sip.Request, tx sip.ServerTransaction) (legRef, bool) {
	ref, ok := s.lookupDialog(z, req)
	if !ok {
		s.counters.noDialog.Add(1)
		s.respond(z, req, tx, 481, nil)
	}
	return ref, ok
}

func inDialog(req *sip.Request) bool {
	to := req.To()
	return to != nil && to.Params.Has("tag")
}

func (s *Server) onInvite(z *zone, req *sip.Request, tx sip.ServerTransaction) {
	if key, ok := s.seenTx.txKey(z.cfg.Name, req); ok && s.seenTx.seen(key, time.Now()) {
		// a retransmission whose transaction sipgo has already ended
		// (acceptedLinger): absorbed, as its transaction would have
		s.counters.retransAbsorbed.Add(1)
		if s.log.IsDebug() {
			s.log.Debug("retransmitted INVITE absorbed", "zone", z.cfg.Name, "call_id", req.CallID().Value())
		}
		return
	}
	if inDialog(req) {
		if ref, ok := s.dialogOf(z, req, tx); ok {
			ref.call.onInDialog(ref.side, req, tx)
		}
		return
	}
	src := sourceOf(req)
	from := s.peerFor(z, req)
	var to *peer
	if from == nil && z.access != nil {
		// a registered phone calls through its registrar
		if p := z.access.phoneAt(src); p != nil {
			from, to = p, z.access.pbx
		}
	}
	if from == nil {
		s.counters.unknownSource.Add(1)
		if z.private {
			s.respond(z, req, tx, 403, nil)
		}
		s.logUnknownSource(z, src)
		return
	}
	s.mu.RLock()
	draining := s.draining
	s.mu.RUnlock()
	if draining {
		s.respond(z, req, tx, 503, nil)
		return
	}
	var callee *calleePhone
	if to == nil && isBindingToken(req.Recipient.User) && s.registrarOf(from) {
		// a call for a registered phone, at the Contact the SBC gave its
		// PBX
		if callee = s.phoneCallee(from, req.Recipient.User); callee == nil {
			s.respond(z, req, tx, 480, nil)
			return
		}
		to = callee.peer
	}
	if to == nil {
		var err error
		if to, err = s.route(from); err != nil {
			s.log.Warn("call refused", "peer", from.cfg.Name, "error", err)
			s.respond(z, req, tx, 404, nil)
			return
		}
	}
	c := newCall(s, from, to, req, tx)
	if callee != nil {
		// the phone gets its own Contact as Request-URI and its AOR in To
		b := c.legs[media.B]
		b.target = callee.contact
		b.remote = sip.Uri{Scheme: "sip", User: callee.user, Host: callee.peer.access.cfg.Domain}
		b.local.Host = callee.peer.access.cfg.Domain
		c.rec.To = callee.user
	}
	c.run()
}

func (s *Server) onAck(z *zone, req *sip.Request) {
	ref, ok := s.lookupDialog(z, req)
	if !ok {
		// an ACK is never answered (RFC 3261 §17.2.3); one for a dialog we
		// no longer know is simply late
		return
	}
	ref.call.onAck(ref.side, req)
}

func (s *Server) onBye(z *zone, req *sip.Request, tx sip.ServerTransaction) {
	key, keyed := s.seenTx.txKey(z.cfg.Name, req)
	now := time.Now()
	if keyed && s.seenTx.has(key, now) {
		// its 200 was lost: the dialog is gone, the answer stays 200
		s.counters.retransAbsorbed.Add(1)
		s.respond(z, req, tx, 200, nil)
		tx.Terminate()
		return
	}
	if ref, ok := s.dialogOf(z, req, tx); ok && ref.call.onBye(ref.side, req, tx) {
		// answered 200: the transaction ends now instead of keeping the
		// BYE and its 200 for Timer J (64×T1 over UDP); a copy sent
		// because the 200 was lost gets 200 again above
		if keyed {
			s.seenTx.seen(key, now)
		}
		tx.Terminate()
	}
}

func (s *Server) onOptions(z *zone, req *sip.Request, tx sip.ServerTransaction) {
	if inDialog(req) {
		if ref, ok := s.dialogOf(z, req, tx); ok {
			ref.call.onInDialog(ref.side, req, tx)
		}
		return
	} else if s.peerBySource(z, sourceOf(req).Addr()) == nil {
		if z.private {
			s.respond(z, req, tx, 403, nil)
		}
		return
	}
	// Keepalive pings from peers and in-dialog OPTIONS are answered by the
	// SBC itself: capabilities are ours, not the far side's.
	s.respond(z, req, tx, 200, nil)
}

func (s *Server) onOther(z *zone, req *sip.Request, tx sip.ServerTransaction) {
	if inDialog(req) {
		ref, ok := s.dialogOf(z, req, tx)
		if !ok {
			return
		}
		switch req.Method {
		case sip.UPDATE, sip.INFO, sip.MESSAGE, sip.NOTIFY:
			ref.call.onInDialog(ref.side, req, tx)
			return
		case sip.REFER:
			ref.call.onRefer(ref.side, req, tx)
			return
		case sip.PRACK:
			ref.call.onPrack(ref.side, req, tx)
			return
		}
	} else if s.peerBySource(z, sourceOf(req).Addr()) == nil && !z.private {
		return
	}
	s.respond(z, req, tx, 501, nil)
}

// respond sends a locally generated final response to req.
func (s *Server) respond(z *zone, req *sip.Request, tx sip.ServerTransaction, code int, extra []sip.Header) {
	res := sip.NewResponseFromRequest(req, code, reasonPhrase(code), nil)
	s.decorateResponse(z, res, code)
	for _, h := range extra {
		res.AppendHeader(h)
	}
	setTransport(res, z, "", transportOf(req))
	if err := s.respondTx(z, req, tx, res); err != nil {
		s.log.Debug("respond failed", "zone", z.cfg.Name, "code", code, "error", err)
	}
	if g := s.sec.Load(); g != nil {
		s.guardOutcome(g.Guard, z, req, code)
	}
}

// decorateResponse adds what every response of ours carries.
func (s *Server) decorateResponse(z *zone, res *sip.Response, code int) {
	res.AppendHeader(s.hdrServer)
	if code == 405 || code == 501 || (code >= 200 && code < 300) {
		res.AppendHeader(hdrAllow)
	}
	if code == 200 || (code > 100 && code < 200) {
		res.AppendHeader(s.contact(z))
	}
}

const allowMethods = "INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE, PRACK, INFO, MESSAGE, NOTIFY, REFER"

// Headers whose value never changes are made once and appended to every
// message that carries them: nothing changes a header once it is in a
// message (the leak guard drops headers, it does not edit generic ones),
// and sending only reads them. Making them per message was a share of the
// allocations of every call.
var (
	hdrAllow          = sip.NewHeader("Allow", allowMethods)
	hdrSDP            = sip.NewHeader("Content-Type", "application/sdp")
	hdrSupported      = sip.NewHeader("Supported", "100rel")
	hdrSupportedTimer = sip.NewHeader("Supported", "100rel, timer")
)

func (s *Server) contact(z *zone) *sip.ContactHeader {
	return &sip.ContactHeader{Address: sip.Uri{Scheme: "sip", Host: z.host, Port: z.port}}
}

func (s *Server) via(z *zone) *sip.ViaHeader {
	p := sip.NewParams()
	p.Add("branch", sip.GenerateBranchN(16))
	p.Add("rport", "")
	return &sip.ViaHeader{ProtocolName: "SIP", ProtocolVersion: "2.0", Transport: "UDP", Host: z.host, Port: z.port, Params: p}
}

// register adds a leg to the dialog index.
func (s *Server) register(k dialogKey, ref legRef) {
	s.mu.Lock()
	s.dialogs[k] = ref
	s.mu.Unlock()
}

func (s *Server) addCall(c *Call) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.draining {
		return false
	}
	s.calls[c.id] = c
	s.active.Store(int64(len(s.calls)))
	s.callWG.Add(1)
	return true
}

func (s *Server) removeCall(c *Call, keys []dialogKey) {
	s.mu.Lock()
	delete(s.calls, c.id)
	s.active.Store(int64(len(s.calls)))
	for _, k := range keys {
		delete(s.dialogs, k)
	}
	s.mu.Unlock()
	s.callWG.Done()
}

// onStrayResponse gets responses no client transaction wants: mostly 2xx
// retransmissions for an INVITE whose transaction already ended, which
// must be ACKed again (RFC 3261 §13.2.2.4).
func (s *Server) onStrayResponse(z *zone, res *sip.Response) {
	if !res.IsSuccess() {
		return
	}
	cs := res.CSeq()
	if cs == nil || cs.MethodName != sip.INVITE {
		return
	}
	from := res.From()
	id := res.CallID()
	if from == nil || id == nil {
		return
	}
	tag, _ := from.Params.Get("tag")
	s.mu.RLock()
	ref, ok := s.dialogs[dialogKey{zone: z, callID: id.Value(), localTag: tag}]
	s.mu.RUnlock()
	if ok {
		ref.call.onRetransmitted2xx(res)
		return
	}
	// a 2xx for a call we already gave up on: ACK and BYE it so the far
	// side does not keep a half-open dialog
	s.ackAndByeOrphan(z, res)
}

func (s *Server) ackAndByeOrphan(z *zone, res *sip.Response) {
	to, from, id, cs := res.To(), res.From(), res.CallID(), res.CSeq()
	c := msgContact(res)
	if to == nil || from == nil || id == nil || cs == nil || c == nil {
		return
	}
	var p *peer
	if ap, err := netip.ParseAddrPort(res.Source()); err == nil {
		p = s.peerBySource(z, ap.Addr())
	}
	if p == nil {
		return
	}
	target := c.Address
	build := func(m sip.RequestMethod, seq uint32) *sip.Request {
		r := sip.NewRequest(m, *target.Clone())
		r.AppendHeader(s.via(z))
		mf := sip.MaxForwardsHeader(70)
		r.AppendHeader(&mf)
		r.AppendHeader(&sip.FromHeader{DisplayName: from.DisplayName, Address: from.Address, Params: from.Params.Clone()})
		r.AppendHeader(&sip.ToHeader{DisplayName: to.DisplayName, Address: to.Address, Params: to.Params.Clone()})
		cid := sip.CallIDHeader(id.Value())
		r.AppendHeader(&cid)
		r.AppendHeader(&sip.CSeqHeader{SeqNo: seq, MethodName: m})
		r.AppendHeader(s.hdrUA)
		r.SetBody(nil)
		dest := p.dest
		s.direct(z, p, &dest, p.cfg.Transport, r, -1)
		return r
	}
	if err := z.client.WriteRequest(build(sip.ACK, cs.SeqNo), noBuild); err != nil {
		s.log.Debug("ack orphan 2xx", "error", err)
	}
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 32*time.Second)
		defer cancel()
		tx, err := z.client.TransactionRequest(ctx, build(sip.BYE, cs.SeqNo+1), noBuild)
		if err != nil {
			return
		}
		defer tx.Terminate()
		select {
		case <-tx.Responses():
		case <-tx.Done():
		case <-ctx.Done():
		}
	}()
}

// noBuild tells sipgo the request is complete: it must not add or change
// headers (every header of an outgoing message is ours).
func noBuild(c *sipgo.Client, r *sip.Request) error { return nil }

// retryAfter is the extra header of a response that tells the client when
// to try again, in seconds.
func retryAfter(seconds string) []sip.Header {
	return []sip.Header{sip.NewHeader("Retry-After", seconds)}
}
