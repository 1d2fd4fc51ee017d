package sbc

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/emiago/sipgo/sip"
)

// entryAction is what the read filter does with one datagram.
type entryAction int

const (
	entryPass    entryAction = iota // hand to the SIP stack
	entryDrop                       // discard silently (counted)
	entryRespond                    // answer statelessly with reply, then discard
)

// entryResult is the outcome of inspecting one datagram before the SIP stack
// parses it.
type entryResult struct {
	Action entryAction
	Reply  []byte // the stateless response for entryRespond
	Reason string // why it was dropped or answered; for counters and logs
	// NewCall is set for an INVITE outside any dialog (no To tag): the
	// only request that creates state, and the one admission control
	// refuses under overload.
	NewCall bool
}

var (
	errMissingHeader   = errors.New("missing mandatory header")
	errCSeqMethod      = errors.New("CSeq method does not match request method")
	errDuplicateHeader = errors.New("single-value header repeated")
)

// inspect decides what happens to one datagram before sipgo sees it. sipgo
// drops unparsable messages without answering and accepts requests that lack
// mandatory headers, so requests are parsed here first: a malformed request
// gets a stateless 400 (RFC 3261 §8.2), Max-Forwards 0 gets 483 (§16.3 step
// 3) and a wrong SIP version 505. An ACK is never answered. Responses pass
// untouched: nothing can be answered to a response.
//
// inspect must never panic whatever data holds: it is the first code every
// datagram from the network meets (see FuzzInspect).
func inspect(p *sip.Parser, data []byte, maxSize int) entryResult {
	if len(data) > maxSize {
		return entryResult{Action: entryDrop, Reason: "oversize"}
	}
	trimmed := bytes.TrimLeft(data, "\r\n\x00")
	if len(trimmed) == 0 {
		return entryResult{Action: entryDrop, Reason: "keepalive"}
	}
	if bytes.HasPrefix(trimmed, []byte("SIP/")) {
		return entryResult{Action: entryPass}
	}
	method, version, ok, wellFormed := requestLine(trimmed)
	if !ok {
		return entryResult{Action: entryDrop, Reason: "not sip"}
	}
	isAck := string(method) == "ACK"
	if isAck && string(version) == "SIP/2.0" {
		// nothing is ever answered to an ACK, so pre-parsing it would only
		// cost time: sipgo drops one it cannot parse, and the dialog
		// lookup ignores one without Call-ID or tags
		return entryResult{Action: entryPass}
	}
	answer := func(code int, why string) entryResult {
		if isAck {
			return entryResult{Action: entryDrop, Reason: why}
		}
		reply := statelessResponse(trimmed, code)
		if reply == nil {
			return entryResult{Action: entryDrop, Reason: why}
		}
		return entryResult{Action: entryRespond, Reply: reply, Reason: why}
	}
	if string(version) != "SIP/2.0" {
		return answer(505, "version")
	}
	if !wellFormed {
		return answer(400, "request line")
	}
	msg, err := p.ParseSIP(trimmed)
	if err != nil {
		return answer(400, "malformed")
	}
	req, ok := msg.(*sip.Request)
	if !ok {
		return answer(400, "malformed")
	}
	if err := checkMandatory(req); err != nil {
		return answer(400, "malformed")
	}
	if mf := req.MaxForwards(); mf != nil && mf.Val() == 0 && req.Method != sip.OPTIONS {
		return answer(483, "max-forwards")
	}
	return entryResult{Action: entryPass, NewCall: req.Method == sip.INVITE && !req.To().Params.Has("tag")}
}

// requestLine splits "METHOD uri SIP/2.0" loosely. ok is false for data
// that does not look like a request at all (dropped silently); wellFormed is
// false for a request line with extra whitespace inside (answered with 400,
// RFC 4475 §3.1.2.8/§3.1.2.9). method and version point into b. It runs for
// every request from a peer, so it splits the line without allocating; the
// fields are those of bytes.Fields.
func requestLine(b []byte) (method, version []byte, ok, wellFormed bool) {
	end := bytes.IndexByte(b, '\n')
	if end < 0 {
		return nil, nil, false, false
	}
	line := bytes.TrimRight(b[:end], "\r")
	var first, last []byte
	n := 0
	if ascii(line) {
		for i := 0; i < len(line); {
			for i < len(line) && asciiSpace[line[i]] {
				i++
			}
			if i == len(line) {
				break
			}
			j := i
			for j < len(line) && !asciiSpace[line[j]] {
				j++
			}
			if n == 0 {
				first = line[i:j]
			}
			last = line[i:j]
			n++
			i = j
		}
	} else {
		// other white space than ASCII's: bytes.Fields knows it
		f := bytes.Fields(line)
		if n = len(f); n > 0 {
			first, last = f[0], f[n-1]
		}
	}
	if n < 3 || len(first) > 64 || !bytes.HasPrefix(last, []byte("SIP/")) {
		return nil, nil, false, false
	}
	for _, c := range first {
		if !isTokenChar(c) {
			return nil, nil, false, false
		}
	}
	wellFormed = n == 3 && bytes.Count(line, []byte(" ")) == 2
	return first, last, true, wellFormed
}

