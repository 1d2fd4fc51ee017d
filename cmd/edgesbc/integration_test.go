//go:build linux

package main_test

import (
	"bytes"
	"context"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/edgesbc/edgesbc/internal/testenv"
)

// integrationConfig is the daemon configuration of the integration tests.
const integrationConfig = "testdata/integration.hcl"

// forbiddenOnCarrier is the inside topology that pbx_uac.xml puts into its
// INVITE (internal host names, product names, private addresses). None of
// it may ever appear on the carrier's link.
var forbiddenOnCarrier = []string{"10.91.1.", "pbx01.corp.internal", "CorpPBX"}

const (
	// goroutineMargin is how far above its value right after start the
	// daemon's goroutine count may be once every call has ended. Anything
	// per call (transactions, relays, timers) must be gone by then.
	goroutineMargin = 5
	// drainTimeout bounds the wait for the daemon to return to idle after
	// the last call: media quarantine (1 s here) plus SIP transaction
	// timers that outlive a call on UDP (Timer D/J/K, up to 32 s).
	drainTimeout = 45 * time.Second
	// minRTP is the fewest relayed RTP packets accepted per direction and
	// link. Each RTP call plays rtpPackets packets and the callee echoes
	// them, so a working relay shows about 2*rtpPackets each way.
	minRTP = rtpPackets / 2
)

// sbcCase is one call through the SBC: a scenario pair and its direction.
type sbcCase struct {
	scenarioPair
	inbound bool // the carrier calls the PBX; otherwise the PBX calls out
}

var sbcCases = []sbcCase{
	{scenarioPair: scenarioPair{name: "pbx_to_carrier_rtp", uac: "pbx_uac.xml", uas: "uas.xml", service: "15551234567", uasArgs: []string{"-rtp_echo"}, rtp: true}},
	{scenarioPair: scenarioPair{name: "carrier_to_pbx_rtp", uac: "uac.xml", uas: "uas.xml", service: "1000", uasArgs: []string{"-rtp_echo"}, rtp: true}, inbound: true},
	{scenarioPair: scenarioPair{name: "cancel_while_ringing", uac: "uac_cancel.xml", uas: "uas_ring.xml", service: "15551234567"}},
	{scenarioPair: scenarioPair{name: "cancel_before_ringing", uac: "uac_cancel_early.xml", uas: "uas_silent.xml", service: "15551234567"}},
	{scenarioPair: scenarioPair{name: "callee_hangs_up", uac: "uac_expect_bye.xml", uas: "uas_bye.xml", service: "15551234567"}},
	{scenarioPair: scenarioPair{name: "pbx_hangs_up_inbound", uac: "uac_expect_bye.xml", uas: "uas_bye.xml", service: "1000"}, inbound: true},
	{scenarioPair: scenarioPair{name: "reject_486", uac: "uac_expect_486.xml", uas: "uas_reject_486.xml", service: "15551234567"}},
	{scenarioPair: scenarioPair{name: "reject_404", uac: "uac_expect_404.xml", uas: "uas_reject_404.xml", service: "15551234567"}},
	{scenarioPair: scenarioPair{name: "reject_503", uac: "uac_expect_503.xml", uas: "uas_reject_503.xml", service: "15551234567"}},
	{scenarioPair: scenarioPair{name: "reject_486_inbound", uac: "uac_expect_486.xml", uas: "uas_reject_486.xml", service: "1000"}, inbound: true},
	// sip.invite_timeout (4 s) expires: 408 to the caller, CANCEL to the callee.
	{scenarioPair: scenarioPair{name: "silent_callee_408", uac: "uac_expect_408.xml", uas: "uas_silent.xml", service: "15551234567"}},
}

// lab is the topology with the daemon running in its SBC namespace.
type lab struct {
	topo                       *testenv.Topology
	daemon                     *testenv.Daemon
	pbx, carrier               endpoint
	sbcPrivate, sbcPublic      netip.AddrPort // the SBC's SIP listeners
	pbxCapture, carrierCapture *testenv.Capture
	media                      portRange
}

// newLab builds the topology, starts captures on both peers' interfaces
// (before the daemon, so that nothing it sends is missed) and starts the
// daemon with testdata/integration.hcl.
func newLab(t *testing.T) *lab {
	t.Helper()
	return newLabWith(t, nil)
}

