// Package sbc is the B2BUA core of edgesbc. It owns SIP signaling: the zones
// the SBC listens in, the configured peers (pbx and trunk blocks), routing of
// new calls, the two dialogs (legs) of every Call, topology hiding on egress
// and the last-line leak guard.
//
// It does not own media packets (package media relays them behind the Media
// seam) nor the firewall (bans reach it through the Enforcer seam, later).
//
// Every Call is two independent SIP dialogs. Nothing of one leg's Via,
// Record-Route, Route, Contact, Call-ID, tags or CSeq space is carried to the
// other leg: outgoing messages are built from scratch from the leg's own
// state, and only user parts (numbers), display names, bodies (after SDP
// anchoring) and an explicit allow list of headers cross between legs.
// Session timers (RFC 4028) are negotiated and kept per leg too (timer.go),
// and so are reliable provisionals (RFC 3262, prack.go): the SBC PRACKs the
// callee's and sends the caller its own, with its own RSeq space.
// A transfer the SBC performs (REFER, refer.go) replaces one leg of the
// Call with a new one; the Call and its CallID stay. Where one side cannot
// take part in an offer/answer exchange in time (a peer that needs an
// offer in every INVITE, a caller that cannot answer a callee's offer in
// a PRACK), the SBC makes the offer or the answer itself from its anchored
// media and completes the other side's exchange apart (earlyoffer.go).
//
// An access mode (access.go) lets remote phones in one zone register
// with a pbx through the SBC: each phone binding is a registration of the
// SBC's own toward the PBX, under a token Contact that maps back to the
// source the phone registered from; the phone's credentials cross
// unchanged, and registered phones call and are called like peers.
//
// Each leg has its own transport, UDP or TCP (tcp.go): a call may arrive on
// one and leave on the other. Every TCP connection, accepted or opened,
// is framed and filtered by the SBC before sipgo reads a message of it.
package sbc
