package sbc

import (
	"strings"
	"testing"

	"github.com/emiago/sipgo/sip"
)

// rehomeIdentityURI is rehomeIdentity with the URI written by sip.Uri: the
// reference the hand-written URI must agree with.
func rehomeIdentityURI(v, host string) string {
	var uri sip.Uri
	params := sip.NewParams()
	name, err := sip.ParseAddressValue(v, &uri, &params)
	if err != nil || (uri.Scheme != "sip" && uri.Scheme != "sips") || uri.Host == "" {
		return v
	}
	out := sip.Uri{Scheme: uri.Scheme, User: uri.User, Host: host}
	if up, ok := uri.UriParams.Get("user"); ok && up == "phone" {
		out.UriParams = sip.NewParams()
		out.UriParams.Add("user", "phone")
	}
	var b strings.Builder
	if name != "" {
		b.WriteString(`"`)
		b.WriteString(strings.ReplaceAll(name, `"`, ""))
		b.WriteString(`" `)
	}
	b.WriteString("<" + out.String() + ">")
	for _, kv := range params {
		b.WriteString(";" + kv.K)
		if kv.V != "" {
			b.WriteString("=" + kv.V)
		}
	}
	return b.String()
}

func TestRehomeIdentity(t *testing.T) {
	values := []string{
		"<sip:2001@corp.internal>",
		`"Alice Corp" <sip:+15551234@10.0.0.5;user=phone>;party=calling;privacy=off`,
		`"Al""ice" <sips:bob@pbx01.corp.internal:5061;transport=tls>`,
		"<sip:10.0.0.5>",
		"sip:2001@10.0.0.5",
		"<tel:+15551234>",
		"Anonymous <sip:anonymous@anonymous.invalid>;tag=x",
		"<sip:2001@[2001:db8::5]:5060;user=ip>",
		"garbage",
		"",
	}
	for _, host := range []string{"203.0.113.1", "[2001:db8::1]", "::ffff:192.0.2.1"} {
		for _, v := range values {
			if got, want := rehomeIdentity(v, host), rehomeIdentityURI(v, host); got != want {
				t.Errorf("rehomeIdentity(%q, %q) = %q, want %q", v, host, got, want)
			}
		}
	}
	if got := rehomeIdentity("<sip:2001@corp.internal;user=phone>", "203.0.113.1"); got != "<sip:2001@203.0.113.1;user=phone>" {
		t.Errorf("got %q", got)
	}
}

func TestSDPBodyContentType(t *testing.T) {
	for ct, want := range map[string]bool{
		"application/sdp": true, "Application/SDP": true, " application/sdp ; charset=x": true,
		"application/sdpx": false, "application/ſdp": false, "text/plain": false, "": false,
	} {
		res := sip.NewResponse(200, "OK")
		if ct != "" {
			res.AppendHeader(sip.NewHeader("Content-Type", ct))
		}
		res.SetBody([]byte("v=0\r\n"))
		if got := sdpBody(res) != nil; got != want {
			t.Errorf("Content-Type %q: sdp %v, want %v", ct, got, want)
		}
	}
}