// newLabWith is newLab with a hook that prepares the topology before the
// daemon starts.
func newLabWith(t *testing.T, before func(*testenv.Topology)) *lab {
	t.Helper()
	testenv.Integration(t)
	testenv.RequireTool(t, "sipp")
	testenv.RequireTool(t, "tcpdump")
	cfg, err := os.ReadFile(integrationConfig)
	if err != nil {
		t.Fatal(err)
	}
	topo := testenv.NewTopology(t)
	l := &lab{
		topo:       topo,
		pbx:        endpoint{topo.PBX, topo.PBXAddr.Addr()},
		carrier:    endpoint{topo.Carrier, topo.CarrierAddr.Addr()},
		sbcPrivate: netip.AddrPortFrom(topo.SBCPrivateAddr.Addr(), sipPort),
		sbcPublic:  netip.AddrPortFrom(topo.SBCPublicAddr.Addr(), sipPort),
		media:      mediaRange(t, string(cfg)),
	}
	l.carrierCapture = testenv.StartCapture(t, topo.Carrier, topo.CarrierIf, "")
	l.pbxCapture = testenv.StartCapture(t, topo.PBX, topo.PBXIf, "")
	if before != nil {
		before(topo)
	}
	l.daemon = testenv.StartDaemon(t, topo.SBC, string(cfg))
	return l
}

// assertIdle waits until the daemon holds no call, session, port or dialog
// and its goroutines are back near their count at start.
func (l *lab) assertIdle(t *testing.T, base testenv.Status) {
	t.Helper()
	st, ok := l.daemon.WaitStatus(drainTimeout, func(s testenv.Status) bool {
		return s.Calls == 0 && s.Sessions == 0 && s.PortsInUse == 0 && s.Dialogs == 0 &&
			s.Goroutines <= base.Goroutines+goroutineMargin
	})
	if !ok {
		t.Errorf("status %v after the last call: %+v; want 0 calls, sessions, ports and dialogs, and at most %d goroutines (%d at start + %d)",
			drainTimeout, st, base.Goroutines+goroutineMargin, base.Goroutines, goroutineMargin)
	}
}

// stopCaptures ends the lab-wide captures and returns what each link saw.
func (l *lab) stopCaptures(t *testing.T) (carrier, pbx []testenv.Packet) {
	t.Helper()
	carrier, err := testenv.ReadPcap(l.carrierCapture.Stop())
	if err != nil {
		t.Fatalf("carrier capture: %v", err)
	}
	pbx, err = testenv.ReadPcap(l.pbxCapture.Stop())
	if err != nil {
		t.Fatalf("pbx capture: %v", err)
	}
	return carrier, pbx
}

// call runs one sbcCase through the SBC.
func (l *lab) call(t *testing.T, c sbcCase) {
	t.Helper()
	if c.inbound {
		runCall(t, l.carrier, l.pbx, l.sbcPublic, c.scenarioPair)
		return
	}
	runCall(t, l.pbx, l.carrier, l.sbcPrivate, c.scenarioPair)
}

// mediaRange reads media.port_range from the config text, so the tests and
// the daemon agree on what counts as relayed RTP.
func mediaRange(t *testing.T, cfg string) portRange {
	t.Helper()
	m := regexp.MustCompile(`(?m)^\s*port_range\s*=\s*"(\d+)-(\d+)"`).FindStringSubmatch(cfg)
	if m == nil {
		t.Fatalf("%s: no media port_range", integrationConfig)
	}
	lo, err1 := strconv.ParseUint(m[1], 10, 16)
	hi, err2 := strconv.ParseUint(m[2], 10, 16)
	if err1 != nil || err2 != nil || lo > hi {
		t.Fatalf("%s: bad port_range %q", integrationConfig, m[0])
	}
	return portRange{uint16(lo), uint16(hi)}
}

