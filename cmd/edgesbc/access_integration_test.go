//go:build linux

package main_test

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/edgesbc/edgesbc/internal/testenv"
)

// The access lab is the security lab with a remote phone on a link of its
// own on the public side, and remote phones registering through the SBC
// with the PBX, which is a digest registrar (sipp, registrar_digest.xml):
//
//	PBX 10.91.1.2 ── 10.91.1.1 [ SBC ] 203.0.113.1 ── 203.0.113.2 carrier
//	(registrar, realm                 198.51.100.1 ── 198.51.100.66 attacker (svcrack)
//	 pbx.lab.test)                    198.51.102.1 ── 198.51.102.70 phone 1001
var phoneAddr = netip.MustParseAddr("198.51.102.70")

const (
	accessDomain   = "pbx.lab.test"
	accessPassword = "s3cret-lab" // 1001's password at the registrar
)

// accessConfig turns the security lab's configuration into one with an
// access mode for the public side, and the scanners policy in log mode:
// svcrack's User-Agent is friendly-scanner, and the test is about what the
// auth-failures policy does with it.
func accessConfig(cfg string) string {
	cfg = strings.Replace(cfg, "  ban_for          = \"24h\"\n}", "  ban_for          = \"24h\"\n  mode             = \"log\"\n}", 1)
	return cfg + fmt.Sprintf(`
access "remote-phones" {
  zone    = "public"
  pbx     = "main"
  domain  = %q
  expires = "60s"
}
`, accessDomain)
}

// accessStatus is the part of edgesbc status the access test reads.
type accessStatus struct {
	Registrations  int `json:"registrations"`
	LeakGuardFired int `json:"leak_guard_fired"`
}

