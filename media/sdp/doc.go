// Package sdp parses SDP bodies (RFC 8866, formerly RFC 4566) and rewrites
// them so that the SBC is the only media address the far side can see.
//
// It owns the text of one SDP body: Parse turns it into a Description that
// keeps every line, Description.Media reports what each m= line asks for
// (kind, port, transport, connection address, RFC 3605 RTCP address, RTCP
// multiplexing and direction), and Description.Rewrite produces the body the
// SBC sends on, with its own anchor address and relay ports in o=, c=, m=
// and a=rtcp, and with every line that could reveal the other side's
// topology removed (ICE candidates, i=/u=/e=/p=, any attribute carrying an
// IP literal). ForeignAddrs is the independent last-line check that a body
// about to leave the SBC names no address it should not.
//
// It does not own ports, sockets or relays (package media allocates ports
// and moves packets), does not negotiate codecs or answer offers (the
// offer/answer model of RFC 3264 is applied by the two endpoints; the SBC
// relays their choices verbatim), does not resolve host names and does no
// I/O. Every function is pure and safe for concurrent use on distinct or
// shared Descriptions, which are never modified after Parse.
package sdp
