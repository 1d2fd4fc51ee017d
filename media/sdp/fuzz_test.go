package sdp

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// addSeeds adds every body the unit tests use. Crashers found by the
// fuzzers are kept in testdata/fuzz/<target>/ and run by go test as well.
func addSeeds(f *testing.F, add func(body []byte)) {
	add([]byte(benchOffer))
	for _, tt := range rewriteCases {
		add([]byte(tt.in))
	}
	for _, name := range append(corpusFiles, "dblreq.sip") {
		add(corpusBody(f, name))
	}
	// Whole SIP messages too: the parser must reject them without harm.
	msgs, err := filepath.Glob(filepath.Join("testdata", "rfc4475", "*.sip"))
	if err != nil {
		f.Fatal(err)
	}
	for _, m := range msgs {
		b, err := os.ReadFile(m)
		if err != nil {
			f.Fatal(err)
		}
		add(b)
	}
}

func FuzzParse(f *testing.F) {
	addSeeds(f, func(b []byte) { f.Add(b) })
	f.Fuzz(func(t *testing.T, body []byte) {
		d, err := Parse(body)
		if err != nil {
			if d != nil {
				t.Fatalf("Parse returned a Description with error %v", err)
			}
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("Parse error %v does not wrap ErrMalformed", err)
			}
			return
		}
		media := d.Media()
		if len(media) > MaxMediaLines {
			t.Fatalf("%d m= lines accepted", len(media))
		}
		for i, m := range media {
			if m.Index != i || m.Port < 0 || m.Port > 65535 || m.NumPorts < 1 || m.Kind == "" || m.Proto == "" {
				t.Fatalf("m-line %d out of range: %+v", i, m)
			}
			switch m.Direction {
			case SendRecv, SendOnly, RecvOnly, Inactive:
			default:
				t.Fatalf("m-line %d: direction %q", i, m.Direction)
			}
		}
	})
}

// FuzzRewrite checks that whatever parses can be rewritten without panic,
// and that a successful rewrite parses again and names no address but the
// anchor (or the hold address).
func FuzzRewrite(f *testing.F) {
	addSeeds(f, func(b []byte) { f.Add(b, false); f.Add(b, true) })
	f.Fuzz(func(t *testing.T, body []byte, v6 bool) {
		d, err := Parse(body)
		if err != nil {
			return
		}
		addr := anchor4
		if v6 {
			addr = anchor6
		}
		a := testAnchor(addr, len(d.Media()))
		out, err := d.Rewrite(a)
		if err != nil {
			if out != nil {
				t.Fatalf("Rewrite returned a body with error %v", err)
			}
			if !errors.Is(err, ErrLeak) && !errors.Is(err, ErrMalformed) {
				t.Fatalf("Rewrite of a parsed body with a valid anchor: %v", err)
			}
			return
		}
		if leaks := ForeignAddrs(out, notAnchor(addr)); len(leaks) != 0 {
			t.Fatalf("rewritten body names %v:\n%q", leaks, out)
		}
		d2, err := Parse(out)
		if err != nil {
			t.Fatalf("Parse(Rewrite(body)): %v\n%q", err, out)
		}
		in, got := d.Media(), d2.Media()
		if len(got) != len(in) {
			t.Fatalf("%d m= lines after rewrite, want %d", len(got), len(in))
		}
		for i, m := range got {
			want := a.Ports[i]
			if in[i].Port == 0 {
				want = 0
			}
			if m.Port != want {
				t.Fatalf("m-line %d: port %d, want %d", i, m.Port, want)
			}
			if m.Addr != addr && !(m.Addr.IsUnspecified() && in[i].Addr.IsUnspecified()) {
				t.Fatalf("m-line %d: addr %v, want %v", i, m.Addr, addr)
			}
		}
		again, err := d2.Rewrite(a)
		if err != nil {
			t.Fatalf("rewriting our own output: %v\n%q", err, out)
		}
		if !bytes.Equal(again, out) {
			t.Fatalf("Rewrite is not idempotent:\n%q\n%q", out, again)
		}
	})
}
