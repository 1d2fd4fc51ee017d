// Package appliance builds the subsystems of edgesbc from a validated
// configuration, starts them in order, serves the local admin socket and
// stops everything in reverse order. It owns process-wide concerns (the
// slog bridge for sipgo, file descriptor limits); it knows no SIP itself.
package appliance

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/emiago/sipgo/sip"
	"github.com/hashicorp/go-hclog"

	"github.com/edgesbc/edgesbc/appliance/config"
	"github.com/edgesbc/edgesbc/firewall"
	"github.com/edgesbc/edgesbc/media"
	"github.com/edgesbc/edgesbc/sbc"
	"github.com/edgesbc/edgesbc/sbc/guard"
)

// Options are the run-time settings that do not belong in the config file.
type Options struct {
	// AdminSocket is the path of the unix admin socket; empty disables it.
	AdminSocket string
	// Ready is called once every listener is up.
	Ready func()
	// Reload delivers validated configurations to apply while running
	// (on SIGHUP). Only the security policies are swapped: allow list,
	// rate limits and ban policies; bans and calls stay.
	Reload <-chan *config.Config
	// Network tunes the interface setup done for zones that name a
	// device.
	Network NetworkOptions
}

// Agent is a running edgesbc.
type Agent struct {
	log     hclog.Logger
	mode    string
	relay   *media.Relay
	sbc     *sbc.Server
	guard   *defender
	offload bool
}

// Status is what the admin socket reports.
type Status struct {
	// Mode is "running", or "safe" when no configuration file exists and
	// SIP is not served.
	Mode string `json:"mode"`
	sbc.Status
	Sessions   int `json:"sessions"`
	PortsInUse int `json:"ports_in_use"`
	// QuarantineShortened counts port pairs reused before their
	// quarantine ended because the range had no free pair.
	QuarantineShortened uint64 `json:"ports_quarantine_shortened"`
	// RTCPBindFailed counts streams that relay RTP only: their RTCP
	// sockets, bound when RTP first flows, found the port taken.
	RTCPBindFailed uint64 `json:"rtcp_bind_failed"`
	Goroutines     int    `json:"goroutines"`
	// KernelOffload is whether latched media goes to the kernel;
	// Offloaded counts the stream components it forwards now.
	KernelOffload bool `json:"kernel_offload"`
	Offloaded     int  `json:"offloaded"`
	// Guard are the ban policies' counters; BansInKernel says whether
	// bans reach nftables or stay in userspace.
	Guard        guard.Stats `json:"guard"`
	BansInKernel bool        `json:"bans_in_kernel"`
}

