package appliance

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/edgesbc/edgesbc/appliance/config"
	"github.com/edgesbc/edgesbc/sbc"
)

func TestSlogBridgeDropsPayloadAndLimits(t *testing.T) {
	var buf bytes.Buffer
	log := hclog.New(&hclog.LoggerOptions{Output: &buf, Level: hclog.Info})
	sl := NewSlogLogger(log)
	for i := 0; i < 100; i++ {
		sl.Error("failed to parse", "data", "INVITE sip:evil\x00\x1b[31m PAYLOAD", "error", "bad")
	}
	out := buf.String()
	if strings.Contains(out, "PAYLOAD") {
		t.Errorf("raw packet data reached the log:\n%s", out)
	}
	if n := strings.Count(out, "failed to parse"); n != 1 {
		t.Errorf("%d log lines for 100 identical warnings, want 1 per interval:\n%s", n, out)
	}
	buf.Reset()
	sl.Info("transaction created", "tx", "x")
	if buf.Len() != 0 {
		t.Errorf("sipgo info chatter logged at info level: %s", buf.String())
	}
}

func TestCDRLine(t *testing.T) {
	var buf bytes.Buffer
	log := hclog.New(&hclog.LoggerOptions{Output: &buf, Level: hclog.Info})
	start := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	cdrLogger(log)(context.Background(), sbc.CallRecord{
		ID: "abc", From: "2001", To: "+15551234", InPeer: "main", OutPeer: "carrier",
		Start: start, Answer: start.Add(2 * time.Second), End: start.Add(62 * time.Second),
		Status: 200, EndReason: "caller bye",
	})
	out := buf.String()
	for _, want := range []string{"call ended", "call=abc", "from=2001", `to="+15551234"`, "in_peer=main", "out_peer=carrier", "status=200", `reason="caller bye"`, "ring_ms=2000", "talk_ms=60000"} {
		if !strings.Contains(out, want) {
			t.Errorf("CDR line lacks %q:\n%s", want, out)
		}
	}
}

// TestTCPSupported: a configuration with TCP zones and peers is accepted
// and reaches the signaling core's Config.
func TestTCPSupported(t *testing.T) {
	src := []byte(`zone "private" {
  address    = "10.91.1.1"
  transports = ["udp", "tcp"]
}
zone "public" {
  address    = "203.0.113.1"
  transports = ["tcp"]
}
pbx "main" {
  zone    = "private"
  address = "10.91.1.2"
}
trunk "carrier" {
  zone      = "public"
  address   = "203.0.113.2"
  transport = "tcp"
}
`)
	cfg, diags := config.Parse("t.hcl", src)
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	if u := Unsupported(cfg); len(u) != 0 {
		t.Errorf("Unsupported = %q", u)
	}
	sc := SBCConfig(cfg)
	if got := sc.Zones[0].Transports; len(got) != 2 || got[1] != "tcp" {
		t.Errorf("private zone transports %q", got)
	}
	if got := sc.Zones[1].Transports; len(got) != 1 || got[0] != "tcp" {
		t.Errorf("public zone transports %q", got)
	}
	if sc.Peers[1].Transport != "tcp" || sc.Peers[0].Transport != "udp" {
		t.Errorf("peer transports %q %q", sc.Peers[0].Transport, sc.Peers[1].Transport)
	}
}
