package sbc

import (
	"errors"
	"fmt"
)

var (
	// ErrNoRoute means a new call matched no route.
	ErrNoRoute = errors.New("sbc: no route for call")
	// ErrShuttingDown means the server refuses new calls while it drains.
	ErrShuttingDown = errors.New("sbc: shutting down")
)

// Reject ends a transaction with a final response. Code and Reason go on the
// wire and stay generic (topology hiding); Err is logged and never sent.
type Reject struct {
	Code   int
	Reason string
	Err    error
}

func (r *Reject) Error() string {
	return fmt.Sprintf("reject %d %s: %v", r.Code, r.Reason, r.Err)
}

func (r *Reject) Unwrap() error { return r.Err }

func reject(code int, err error) *Reject {
	return &Reject{Code: code, Reason: reasonPhrase(code), Err: err}
}

// reasonPhrase returns the RFC 3261 §21 reason phrase for code. Reason
// phrases of the far side are never relayed: they are free text and may
// carry product or host names.
func reasonPhrase(code int) string {
	if s, ok := reasonPhrases[code]; ok {
		return s
	}
	switch {
	case code < 200:
		return "Session Progress"
	case code < 300:
		return "OK"
	case code < 400:
		return "Redirection"
	case code < 500:
		return "Request Failure"
	case code < 600:
		return "Server Error"
	}
	return "Global Failure"
}

var reasonPhrases = map[int]string{
	100: "Trying", 180: "Ringing", 181: "Call Is Being Forwarded", 182: "Queued", 183: "Session Progress",
	200: "OK", 202: "Accepted",
	300: "Multiple Choices", 301: "Moved Permanently", 302: "Moved Temporarily", 305: "Use Proxy", 380: "Alternative Service",
	400: "Bad Request", 401: "Unauthorized", 402: "Payment Required", 403: "Forbidden", 404: "Not Found",
	405: "Method Not Allowed", 406: "Not Acceptable", 407: "Proxy Authentication Required", 408: "Request Timeout",
	410: "Gone", 413: "Request Entity Too Large", 414: "Request-URI Too Long", 415: "Unsupported Media Type",
	416: "Unsupported URI Scheme", 420: "Bad Extension", 421: "Extension Required", 422: "Session Interval Too Small",
	423: "Interval Too Brief", 480: "Temporarily Unavailable", 481: "Call/Transaction Does Not Exist",
	482: "Loop Detected", 483: "Too Many Hops", 484: "Address Incomplete", 485: "Ambiguous", 486: "Busy Here",
	487: "Request Terminated", 488: "Not Acceptable Here", 491: "Request Pending", 493: "Undecipherable",
	500: "Server Internal Error", 501: "Not Implemented", 502: "Bad Gateway", 503: "Service Unavailable",
	504: "Server Time-out", 505: "Version Not Supported", 513: "Message Too Large",
	600: "Busy Everywhere", 603: "Decline", 604: "Does Not Exist Anywhere", 606: "Not Acceptable",
}
