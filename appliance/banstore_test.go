package appliance

import (
	"bytes"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/edgesbc/edgesbc/sbc/guard"
)

var storeNow = time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)

func sampleBans() []guard.Ban {
	return []guard.Ban{
		{Addr: netip.MustParseAddr("198.51.100.66"), Policy: "scanners", Reason: `user-agent matches "friendly-scanner"`,
			Counters: map[string]int{"user_agent_match": 1},
			First:    guard.Offence{At: storeNow, Request: `OPTIONS user="100" ua="friendly-scanner"`},
			Last:     guard.Offence{At: storeNow, Request: `OPTIONS user="100" ua="friendly-scanner"`},
			Start:    storeNow, Expires: storeNow.Add(24 * time.Hour)},
		{Addr: netip.MustParseAddr("2001:db8::66"), Policy: "auth-failures", Reason: "failed authentication",
			Counters: map[string]int{"failed_auth": 5},
			First:    guard.Offence{At: storeNow.Add(-time.Minute), Request: "INVITE", Code: 401},
			Last:     guard.Offence{At: storeNow, Request: "INVITE", Code: 403},
			Start:    storeNow, Expires: storeNow.Add(4 * time.Hour), Repeat: 1},
		{Addr: netip.MustParseAddr("203.0.113.99"), Policy: "manual", Reason: "operator",
			Start: storeNow, Expires: storeNow.Add(time.Hour)},
	}
}

func TestBanStoreRoundTrip(t *testing.T) {
	s := NewBanStore(filepath.Join(t.TempDir(), "state"))
	if bans, problems, err := s.Load(storeNow); err != nil || len(bans)+len(problems) != 0 {
		t.Fatalf("missing store: %v %v %v", bans, problems, err)
	}
	want := sampleBans()
	if err := s.Save(want, storeNow); err != nil {
		t.Fatal(err)
	}
	got, problems, err := s.Load(storeNow.Add(time.Minute))
	if err != nil || len(problems) != 0 {
		t.Fatalf("load: %v %v", problems, err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("round trip:\n%+v\nwant\n%+v", got, want)
	}
	// expired bans are not restored
	got, _, _ = s.Load(storeNow.Add(2 * time.Hour))
	if len(got) != 2 {
		t.Fatalf("after 2h: %d bans, want 2", len(got))
	}
	fi, err := os.Stat(s.Path())
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("store mode %v %v, want 0600", fi.Mode(), err)
	}
	// no temporary file is left behind
	if left, _ := filepath.Glob(filepath.Join(filepath.Dir(s.Path()), "*.tmp-*")); len(left) != 0 {
		t.Fatalf("temporary files left: %v", left)
	}
}

func TestBanStoreDamaged(t *testing.T) {
	s := NewBanStore(t.TempDir())
	if err := s.Save(sampleBans(), storeNow); err != nil {
		t.Fatal(err)
	}
	whole, err := os.ReadFile(s.Path())
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.SplitAfter(string(whole), "\n")
	tests := []struct {
		name         string
		data         string
		wantBans     int
		wantProblems int
	}{
		{name: "cut short in the last ban", data: string(whole[:len(whole)-20]), wantBans: 2, wantProblems: 1},
		{name: "cut short after a newline", data: lines[0] + lines[1], wantBans: 1},
		{name: "garbage line in the middle", data: lines[0] + lines[1] + "{\"addr\": 12\n" + lines[2] + lines[3], wantBans: 3, wantProblems: 1},
		{name: "zero bytes", data: "", wantBans: 0},
		{name: "binary", data: "\x00\xff\x01\n\x02", wantBans: 0, wantProblems: 2},
		{name: "no header", data: lines[1] + lines[2], wantBans: 2},
		{name: "future header", data: `{"edgesbc_bans":9}` + "\n" + lines[1], wantBans: 1, wantProblems: 1},
		{name: "ban without address", data: lines[0] + `{"policy":"x","expires":"2030-01-01T00:00:00Z"}` + "\n" + lines[3], wantBans: 1, wantProblems: 1},
		{name: "huge line", data: lines[0] + strings.Repeat("x", 3*maxBanLine) + "\n" + lines[1], wantBans: 1, wantProblems: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := os.WriteFile(s.Path(), []byte(tt.data), 0o600); err != nil {
				t.Fatal(err)
			}
			bans, problems, err := s.Load(storeNow)
			if err != nil {
				t.Fatalf("load: %v", err)
			}
			if len(bans) != tt.wantBans || len(problems) != tt.wantProblems {
				t.Fatalf("%d bans %d problems %q, want %d and %d", len(bans), len(problems), problems, tt.wantBans, tt.wantProblems)
			}
			for _, p := range problems {
				if !strings.HasPrefix(p, "line ") {
					t.Errorf("problem without a line number: %q", p)
				}
			}
		})
	}
}

func TestBanStoreUnreadable(t *testing.T) {
	dir := t.TempDir()
	s := NewBanStore(dir)
	// a directory where the file should be: exists but cannot be read
	if err := os.Mkdir(s.Path(), 0o700); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.Load(storeNow); err == nil {
		t.Fatal("loading a directory as the store succeeded")
	}
	if err := s.Save(sampleBans(), storeNow); err == nil {
		t.Fatal("saving over a directory succeeded")
	}
}

func FuzzReadBans(f *testing.F) {
	var buf bytes.Buffer
	s := NewBanStore(f.TempDir())
	_ = s.Save(sampleBans(), storeNow)
	b, _ := os.ReadFile(s.Path())
	buf.Write(b)
	f.Add(buf.Bytes())
	f.Add([]byte("{\"edgesbc_bans\":1}\n{\"addr\":\"::ffff:1.2.3.4\",\"expires\":\"2099-01-01T00:00:00Z\"}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		bans, problems, err := readBans(bytes.NewReader(data), storeNow)
		if err != nil {
			t.Fatalf("in-memory read failed: %v", err)
		}
		for _, b := range bans {
			if !b.Addr.IsValid() || b.Addr.Is4In6() || !storeNow.Before(b.Expires) {
				t.Fatalf("bad ban restored: %+v", b)
			}
		}
		_ = problems
	})
}
