package appliance

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/edgesbc/edgesbc/appliance/config"
	"github.com/edgesbc/edgesbc/firewall"
	"github.com/edgesbc/edgesbc/sbc/guard"
)

// kernelGuard is what the defender needs from the firewall: firewall.Guard
// satisfies it. Without one, bans are enforced in userspace only.
type kernelGuard interface {
	Apply(firewall.GuardConfig) error
	Ban(netip.Addr, time.Duration) error
	Unban(netip.Addr) error
	Close() error
}

// Intervals of the defender's background work.
const (
	banSaveDelay  = time.Second      // bans made together are written once
	banSweepEvery = 10 * time.Second // expired bans and idle counters
	banQueueLen   = 4096
)

// defender joins the ban policies (sbc/guard) to their effects: it is the
// sbc.Guard the SBC calls, it logs every ban and would-be ban, pushes bans
// into the kernel and keeps the ban store on disk.
//
// The SBC calls Inbound and Outcome on its hot path, so they only decide
// and queue; one goroutine (run) talks to the firewall and the disk.
type defender struct {
	log   hclog.Logger
	g     *guard.Guard
	store *BanStore
	// ipv6Prefix is the IPv6 source prefix the bans in force are keyed
	// by, fixed at start.
	ipv6Prefix int
	queue      chan banJob
	stop       chan struct{}
	done       chan struct{}

	// mu guards kernel: set at start, dropped when the firewall fails.
	mu     sync.Mutex
	kernel kernelGuard
}

// banJob is one change for the kernel: a ban (d > 0) or a lift (d == 0).
type banJob struct {
	addr netip.Addr
	d    time.Duration
}

// guardConfig maps the file's allow list, peers and ban policies onto the
// guard's Config. Every peer's sources are allowed implicitly. The rate
// limits go to the guard only when the kernel cannot enforce them
// (userspace).
func guardConfig(cfg *config.Config, userspace bool) guard.Config {
	out := guard.Config{Allow: allowList(cfg), IPv6Prefix: cfg.Security.IPv6Prefix}
	if userspace {
		for _, rl := range cfg.Security.RateLimits {
			out.RateLimits = append(out.RateLimits, guard.RateLimit{
				Name: rl.Name, Zone: rl.Zone, Rate: rl.Rate, Per: rl.Per, Burst: rl.Burst})
		}
	}
	for _, p := range cfg.Security.BanPolicies {
		mode := guard.Enforce
		if p.Mode == config.BanLog {
			mode = guard.LogOnly
		}
		out.Policies = append(out.Policies, guard.Policy{
			Name:                  p.Name,
			UserAgents:            append([]string(nil), p.MatchUserAgent...),
			FailedAuth:            p.FailedAuth,
			DistinctUnknownUsers:  p.DistinctUnknownUsers,
			UnknownSourceRequests: p.UnknownSourceRequests,
			Within:                p.Within,
			BanFor:                p.BanFor,
			RepeatMultiplier:      p.RepeatMultiplier,
			MaxBan:                p.MaxBan,
			Mode:                  mode,
		})
	}
	return out
}

func allowList(cfg *config.Config) []netip.Prefix {
	out := append([]netip.Prefix(nil), cfg.Security.Allow...)
	for _, p := range cfg.Peers {
		out = append(out, p.Sources...)
	}
	return out
}

// firewallConfig is the kernel side of the same policies: the allow list
// and each zone's rate limit on its SIP port.
func firewallConfig(cfg *config.Config) firewall.GuardConfig {
	out := firewall.GuardConfig{Allow: allowList(cfg), IPv6Prefix: cfg.Security.IPv6Prefix}
	for _, rl := range cfg.Security.RateLimits {
		z, ok := cfg.Zone(rl.Zone)
		if !ok {
			continue
		}
		out.RateLimits = append(out.RateLimits, firewall.RateLimit{
			Name: rl.Name, Dest: netip.AddrPortFrom(z.Address, uint16(z.SIPPort)),
			Rate: uint64(rl.Rate), Per: rl.Per, Burst: uint32(rl.Burst),
		})
	}
	return out
}