// TestIntegrationAccessAuthFailures: a remote phone with the right password
// registers through the SBC with a digest registrar behind it, which sees
// only the SBC's Contact; svcrack guessing 1001's password from the public
// side gets the registrar's challenges and refusals relayed, and its fifth
// failed guess bans it by the auth-failures policy, after which the kernel
// drops what it sends. The phone then calls the PBX, and the PBX calls the
// phone at the SBC's Contact, audio echoed both times.
func TestIntegrationAccessAuthFailures(t *testing.T) {
	testenv.RequireTool(t, "svcrack")
	var phone *testenv.Netns
	l := newSecLabSetup(t, func(l *secLab) {
		phone = testenv.NewNetns(t, "esbc-ph")
		testenv.Link(t, l.topo.SBC, "eth-ph", netip.MustParsePrefix("198.51.102.1/24"), phone, "eth-sbc", netip.PrefixFrom(phoneAddr, 24))
		if out, err := exec.Command("ip", "-n", phone.Name, "route", "add", "203.0.113.0/24", "via", "198.51.102.1").CombinedOutput(); err != nil {
			t.Fatalf("phone route: %v %s", err, out)
		}
	}, accessConfig)
	registrar := testenv.StartSIPp(t, l.topo.PBX, accessDir(t), "-sf", "registrar_digest.xml", "-i", l.topo.PBXAddr.Addr().String(),
		"-p", "5060", "-m", "100", "-timeout", "60s")

	// the phone: 401, then 200 with its own Contact and a short expires
	res, err := testenv.RunSIPp(t, phone, accessDir(t), "-sf", "phone_register.xml", "-key", "domain", accessDomain,
		"-au", "1001", "-ap", accessPassword, "-auth_uri", accessDomain, "-i", phoneAddr.String(), "-p", "5062",
		"-m", "1", "-timeout", "10s", "203.0.113.1:5060")
	if err != nil || res.Exit != 0 || res.Successful != 1 {
		t.Fatalf("phone registration: %+v %v\n%s", res, err, l.daemon.Log())
	}

	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		// what the registrar saw, for a failure before its trace is read
		for _, name := range []string{"messages.log", "errors.log"} {
			if b, err := os.ReadFile(filepath.Join(registrar.Dir(), name)); err == nil {
				t.Logf("registrar %s (tail):\n%s", name, tail(string(b), 6000))
			}
		}
	})

	// svcrack against 1001, a dictionary without the password
	dict := filepath.Join(accessDir(t), "passwords.txt")
	// svcrack stops 3 s after its last answer, then waits 10 s more on
	// its socket: it is cut short after 5 s, which is past its ban and
	// its first unanswered guesses.
	//
	// It sends its next REGISTER whenever it has heard nothing for its
	// select time (-t, 5 ms by default), so on a loaded machine, where the
	// registrar takes longer than that to answer, its REGISTERs pile up
	// at the SBC, which relays one of a binding at a time and answers
	// those beyond a few waiting with 503, an answer that ends svcrack's
	// run before five guesses. 100 ms keeps its guesses one after the
	// other's answer, as on an idle machine.
	out := l.attack(t, l.attacker, 5*time.Second, "svcrack", "-u", "1001", "-d", dict, "--domain", accessDomain,
		"--maximumtime", "3", "-t", "0.1", "-p", "5060", "203.0.113.1")
	b := l.waitBanned(t, attackerScan)
	if b.Policy != "auth-failures" || b.Counters["failed_auth"] != 5 || !strings.Contains(b.First.Request, "REGISTER") || !strings.Contains(b.First.Request, `user="1001"`) {
		t.Errorf("svcrack ban: %+v\n%s", b, out)
	}
	if strings.Contains(out, "The password for") || strings.Contains(out, accessPassword) {
		t.Errorf("svcrack reports a password:\n%s", out)
	}
	if n := l.banDrops(t); n == 0 {
		t.Errorf("no packet of svcrack dropped in the kernel after its ban\n%s", out)
	}
	if _, banned := l.banned(t, phoneAddr); banned {
		t.Errorf("the phone %v is banned", phoneAddr)
	}

	// what the registrar saw: the SBC's token Contact for 1001, the
	// phone's digest response, and nothing of the public side
	_, _ = registrar.Stop()
	trace, err := os.ReadFile(filepath.Join(registrar.Dir(), "messages.log"))
	if err != nil {
		t.Fatal(err)
	}
	// the SBC relays a binding's REGISTERs one at a time: one arriving
	// while the registrar still answers another of its Call-ID would be
	// unexpected there, abort that registration and leave every later
	// one unanswered (a dead call in sipp)
	if errs, err := os.ReadFile(filepath.Join(registrar.Dir(), "errors.log")); err == nil {
		if e := string(errs); strings.Contains(e, "unexpected message") || strings.Contains(e, "Dead call") {
			t.Errorf("the registrar got a REGISTER while answering another of its registration:\n%s", tail(e, 3000))
		}
	}
	for _, bad := range []string{phoneAddr.String(), attackerScan.String(), "203.0.113.1", "DeskPhone", "friendly-scanner"} {
		if strings.Contains(string(trace), bad) {
			t.Errorf("%q reached the registrar", bad)
		}
	}
	tokenContact := regexp.MustCompile(`(?m)^Contact: <sip:(r[0-9a-f]{24})@10\.91\.1\.1:5060>;expires=3600`)
	m := tokenContact.FindSubmatch(trace)
	if m == nil {
		t.Fatalf("the registrar's 200 does not name the SBC's token Contact:\n%s", tail(string(trace), 3000))
	}
	token := string(m[1])
	// every REGISTER without credentials got a challenge, and every one
	// with credentials a 200 (the phone) or a 403 (svcrack's guesses)
	got := map[string]int{}
	var pending string
	for _, m := range strings.Split(string(trace), "-----------------------------------------------") {
		switch {
		case strings.Contains(m, "\nREGISTER sip:"+accessDomain+" SIP/2.0"):
			pending = "no credentials"
			if strings.Contains(m, "\nAuthorization: Digest") {
				pending = "credentials"
			}
		case pending != "" && strings.Contains(m, "\nSIP/2.0 "):
			code := m[strings.Index(m, "\nSIP/2.0 ")+9:][:3]
			got[pending+" "+code]++
			pending = ""
		}
	}
	if len(got) != 3 || got["no credentials 401"] == 0 || got["credentials 200"] != 1 || got["credentials 403"] < 5 {
		t.Errorf("registrar's answers: %v, want 401 to REGISTERs without credentials, one 200 and at least five 403s to those with", got)
	}

	// calls both ways with the registered phone, from and to the source it
	// registered from, audio echoed back
	pbxIP := l.topo.PBXAddr.Addr().String()
	phoneCap := testenv.StartCapture(t, phone, "eth-sbc", "udp")
	pbxCap := testenv.StartCapture(t, l.topo.PBX, l.topo.PBXIf, "udp")
	callee := testenv.StartSIPp(t, l.topo.PBX, scenarioDir(t), "-sf", "uas.xml", "-rtp_echo", "-i", pbxIP, "-p", "5060", "-timeout", "15s")
	res, err = testenv.RunSIPp(t, phone, scenarioDir(t), "-sf", "uac.xml", "-i", phoneAddr.String(), "-p", "5062", "-s", "2000",
		"-timeout", "12s", "203.0.113.1:5060")
	expectOneCall(t, "the phone calling", res, err)
	res, err = callee.Wait()
	expectOneCall(t, "the pbx answering the phone", res, err)
	callee = testenv.StartSIPp(t, phone, scenarioDir(t), "-sf", "uas.xml", "-rtp_echo", "-i", phoneAddr.String(), "-p", "5062", "-timeout", "15s")
	res, err = testenv.RunSIPp(t, l.topo.PBX, scenarioDir(t), "-sf", "uac.xml", "-i", pbxIP, "-p", "5060", "-s", token,
		"-timeout", "12s", "10.91.1.1:5060")
	expectOneCall(t, "the pbx calling the phone", res, err)
	res, err = callee.Wait()
	expectOneCall(t, "the phone answering", res, err)

	// Audio of both calls, counted on both outer links: each caller plays
	// rtpPackets from its media port, each callee echoes them, and the SBC
	// relays every one (both calls together: twice rtpPackets each way).
	checkAccessRTP(t, "phone link", phoneCap, phoneAddr)
	checkAccessRTP(t, "pbx link", pbxCap, l.topo.PBXAddr.Addr())

	var st accessStatus
	readStatus(t, l.daemon.Bin, l.daemon.Admin, &st)
	if st.Registrations != 1 || st.LeakGuardFired != 0 {
		t.Errorf("status after the attack: %+v", st)
	}
}

