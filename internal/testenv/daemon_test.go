package testenv

import (
	"strings"
	"testing"
)

func TestParseStatus(t *testing.T) {
	st, err := parseStatus([]byte(`{"calls":2,"sessions":2,"ports_in_use":4,"goroutines":31,"dialogs":4,"version":"dev"}` + "\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := Status{Calls: 2, Sessions: 2, PortsInUse: 4, Goroutines: 31, Dialogs: 4}
	if st != want {
		t.Errorf("got %+v, want %+v", st, want)
	}
	for _, tt := range []struct{ in, want string }{
		{`{"calls":0,"sessions":0,"goroutines":9,"dialogs":0}`, "lacks ports_in_use"},
		{`{}`, "lacks calls, sessions, ports_in_use, goroutines, dialogs"},
		{`error: not ready`, "decode status"},
		{`{"calls":"none","sessions":0,"ports_in_use":0,"goroutines":9,"dialogs":0}`, "decode status"},
	} {
		if _, err := parseStatus([]byte(tt.in)); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("parseStatus(%s): err = %v, want it to mention %q", tt.in, err, tt.want)
		}
	}
}

// The ready line may arrive split across writes; it must still be seen,
// exactly once.
func TestDaemonLogReady(t *testing.T) {
	d := &Daemon{ready: make(chan struct{})}
	w := (*daemonLog)(d)
	for _, chunk := range []string{"2024-05-01T12:00:00Z [INFO] edgesbc: listening zone=private\n2024-05-01T12:00:00Z [INFO] edgesbc: edge", "sbc re", "ady zones=2\n", "edgesbc ready again\n"} {
		select {
		case <-d.ready:
			t.Fatalf("ready before %q was written", chunk)
		default:
		}
		if _, err := w.Write([]byte(chunk)); err != nil {
			t.Fatal(err)
		}
		if strings.HasPrefix(chunk, "ady") {
			break
		}
	}
	select {
	case <-d.ready:
	default:
		t.Fatal("ready line not noticed")
	}
	if _, err := w.Write([]byte("edgesbc ready again\n")); err != nil { // must not close twice
		t.Fatal(err)
	}
	if !strings.Contains(d.Log(), "edgesbc: edgesbc ready zones=2") {
		t.Errorf("log lost the ready line: %q", d.Log())
	}
}
