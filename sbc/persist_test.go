package sbc

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/edgesbc/edgesbc/media"
)

// TestDetachAndRestore hands a confirmed call from one server to a new one
// on the same addresses, as a restart with keep_on_restart does: the old
// server stops without a BYE, the new one answers the caller's BYE with the
// callee's dialog exactly as before and a higher CSeq.
func TestDetachAndRestore(t *testing.T) {
	r := newRig(t, nil)
	okA, invB := r.establish("keep-1")
	st := confirmedCall(t, r.srv)
	ms, ok := r.relay.State(media.SessionID(st.ID))
	if !ok {
		t.Fatal("no media state for the call")
	}
	r.srv.Detach()
	r.relay.Detach()
	r.pbx.expectNothing(300*time.Millisecond, "BYE")
	r.car.expectNothing(10*time.Millisecond, "BYE")

	// The new process: same zones and peers, same port range.
	log := hclog.New(&hclog.LoggerOptions{Level: testLogLevel, Output: testWriter{t}})
	lo, hi := 26000+2*(int(r.priv.Port())%2950), 26000+2*(int(r.priv.Port())%2950)+99
	relay2, err := media.NewRelay(media.Config{PortMin: lo, PortMax: hi, Quarantine: 50 * time.Millisecond}, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(relay2.Shutdown)
	cfg := Config{
		Zones: []ZoneConfig{
			{Name: "private", Address: r.priv.Addr(), SIPPort: int(r.priv.Port())},
			{Name: "public", Address: r.pub.Addr(), SIPPort: int(r.pub.Port())},
		},
		Peers: []PeerConfig{
			{Name: "main", Kind: PBX, Zone: "private", Address: r.pbx.addr},
			{Name: "carrier", Kind: Trunk, Zone: "public", Address: r.car.addr},
		},
		DrainTimeout: time.Second,
	}
	srv2, err := NewServer(cfg, relay2, Hooks{}, log, testSlog(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := relay2.Restore(ms); err != nil {
		t.Fatalf("restore media: %v", err)
	}
	if err := srv2.Restore(st); err != nil {
		t.Fatalf("restore call: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := srv2.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv2.Shutdown(context.Background()) })
	if s := srv2.Status(); s.Calls != 1 || s.Dialogs != 2 {
		t.Fatalf("restored server: %+v, want one call with two dialogs", s)
	}

	r.pbx.send(r.priv, fmt.Sprintf("BYE sip:x@%s SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.3:%d;branch=z9hG4bK-keepbye\nMax-Forwards: 70\nFrom: %s\nTo: %s\nCall-ID: keep-1\nCSeq: 11 BYE\nContent-Length: 0\n\n",
		r.priv, r.pbx.addr.Port(), okA.From().Value(), okA.To().Value()))
	bye, raw := r.car.recv("BYE", "SIP/2.0 200", "ACK")
	assertHidden(t, raw)
	if bye.CallID().Value() != invB.CallID().Value() {
		t.Errorf("BYE on leg B has Call-ID %s, want the dialog's %s", bye.CallID().Value(), invB.CallID().Value())
	}
	if ft, _ := bye.From().Params.Get("tag"); ft != func() string { v, _ := invB.From().Params.Get("tag"); return v }() {
		t.Errorf("BYE on leg B has From tag %s, want the dialog's", ft)
	}
	if bye.CSeq().SeqNo <= invB.CSeq().SeqNo+cseqMargin-1 {
		t.Errorf("BYE CSeq %d: want above %d + the restore margin", bye.CSeq().SeqNo, invB.CSeq().SeqNo)
	}
	r.car.send(r.pub, answer(bye, 200, "OK", "", "", ""))
	r.pbx.recv("SIP/2.0 200")
	deadline := time.Now().Add(5 * time.Second)
	for srv2.Status().Calls != 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if s := srv2.Status(); s.Calls != 0 || s.Dialogs != 0 || relay2.Sessions() != 0 {
		t.Errorf("after BYE: %+v, %d media sessions; want none", s, relay2.Sessions())
	}
}

// TestRestoreRefusesUnknownPeer: a call whose peer left the configuration
// is not restored, and nothing of it stays registered.
func TestRestoreRefusesUnknownPeer(t *testing.T) {
	r := newRig(t, nil)
	r.establish("keep-2")
	st := confirmedCall(t, r.srv)
	st.Legs[1].Peer = "gone"
	st.ID = "other-id"
	if err := r.srv.Restore(st); err == nil {
		t.Fatal("Restore accepted a call toward an unknown peer")
	}
	if s := r.srv.Status(); s.Calls != 1 || s.Dialogs != 2 {
		t.Errorf("after a refused restore: %+v, want only the original call", s)
	}
}

// confirmedCall waits for the server's one call to be confirmed (the ACK
// is handled asynchronously) and returns its state.
func confirmedCall(t *testing.T, srv *Server) CallState {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if states := srv.CallStates(); len(states) == 1 {
			return states[0]
		}
		if time.Now().After(deadline) {
			t.Fatalf("no confirmed call after 5 s: %+v", srv.Status())
		}
		time.Sleep(10 * time.Millisecond)
	}
}
