package sbc

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
)

// dialogPeer is one end of an established call as seen by a test phone:
// enough to send requests in its dialog and to answer what arrives.
type dialogPeer struct {
	p        *phone
	to       string // the SBC address the phone sends to
	callID   string
	from, pt string // From and To header values of requests it sends
	cseq     int
	// targets are dialogs a transfer created toward this phone: INVITEs
	// without a To tag, answered with tag fz-tag.
	targets []dialogPeer
}

// hangUp sends BYE on the phone's dialog and on every transfer dialog.
func (d *dialogPeer) hangUp() {
	for _, dl := range append([]dialogPeer{*d}, d.targets...) {
		d.p.send(mustAddrPort(d.to), dl.request("BYE", "", ""))
	}
}

func (d *dialogPeer) request(method, ctype, body string) string {
	d.cseq++
	ct := ""
	if body != "" {
		ct = "Content-Type: " + ctype + "\n"
	}
	return fmt.Sprintf("%s sip:x@%s SIP/2.0\nVia: SIP/2.0/UDP %s;branch=z9hG4bK-fz%d%d;rport\nMax-Forwards: 70\nFrom: %s\nTo: %s\nCall-ID: %s\nCSeq: %d %s\nContact: <sip:x@%s>\n%sContent-Length: %%LEN%%\n\n%s",
		method, d.to, d.p.addr, d.cseq, time.Now().UnixNano()%1000000, d.from, d.pt, d.callID, d.cseq, method, d.p.addr, ct, body)
}

// pump answers everything that reaches the phone within d, like a patient
// user agent: 200 to requests (with SDP to an INVITE or UPDATE offer, or an
// offer when none came), ACK to 2xx of INVITEs it sent. It returns the
// number of BYEs it answered.
func (d *dialogPeer) pump(dur time.Duration, sdpBody string) (byes int) {
	buf := make([]byte, 65535)
	deadline := time.Now().Add(dur)
	for {
		_ = d.p.conn.SetReadDeadline(deadline)
		n, src, err := d.p.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			return byes
		}
		m, err := sip.ParseMessage(buf[:n])
		if err != nil {
			d.p.t.Errorf("unparsable message from the SBC: %v\n%s", err, buf[:n])
			continue
		}
		switch msg := m.(type) {
		case *sip.Request:
			switch msg.Method {
			case sip.ACK:
				continue
			case sip.BYE:
				byes++
			case sip.INVITE:
				if !msg.To().Params.Has("tag") {
					d.targets = append(d.targets, dialogPeer{p: d.p, to: d.to, callID: msg.CallID().Value(),
						from: msg.To().Value() + ";tag=fz-tag", pt: msg.From().Value(), cseq: 100})
				}
			}
			body := ""
			if msg.Method == sip.INVITE || msg.Method == sip.UPDATE {
				body = sdpBody
			}
			d.p.send(src, answer(msg, 200, "OK", "fz-tag", "<sip:x@"+d.p.addr.String()+">", body))
		case *sip.Response:
			if msg.StatusCode >= 200 && msg.CSeq().MethodName == sip.INVITE {
				ack := fmt.Sprintf("ACK sip:x@%s SIP/2.0\nVia: SIP/2.0/UDP %s;branch=z9hG4bK-ack%d;rport\nMax-Forwards: 70\nFrom: %s\nTo: %s\nCall-ID: %s\nCSeq: %d ACK\nContent-Length: 0\n\n",
					d.to, d.p.addr, msg.CSeq().SeqNo, msg.From().Value(), msg.To().Value(), msg.CallID().Value(), msg.CSeq().SeqNo)
				d.p.send(src, ack)
			}
		}
	}
}

// FuzzInDialog plays a fuzzer-chosen sequence of in-dialog requests from
// either side against an established call with session timers on both
// legs, with both peers answering whatever reaches them (a transfer
// target included); then both peers hang up. Whatever the sequence, the
// server must not panic and the call must end cleanly: no call, dialog or
// media session left.
func FuzzInDialog(f *testing.F) {
	f.Add([]byte{0, 1, 6}, []byte(nil))
	f.Add([]byte{2, 3, 2, 3}, []byte(nil))
	f.Add([]byte{0, 0, 1, 1, 10}, []byte("v=0\r\no=- 1 1 IN IP4 10.91.1.9\r\ns=-\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\nm=audio 0 RTP/AVP 8\r\n"))
	f.Add([]byte{8, 9, 4, 5, 0}, []byte("garbage"))
	f.Add([]byte{12, 14, 0, 13}, []byte(nil))
	f.Add([]byte{13, 15, 1, 12, 2}, []byte("<sip:@>"))
	f.Fuzz(func(t *testing.T, ops []byte, junk []byte) {
		if len(ops) > 8 {
			ops = ops[:8]
		}
		r := newRig(t, func(c *Config) {
			c.DrainTimeout = 100 * time.Millisecond
			withTimers(60*time.Second, 60*time.Second)(c)
		})
		okA, invB := r.establish("fz-call")
		pbx := &dialogPeer{p: r.pbx, to: r.priv.String(), callID: "fz-call", from: okA.From().Value(), pt: okA.To().Value(), cseq: 10}
		car := &dialogPeer{p: r.car, to: r.pub.String(), callID: invB.CallID().Value(), from: invB.To().Value() + ";tag=car-tag", pt: invB.From().Value(), cseq: 1}
		for _, b := range ops {
			d, sdpBody := pbx, pbxSDP
			if b&1 == 1 {
				d, sdpBody = car, carrierSDP
			}
			var req string
			switch (b >> 1) % 8 {
			case 0:
				req = d.request("INVITE", "application/sdp", sdpBody)
			case 1:
				req = d.request("INVITE", "", "")
			case 2:
				req = d.request("UPDATE", "application/sdp", sdpBody)
			case 3:
				req = d.request("INFO", "application/dtmf-relay", "Signal=1\n")
			case 4:
				req = d.request("OPTIONS", "", "")
			case 5:
				req = d.request("INVITE", "application/sdp", string(junk))
			case 6:
				// a blind transfer, terminated by the SBC; junk may spoil
				// the Refer-To
				target := "<sip:+15559999@127.0.0.1>"
				if len(junk) > 0 {
					target = string(junk)
				}
				req = d.request("REFER", "", "")
				req = strings.Replace(req, "Content-Length", "Refer-To: "+target+"\nContent-Length", 1)
			case 7:
				// a session refresh, absorbed on its own leg
				req = d.request("UPDATE", "", "")
				req = strings.Replace(req, "Content-Length", "Supported: timer\nSession-Expires: 90;refresher=uac\nContent-Length", 1)
			}
			d.p.send(mustAddrPort(d.to), req)
			pbx.pump(30*time.Millisecond, pbxSDP)
			car.pump(30*time.Millisecond, carrierSDP)
		}
		// a transfer may have released one side's dialog: both hang up
		pbx.hangUp()
		car.hangUp()
		deadline := time.Now().Add(10 * time.Second)
		for time.Now().Before(deadline) {
			pbx.pump(20*time.Millisecond, pbxSDP)
			car.pump(20*time.Millisecond, carrierSDP)
			st := r.srv.Status()
			if st.Calls == 0 && st.Dialogs == 0 && r.relay.Sessions() == 0 {
				return
			}
		}
		t.Fatalf("call did not end after ops %v: %+v, sessions %d", ops, r.srv.Status(), r.relay.Sessions())
	})
}

func mustAddrPort(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }
