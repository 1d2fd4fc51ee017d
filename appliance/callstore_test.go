package appliance

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edgesbc/edgesbc/media"
	"github.com/edgesbc/edgesbc/sbc"
)

func sampleCall(id string) keptCall {
	f := media.Flow{
		Src:   netip.MustParseAddrPort("10.91.1.2:4000"),
		Local: netip.MustParseAddrPort("10.91.1.1:20000"),
		Out:   netip.MustParseAddrPort("203.0.113.1:20002"),
		Dst:   netip.MustParseAddrPort("203.0.113.2:5000"),
	}
	return keptCall{
		Call: sbc.CallState{ID: id, From: "1000", To: "15551234567", InPeer: "main", OutPeer: "carrier",
			Start: time.Unix(1700000000, 0).UTC(), Status: 200,
			Legs: [2]sbc.LegState{
				{Zone: "private", Peer: "main", CallID: "a-" + id, LocalTag: "la", RemoteTag: "ra", Dest: "10.91.1.2:5060",
					LocalCSeq: 7, Timer: &sbc.LegTimerState{Interval: 90 * time.Second, WeRefresh: true}},
				{Zone: "public", Peer: "carrier", CallID: "b-" + id, LocalTag: "lb", RemoteTag: "rb", Dest: "203.0.113.2:5060"},
			},
			LastSDP: [2][]byte{[]byte("v=0\r\n"), nil}},
		Media: media.SessionState{ID: media.SessionID(id),
			Addrs: [2]media.Address{{Bind: f.Local.Addr()}, {Bind: f.Out.Addr()}},
			Streams: []media.StreamState{{Kind: "audio", Ports: [2]int{20000, 20002}, Kernel: [2]*media.Flow{&f, nil},
				Counted: [2][2]media.FlowStats{{{Packets: 5, Forwarded: 5}}}}}},
	}
}

func TestCallStoreRoundTrip(t *testing.T) {
	s := NewCallStore(t.TempDir())
	if calls, problems, err := s.Load(); err != nil || len(calls) != 0 || len(problems) != 0 {
		t.Fatalf("Load of a missing store: %v, %v, %v; want nothing", calls, problems, err)
	}
	in := []keptCall{sampleCall("c1"), sampleCall("c2")}
	if err := s.Save(in, time.Now()); err != nil {
		t.Fatal(err)
	}
	out, problems, err := s.Load()
	if err != nil || len(problems) != 0 {
		t.Fatalf("Load: %v, problems %v", err, problems)
	}
	if len(out) != 2 || out[1].Call.ID != "c2" || out[0].Call.Legs[0].Timer.Interval != 90*time.Second ||
		*out[0].Media.Streams[0].Kernel[0] != *in[0].Media.Streams[0].Kernel[0] ||
		string(out[0].Call.LastSDP[0]) != "v=0\r\n" || out[0].Media.Streams[0].Counted[0][0].Forwarded != 5 {
		t.Errorf("round trip changed the calls:\n%+v\nwant\n%+v", out, in)
	}
}

// TestCallStoreDamaged: a broken line costs its call only; a bad header
// costs everything (the file is not a call store), never the daemon's start.
func TestCallStoreDamaged(t *testing.T) {
	dir := t.TempDir()
	s := NewCallStore(dir)
	if err := s.Save([]keptCall{sampleCall("c1"), sampleCall("c2"), sampleCall("c3")}, time.Now()); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(s.Path())
	lines := strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
	lines[2] = lines[2][:len(lines[2])/2] // c2 truncated
	mismatched := strings.Replace(lines[3], `"id":"c3"`, `"id":"other"`, 1)
	cases := map[string]struct {
		text      string
		wantCalls int
	}{
		"truncated line":       {strings.Join(lines, "\n") + "\n", 2},
		"cut at the end":       {strings.Join(lines[:3], "\n"), 1},
		"call and media apart": {strings.Join([]string{lines[0], lines[1], mismatched}, "\n"), 1},
		"not a store":          {"garbage\n" + strings.Join(lines[1:], "\n"), 0},
		"empty":                {"", 0},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			if err := os.WriteFile(filepath.Join(dir, callFileName), []byte(c.text), 0o600); err != nil {
				t.Fatal(err)
			}
			calls, problems, err := s.Load()
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			if len(calls) != c.wantCalls {
				t.Errorf("%d calls read, want %d (problems %v)", len(calls), c.wantCalls, problems)
			}
			if c.wantCalls < 3 && c.text != "" && len(problems) == 0 {
				t.Error("damage not reported")
			}
		})
	}
}
