package config

import (
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestParseAccess(t *testing.T) {
	src := base + `
access "remote-phones" {
  zone         = "public"
  pbx          = "main"
  domain       = "pbx.example.com"
  expires      = "45s"
  pbx_expires  = "30m"
  max_bindings = 500
}
`
	cfg, diags := Parse("test.hcl", []byte(src))
	if diags.HasErrors() {
		t.Fatalf("Parse: %s", render(diags))
	}
	want := []Access{{Name: "remote-phones", Zone: "public", PBX: "main", Domain: "pbx.example.com",
		Expires: 45 * time.Second, PBXExpires: 30 * time.Minute, MaxBindings: 500}}
	if !reflect.DeepEqual(cfg.Access, want) {
		t.Errorf("Access = %+v, want %+v", cfg.Access, want)
	}

	// defaults, and the domain taken from the pbx's host name
	src = strings.Replace(base, `address = "10.91.1.2:5060"`, "address = \"10.91.1.2:5060\"\n  host = \"pbx.corp.example\"", 1) +
		"access \"phones\" {\n  zone = \"public\"\n  pbx = \"main\"\n}\n"
	cfg, diags = Parse("test.hcl", []byte(src))
	if diags.HasErrors() {
		t.Fatalf("Parse: %s", render(diags))
	}
	want = []Access{{Name: "phones", Zone: "public", PBX: "main", Domain: "pbx.corp.example",
		Expires: DefaultAccessExpires, PBXExpires: DefaultAccessPBXExpires, MaxBindings: DefaultAccessMaxBindings}}
	if !reflect.DeepEqual(cfg.Access, want) {
		t.Errorf("Access = %+v, want %+v", cfg.Access, want)
	}

	// no access block: none
	cfg, diags = Parse("test.hcl", []byte(base))
	if diags.HasErrors() || len(cfg.Access) != 0 {
		t.Errorf("Access without a block = %+v (%s)", cfg.Access, render(diags))
	}
}

func TestParseAccessErrors(t *testing.T) {
	block := func(body string) string { return "access \"phones\" {\n" + body + "}\n" }
	tests := []struct {
		name     string
		hcl      string
		wantErr  string
		wantLine int
		wantCol  int
	}{
		{name: "no zone", hcl: block("  pbx = \"main\"\n  domain = \"pbx.example.com\"\n"),
			wantErr: "needs zone", wantLine: 1, wantCol: 1},
		{name: "unknown zone", hcl: block("  zone = \"dmz\"\n  pbx = \"main\"\n  domain = \"pbx.example.com\"\n"),
			wantErr: `No zone block is named "dmz"`, wantLine: 2, wantCol: 10},
		{name: "no pbx", hcl: block("  zone = \"public\"\n  domain = \"pbx.example.com\"\n"),
			wantErr: "needs pbx", wantLine: 1, wantCol: 1},
		{name: "unknown pbx", hcl: block("  zone = \"public\"\n  pbx = \"other\"\n  domain = \"pbx.example.com\"\n"),
			wantErr: `No pbx block is named "other"`, wantLine: 3, wantCol: 9},
		{name: "a trunk", hcl: block("  zone = \"public\"\n  pbx = \"carrier\"\n  domain = \"pbx.example.com\"\n"),
			wantErr: `"carrier" is a trunk block`, wantLine: 3, wantCol: 9},
		{name: "phones beside the pbx", hcl: block("  zone = \"private\"\n  pbx = \"main\"\n  domain = \"pbx.example.com\"\n"),
			wantErr: "the access zone is the other side", wantLine: 2, wantCol: 10},
		{name: "domain an address", hcl: block("  zone = \"public\"\n  pbx = \"main\"\n  domain = \"10.91.1.2\"\n"),
			wantErr: "must be a domain name", wantLine: 4, wantCol: 12},
		{name: "no domain to take", hcl: block("  zone = \"public\"\n  pbx = \"main\"\n"),
			wantErr: "needs domain", wantLine: 1, wantCol: 1},
		{name: "expires too short", hcl: block("  zone = \"public\"\n  pbx = \"main\"\n  domain = \"pbx.example.com\"\n  expires = \"5s\"\n"),
			wantErr: "expires must be whole seconds from 10s", wantLine: 5, wantCol: 13},
		{name: "pbx expires not a duration", hcl: block("  zone = \"public\"\n  pbx = \"main\"\n  domain = \"pbx.example.com\"\n  pbx_expires = \"long\"\n"),
			wantErr: "Invalid duration", wantLine: 5, wantCol: 17},
		{name: "no bindings", hcl: block("  zone = \"public\"\n  pbx = \"main\"\n  domain = \"pbx.example.com\"\n  max_bindings = 0\n"),
			wantErr: "max_bindings must be between 1 and", wantLine: 5, wantCol: 18},
		{name: "two for a zone", hcl: block("  zone = \"public\"\n  pbx = \"main\"\n  domain = \"pbx.example.com\"\n") +
			"access \"more\" {\n  zone = \"public\"\n  pbx = \"main\"\n  domain = \"pbx.example.com\"\n}\n",
			wantErr: "Duplicate access for zone", wantLine: 7, wantCol: 10},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, diags := Parse("test.hcl", []byte(base+tt.hcl))
			if cfg != nil {
				t.Errorf("Parse returned a Config despite errors")
			}
			errs := errorsOf(diags)
			if len(errs) != 1 {
				t.Fatalf("got %d errors, want 1:\n%s", len(errs), render(diags))
			}
			d := errs[0]
			if got := d.Summary + ": " + d.Detail; !strings.Contains(got, tt.wantErr) {
				t.Errorf("error %q does not contain %q", got, tt.wantErr)
			}
			if d.Subject == nil {
				t.Fatalf("error %q has no Subject", d.Summary)
			}
			line := baseLines + tt.wantLine
			if d.Subject.Start.Line != line || d.Subject.Start.Column != tt.wantCol {
				t.Errorf("error at %d:%d, want %d:%d\n%s", d.Subject.Start.Line, d.Subject.Start.Column, line, tt.wantCol, render(diags))
			}
		})
	}
}
