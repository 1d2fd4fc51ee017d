package sbc

import (
	"iter"
	"strings"

	"github.com/emiago/sipgo/sip"
)

// allHeaders returns msg's headers in order, without copying; callers must
// not change the message while they iterate.
func allHeaders(msg sip.Message) []sip.Header {
	switch m := msg.(type) {
	case *sip.Request:
		return m.Headers()
	case *sip.Response:
		return m.Headers()
	}
	return nil
}

// headersNamed yields msg's headers whose name is name, ignoring ASCII case,
// in order. sipgo's GetHeaders does the same but lower-cases every header
// name on every call (an allocation each for names outside its short list)
// and collects the result in a new slice; the message path asks for headers
// often enough that this showed in the per-call CPU.
func headersNamed(msg sip.Message, name string) iter.Seq[sip.Header] {
	return func(yield func(sip.Header) bool) {
		for _, h := range allHeaders(msg) {
			if n := h.Name(); len(n) == len(name) && strings.EqualFold(n, name) && !yield(h) {
				return
			}
		}
	}
}

// countHeaders returns how many headers of msg are named name.
func countHeaders(msg sip.Message, name string) int {
	n := 0
	for range headersNamed(msg, name) {
		n++
	}
	return n
}

// firstHeader returns msg's first header named name, or nil.
func firstHeader(msg sip.Message, name string) sip.Header {
	for h := range headersNamed(msg, name) {
		return h
	}
	return nil
}
