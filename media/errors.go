package media

import "errors"

var (
	// ErrPoolExhausted means no RTP/RTCP port pair is free: every pair in the
	// configured range is allocated or still in quarantine. The SBC answers
	// the offer with 503; the condition clears as calls end.
	ErrPoolExhausted = errors.New("media: port pool exhausted")
	// ErrNoSession means the SessionID is not open (never opened, already
	// closed, or closed by Shutdown).
	ErrNoSession = errors.New("media: no such session")
	// ErrSessionExists means Open was called for a SessionID that is open.
	ErrSessionExists = errors.New("media: session exists")
	// ErrBadSDP means a peer's SDP cannot be anchored: it does not parse, an
	// answer does not match the offer's m= lines, a stream has no usable
	// connection address, or its address family differs from the local
	// address of that side. It is the peer's fault; the SBC answers 488.
	ErrBadSDP = errors.New("media: unusable SDP")
	// ErrRelayClosed means Shutdown has run; no new session can be opened.
	ErrRelayClosed = errors.New("media: relay shut down")
)