// Run builds the subsystems from cfg, starts them and blocks until ctx ends,
// then shuts down gracefully: stop taking calls, drain them with BYE, release
// media.
func Run(ctx context.Context, cfg *config.Config, opts Options, log hclog.Logger) error {
	if u := Unsupported(cfg); len(u) > 0 {
		return fmt.Errorf("configuration uses what this version cannot do: %s", strings.Join(u, "; "))
	}
	if plan, ok := PlanNetwork(cfg); ok {
		log.Info("configuring network", "interfaces", len(plan.Links))
		if err := SetupNetwork(ctx, plan, opts.Network, log.Named("net")); err != nil {
			return fmt.Errorf("set up network: %w", err)
		}
	}
	warnFileCeiling(log, raiseFileLimit(log), cfg.SIP.MaxCalls)
	tuneGC(log)
	sl := NewSlogLogger(log.Named("sip"))
	sip.SetDefaultLogger(sl)

	a := &Agent{log: log, mode: "running"}
	var offloader media.Offloader
	var fwMedia *firewall.Media
	if cfg.Media.KernelOffload {
		fw, err := startOffload(cfg, log)
		if err != nil {
			log.Warn("kernel media offload off: media stays in userspace", "reason", err)
		} else {
			offloader, a.offload, fwMedia = fw, true, fw
			defer func() {
				// A no-op after the Close(true) of a kept stop.
				if err := fw.Close(false); err != nil {
					log.Error("stop kernel media offload", "error", err)
				}
			}()
		}
	}
	var srv *sbc.Server
	relay, err := media.NewRelay(media.Config{
		Offloader:  offloader,
		PortMin:    cfg.Media.PortMin,
		PortMax:    cfg.Media.PortMax,
		Quarantine: cfg.Media.Quarantine,
		Timeout:    cfg.Media.Timeout,
		OnTimeout: func(id media.SessionID) {
			if srv != nil {
				srv.OnMediaTimeout(id)
			}
		},
		Username: "edgesbc",
	}, log.Named("media"))
	if err != nil {
		return fmt.Errorf("start media relay: %w", err)
	}
	a.relay = relay
	defer relay.Shutdown()

	srv, err = sbc.NewServer(SBCConfig(cfg), relay, sbc.Hooks{CallEnded: cdrLogger(log.Named("cdr"))}, log.Named("sbc"), sl)
	if err != nil {
		return fmt.Errorf("build sbc: %w", err)
	}
	a.sbc = srv

	// the guard is in place before the first datagram is read
	var kernel kernelGuard
	fw, fwErr := firewall.NewGuard(log.Named("firewall"))
	if fwErr == nil {
		kernel = fw
	}
	a.guard = newDefender(cfg, kernel, fwErr, log.Named("guard"))
	defer a.guard.Close()
	srv.SetGuard(a.guard)

	calls := NewCallStore(cfg.Security.StateDir)
	if cfg.Media.KeepOnRestart {
		restoreCalls(calls, relay, srv, log)
	} else if err := os.Remove(calls.Path()); err == nil {
		log.Info("removed the call store of an earlier run: media.keep_on_restart is off", "path", calls.Path())
	}
	if fwMedia != nil {
		// With keep_on_restart, what no restored call claimed; without,
		// nothing is left by now.
		if err := fwMedia.Prune(); err != nil {
			log.Warn("remove unclaimed kernel media flows", "error", err)
		}
	}

	runCtx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := srv.Start(runCtx); err != nil {
		return fmt.Errorf("start sbc: %w", err)
	}
	if opts.AdminSocket != "" {
		stop, err := serveAdmin(opts.AdminSocket, a, log.Named("admin"))
		if err != nil {
			srv.Shutdown(context.Background())
			return fmt.Errorf("start admin socket: %w", err)
		}
		defer stop()
	}
	var keeper *callKeeper
	if cfg.Media.KeepOnRestart {
		keeper = startKeeper(calls, relay, srv, log.Named("keep"))
	}
	log.Info("edgesbc ready", "zones", len(cfg.Zones), "peers", len(cfg.Peers))
	sdNotify(log, fmt.Sprintf("READY=1\nSTATUS=serving SIP in %d zones", len(cfg.Zones)))
	if opts.Ready != nil {
		opts.Ready()
	}
	for done := false; !done; {
		select {
		case <-ctx.Done():
			done = true
		case next := <-opts.Reload:
			if err := a.guard.Reload(next); err != nil {
				log.Error("reload incomplete", "error", err)
			}
		}
	}
	sdNotify(log, "STOPPING=1")
	if keeper != nil {
		// Calls stay up: their state is on disk and their kernel flows
		// stay for the next start.
		n := keeper.stop()
		log.Info("stopping and keeping calls for the next start", "calls", n)
		srv.Detach()
		relay.Detach()
		if fwMedia != nil {
			if err := fwMedia.Close(true); err != nil {
				log.Error("stop kernel media offload", "error", err)
			}
		}
		log.Info("stopped")
		return nil
	}
	log.Info("stopping", "calls", srv.Status().Calls)
	srv.Shutdown(context.Background())
	log.Info("stopped")
	return nil
}

// RunSafe is what runs when there is no configuration file yet (first boot
// of an appliance): only the admin socket is served, never SIP, and the log
// says how to configure the appliance. It blocks until ctx ends.
func RunSafe(ctx context.Context, configPath string, opts Options, log hclog.Logger) error {
	a := &Agent{log: log, mode: "safe"}
	if opts.AdminSocket != "" {
		stop, err := serveAdmin(opts.AdminSocket, a, log.Named("admin"))
		if err != nil {
			return fmt.Errorf("start admin socket: %w", err)
		}
		defer stop()
	}
	log.Warn("no configuration file: safe mode, SIP is not served", "config", configPath, "admin", opts.AdminSocket)
	log.Info("to configure: write the file (edgesbc example prints a commented one), validate it, restart",
		"config", configPath, "check", "edgesbc check -config "+configPath, "restart", "systemctl restart edgesbc")
	sdNotify(log, "READY=1\nSTATUS=safe mode: no configuration at "+configPath)
	if opts.Ready != nil {
		opts.Ready()
	}
	<-ctx.Done()
	sdNotify(log, "STOPPING=1")
	log.Info("stopped")
	return nil
}

