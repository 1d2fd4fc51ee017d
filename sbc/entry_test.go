package sbc

import (
	"bufio"
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/emiago/sipgo/sip"
)

func corpus(t testing.TB) map[string][]byte {
	t.Helper()
	files, err := filepath.Glob("testdata/rfc4475/*.sip")
	if err != nil || len(files) == 0 {
		t.Fatalf("torture corpus missing: %v", err)
	}
	out := map[string][]byte{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		out[filepath.Base(f)] = b
	}
	return out
}

type expectation struct{ verdict, response string }

func expectations(t *testing.T) map[string]expectation {
	t.Helper()
	f, err := os.Open("testdata/rfc4475/expected.tsv")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string]expectation{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") || line == "" {
			continue
		}
		cols := strings.Split(line, "\t")
		if len(cols) < 6 {
			continue
		}
		out[cols[0]] = expectation{verdict: cols[4], response: cols[5]}
	}
	return out
}

// TestInspectTorture runs every RFC 4475/5118 torture message through the
// entry filter. Messages the RFCs call invalid and answer with 400 or 505
// must be refused with exactly that code before they reach the SIP stack;
// valid ones must pass.
func TestInspectTorture(t *testing.T) {
	p := sip.NewParser()
	exp := expectations(t)
	for name, data := range corpus(t) {
		e, ok := exp[name]
		if !ok {
			continue
		}
		res := inspect(p, data, 65535)
		code := ""
		if res.Action == entryRespond {
			code = strings.Fields(string(res.Reply))[1]
		}
		t.Logf("%-36s %-16s action=%d code=%s reason=%s", name, e.verdict, res.Action, code, res.Reason)
		isResponse := bytes.HasPrefix(data, []byte("SIP/2.0"))
		switch {
		case isResponse:
			if res.Action != entryPass {
				t.Errorf("%s: responses must pass to the stack, got action %d", name, res.Action)
			}
		case strings.HasPrefix(e.verdict, "valid"):
			if res.Action != entryPass {
				t.Errorf("%s: valid request refused (%s)", name, res.Reason)
			}
		case e.verdict == "invalid" && strings.HasPrefix(e.response, "505"):
			if code != "505" {
				t.Errorf("%s: want 505, got action %d code %q", name, res.Action, code)
			}
		}
	}
}

// TestInspectKnownInvalid pins the invalid messages the filter itself is
// expected to refuse with 400.
func TestInspectKnownInvalid(t *testing.T) {
	p := sip.NewParser()
	c := corpus(t)
	for _, name := range []string{"insuf.sip", "mismatch01.sip", "ipv6-bad.sip", "badinv01.sip", "clerr.sip", "ncl.sip", "scalar02.sip", "multi01.sip", "quotbal.sip", "ltgtruri.sip", "lwsruri.sip", "lwsstart.sip", "badaspec.sip"} {
		res := inspect(p, c[name], 65535)
		if res.Action != entryRespond || !bytes.HasPrefix(res.Reply, []byte("SIP/2.0 400 ")) {
			t.Errorf("%s: want stateless 400, got action %d reply %q", name, res.Action, firstLine(res.Reply))
		}
	}
}

func firstLine(b []byte) string {
	if i := bytes.IndexByte(b, '\n'); i >= 0 {
		return string(b[:i])
	}
	return string(b)
}

func TestInspectRules(t *testing.T) {
	p := sip.NewParser()
	const good = "INVITE sip:bob@192.0.2.1 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.2:5060;branch=z9hG4bK1\r\nMax-Forwards: %MF%\r\nFrom: <sip:alice@192.0.2.2>;tag=1\r\nTo: <sip:bob@192.0.2.1>\r\nCall-ID: abc\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
	cases := []struct {
		name   string
		msg    string
		max    int
		action entryAction
		code   string
	}{
		{"ok", strings.ReplaceAll(good, "%MF%", "70"), 4096, entryPass, ""},
		{"max-forwards zero", strings.ReplaceAll(good, "%MF%", "0"), 4096, entryRespond, "483"},
		{"oversize", strings.ReplaceAll(good, "%MF%", "70"), 100, entryDrop, ""},
		{"keepalive", "\r\n\r\n", 4096, entryDrop, ""},
		{"garbage", "\x16\x03\x01\x02\x00", 4096, entryDrop, ""},
		{"missing call-id", strings.Replace(strings.ReplaceAll(good, "%MF%", "70"), "Call-ID: abc\r\n", "", 1), 4096, entryRespond, "400"},
		{"missing via: nowhere to answer", strings.Replace(strings.ReplaceAll(good, "%MF%", "70"), "Via: SIP/2.0/UDP 192.0.2.2:5060;branch=z9hG4bK1\r\n", "", 1), 4096, entryDrop, ""},
		{"ack never answered", strings.Replace(strings.Replace(strings.ReplaceAll(good, "%MF%", "70"), "INVITE sip", "ACK sip", 1), "SIP/2.0\r\nVia", "SIP/3.0\r\nVia", 1), 4096, entryDrop, ""},
		{"ack passes unparsed", strings.Replace(strings.ReplaceAll(good, "%MF%", "70"), "INVITE sip", "ACK sip", 1), 4096, entryPass, ""},
		{"response passes", "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP x;branch=z9hG4bK1\r\n\r\n", 4096, entryPass, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			res := inspect(p, []byte(tc.msg), tc.max)
			if res.Action != tc.action {
				t.Fatalf("action %d, want %d (reason %q)", res.Action, tc.action, res.Reason)
			}
			if tc.code != "" && !strings.HasPrefix(string(res.Reply), "SIP/2.0 "+tc.code+" ") {
				t.Fatalf("reply %q, want %s", firstLine(res.Reply), tc.code)
			}
		})
	}
}