// TestIntegrationCalls runs every call flow through one daemon, one after
// the other, then checks what crossed each link and that the daemon is back
// to idle.
func TestIntegrationCalls(t *testing.T) {
	l := newLab(t)
	base := l.daemon.Status(t)
	if base.Calls != 0 || base.Sessions != 0 || base.PortsInUse != 0 || base.Dialogs != 0 {
		t.Errorf("status right after start: %+v, want no calls, sessions, ports or dialogs", base)
	}

	for _, c := range sbcCases {
		select {
		case <-l.daemon.Done():
			t.Fatalf("daemon exited; calls from %s on not run", c.name)
		default:
		}
		t.Run(c.name, func(t *testing.T) { l.call(t, c) })
	}

	t.Run("daemon_back_to_idle", func(t *testing.T) { l.assertIdle(t, base) })
	carrierPkts, pbxPkts := l.stopCaptures(t)
	carrierSIP, pbxSIP := sipMessages(carrierPkts), sipMessages(pbxPkts)

	t.Run("no_inside_topology_on_carrier_link", func(t *testing.T) {
		if len(carrierSIP) == 0 {
			t.Fatal("no SIP captured on the carrier link")
		}
		for _, leak := range findLeaks(carrierPkts, l.topo.PBXAddr.Masked(), forbiddenOnCarrier) {
			t.Error(leak)
		}
	})

	t.Run("rtp_relayed_by_sbc", func(t *testing.T) {
		for _, side := range []struct {
			name      string
			pkts      []testenv.Packet
			sbc, peer netip.Addr
		}{
			{"pbx", pbxPkts, l.sbcPrivate.Addr(), l.pbx.addr},
			{"carrier", carrierPkts, l.sbcPublic.Addr(), l.carrier.addr},
		} {
			r := checkRTP(side.pkts, side.sbc, side.peer, l.media, sipPort)
			if r.ToPeer < minRTP || r.FromPeer < minRTP {
				t.Errorf("%s link: %d RTP packets from %v media ports to the %s, %d back; want at least %d each way",
					side.name, r.ToPeer, side.sbc, side.name, r.FromPeer, minRTP)
			}
			for _, s := range r.Strays {
				t.Errorf("%s link: media not from %v ports %d-%d: %s", side.name, side.sbc, l.media.min, l.media.max, s)
			}
		}
	})

	t.Run("sdp_anchored_at_sbc", func(t *testing.T) {
		for _, p := range checkSDP(pbxSIP, l.sbcPrivate.Addr(), l.pbx.addr) {
			t.Errorf("to pbx: %s", p)
		}
		for _, p := range checkSDP(carrierSIP, l.sbcPublic.Addr(), l.carrier.addr) {
			t.Errorf("to carrier: %s", p)
		}
	})

	t.Run("routing", func(t *testing.T) {
		var outbound, inbound int
		for _, c := range sbcCases {
			if c.inbound {
				inbound++
			} else {
				outbound++
			}
		}
		checkRouting(t, "carrier", carrierSIP, l.sbcPublic.Addr(), l.carrier.addr, "15551234567", outbound)
		checkRouting(t, "pbx", pbxSIP, l.sbcPrivate.Addr(), l.pbx.addr, "1000", inbound)
	})
}

// checkRouting checks the INVITEs the SBC sent to a peer: one INVITE
// transaction per call routed there, each with the dialled user kept and the
// peer's configured address as host (sip:USER@PEER-IP[:port][;params]).
func checkRouting(t *testing.T, name string, msgs []sipMessage, sbc, peer netip.Addr, user string, wantCalls int) {
	t.Helper()
	calls := map[string]bool{}
	for _, m := range msgs {
		if m.Method != "INVITE" || m.Src.Addr() != sbc {
			continue
		}
		calls[m.CallID] = true
		uri := strings.TrimPrefix(m.RequestURI, "sip:")
		gotUser, hostPort, _ := strings.Cut(uri, "@")
		hostPort, _, _ = strings.Cut(hostPort, ";")
		host := hostPort
		if ap, err := netip.ParseAddrPort(hostPort); err == nil {
			host = ap.Addr().String()
		}
		if gotUser != user || host != peer.String() {
			t.Errorf("to %s: %v: Request-URI %q, want sip:%s@%v", name, m, m.RequestURI, user, peer)
		}
	}
	if len(calls) != wantCalls {
		t.Errorf("to %s: INVITEs of %d calls, want %d", name, len(calls), wantCalls)
	}
}