// newDefender builds the guard, restores the persisted bans and installs
// the kernel rules. kernel may be nil (userspace only); kernelErr says why
// and is logged once.
func newDefender(cfg *config.Config, kernel kernelGuard, kernelErr error, log hclog.Logger) *defender {
	d := &defender{
		log:        log,
		store:      NewBanStore(cfg.Security.StateDir),
		queue:      make(chan banJob, banQueueLen),
		stop:       make(chan struct{}),
		done:       make(chan struct{}),
		ipv6Prefix: cfg.Security.IPv6Prefix,
	}
	if kernel != nil {
		if err := kernel.Apply(firewallConfig(cfg)); err != nil {
			_ = kernel.Close()
			kernel, kernelErr = nil, err
		}
	}
	d.kernel = kernel
	d.g = guard.New(guardConfig(cfg, kernel == nil))
	if kernel == nil {
		log.Warn("bans and rate limits are enforced in userspace only: nftables is not available",
			"reason", errString(kernelErr), "rate_limits", len(cfg.Security.RateLimits), "policies", len(cfg.Security.BanPolicies),
			"ipv6_prefix", cfg.Security.IPv6Prefix)
	} else {
		log.Info("bans enforced in nftables", "table", "inet "+firewall.TableName,
			"allow", len(cfg.Security.Allow), "rate_limits", len(cfg.Security.RateLimits), "policies", len(cfg.Security.BanPolicies),
			"ipv6_prefix", cfg.Security.IPv6Prefix)
	}
	d.restore()
	go d.run()
	return d
}

func errString(err error) string {
	if err == nil {
		return "none given"
	}
	return err.Error()
}

// restore loads the ban store and re-applies every ban still in force,
// with its remaining time. A damaged store is reported, and what could be
// read is used.
func (d *defender) restore() {
	now := time.Now()
	bans, problems, err := d.store.Load(now)
	if err != nil {
		d.log.Error("ban store unreadable, starting without persisted bans", "path", d.store.Path(), "error", err)
		return
	}
	for _, p := range problems {
		d.log.Warn("ban store damaged, entry skipped", "path", d.store.Path(), "problem", p)
	}
	restored := 0
	for _, b := range bans {
		if err := d.g.Add(b); err != nil {
			d.log.Warn("persisted ban not restored", "src", b.Addr, "policy", b.Policy, "error", err)
			continue
		}
		d.kernelBan(b.Addr, b.Remaining(now))
		restored++
	}
	if restored > 0 || len(problems) > 0 {
		d.log.Info("bans restored", "path", d.store.Path(), "bans", restored, "skipped", len(bans)-restored+len(problems))
	}
}

// Inbound implements sbc.Guard.
func (d *defender) Inbound(src netip.Addr, r guard.Request) bool {
	v := d.g.Check(time.Now(), src, r)
	d.act(v)
	return v.Action == guard.Allow || v.Action == guard.WouldBan
}

// Outcome implements sbc.Guard.
func (d *defender) Outcome(src netip.Addr, r guard.Request, code int) {
	d.act(d.g.Outcome(time.Now(), src, r, code))
}

// act logs a verdict's bans and queues the kernel's part.
func (d *defender) act(v guard.Verdict) {
	for _, b := range v.Reports {
		d.log.Warn("ban policy in log mode would ban", "src", b.Addr, "policy", b.Policy, "reason", b.Reason,
			"counters", b.Counters, "ban_for", b.Expires.Sub(b.Start).String(), "last_request", b.Last.Request)
	}
	if v.Action != guard.BanSource {
		return
	}
	b := v.Ban
	d.log.Warn("source banned", "src", b.Addr, "prefix", b.Prefix, "policy", b.Policy, "reason", b.Reason, "counters", b.Counters,
		"ban_for", b.Expires.Sub(b.Start).String(), "repeat", b.Repeat, "first_request", b.First.Request, "last_request", b.Last.Request)
	d.enqueue(banJob{addr: b.Addr, d: b.Expires.Sub(b.Start)})
}

// enqueue hands a change to run without ever blocking the SIP path. When
// the queue is full the userspace ban still holds; the store is written
// from the guard, so nothing is lost but the kernel's shortcut.
func (d *defender) enqueue(j banJob) {
	select {
	case d.queue <- j:
	default:
		d.log.Debug("ban queue full, kernel update skipped", "src", j.addr)
	}
}

// run applies queued changes to the kernel, writes the store shortly after
// changes, and sweeps expired bans.
func (d *defender) run() {
	defer close(d.done)
	sweep := time.NewTicker(banSweepEvery)
	defer sweep.Stop()
	var save <-chan time.Time
	var saveTimer *time.Timer
	dirty := func() {
		if saveTimer == nil {
			saveTimer = time.NewTimer(banSaveDelay)
			save = saveTimer.C
		}
	}
	for {
		select {
		case j := <-d.queue:
			switch {
			case !j.addr.IsValid():
				// only the store changed
			case j.d > 0:
				// a ban lifted while it waited here stays lifted
				if b, ok := d.g.Get(time.Now(), j.addr); ok {
					d.kernelBan(j.addr, b.Remaining(time.Now()))
				}
			default:
				d.kernelUnban(j.addr)
			}
			dirty()
		case <-save:
			saveTimer, save = nil, nil
			d.save()
		case <-sweep.C:
			if expired := d.g.Sweep(time.Now()); len(expired) > 0 {
				for _, b := range expired {
					d.log.Info("ban expired", "src", b.Addr, "policy", b.Policy)
				}
				dirty()
			}
		case <-d.stop:
			if saveTimer != nil {
				saveTimer.Stop()
				d.save()
			}
			return
		}
	}
}

