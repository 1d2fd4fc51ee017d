package sdp

import "errors"

var (
	// ErrMalformed means a body is not acceptable SDP. Callers answer an
	// offer that fails with it with 400 or 488, never relay it.
	ErrMalformed = errors.New("sdp: malformed")
	// ErrInvalidAnchor means the Anchor passed to Rewrite cannot describe
	// this body (wrong number of ports, unusable address or origin). It is
	// a fault of the caller, not of the peer that sent the body.
	ErrInvalidAnchor = errors.New("sdp: invalid anchor")
	// ErrLeak means the body carries an address literal in a place Rewrite
	// can neither rewrite nor drop (an m= line), so it cannot be relayed
	// without revealing the other side's topology.
	ErrLeak = errors.New("sdp: address literal cannot be hidden")
)