// sdNotify tells the service manager about a state change. Failing to reach
// it is logged, never fatal: the daemon works without systemd.
func sdNotify(log hclog.Logger, state string) {
	if err := notify(state); err != nil {
		log.Warn("service manager not notified", "state", strings.SplitN(state, "\n", 2)[0], "error", err)
	}
}

// Status reports the current state of every subsystem.
func (a *Agent) Status() Status {
	if a.sbc == nil {
		return Status{Mode: a.mode, Goroutines: runtime.NumGoroutine()}
	}
	return Status{
		Mode:                a.mode,
		Status:              a.sbc.Status(),
		Sessions:            a.relay.Sessions(),
		PortsInUse:          a.relay.PortsInUse(),
		QuarantineShortened: a.relay.QuarantineShortened(),
		RTCPBindFailed:      a.relay.RTCPBindFailed(),
		Goroutines:          runtime.NumGoroutine(),
		KernelOffload:       a.offload,
		Offloaded:           a.relay.OffloadedLinks(),
		Guard:               a.guard.Stats(),
		BansInKernel:        a.guard.Kernel(),
	}
}

// startOffload programs kernel media offload for the zones' addresses. It
// fails, and media stays in userspace, where the kernel would not forward
// (ip_forward off) or the daemon may not program nftables.
func startOffload(cfg *config.Config, log hclog.Logger) (*firewall.Media, error) {
	var addrs []netip.Addr
	var off []string
	for _, v6 := range []bool{false, true} {
		fam := "IPv4"
		if v6 {
			fam = "IPv6"
		}
		has := false
		for _, z := range cfg.Zones {
			has = has || z.Address.Unmap().Is6() == v6
		}
		if !has {
			continue
		}
		if err := firewall.Forwarding(v6); err != nil {
			off = append(off, fam+": "+err.Error())
			continue
		}
		for _, z := range cfg.Zones {
			if z.Address.Unmap().Is6() == v6 {
				addrs = append(addrs, z.Address)
			}
		}
	}
	if len(addrs) == 0 {
		return nil, fmt.Errorf("%s", strings.Join(off, "; "))
	}
	if len(off) > 0 {
		log.Warn("kernel media offload off for one address family: its media stays in userspace", "reason", strings.Join(off, "; "))
	}
	if len(cfg.Media.PinholeZones) > 0 {
		log.Info("media ports closed in the kernel but for each call's pinholes", "zones", strings.Join(cfg.Media.PinholeZones, ","))
	}
	return firewall.NewMedia(firewall.MediaConfig{
		Addrs:   addrs,
		PortMin: cfg.Media.PortMin,
		PortMax: cfg.Media.PortMax,
		Keep:    cfg.Media.KeepOnRestart,
		Closed:  pinholeAddrs(cfg),
	}, log.Named("firewall"))
}

// pinholeAddrs are the addresses of the zones whose media ports only
// pinholes open (media.pinhole_zones).
func pinholeAddrs(cfg *config.Config) []netip.Addr {
	var out []netip.Addr
	for _, name := range cfg.Media.PinholeZones {
		if z, ok := cfg.Zone(name); ok {
			out = append(out, z.Address)
		}
	}
	return out
}