func (d *defender) save() {
	if err := d.store.Save(d.g.Bans(time.Now()), time.Now()); err != nil {
		d.log.Error("bans not persisted", "path", d.store.Path(), "error", err)
	}
}

func (d *defender) kernelBan(a netip.Addr, dur time.Duration) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.kernel == nil {
		return
	}
	if err := d.kernel.Ban(a, dur); err != nil {
		d.log.Error("kernel ban failed, the ban holds in userspace", "src", a, "error", err)
	}
}

func (d *defender) kernelUnban(a netip.Addr) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.kernel == nil {
		return
	}
	if err := d.kernel.Unban(a); err != nil {
		d.log.Error("kernel unban failed", "src", a, "error", err)
	}
}

// Reload swaps in the policies of cfg. Bans stay; bans of sources that are
// now allow-listed are lifted. The kernel rules are replaced in one batch.
func (d *defender) Reload(cfg *config.Config) error {
	if cfg.Security.IPv6Prefix != d.ipv6Prefix {
		d.log.Warn("ipv6_prefix changes take effect at the next start", "ipv6_prefix", d.ipv6Prefix, "new_ipv6_prefix", cfg.Security.IPv6Prefix)
		c := *cfg
		c.Security.IPv6Prefix = d.ipv6Prefix
		cfg = &c
	}
	d.mu.Lock()
	userspace := d.kernel == nil
	d.mu.Unlock()
	for _, b := range d.g.Reload(guardConfig(cfg, userspace)) {
		d.log.Info("ban lifted: source is allow-listed now", "src", b.Addr, "policy", b.Policy)
		d.enqueue(banJob{addr: b.Addr})
	}
	if p := NewBanStore(cfg.Security.StateDir).Path(); p != d.store.Path() {
		d.log.Warn("state_dir changes take effect at the next start", "path", d.store.Path(), "new_path", p)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.kernel != nil {
		if err := d.kernel.Apply(firewallConfig(cfg)); err != nil {
			return fmt.Errorf("apply kernel rules: %w", err)
		}
	}
	d.log.Info("ban policies reloaded", "policies", d.g.PolicyNames(), "allow", len(cfg.Security.Allow), "rate_limits", len(cfg.Security.RateLimits))
	return nil
}

// BanNow bans src for dur by hand (the admin socket).
func (d *defender) BanNow(src netip.Addr, dur time.Duration, reason string) (guard.Ban, error) {
	if dur <= 0 {
		return guard.Ban{}, errors.New("ban length must be positive")
	}
	now := time.Now()
	b := guard.Ban{Addr: src.Unmap(), Policy: "manual", Reason: reason, Start: now, Expires: now.Add(dur)}
	if err := d.g.Add(b); err != nil {
		return guard.Ban{}, err
	}
	if got, ok := d.g.Get(now, b.Addr); ok {
		b = got // with the prefix it covers
	}
	d.log.Warn("source banned", "src", b.Addr, "prefix", b.Prefix, "policy", b.Policy, "reason", reason, "ban_for", dur.String())
	d.enqueue(banJob{addr: b.Addr, d: dur})
	return b, nil
}

// Lift removes the ban of src (the admin socket). The kernel element goes
// before Lift returns, so the next packet from src passes.
func (d *defender) Lift(src netip.Addr) (guard.Ban, bool) {
	b, ok := d.g.Remove(src)
	if !ok {
		return b, false
	}
	d.kernelUnban(src.Unmap())
	d.log.Info("ban lifted", "src", b.Addr, "policy", b.Policy)
	d.enqueue(banJob{addr: netip.Addr{}}) // only marks the store dirty
	return b, true
}

// Bans lists the bans in force.
func (d *defender) Bans() []guard.Ban { return d.g.Bans(time.Now()) }

// Ban returns the ban of src.
func (d *defender) Ban(src netip.Addr) (guard.Ban, bool) { return d.g.Get(time.Now(), src) }

// Stats are the guard's counters.
func (d *defender) Stats() guard.Stats { return d.g.Stats() }

// Kernel reports whether bans reach nftables.
func (d *defender) Kernel() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.kernel != nil
}

// Close stops the background work, writes pending bans and removes the
// guard's kernel objects (the bans are in the store for the next start).
func (d *defender) Close() {
	close(d.stop)
	<-d.done
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.kernel != nil {
		if err := d.kernel.Close(); err != nil {
			d.log.Warn("guard rules not removed from the kernel", "error", err)
		}
		d.kernel = nil
	}
}
