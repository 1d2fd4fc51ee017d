package sbc

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// FuzzServerEntry sends arbitrary datagrams from the pbx to a running
// server, through the real read filter, sipgo's parser and the handlers. A
// panic anywhere on that path fails the fuzzer; after each input the server
// must still answer a keepalive OPTIONS, so it neither died nor hung.
func FuzzServerEntry(f *testing.F) {
	for _, b := range corpus(f) {
		f.Add(b)
	}
	f.Add([]byte("BYE sip:x@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.3;branch=z9hG4bK-f;rport\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\nCall-ID: f\r\nCSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n"))
	r := newRig(f, nil)
	f.Add([]byte(r.pbxInvite("fz-1", "z9hG4bK-fz")))
	n := 0
	f.Fuzz(func(t *testing.T, data []byte) {
		if _, err := r.pbx.conn.WriteToUDPAddrPort(data, r.priv); err != nil {
			t.Skip(err)
		}
		n++
		id := fmt.Sprintf("fz-ka-%d-%d", time.Now().UnixNano(), n)
		ping := fmt.Sprintf("OPTIONS sip:%s SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.3:%d;branch=z9hG4bK-%s\nMax-Forwards: 70\nFrom: <sip:a@b>;tag=1\nTo: <sip:c@d>\nCall-ID: %s\nCSeq: 1 OPTIONS\nContent-Length: 0\n\n",
			r.priv, r.pbx.addr.Port(), id, id)
		if _, err := r.pbx.conn.WriteToUDPAddrPort([]byte(strings.ReplaceAll(ping, "\n", "\r\n")), r.priv); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 65535)
		deadline := time.Now().Add(5 * time.Second)
		for {
			_ = r.pbx.conn.SetReadDeadline(deadline)
			k, _, err := r.pbx.conn.ReadFromUDPAddrPort(buf)
			if err != nil {
				t.Fatalf("server stopped answering after input %q: %v", data, err)
			}
			if strings.HasPrefix(string(buf[:k]), "SIP/2.0 200") && strings.Contains(string(buf[:k]), id) {
				return
			}
		}
	})
}