// SBCConfig maps the file's values onto the signaling core's own Config.
func SBCConfig(cfg *config.Config) sbc.Config {
	out := sbc.Config{
		UserAgent:      cfg.SIP.UserAgent,
		MaxMessageSize: cfg.SIP.MaxMessageSize,
		InviteTimeout:  cfg.SIP.InviteTimeout,
		MaxCalls:       cfg.SIP.MaxCalls,
	}
	for _, z := range cfg.Zones {
		out.Zones = append(out.Zones, sbc.ZoneConfig{
			Name:       z.Name,
			Address:    z.Address,
			SIPPort:    z.SIPPort,
			Advertise:  z.Advertise,
			Networks:   append([]netip.Prefix(nil), z.Networks...),
			Transports: append([]string(nil), z.Transports...),
		})
	}
	for _, p := range cfg.Peers {
		out.Peers = append(out.Peers, sbc.PeerConfig{
			Name:        p.Name,
			Kind:        sbc.PeerKind(p.Kind),
			Zone:        p.Zone,
			Address:     p.Address,
			Host:        p.Host,
			Sources:     append([]netip.Prefix(nil), p.Sources...),
			KeepHeaders: append([]string(nil), p.KeepHeaders...),

			SessionExpires: p.SessionExpires,
			MinSE:          p.MinSE,
			Refer:          sbc.ReferMode(p.Refer),
			Offer:          sbc.OfferMode(p.Offer),
			Codecs:         append([]string(nil), p.Codecs...),
			Transport:      p.Transport,
		})
	}
	for _, a := range cfg.Access {
		out.Access = append(out.Access, sbc.AccessConfig{
			Name:        a.Name,
			Zone:        a.Zone,
			PBX:         a.PBX,
			Domain:      a.Domain,
			Expires:     a.Expires,
			PBXExpires:  a.PBXExpires,
			MaxBindings: a.MaxBindings,
		})
	}
	return out
}

// raiseFileLimit lifts the soft RLIMIT_NOFILE to the hard limit: every call
// holds four media sockets per stream. It returns the soft limit in force
// afterwards, 0 when it cannot be read.
func raiseFileLimit(log hclog.Logger) uint64 {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0
	}
	if lim.Cur < lim.Max {
		old := lim.Cur
		lim.Cur = lim.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
			log.Warn("cannot raise open file limit", "soft", old, "hard", lim.Max, "error", err)
			return uint64(old)
		}
		log.Debug("raised open file limit", "from", old, "to", lim.Max)
	}
	return uint64(lim.Cur)
}

// fileReserve is the descriptors kept aside from media sockets in
// mediaCallCeiling: SIP listeners and TCP connections, netlink, the admin
// socket, state files.
const fileReserve = 1024

// mediaCallCeiling is how many calls with one audio stream an open file
// limit lets the relay hold at once: four sockets each (RTP and RTCP on
// both sides) after fileReserve. That is what a call holds once its RTP
// flows; one being set up or ringing holds two until then (the relay binds
// RTCP with the first RTP), so more such calls fit.
func mediaCallCeiling(limit uint64) int {
	if limit <= fileReserve {
		return 0
	}
	return int(min((limit-fileReserve)/4, 1<<31-1))
}

// warnFileCeiling tells the operator when the open file limit, not
// sip.max_calls, bounds the calls in progress: beyond it a new call gets
// 503 (its relay sockets cannot be opened), whatever the CPU.
func warnFileCeiling(log hclog.Logger, limit uint64, maxCalls int) {
	if limit == 0 {
		return
	}
	if n := mediaCallCeiling(limit); n < maxCalls {
		log.Warn("open file limit caps calls with media below sip.max_calls: raise LimitNOFILE (ulimit -n)",
			"nofile", limit, "calls_with_media", n, "max_calls", maxCalls)
	}
}

// cdrLogger writes one record per finished call: who called whom through
// which peers, the final status, how long it rang and talked, and the media
// counters of both legs.
func cdrLogger(log hclog.Logger) func(context.Context, sbc.CallRecord) {
	return func(_ context.Context, r sbc.CallRecord) {
		talk := time.Duration(0)
		ring := r.End.Sub(r.Start)
		if !r.Answer.IsZero() {
			ring = r.Answer.Sub(r.Start)
			talk = r.End.Sub(r.Answer)
		}
		m := r.MediaStats.Total()
		log.Info("call ended", "call", r.ID, "from", r.From, "to", r.To,
			"in_peer", r.InPeer, "out_peer", r.OutPeer, "status", r.Status, "reason", r.EndReason, "transfers", r.Transfers,
			"ring_ms", ring.Milliseconds(), "talk_ms", talk.Milliseconds(),
			"rtp_packets", m.Packets, "rtp_forwarded", m.Forwarded, "rtp_offloaded", m.Offloaded,
			"rtp_dropped_stranger", m.DroppedStranger)
	}
}

// Unsupported lists what a valid configuration asks for that this version
// does not implement yet, so that check and run refuse it instead of
// silently doing something else. Today every valid configuration is
// served (SIP over UDP and TCP), so the list is empty; the seam stays for
// the schema's next additions.
func Unsupported(cfg *config.Config) []string {
	return nil
}
