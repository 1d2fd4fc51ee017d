package appliance

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
)

// slogHandler forwards sipgo's slog records to hclog, once, for the whole
// process. It drops attributes that carry raw packet contents ("data"):
// sipgo logs the full payload of every message it fails to parse, and a
// scanner must not be able to write arbitrary bytes into the log.
type slogHandler struct {
	log   hclog.Logger
	attrs []any
	limit *limiter
}

// limiter lets each distinct warning message through at most once per
// interval and reports how many were suppressed in between: a peer sending
// garbage must not be able to flood the log through sipgo.
type limiter struct {
	mu       sync.Mutex
	interval time.Duration
	last     map[string]time.Time
	dropped  map[string]int
}

func (l *limiter) allow(msg string, now time.Time) (ok bool, suppressed int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if t, seen := l.last[msg]; seen && now.Sub(t) < l.interval {
		l.dropped[msg]++
		return false, 0
	}
	if len(l.last) > 1024 {
		// distinct messages are few; a map this large means variable
		// text, so start over rather than grow
		clear(l.last)
		clear(l.dropped)
	}
	l.last[msg] = now
	n := l.dropped[msg]
	delete(l.dropped, msg)
	return true, n
}

// NewSlogLogger returns a slog.Logger writing through log. sipgo's Info
// chatter is demoted to Debug: it reports internal transaction events, not
// lifecycle.
func NewSlogLogger(log hclog.Logger) *slog.Logger {
	return slog.New(&slogHandler{log: log, limit: &limiter{interval: 10 * time.Second, last: map[string]time.Time{}, dropped: map[string]int{}}})
}

func (h *slogHandler) Enabled(_ context.Context, l slog.Level) bool {
	return h.log.IsDebug() || l >= slog.LevelWarn
}

func (h *slogHandler) Handle(_ context.Context, r slog.Record) error {
	args := append([]any(nil), h.attrs...)
	r.Attrs(func(a slog.Attr) bool {
		args = appendAttr(args, "", a)
		return true
	})
	msg := strings.ToLower(r.Message)
	if r.Level >= slog.LevelWarn && h.limit != nil {
		ok, suppressed := h.limit.allow(msg, time.Now())
		if !ok {
			return nil
		}
		if suppressed > 0 {
			args = append(args, "suppressed", suppressed)
		}
	}
	switch {
	case r.Level >= slog.LevelError:
		// sipgo's "errors" are mostly remote misbehaviour (unparsable
		// packets, dead transactions): warn, not error
		h.log.Warn(msg, args...)
	case r.Level >= slog.LevelWarn:
		h.log.Warn(msg, args...)
	default:
		h.log.Trace(msg, args...)
	}
	return nil
}

func appendAttr(args []any, prefix string, a slog.Attr) []any {
	if a.Key == "data" || a.Key == "msg" && a.Value.Kind() == slog.KindString && len(a.Value.String()) > 256 {
		return args
	}
	if a.Value.Kind() == slog.KindGroup {
		for _, g := range a.Value.Group() {
			args = appendAttr(args, prefix+a.Key+".", g)
		}
		return args
	}
	v := a.Value.Resolve().Any()
	if s, ok := v.(string); ok && len(s) > 256 {
		v = s[:256] + "…"
	}
	return append(args, prefix+a.Key, v)
}

func (h *slogHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	n := &slogHandler{log: h.log, attrs: append([]any(nil), h.attrs...), limit: h.limit}
	for _, a := range attrs {
		n.attrs = appendAttr(n.attrs, "", a)
	}
	return n
}

func (h *slogHandler) WithGroup(name string) slog.Handler {
	return &slogHandler{log: h.log.Named(name), attrs: h.attrs, limit: h.limit}
}
