//go:build linux

package main_test

import (
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/edgesbc/edgesbc/internal/testenv"
)

// This file runs calls whose legs use different transports: the PBX on UDP
// and the carrier on TCP (both directions), and both legs on TCP, with
// real SIPp peers (-t t1: one TCP connection per SIPp). Besides SIPp's own
// verdict, each run checks that the carrier link carried SIP over TCP only
// and the UDP PBX link over UDP only, that RTP was relayed both ways, that
// SDP was anchored at the SBC, and that nothing of the private side is in
// any packet or in the reassembled TCP streams on the carrier link.

// tcpArgs makes SIPp speak SIP over a single TCP connection.
var tcpArgs = []string{"-t", "t1"}

// tcpConfig is integration.hcl with both zones serving UDP and TCP, the
// carrier on TCP and, when pbxTCP, the PBX too. It returns the file's path.
func tcpConfig(t *testing.T, pbxTCP bool) string {
	t.Helper()
	b, err := os.ReadFile(integrationConfig)
	if err != nil {
		t.Fatal(err)
	}
	cfg := regexp.MustCompile(`(?m)^(\s*sip_port\s*=\s*5060\n)`).ReplaceAllString(string(b), "$1  transports = [\"udp\", \"tcp\"]\n")
	peer := func(addr string) {
		re := regexp.MustCompile(`(?m)^(\s*address\s*=\s*"` + regexp.QuoteMeta(addr) + `"\n)`)
		if !re.MatchString(cfg) {
			t.Fatalf("%s: no peer at %s", integrationConfig, addr)
		}
		cfg = re.ReplaceAllString(cfg, "$1  transport = \"tcp\"\n")
	}
	peer("203.0.113.2:5060")
	if pbxTCP {
		peer("10.91.1.2:5060")
	}
	if strings.Count(cfg, "transports") != 2 {
		t.Fatalf("tcp config: zones not rewritten:\n%s", cfg)
	}
	path := filepath.Join(t.TempDir(), "tcp.hcl")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// overTCP returns p with the caller (uac) and/or the callee (uas) on TCP.
func overTCP(p scenarioPair, uac, uas bool) scenarioPair {
	if uac {
		p.uacArgs = append(append([]string(nil), p.uacArgs...), tcpArgs...)
	}
	if uas {
		p.uasArgs = append(append([]string(nil), p.uasArgs...), tcpArgs...)
	}
	return p
}

var (
	tcpRTPPair = scenarioPair{name: "answer_with_rtp", uac: "pbx_uac.xml", uas: "uas.xml",
		uasArgs: []string{"-rtp_echo"}, rtp: true}
	tcpInboundRTPPair = scenarioPair{name: "answer_with_rtp", uac: "uac.xml", uas: "uas.xml",
		uasArgs: []string{"-rtp_echo"}, rtp: true}
	tcpByePair = scenarioPair{name: "callee_hangs_up", uac: "uac_expect_bye.xml", uas: "uas_bye.xml"}
)

// tcpFlow is one call of a TCP run.
type tcpFlow struct {
	name string
	sbcCase
}

// mixedFlows run with the PBX on UDP and the carrier on TCP.
var mixedFlows = []tcpFlow{
	{"pbx_udp_to_carrier_tcp_rtp", outboundCall(overTCP(tcpRTPPair, false, true))},
	{"carrier_tcp_to_pbx_udp_rtp", inboundCall(overTCP(tcpInboundRTPPair, true, false))},
	{"bye_from_carrier_tcp", outboundCall(overTCP(tcpByePair, false, true))},
	{"bye_toward_carrier_tcp", inboundCall(overTCP(tcpByePair, true, false))},
	{"reinvite_toward_carrier_tcp", outboundCall(overTCP(holdPair, false, true))},
	{"reinvite_from_carrier_tcp", inboundCall(overTCP(holdPair, true, false))},
}

// bothTCPFlows run with both peers on TCP.
var bothTCPFlows = []tcpFlow{
	{"pbx_tcp_to_carrier_tcp_rtp", outboundCall(overTCP(tcpRTPPair, true, true))},
	{"carrier_tcp_to_pbx_tcp_rtp", inboundCall(overTCP(tcpInboundRTPPair, true, true))},
	{"reinvite_both_tcp", outboundCall(overTCP(holdPair, true, true))},
}

// TestIntegrationTCPConversion: PBX on UDP, carrier on TCP.
func TestIntegrationTCPConversion(t *testing.T) {
	runTCPFlows(t, newLabConfig(t, tcpConfig(t, false)), mixedFlows, false)
}

// TestIntegrationTCPBothLegs: PBX and carrier on TCP.
func TestIntegrationTCPBothLegs(t *testing.T) {
	runTCPFlows(t, newLabConfig(t, tcpConfig(t, true)), bothTCPFlows, true)
}

func runTCPFlows(t *testing.T, l *lab, flows []tcpFlow, pbxTCP bool) {
	base := l.daemon.Status(t)
	outbound, inbound := 0, 0
	for _, f := range flows {
		select {
		case <-l.daemon.Done():
			t.Fatalf("daemon exited; flows from %s on not run", f.name)
		default:
		}
		t.Run(f.name, func(t *testing.T) { l.call(t, f.sbcCase) })
		if f.inbound {
			inbound++
		} else {
			outbound++
		}
	}
	t.Run("daemon_back_to_idle", func(t *testing.T) { l.assertIdle(t, base) })
	carrierPkts, pbxPkts := l.stopCaptures(t)
	carrierTCP := tcpSIP(carrierPkts, 5060)
	pbxStreams := tcpSIP(pbxPkts, 5060)

	t.Run("carrier_link_sip_over_tcp_only", func(t *testing.T) {
		if n := len(sipMessages(carrierPkts)); n != 0 {
			t.Errorf("%d SIP datagrams on the carrier link, want none (TCP peer)", n)
		}
		msgs := sipMessagesOf(carrierTCP)
		checkRouting(t, "carrier", initialInvites(msgs), l.sbcPublic.Addr(), l.carrier.addr, dialogOutboundNumber, outbound)
		for _, m := range msgs {
			if m.Method != "" && m.Src.Addr() == l.sbcPublic.Addr() && !strings.HasPrefix(m.header("via"), "SIP/2.0/TCP ") {
				t.Errorf("%v: Via %q, want SIP/2.0/TCP", m, m.header("via"))
			}
			if ct := m.header("contact"); m.Src.Addr() == l.sbcPublic.Addr() && ct != "" && !strings.Contains(ct, "transport=tcp") {
				t.Errorf("%v: Contact %q, want ;transport=tcp", m, ct)
			}
		}
		for _, p := range checkSDP(msgs, l.sbcPublic.Addr(), l.carrier.addr) {
			t.Errorf("to carrier: %s", p)
		}
	})

	t.Run("pbx_link_transport", func(t *testing.T) {
		udp, tcp := sipMessages(pbxPkts), sipMessagesOf(pbxStreams)
		msgs := udp
		if pbxTCP {
			msgs = tcp
			if len(udp) != 0 {
				t.Errorf("%d SIP datagrams on the pbx link, want none (TCP peer)", len(udp))
			}
		} else if len(tcp) != 0 {
			t.Errorf("%d SIP messages over TCP on the pbx link, want none (UDP peer)", len(tcp))
		}
		checkRouting(t, "pbx", initialInvites(msgs), l.sbcPrivate.Addr(), l.pbx.addr, dialogInboundNumber, inbound)
		for _, p := range checkSDP(msgs, l.sbcPrivate.Addr(), l.pbx.addr) {
			t.Errorf("to pbx: %s", p)
		}
	})

	t.Run("no_inside_topology_on_carrier_link", func(t *testing.T) {
		if len(carrierTCP) == 0 {
			t.Fatal("no SIP over TCP captured on the carrier link")
		}
		// per packet (addresses, segments) and per reassembled message, so
		// nothing split across segments escapes
		for _, leak := range findLeaks(carrierPkts, l.topo.PBXAddr.Masked(), forbiddenOnCarrier) {
			t.Error(leak)
		}
		for _, leak := range findLeaks(carrierTCP, l.topo.PBXAddr.Masked(), forbiddenOnCarrier) {
			t.Error(leak)
		}
	})

	t.Run("rtp_relayed_by_sbc", func(t *testing.T) { l.checkRelayedRTP(t, carrierPkts, pbxPkts) })
}

// churnCalls is the number of calls of TestIntegrationTCPConnectionChurn,
// each on a TCP connection of its own.
const churnCalls = 60

// TestIntegrationTCPConnectionChurn: the carrier places churnCalls calls,
// 10 per second and at most 10 at a time (the lab's 50 media port pairs
// hold that with quarantine), each on a new TCP connection (-t tn); the
// PBX on UDP
// hangs each up. Every call must complete on both sides, and once SIPp has
// closed its connections the daemon must be back to idle, its goroutine
// count included: no connection leaves anything behind.
func TestIntegrationTCPConnectionChurn(t *testing.T) {
	l := newLabConfig(t, tcpConfig(t, false))
	base := l.daemon.Status(t)
	p := scenarioPair{uac: "uac_expect_bye.xml", uas: "uas_bye.xml", service: dialogInboundNumber,
		uasArgs: []string{"-m", strconv.Itoa(churnCalls)},
		uacArgs: []string{"-t", "tn", "-max_socket", "1000", "-m", strconv.Itoa(churnCalls), "-r", "10", "-l", "10"}}
	start := time.Now()
	uas := startCallee(t, l.pbx, p)
	uac := startCaller(t, l.carrier, l.sbcPublic, p)
	for _, s := range []struct {
		who  string
		sipp *testenv.SIPp
	}{{"caller", uac}, {"callee", uas}} {
		res, err := s.sipp.Wait()
		if err != nil {
			t.Fatalf("%s: %v", s.who, err)
		}
		if res.Exit != 0 || res.Successful != churnCalls || res.Failed != 0 {
			t.Errorf("%s: %+v, want %d successful calls", s.who, res, churnCalls)
		}
	}
	t.Logf("%d calls over %d TCP connections in %v", churnCalls, churnCalls, time.Since(start).Round(time.Millisecond))
	l.assertIdle(t, base)
	carrierPkts, _ := l.stopCaptures(t)
	conns := map[netip.AddrPort]bool{}
	for _, pk := range carrierPkts {
		if pk.Proto == testenv.ProtoTCP && pk.Dst == l.sbcPublic {
			conns[pk.Src] = true
		}
	}
	if len(conns) != churnCalls {
		t.Errorf("%d TCP connections from the carrier, want %d (one per call)", len(conns), churnCalls)
	}
	for _, leak := range findLeaks(tcpSIP(carrierPkts, sipPort), l.topo.PBXAddr.Masked(), forbiddenOnCarrier) {
		t.Error(leak)
	}
}
