package appliance

import (
	"bytes"
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"
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