// asciiSpace marks the ASCII bytes bytes.Fields splits at.
var asciiSpace = [256]bool{'\t': true, '\n': true, '\v': true, '\f': true, '\r': true, ' ': true}

func ascii(b []byte) bool {
	for _, c := range b {
		if c >= 0x80 {
			return false
		}
	}
	return true
}

func isTokenChar(c byte) bool {
	switch {
	case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		return true
	}
	return bytes.IndexByte([]byte("-.!%*_+`'~"), c) >= 0
}

// checkMandatory applies RFC 3261 §8.1.1: a request without To, From, CSeq,
// Call-ID or Via cannot be processed.
func checkMandatory(req *sip.Request) error {
	switch {
	case req.Via() == nil:
		return fmt.Errorf("%w: Via", errMissingHeader)
	case req.From() == nil:
		return fmt.Errorf("%w: From", errMissingHeader)
	case req.To() == nil:
		return fmt.Errorf("%w: To", errMissingHeader)
	case req.CallID() == nil || req.CallID().Value() == "":
		return fmt.Errorf("%w: Call-ID", errMissingHeader)
	case req.CSeq() == nil:
		return fmt.Errorf("%w: CSeq", errMissingHeader)
	}
	// sipgo upper-cases the request-line method but not the CSeq one
	if !strings.EqualFold(string(req.CSeq().MethodName), string(req.Method)) {
		return errCSeqMethod
	}
	// RFC 4475 §3.3.8: more than one value of a single-value header
	for _, name := range []string{"Call-ID", "CSeq", "From", "To", "Max-Forwards", "Content-Length"} {
		if countHeaders(req, name) > 1 {
			return fmt.Errorf("%w: %s", errDuplicateHeader, name)
		}
	}
	return nil
}

// statelessResponse builds a response to a request that could not be parsed,
// copying Via, From, To, Call-ID and CSeq textually (RFC 3261 §8.2.6). It
// returns nil when the request has no Via: there is nowhere to send it.
func statelessResponse(req []byte, code int) []byte {
	head := req
	if i := bytes.Index(req, []byte("\r\n\r\n")); i >= 0 {
		head = req[:i]
	} else if i := bytes.Index(req, []byte("\n\n")); i >= 0 {
		head = req[:i]
	}
	var out bytes.Buffer
	out.WriteString("SIP/2.0 ")
	out.WriteString(strconv.Itoa(code))
	out.WriteByte(' ')
	out.WriteString(reasonPhrase(code))
	out.WriteString("\r\n")
	haveVia := false
	lines := bytes.Split(head, []byte("\n"))
	for i := 1; i < len(lines); i++ {
		line := bytes.TrimRight(lines[i], "\r")
		// folded continuation lines belong to the previous header
		for i+1 < len(lines) && len(lines[i+1]) > 0 && (lines[i+1][0] == ' ' || lines[i+1][0] == '\t') {
			i++
			line = append(append(append([]byte(nil), line...), ' '), bytes.TrimSpace(bytes.TrimRight(lines[i], "\r"))...)
		}
		colon := bytes.IndexByte(line, ':')
		if colon <= 0 {
			continue
		}
		name := string(bytes.ToLower(bytes.TrimSpace(line[:colon])))
		value := bytes.TrimSpace(line[colon+1:])
		if len(value) == 0 || bytes.ContainsAny(value, "\x00") {
			continue
		}
		var canon string
		switch name {
		case "via", "v":
			canon, haveVia = "Via", true
		case "from", "f":
			canon = "From"
		case "to", "t":
			canon = "To"
		case "call-id", "i":
			canon = "Call-ID"
		case "cseq":
			canon = "CSeq"
		default:
			continue
		}
		out.WriteString(canon)
		out.WriteString(": ")
		out.Write(value)
		if canon == "To" && !bytes.Contains(bytes.ToLower(value), []byte("tag=")) {
			// RFC 3261 §8.2.6.2: a final response carries a To tag
			out.WriteString(";tag=")
			out.WriteString(sip.GenerateTagN(10))
		}
		out.WriteString("\r\n")
	}
	if !haveVia {
		return nil
	}
	if code == 503 {
		out.WriteString("Retry-After: 5\r\n")
	}
	out.WriteString("Content-Length: 0\r\n\r\n")
	return out.Bytes()
}
