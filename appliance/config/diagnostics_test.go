package config

import (
	"bytes"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hashicorp/hcl/v2"
)

var update = flag.Bool("update", false, "rewrite golden files in testdata")

// TestWriteDiagnosticsGolden renders the diagnostics of a broken file (tab
// indentation, a non-ASCII label, a value spanning lines) plus hand-made
// ones without a Subject, with a warning severity, and with a file missing
// from the map.
func TestWriteDiagnosticsGolden(t *testing.T) {
	const name = "testdata/diagnostics.hcl"
	src, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	_, diags := Parse(name, src)
	if !diags.HasErrors() {
		t.Fatalf("%s parsed without errors", name)
	}
	diags = append(diags,
		&hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Cannot read configuration file", Detail: "read /etc/edgesbc.hcl: permission denied"},
		&hcl.Diagnostic{Severity: hcl.DiagWarning, Summary: "Deprecated argument", Detail: "Use something\nelse.",
			Subject: &hcl.Range{Filename: name, Start: hcl.Pos{Line: 13, Column: 3, Byte: bytes.Index(src, []byte("address = \"10.91.1.2"))}, End: hcl.Pos{Line: 13, Column: 10, Byte: bytes.Index(src, []byte("address = \"10.91.1.2")) + 7}}},
		&hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Elsewhere", Detail: "A file not in the map.",
			Subject: &hcl.Range{Filename: "other.hcl", Start: hcl.Pos{Line: 4, Column: 2, Byte: 30}, End: hcl.Pos{Line: 4, Column: 3, Byte: 31}}},
	)

	var got bytes.Buffer
	if err := WriteDiagnostics(&got, map[string][]byte{name: src}, diags); err != nil {
		t.Fatalf("WriteDiagnostics: %v", err)
	}
	golden := filepath.Join("testdata", "diagnostics.golden")
	if *update {
		if err := os.WriteFile(golden, got.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if !bytes.Equal(got.Bytes(), want) {
		t.Errorf("WriteDiagnostics output differs from %s (run go test -update after checking):\n--- got\n%s--- want\n%s", golden, got.Bytes(), want)
	}
}

func TestWriteDiagnosticsSnippet(t *testing.T) {
	src := []byte("a = 1\r\n\tbb = \"x\"\r\nlast")
	rng := func(line, col, start, end int) *hcl.Range {
		return &hcl.Range{Filename: "f", Start: hcl.Pos{Line: line, Column: col, Byte: start}, End: hcl.Pos{Byte: end}}
	}
	tests := []struct {
		name    string
		subject *hcl.Range
		want    string
	}{
		{"crlf line with tab", rng(2, 7, 13, 16), "f:2:7: error: S: D\n\tbb = \"x\"\n\t     ^^^\n"},
		{"zero width", rng(1, 5, 4, 4), "f:1:5: error: S: D\na = 1\n    ^\n"},
		{"end before start", rng(1, 5, 4, 2), "f:1:5: error: S: D\na = 1\n    ^\n"},
		{"span to next line", rng(1, 1, 0, 12), "f:1:1: error: S: D\na = 1\n^^^^^\n"},
		{"last line without newline", rng(3, 1, 18, 22), "f:3:1: error: S: D\nlast\n^^^^\n"},
		{"end of file", rng(3, 5, 22, 22), "f:3:5: error: S: D\nlast\n    ^\n"},
		{"past end of file", rng(9, 1, 99, 100), "f:9:1: error: S: D\n"},
		{"negative offset", rng(1, 1, -1, 0), "f:1:1: error: S: D\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var b strings.Builder
			d := &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "S", Detail: "D", Subject: tt.subject}
			if err := WriteDiagnostics(&b, map[string][]byte{"f": src}, hcl.Diagnostics{d}); err != nil {
				t.Fatal(err)
			}
			if b.String() != tt.want {
				t.Errorf("got\n%q\nwant\n%q", b.String(), tt.want)
			}
		})
	}
}

type failWriter struct{}

var errDiskFull = errors.New("disk full")

func (failWriter) Write([]byte) (int, error) { return 0, errDiskFull }

func TestWriteDiagnosticsWriteError(t *testing.T) {
	diags := hcl.Diagnostics{{Severity: hcl.DiagError, Summary: "S"}}
	if err := WriteDiagnostics(failWriter{}, nil, diags); !errors.Is(err, errDiskFull) {
		t.Errorf("WriteDiagnostics error %v, want %v", err, errDiskFull)
	}
}
