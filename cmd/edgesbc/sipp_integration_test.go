//go:build linux

package main_test

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/edgesbc/edgesbc/internal/testenv"
)

func TestMain(m *testing.M) { os.Exit(testenv.Main(m)) }

// sippDir holds the SIPp scenarios; sipp runs with it as working directory
// because play_pcap_audio paths are relative.
const sippDir = "testdata/sipp"

const (
	sipPort = 5060
	// rtpPackets is the number of RTP packets in testdata/sipp/g711a.pcap,
	// which uac.xml and pbx_uac.xml play once per call.
	rtpPackets = 100
	// sippMediaPort is sipp's default -mp, the RTP port in its SDP.
	sippMediaPort = 6000
)

// endpoint is where one sipp instance runs.
type endpoint struct {
	ns   *testenv.Netns
	addr netip.Addr
}

// scenarioPair is a caller scenario and the callee scenario it expects.
type scenarioPair struct {
	name     string
	uac, uas string
	service  string   // the called number, -s
	uasArgs  []string // extra callee arguments, such as -rtp_echo
	uacArgs  []string // extra caller arguments, such as -t t1
	rtp      bool     // the caller plays g711a.pcap, the callee echoes it
}

// callBound is the -timeout of a caller: the longest scenario (a 408 after
// sip.invite_timeout, or 3.5 s of audio) plus room. The callee gets a little
// more, so that it outlives its caller and reports on the same call.
const callBound = 12 * time.Second

// startCallee starts the callee scenario of p at callee and returns once it
// listens.
func startCallee(t *testing.T, callee endpoint, p scenarioPair) *testenv.SIPp {
	t.Helper()
	args := []string{"-sf", p.uas, "-i", callee.addr.String(), "-p", strconv.Itoa(sipPort),
		"-timeout", fmt.Sprintf("%ds", int((callBound+3*time.Second)/time.Second))}
	return testenv.StartSIPp(t, callee.ns, scenarioDir(t), append(args, p.uasArgs...)...)
}

// startCaller starts the caller scenario of p at caller toward target.
func startCaller(t *testing.T, caller endpoint, target netip.AddrPort, p scenarioPair) *testenv.SIPp {
	t.Helper()
	args := []string{"-sf", p.uac, "-i", caller.addr.String(), "-p", strconv.Itoa(sipPort), "-s", p.service,
		"-timeout", fmt.Sprintf("%ds", int(callBound/time.Second))}
	args = append(append(args, p.uacArgs...), target.String())
	return testenv.StartSIPp(t, caller.ns, scenarioDir(t), args...)
}

// runCaller runs the caller scenario of p at caller toward target and
// waits for it.
func runCaller(t *testing.T, caller endpoint, target netip.AddrPort, p scenarioPair) (testenv.SIPpResult, error) {
	t.Helper()
	return startCaller(t, caller, target, p).Wait()
}

// runCall runs the pair p as one call from caller to callee through target
// and checks that both sides completed exactly one call.
func runCall(t *testing.T, caller, callee endpoint, target netip.AddrPort, p scenarioPair) {
	t.Helper()
	uas := startCallee(t, callee, p)
	res, err := runCaller(t, caller, target, p)
	expectOneCall(t, "caller "+p.uac, res, err)
	res, err = uas.Wait()
	expectOneCall(t, "callee "+p.uas, res, err)
}

func expectOneCall(t *testing.T, who string, res testenv.SIPpResult, err error) {
	t.Helper()
	if err != nil {
		t.Errorf("%s: %v", who, err)
		return
	}
	if res != (testenv.SIPpResult{Exit: 0, Successful: 1}) {
		t.Errorf("%s: exit %d, %d successful, %d failed calls; want exit 0 and one successful call",
			who, res.Exit, res.Successful, res.Failed)
	}
}