// accessDir holds the registration scenarios (a digest registrar and a
// phone) and svcrack's dictionary, kept apart from the call pairs of
// testdata/sipp: they are proven by the test that uses them, whose checks
// of the registrar's trace show each answer was the right one.
func accessDir(t *testing.T) string {
	t.Helper()
	dir, err := filepath.Abs("testdata/access")
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

// tail is the end of s, at most n bytes.
func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[len(s)-n:]
}

// checkAccessRTP counts the RTP of the access test's two calls on one outer
// link: packets from the endpoint's media port to the SBC, and from the SBC
// to it. Each call plays rtpPackets one way and the far end echoes them,
// so over both calls the endpoint sends and receives 2*rtpPackets.
func checkAccessRTP(t *testing.T, what string, c *testenv.Capture, ep netip.Addr) {
	t.Helper()
	pkts, err := testenv.ReadUDP(c.Stop())
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	out, in := 0, 0
	for _, p := range pkts {
		switch {
		case p.Src == netip.AddrPortFrom(ep, sippMediaPort) && p.Dst.Port() != 5060:
			out++
		case p.Dst == netip.AddrPortFrom(ep, sippMediaPort) && p.Src.Port() != 5060:
			in++
		}
	}
	if out != 2*rtpPackets || in != 2*rtpPackets {
		t.Errorf("%s: RTP %d packets out of %v, %d back to it; want %d each (two calls, echoed)", what, out, ep, in, 2*rtpPackets)
	}
}
