package appliance

import (
	"bytes"
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"
)

func TestMediaCallCeiling(t *testing.T) {
	for _, c := range []struct {
		limit uint64
		want  int
	}{
		{0, 0}, {1024, 0}, {1028, 1}, {20000, 4744}, {1048576, 261888},
	} {
		if got := mediaCallCeiling(c.limit); got != c.want {
			t.Errorf("mediaCallCeiling(%d) = %d, want %d", c.limit, got, c.want)
		}
	}
}

func TestWarnFileCeiling(t *testing.T) {
	for _, c := range []struct {
		limit    uint64
		maxCalls int
		warn     bool
	}{
		{20000, 10000, true}, {20000, 4744, false}, {1048576, 10000, false}, {0, 10000, false},
	} {
		var buf bytes.Buffer
		log := hclog.New(&hclog.LoggerOptions{Output: &buf, Level: hclog.Warn})
		warnFileCeiling(log, c.limit, c.maxCalls)
		if got := strings.Contains(buf.String(), "open file limit caps calls"); got != c.warn {
			t.Errorf("limit %d max_calls %d: warned %v, want %v: %q", c.limit, c.maxCalls, got, c.warn, buf.String())
		}
	}
}