func scenarioDir(t *testing.T) string {
	t.Helper()
	dir, err := filepath.Abs(sippDir)
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

// directPairs are the scenario pairs as they run without an SBC: every
// caller scenario against the callee scenario it is written for.
var directPairs = []scenarioPair{
	{name: "answer_with_rtp", uac: "uac.xml", uas: "uas.xml", service: "15551234567", uasArgs: []string{"-rtp_echo"}, rtp: true},
	{name: "pbx_answer_with_rtp", uac: "pbx_uac.xml", uas: "uas.xml", service: "15551234567", uasArgs: []string{"-rtp_echo"}, rtp: true},
	{name: "callee_hangs_up", uac: "uac_expect_bye.xml", uas: "uas_bye.xml", service: "15551234567"},
	{name: "callee_hangs_up_during_audio", uac: "uac_media_expect_bye.xml", uas: "uas_bye.xml", service: "15551234567"},
	{name: "cancel_while_ringing", uac: "uac_cancel.xml", uas: "uas_ring.xml", service: "15551234567"},
	{name: "cancel_before_ringing", uac: "uac_cancel_early.xml", uas: "uas_silent.xml", service: "15551234567"},
	{name: "reject_486", uac: "uac_expect_486.xml", uas: "uas_reject_486.xml", service: "15551234567"},
	{name: "reject_404", uac: "uac_expect_404.xml", uas: "uas_reject_404.xml", service: "15551234567"},
	{name: "reject_503", uac: "uac_expect_503.xml", uas: "uas_reject_503.xml", service: "15551234567"},
	{name: "reject_408", uac: "uac_expect_408.xml", uas: "uas_reject_408.xml", service: "15551234567"},
	// in-dialog flows (dialog_integration_test.go), proven without the SBC too
	holdPair, reinviteNoSDPPair, lateOfferPair, reinvite488Pair, infoPair, updatePair,
}

// TestIntegrationSIPpDirect proves the scenarios on their own: each pair
// runs over a plain veth link with no SBC in between and must succeed, with
// correct transaction branches on the wire and audio both ways. A failure
// in TestIntegrationCalls is then the SBC's, not the scenarios'.
func TestIntegrationSIPpDirect(t *testing.T) {
	testenv.Integration(t)
	testenv.RequireTool(t, "sipp")
	testenv.RequireTool(t, "tcpdump")
	a, b := testenv.NewNetns(t, "esbc-caller"), testenv.NewNetns(t, "esbc-callee")
	caller := endpoint{a, netip.MustParseAddr("198.51.100.1")}
	callee := endpoint{b, netip.MustParseAddr("198.51.100.2")}
	testenv.Link(t, a, "eth0", netip.PrefixFrom(caller.addr, 24), b, "eth0", netip.PrefixFrom(callee.addr, 24))
	target := netip.AddrPortFrom(callee.addr, sipPort)

	for _, p := range directPairs {
		t.Run(p.name, func(t *testing.T) {
			capture := testenv.StartCapture(t, b, "eth0", "udp")
			runCall(t, caller, callee, target, p)
			pkts, err := testenv.ReadUDP(capture.Stop())
			if err != nil {
				t.Fatal(err)
			}
			msgs := sipMessages(pkts)
			if !slices.ContainsFunc(msgs, func(m sipMessage) bool { return m.Method == "INVITE" }) {
				t.Errorf("no INVITE captured")
			}
			for _, problem := range checkTransactions(msgs, caller.addr) {
				t.Errorf("caller: %s", problem)
			}
			if p.rtp {
				sent, echoed := 0, 0
				for _, pkt := range pkts {
					switch {
					case pkt.Src == netip.AddrPortFrom(caller.addr, sippMediaPort) && pkt.Dst == netip.AddrPortFrom(callee.addr, sippMediaPort):
						sent++
					case pkt.Src == netip.AddrPortFrom(callee.addr, sippMediaPort) && pkt.Dst == netip.AddrPortFrom(caller.addr, sippMediaPort):
						echoed++
					}
				}
				if sent != rtpPackets || echoed != rtpPackets {
					t.Errorf("RTP: %d packets sent, %d echoed; want %d each", sent, echoed, rtpPackets)
				}
			}
		})
	}

	// The expect scenarios really check the code: a 404 fails a caller
	// that expects 486.
	t.Run("wrong_code_fails", func(t *testing.T) {
		uas := startCallee(t, callee, scenarioPair{uas: "uas_reject_404.xml"})
		res, err := runCaller(t, caller, target, scenarioPair{uac: "uac_expect_486.xml", service: "15551234567"})
		if err != nil {
			t.Fatal(err)
		}
		if res.Exit == 0 || res.Failed != 1 || res.Successful != 0 {
			t.Errorf("caller expecting 486 got 404: %+v, want a failed call", res)
		}
		_, _ = uas.Wait() // its verdict depends on timing; only the caller's matters
	})
}

// scenarioFiles lists the scenario files, to check every one is exercised.
func scenarioFiles(t *testing.T) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(sippDir, "*.xml"))
	if err != nil {
		t.Fatal(err)
	}
	for i, f := range files {
		files[i] = filepath.Base(f)
	}
	return files
}

// TestScenarioCoverage keeps directPairs in step with the files: a scenario
// nobody runs is a scenario nobody has proven. The few that expect what only
// the SBC sends (sbcOnlyScenarios) are proven by their SBC tests instead.
func TestScenarioCoverage(t *testing.T) {
	used := map[string]bool{}
	for _, p := range directPairs {
		used[p.uac], used[p.uas] = true, true
	}
	for _, f := range sbcOnlyScenarios {
		used[f] = true
	}
	for _, f := range scenarioFiles(t) {
		if !used[f] {
			t.Errorf("%s/%s is not run by TestIntegrationSIPpDirect", sippDir, f)
		}
		delete(used, f)
	}
	for f := range used {
		t.Errorf("TestIntegrationSIPpDirect runs %s, which is not in %s", f, sippDir)
	}
	if _, err := os.Stat(filepath.Join(sippDir, "g711a.pcap")); err != nil {
		t.Errorf("audio for play_pcap_audio: %v", err)
	}
	// Every scenario must name the audio file relative to sippDir, so runs
	// do not depend on where sip-tester is installed.
	for _, f := range scenarioFiles(t) {
		b, err := os.ReadFile(filepath.Join(sippDir, f))
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(b), "play_pcap_audio") && !strings.Contains(string(b), `play_pcap_audio="g711a.pcap"`) {
			t.Errorf("%s plays audio from somewhere other than %s/g711a.pcap", f, sippDir)
		}
	}
}