func TestStatelessResponseCopiesDialogHeaders(t *testing.T) {
	req := "OPTIONS sip:x SIP/2.0\r\nv: SIP/2.0/UDP 192.0.2.2;branch=z9hG4bKa\r\nVia: SIP/2.0/UDP 192.0.2.3;branch=z9hG4bKb\r\nf: <sip:a@b>;tag=9\r\nt: <sip:x>\r\ni: cid\r\nCSeq: 7 OPTIONS\r\nX-Junk: 1\r\n\r\n"
	out := string(statelessResponse([]byte(req), 400))
	for _, want := range []string{"SIP/2.0 400 Bad Request\r\n", "Via: SIP/2.0/UDP 192.0.2.2;branch=z9hG4bKa\r\n", "Via: SIP/2.0/UDP 192.0.2.3;branch=z9hG4bKb\r\n", "From: <sip:a@b>;tag=9\r\n", "Call-ID: cid\r\n", "CSeq: 7 OPTIONS\r\n", "Content-Length: 0\r\n\r\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("missing %q in\n%s", want, out)
		}
	}
	if !strings.Contains(out, "To: <sip:x>;tag=") {
		t.Errorf("To must get a tag:\n%s", out)
	}
	if strings.Contains(out, "X-Junk") {
		t.Errorf("unrelated header copied:\n%s", out)
	}
	if _, err := sip.ParseMessage([]byte(out)); err != nil {
		t.Errorf("stateless response does not parse: %v\n%s", err, out)
	}
}

// FuzzInspect feeds arbitrary datagrams to the entry filter: it must never
// panic, and anything it answers must itself be a parsable SIP response.
func FuzzInspect(f *testing.F) {
	for _, b := range corpus(f) {
		f.Add(b)
	}
	f.Add([]byte("INVITE sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h\r\n\r\n"))
	p := sip.NewParser()
	f.Fuzz(func(t *testing.T, data []byte) {
		res := inspect(p, data, 65535)
		if res.Action == entryRespond {
			if len(res.Reply) == 0 {
				t.Fatal("respond without reply")
			}
			if !bytes.HasPrefix(res.Reply, []byte("SIP/2.0 ")) {
				t.Fatalf("reply is not a response: %q", firstLine(res.Reply))
			}
		}
	})
}

// requestLineFields is requestLine as bytes.Fields splits the line: the
// reference the allocation-free split must agree with.
func requestLineFields(b []byte) (method, version string, ok, wellFormed bool) {
	end := bytes.IndexByte(b, '\n')
	if end < 0 {
		return "", "", false, false
	}
	line := bytes.TrimRight(b[:end], "\r")
	f := bytes.Fields(line)
	if len(f) < 3 || len(f[0]) > 64 || !bytes.HasPrefix(f[len(f)-1], []byte("SIP/")) {
		return "", "", false, false
	}
	for _, c := range f[0] {
		if !isTokenChar(c) {
			return "", "", false, false
		}
	}
	return string(f[0]), string(f[len(f)-1]), true, len(f) == 3 && bytes.Count(line, []byte(" ")) == 2
}

func FuzzRequestLine(f *testing.F) {
	for _, b := range corpus(f) {
		f.Add(b)
	}
	for _, s := range []string{
		"INVITE sip:a@b SIP/2.0\r\n", "INVITE\tsip:a@b\tSIP/2.0\r\n", "INVITE  sip:a@b SIP/2.0\n",
		" INVITE sip:a@b SIP/2.0 \r\n", "INVITE\vsip:a@b\fSIP/2.0\r\n", "INVITE\u00a0sip:a@b SIP/2.0\r\n",
		"INVITE sip:a@b\u2003SIP/2.0\r\n", "OPTIONS sip:a@b SIP/3.0\r\n", "X sip SIP/\r\n", "A B\r\n", "\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		m, v, ok, wf := requestLine(data)
		wm, wv, wok, wwf := requestLineFields(data)
		if string(m) != wm || string(v) != wv || ok != wok || wf != wwf {
			t.Fatalf("requestLine(%q) = %q %q %v %v, bytes.Fields says %q %q %v %v", data, m, v, ok, wf, wm, wv, wok, wwf)
		}
	})
}

func TestLogTurn(t *testing.T) {
	var last atomic.Int64
	if !logTurn(&last) {
		t.Fatal("first warning not logged")
	}
	if logTurn(&last) {
		t.Error("a second warning within 10 s logged")
	}
	last.Add(-10)
	if !logTurn(&last) {
		t.Error("a warning 10 s after the last not logged")
	}
}
