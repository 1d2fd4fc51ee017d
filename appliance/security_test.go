package appliance

import (
	"bytes"
	"errors"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/edgesbc/edgesbc/appliance/config"
	"github.com/edgesbc/edgesbc/firewall"
	"github.com/edgesbc/edgesbc/sbc/guard"
)

const securityHCL = `zone "private" {
  address = "10.91.1.1"
}
zone "public" {
  address = "203.0.113.1"
}
pbx "main" {
  zone    = "private"
  address = "10.91.1.2:5060"
}
trunk "carrier" {
  zone    = "public"
  address = "203.0.113.2:5060"
  sources = ["203.0.113.64/26"]
}
allow {
  addresses = ["192.0.2.0/24"]
}
rate_limit "sip-public" {
  zone       = "public"
  per_source = "30/second"
  burst      = 60
}
ban_policy "scanners" {
  match_user_agent = ["friendly-scanner"]
  ban_for          = "24h"
}
ban_policy "trial" {
  unknown_source_requests = 2
  mode                    = "log"
}
`

func securityConfig(t *testing.T, extra string) *config.Config {
	t.Helper()
	src := securityHCL + "state_dir = \"" + t.TempDir() + "\"\n" + extra
	cfg, diags := config.Parse("test.hcl", []byte(src))
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	return cfg
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func testLogger(buf *syncBuffer) hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{Output: buf, Level: hclog.Debug})
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for range 300 {
		if cond() {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("%s: not within 3s", what)
}

var scannerReq = guard.Request{Method: "OPTIONS", User: "100", UserAgent: "friendly-scanner", Unsolicited: true}

func TestFirewallConfig(t *testing.T) {
	cfg := securityConfig(t, "")
	fc := firewallConfig(cfg)
	wantAllow := []string{"192.0.2.0/24", "10.91.1.2/32", "203.0.113.2/32", "203.0.113.64/26"}
	if len(fc.Allow) != len(wantAllow) {
		t.Fatalf("allow %v, want %v", fc.Allow, wantAllow)
	}
	for i, w := range wantAllow {
		if fc.Allow[i].String() != w {
			t.Errorf("allow[%d] = %v, want %s", i, fc.Allow[i], w)
		}
	}
	if len(fc.RateLimits) != 1 || fc.RateLimits[0].Dest != netip.MustParseAddrPort("203.0.113.1:5060") ||
		fc.RateLimits[0].Rate != 30 || fc.RateLimits[0].Per != time.Second || fc.RateLimits[0].Burst != 60 {
		t.Errorf("rate limits %+v", fc.RateLimits)
	}
	if fc.IPv6Prefix != 64 {
		t.Errorf("firewall ipv6 prefix %d, want the default 64", fc.IPv6Prefix)
	}
	gc := guardConfig(cfg, false)
	if len(gc.Policies) != 2 || gc.Policies[1].Mode != guard.LogOnly || gc.Policies[0].BanFor != 24*time.Hour {
		t.Errorf("policies %+v", gc.Policies)
	}
	if len(gc.RateLimits) != 0 || gc.IPv6Prefix != 64 {
		t.Errorf("with the kernel: guard rate limits %+v, ipv6 prefix %d", gc.RateLimits, gc.IPv6Prefix)
	}
	if gc := guardConfig(cfg, true); len(gc.RateLimits) != 1 || gc.RateLimits[0] != (guard.RateLimit{Name: "sip-public", Zone: "public", Rate: 30, Per: time.Second, Burst: 60}) {
		t.Errorf("userspace rate limits %+v", gc.RateLimits)
	}
	if fc := firewallConfig(securityConfig(t, "ipv6_prefix = 56\n")); fc.IPv6Prefix != 56 {
		t.Errorf("ipv6_prefix = 56 gave %d", fc.IPv6Prefix)
	}
}

func TestDefenderBansAndPersists(t *testing.T) {
	cfg := securityConfig(t, "")
	var logs syncBuffer
	kernel := firewall.NewGuardFake()
	d := newDefender(cfg, kernel, nil, testLogger(&logs))
	scanner := netip.MustParseAddr("198.51.100.66")

	// a peer (implicitly allowed) is never banned, whatever it sends
	if !d.Inbound(netip.MustParseAddr("203.0.113.70"), scannerReq) {
		t.Fatal("request from a trunk source refused")
	}
	if d.Inbound(scanner, scannerReq) {
		t.Fatal("scanner request passed")
	}
	if d.Inbound(scanner, guard.Request{Method: "INVITE"}) {
		t.Fatal("banned source passed")
	}
	eventually(t, "kernel ban", func() bool { return kernel.Bans()[scanner] > 23*time.Hour })
	store := NewBanStore(cfg.Security.StateDir)
	eventually(t, "ban persisted", func() bool {
		bans, _, _ := store.Load(time.Now())
		return len(bans) == 1 && bans[0].Addr == scanner && bans[0].Policy == "scanners"
	})
	if !strings.Contains(logs.String(), "source banned") || !strings.Contains(logs.String(), "policy=scanners") {
		t.Errorf("ban not logged:\n%s", logs.String())
	}

	// log mode: reported, not enforced
	trialSrc := netip.MustParseAddr("198.51.100.9")
	req := guard.Request{Method: "REGISTER", UserAgent: "x", Unsolicited: true}
	if !d.Inbound(trialSrc, req) || !d.Inbound(trialSrc, req) || !d.Inbound(trialSrc, req) {
		t.Fatal("log-mode policy dropped traffic")
	}
	if !strings.Contains(logs.String(), "ban policy in log mode would ban") || !strings.Contains(logs.String(), "policy=trial") {
		t.Errorf("would-ban not logged:\n%s", logs.String())
	}
	if st := d.Stats(); st.WouldBan["trial"] != 1 || st.Bans != 1 {
		t.Errorf("stats %+v", st)
	}

	// manual ban and lift
	manual := netip.MustParseAddr("2001:db8::66")
	if _, err := d.BanNow(manual, time.Hour, "operator"); err != nil {
		t.Fatal(err)
	}
	if _, err := d.BanNow(netip.MustParseAddr("192.0.2.7"), time.Hour, "operator"); err == nil {
		t.Fatal("manual ban of an allow-listed address accepted")
	}
	eventually(t, "manual kernel ban", func() bool { _, ok := kernel.Bans()[manual]; return ok })
	if _, ok := d.Lift(manual); !ok {
		t.Fatal("lift found no ban")
	}
	if _, ok := kernel.Bans()[manual]; ok {
		t.Fatal("kernel ban still there when Lift returned")
	}
	if !d.Inbound(manual, guard.Request{Method: "INVITE"}) {
		t.Fatal("lifted source still dropped")
	}

	// reload: the scanner's network is allow-listed now, so its ban goes
	next := securityConfig(t, "")
	next.Security.Allow = append(next.Security.Allow, netip.MustParsePrefix("198.51.100.0/24"))
	if err := d.Reload(next); err != nil {
		t.Fatal(err)
	}
	eventually(t, "ban lifted by reload", func() bool { _, ok := kernel.Bans()[scanner]; return !ok })
	if got := kernel.Applied(); len(got) != 2 || len(got[1].Allow) != 5 {
		t.Errorf("kernel rules applied %d times, last %+v", len(got), got[len(got)-1])
	}
	d.Close()
	if !kernel.Closed() {
		t.Error("kernel guard not closed")
	}
}

func TestDefenderRestores(t *testing.T) {
	cfg := securityConfig(t, "")
	now := time.Now()
	store := NewBanStore(cfg.Security.StateDir)
	keep := guard.Ban{Addr: netip.MustParseAddr("198.51.100.66"), Policy: "scanners", Start: now.Add(-time.Hour), Expires: now.Add(time.Hour)}
	allowed := guard.Ban{Addr: netip.MustParseAddr("192.0.2.5"), Policy: "scanners", Start: now, Expires: now.Add(time.Hour)}
	if err := store.Save([]guard.Ban{keep, allowed}, now); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(store.Path(), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = f.WriteString(`{"addr":"198.51.100.`) // cut short
	f.Close()

	var logs syncBuffer
	kernel := firewall.NewGuardFake()
	d := newDefender(cfg, kernel, nil, testLogger(&logs))
	defer d.Close()
	if _, ok := d.Ban(keep.Addr); !ok {
		t.Fatal("persisted ban not restored")
	}
	if _, ok := d.Ban(allowed.Addr); ok {
		t.Fatal("persisted ban of an allow-listed address restored")
	}
	if got := kernel.Bans()[keep.Addr]; got < 59*time.Minute || got > time.Hour {
		t.Errorf("restored kernel ban for %v, want the remaining hour", got)
	}
	for _, want := range []string{"ban store damaged", "line 4: cut short", "persisted ban not restored", "bans restored"} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("log lacks %q:\n%s", want, logs.String())
		}
	}
}

