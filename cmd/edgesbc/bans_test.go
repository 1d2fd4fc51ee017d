package main

import (
	"bytes"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edgesbc/edgesbc/appliance"
	"github.com/edgesbc/edgesbc/sbc/guard"
)

func TestCmdBansUsage(t *testing.T) {
	noSocket := filepath.Join(t.TempDir(), "none.sock")
	tests := []struct {
		args     []string
		wantCode int
		wantErr  string
	}{
		{args: nil, wantCode: 2, wantErr: "usage"},
		{args: []string{"list", "extra"}, wantCode: 2, wantErr: "usage"},
		{args: []string{"add", "192.0.2.1"}, wantCode: 2, wantErr: "usage"}, // no --for
		{args: []string{"show"}, wantCode: 2, wantErr: "usage"},
		{args: []string{"show", "not-an-ip"}, wantCode: 2, wantErr: "not an IP address"},
		{args: []string{"list", "--for"}, wantCode: 2, wantErr: "bad flag"},
		{args: []string{"list", "--colour"}, wantCode: 2, wantErr: "bad flag"},
		{args: []string{"list", "-admin", noSocket}, wantCode: 1, wantErr: "connect to admin socket"},
		{args: []string{"add", "192.0.2.1", "--for=1h", "--admin=" + noSocket}, wantCode: 1, wantErr: "connect to admin socket"},
	}
	for _, tt := range tests {
		var out, errOut bytes.Buffer
		if code := cmdBans(tt.args, &out, &errOut); code != tt.wantCode || !strings.Contains(errOut.String(), tt.wantErr) {
			t.Errorf("bans %q: exit %d, stderr %q; want %d and %q", tt.args, code, errOut.String(), tt.wantCode, tt.wantErr)
		}
	}
}

func TestPrintBans(t *testing.T) {
	now := time.Now()
	b := appliance.BanView{Ban: guard.Ban{
		Addr: netip.MustParseAddr("198.51.100.66"), Policy: "auth-failures", Reason: "failed authentication",
		Counters: map[string]int{"failed_auth": 5},
		First:    guard.Offence{At: now.Add(-time.Minute), Request: `INVITE user="100"`, Code: 403},
		Last:     guard.Offence{At: now, Request: `INVITE user="104"`, Code: 403},
		Start:    now, Expires: now.Add(4 * time.Hour), Repeat: 1,
	}, RemainingSeconds: 4 * 3600}
	var list, show bytes.Buffer
	printBans(&list, "list", []appliance.BanView{b})
	printBans(&show, "show", []appliance.BanView{b})
	if !strings.Contains(list.String(), "198.51.100.66  auth-failures  4h0m0s") {
		t.Errorf("list:\n%s", list.String())
	}
	for _, want := range []string{"policy:    auth-failures", "counters:  map[failed_auth:5]", "(in 4h0m0s)",
		"repeat:    1 earlier ban", `INVITE user="100" -> 403`, `INVITE user="104" -> 403`} {
		if !strings.Contains(show.String(), want) {
			t.Errorf("show lacks %q:\n%s", want, show.String())
		}
	}
}
