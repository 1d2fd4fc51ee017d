package config

import (
	"bufio"
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"testing"

	"github.com/edgesbc/edgesbc/examples"
)

// hclBlock is one fenced ```hcl block of a Markdown file.
type hclBlock struct {
	line int // line of the opening fence
	src  string
}

// hclBlocks extracts the fenced ```hcl blocks of a Markdown document.
func hclBlocks(t *testing.T, md []byte) []hclBlock {
	t.Helper()
	var (
		blocks []hclBlock
		cur    *hclBlock
		body   strings.Builder
	)
	sc := bufio.NewScanner(bytes.NewReader(md))
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		switch {
		case cur == nil && strings.TrimSpace(line) == "```hcl":
			cur = &hclBlock{line: n}
			body.Reset()
		case cur != nil && strings.TrimSpace(line) == "```":
			cur.src = body.String()
			blocks = append(blocks, *cur)
			cur = nil
		case cur != nil:
			body.WriteString(line)
			body.WriteByte('\n')
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("scan markdown: %v", err)
	}
	if cur != nil {
		t.Fatalf("```hcl block opened on line %d is never closed", cur.line)
	}
	return blocks
}

// TestReadmeExamples keeps the README honest: every hcl example must be
// accepted, and an example that defines a zone, a pbx and a trunk must pass
// the whole-file checks too.
func TestReadmeExamples(t *testing.T) {
	md, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	blocks := hclBlocks(t, md)
	complete := 0
	for _, b := range blocks {
		name := fmt.Sprintf("README.md block at line %d", b.line)
		cfg, diags := parse(name, []byte(b.src), false)
		if diags.HasErrors() {
			t.Errorf("example at %s:\n%s", name, render(diags))
			continue
		}
		if !isComplete(cfg) {
			continue
		}
		complete++
		if _, diags := Parse(name, []byte(b.src)); diags.HasErrors() {
			t.Errorf("complete example at %s fails whole-file checks:\n%s", name, render(diags))
		}
	}
	if complete == 0 || complete == len(blocks) {
		t.Errorf("README has %d hcl examples, %d complete; want both complete files and fragments", len(blocks), complete)
	}
}

func isComplete(cfg *Config) bool {
	var pbx, trunk bool
	for _, p := range cfg.Peers {
		pbx = pbx || p.Kind == PeerPBX
		trunk = trunk || p.Kind == PeerTrunk
	}
	return len(cfg.Zones) > 0 && pbx && trunk
}

// TestExampleConfig parses examples/edgesbc.hcl, and the copy embedded in
// the binary, and checks the addresses the demo network namespaces are
// built with.
func TestExampleConfig(t *testing.T) {
	const path = "../../examples/edgesbc.hcl"
	src, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(src, examples.Default) {
		t.Fatalf("examples.Default differs from %s", path)
	}
	cfg, diags := Parse(path, src)
	if diags.HasErrors() {
		t.Fatalf("Parse(%s):\n%s", path, render(diags))
	}
	want := map[string]string{
		"zone private":  "10.91.1.1:5060",
		"zone public":   "203.0.113.1:5060",
		"pbx main":      "10.91.1.2:5060",
		"trunk carrier": "203.0.113.2:5060",
	}
	got := map[string]string{}
	for _, z := range cfg.Zones {
		got["zone "+z.Name] = netip.AddrPortFrom(z.Address, uint16(z.SIPPort)).String()
	}
	for _, p := range cfg.Peers {
		got[string(p.Kind)+" "+p.Name] = p.Address.String()
	}
	if len(got) != len(want) {
		t.Errorf("example defines %v, want exactly %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("example %s at %q, want %q", k, got[k], v)
		}
	}
}