func TestDefenderUserspaceOnly(t *testing.T) {
	cfg := securityConfig(t, "")
	var logs syncBuffer
	kernel := firewall.NewGuardFake()
	kernel.ApplyErr = errors.New("operation not permitted")
	d := newDefender(cfg, kernel, nil, testLogger(&logs))
	defer d.Close()
	if d.Kernel() {
		t.Fatal("kernel in use after Apply failed")
	}
	scanner := netip.MustParseAddr("198.51.100.66")
	d.Inbound(scanner, scannerReq)
	if d.Inbound(scanner, guard.Request{Method: "INVITE"}) {
		t.Fatal("userspace enforcement let a banned source through")
	}
	if n := strings.Count(logs.String(), "enforced in userspace only"); n != 1 {
		t.Errorf("userspace-only line logged %d times, want once:\n%s", n, logs.String())
	}
	if !strings.Contains(logs.String(), "operation not permitted") {
		t.Errorf("reason missing from the log:\n%s", logs.String())
	}
}

// Without the kernel the rate limits hold in userspace: 30/second with a
// burst of 60 on the public side, per source; peers and the allow list
// are exempt, and with the kernel the guard leaves the limits to it.
func TestDefenderUserspaceRateLimit(t *testing.T) {
	cfg := securityConfig(t, "")
	for _, withKernel := range []bool{false, true} {
		kernel := firewall.NewGuardFake()
		if !withKernel {
			kernel.ApplyErr = errors.New("operation not permitted")
		}
		d := newDefender(cfg, kernel, nil, hclog.NewNullLogger())
		flood := func(src netip.Addr, zone string) (passed int) {
			for range 200 {
				if d.Inbound(src, guard.Request{Zone: zone, Metered: true}) {
					passed++
				}
			}
			return passed
		}
		stranger := netip.MustParseAddr("198.51.100.66")
		got := flood(stranger, "public")
		switch {
		case withKernel && got != 200:
			t.Errorf("with the kernel: %d of 200 passed in userspace, want all", got)
		case !withKernel && (got < 60 || got > 62):
			t.Errorf("userspace: %d of 200 passed, want the burst of 60 (and what refilled meanwhile)", got)
		}
		if !withKernel {
			if n := d.Stats().RateLimited["sip-public"]; n != uint64(200-got) {
				t.Errorf("rate_limited counter %d, want %d", n, 200-got)
			}
			for _, exempt := range []netip.Addr{netip.MustParseAddr("192.0.2.9"), netip.MustParseAddr("203.0.113.70")} {
				if n := flood(exempt, "public"); n != 200 {
					t.Errorf("exempt %v: %d of 200 passed", exempt, n)
				}
			}
			if n := flood(stranger, "private"); n != 200 {
				t.Errorf("zone without a limit: %d of 200 passed", n)
			}
		}
		d.Close()
	}
}
