package media

import (
	"net/netip"
	"testing"
)

func TestAdmission(t *testing.T) {
	ap := netip.MustParseAddrPort
	announced := ap("198.51.100.7:4000")
	for _, tc := range []struct {
		name string
		r    *remote
		src  netip.AddrPort
		want verdict
	}{
		{"sdp unknown", nil, ap("198.51.100.7:4000"), drop},
		{"no address in sdp", &remote{}, ap("198.51.100.7:4000"), drop},
		{"announced address", &remote{expected: announced}, ap("198.51.100.7:4000"), latch},
		{"announced ip, nat port", &remote{expected: announced}, ap("198.51.100.7:61000"), latch},
		{"stranger before latch", &remote{expected: announced}, ap("203.0.113.9:4000"), drop},
		{"latched source", &remote{expected: announced, latched: ap("198.51.100.7:61000")}, ap("198.51.100.7:61000"), admit},
		{"announced port after nat latch", &remote{expected: announced, latched: ap("198.51.100.7:61000")}, ap("198.51.100.7:4000"), drop},
		{"stranger after latch", &remote{expected: announced, latched: ap("198.51.100.7:61000")}, ap("203.0.113.9:61000"), drop},
		{"invalid source", &remote{expected: announced}, netip.AddrPort{}, drop},
	} {
		if got := admission(tc.r, tc.src); got != tc.want {
			t.Errorf("%s: admission(%+v, %v) = %v, want %v", tc.name, tc.r, tc.src, got, tc.want)
		}
	}
}

func TestRemoteDestination(t *testing.T) {
	ap := netip.MustParseAddrPort
	var none *remote
	if d := none.destination(); d.IsValid() {
		t.Errorf("nil remote destination = %v, want invalid", d)
	}
	r := &remote{expected: ap("198.51.100.7:4000")}
	if d := r.destination(); d != r.expected {
		t.Errorf("unlatched destination = %v, want announced %v", d, r.expected)
	}
	r.latched = ap("198.51.100.7:61000")
	if d := r.destination(); d != r.latched {
		t.Errorf("latched destination = %v, want %v (symmetric RTP)", d, r.latched)
	}
}

func TestSide(t *testing.T) {
	if A.Other() != B || B.Other() != A {
		t.Errorf("Other: A→%v, B→%v", A.Other(), B.Other())
	}
	if A.String() != "A" || B.String() != "B" || Side(7).valid() {
		t.Errorf("String/valid: %v %v %v", A, B, Side(7).valid())
	}
}