// TestIntegrationGracefulStop stops the daemon with SIGTERM during a call:
// both parties must get a BYE and the daemon must exit with status 0.
func TestIntegrationGracefulStop(t *testing.T) {
	l := newLab(t)
	uas := startCallee(t, l.carrier, scenarioPair{uas: "uas.xml"})
	uac := startCaller(t, l.pbx, l.sbcPrivate, scenarioPair{uac: "uac_expect_bye.xml", service: "15551234567"})

	// Established means the callee has the ACK.
	ackSeen := func() bool {
		b, _ := os.ReadFile(filepath.Join(uas.Dir(), "messages.log"))
		return bytes.Contains(b, []byte("ACK sip:"))
	}
	deadline := time.Now().Add(callBound)
	for !ackSeen() {
		if time.Now().After(deadline) {
			t.Fatalf("call not established after %v", callBound)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if st := l.daemon.Status(t); st.Calls != 1 {
		t.Errorf("status during the call: %+v, want 1 call", st)
	}

	if err := l.daemon.Stop(); err != nil {
		t.Errorf("graceful stop: %v", err)
	}
	res, err := uac.Wait()
	expectOneCall(t, "caller uac_expect_bye.xml (BYE from the SBC)", res, err)
	res, err = uas.Wait()
	expectOneCall(t, "callee uas.xml (BYE from the SBC)", res, err)
}

// TestIntegrationCheck runs `edgesbc check` on the integration config and
// on broken ones: exit status and file:line:col diagnostics.
func TestIntegrationCheck(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: skipped in -short mode (builds the daemon)")
	}
	bin := testenv.BuildBinary(t)

	check := func(t *testing.T, path string) (int, string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, bin, "check", "-config", path).CombinedOutput()
		if err == nil {
			return 0, string(out)
		}
		if ee, ok := err.(*exec.ExitError); ok && ee.Exited() {
			return ee.ExitCode(), string(out)
		}
		t.Fatalf("edgesbc check: %v\n%s", err, out)
		return 0, ""
	}

	t.Run("valid", func(t *testing.T) {
		if code, out := check(t, integrationConfig); code != 0 {
			t.Errorf("edgesbc check %s: exit %d, want 0\n%s", integrationConfig, code, out)
		}
	})

	peers := `
pbx "main" {
  zone    = "private"
  address = "10.91.1.2:5060"
}
trunk "carrier" {
  zone    = "public"
  address = "203.0.113.2:5060"
}
`
	zones := `zone "private" {
  address = "10.91.1.1"
}
zone "public" {
  address = "203.0.113.1"
}
`
	for _, tt := range []struct {
		name   string
		config string
		lines  []int // every line that must get a diagnostic
	}{{
		name: "unknown zone",
		config: zones + `pbx "main" {
  zone    = "privat"
  address = "10.91.1.2:5060"
}
trunk "carrier" {
  zone    = "public"
  address = "203.0.113.2:5060"
}
`,
		lines: []int{8},
	}, {
		name: "all errors in one pass",
		config: `zone "private" {
  address = "10.91.1.300"
}
zone "public" {
  address = "203.0.113.1"
}
media {
  port_range = "20999-20000"
}
` + peers,
		lines: []int{2, 8},
	}, {
		name: "syntax",
		config: zones + peers + `media {
  port_range = "20000-20999"
`,
		lines: []int{16}, // the unclosed "media {"
	}} {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "bad.hcl")
			if err := os.WriteFile(path, []byte(tt.config), 0o600); err != nil {
				t.Fatal(err)
			}
			code, out := check(t, path)
			if code == 0 {
				t.Fatalf("edgesbc check: exit 0 for a broken config\n%s", out)
			}
			diag := regexp.MustCompile(`(?m)^\S*` + regexp.QuoteMeta(filepath.Base(path)) + `:(\d+):(\d+): `)
			var got []int
			for _, m := range diag.FindAllStringSubmatch(out, -1) {
				n, _ := strconv.Atoi(m[1])
				got = append(got, n)
			}
			if len(got) == 0 {
				t.Fatalf("edgesbc check: no file:line:col diagnostics in\n%s", out)
			}
			for _, line := range tt.lines {
				if !slices.Contains(got, line) {
					t.Errorf("no diagnostic at line %d (got lines %v):\n%s", line, got, out)
				}
			}
		})
	}
}
