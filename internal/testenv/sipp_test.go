package testenv

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestParseSIPpStats(t *testing.T) {
	tests := []struct {
		file                   string
		wantSuccess, wantFails int
	}{
		// sipp 3.6 -trace_stat output, three dumps; the last one counts.
		{"testdata/sipp-stats.csv", 1, 0},
		{"testdata/sipp-stats-failed.csv", 0, 1},
	}
	for _, tt := range tests {
		t.Run(filepath.Base(tt.file), func(t *testing.T) {
			f, err := os.Open(tt.file)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			s, fails, err := parseSIPpStats(f)
			if err != nil {
				t.Fatal(err)
			}
			if s != tt.wantSuccess || fails != tt.wantFails {
				t.Errorf("got %d successful, %d failed; want %d, %d", s, fails, tt.wantSuccess, tt.wantFails)
			}
		})
	}
}

func TestParseSIPpStatsErrors(t *testing.T) {
	for _, tt := range []struct{ name, csv, want string }{
		{"empty", "", "no statistics rows"},
		{"header only", "SuccessfulCall(C);FailedCall(C)\n", "no statistics rows"},
		{"missing column", "SuccessfulCall(C);Other\n1;2\n", "no column FailedCall(C)"},
		{"short row", "SuccessfulCall(C);FailedCall(C)\n1\n", "last row has no column FailedCall(C)"},
		{"not a number", "SuccessfulCall(C);FailedCall(C)\n1;x\n", "column FailedCall(C)"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := parseSIPpStats(strings.NewReader(tt.csv))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want it to mention %q", err, tt.want)
			}
		})
	}
}

func TestParseSIPpDuration(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"30", 30 * time.Second, true},
		{"2.5", 2500 * time.Millisecond, true},
		{"30s", 30 * time.Second, true},
		{"500ms", 500 * time.Millisecond, true},
		{"2m", 2 * time.Minute, true},
		{"soon", 0, false},
	} {
		got, err := parseSIPpDuration(tt.in)
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("parseSIPpDuration(%q) = %v, %v; want %v, ok=%v", tt.in, got, err, tt.want, tt.ok)
		}
	}
}

func TestFlagValue(t *testing.T) {
	args := []string{"-sf", "uac.xml", "-p", "5060", "-rtp_echo", "-m"}
	for flag, want := range map[string]string{"-sf": "uac.xml", "-p": "5060", "-rtp_echo": "-m", "-m": "", "-mp": ""} {
		if got := flagValue(args, flag); got != want {
			t.Errorf("flagValue(%s) = %q, want %q", flag, got, want)
		}
	}
}

func TestFileTail(t *testing.T) {
	path := filepath.Join(t.TempDir(), "log")
	if err := os.WriteFile(path, []byte("0123456789"), 0o600); err != nil {
		t.Fatal(err)
	}
	if got := fileTail(path, 4); got != "[...]6789" {
		t.Errorf("tail 4 = %q", got)
	}
	if got := fileTail(path, 100); got != "0123456789" {
		t.Errorf("tail 100 = %q", got)
	}
	if got := fileTail(filepath.Join(t.TempDir(), "none"), 4); got != "" {
		t.Errorf("tail of a missing file = %q", got)
	}
}
