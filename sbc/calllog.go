package sbc

import (
	"sync"

	"github.com/hashicorp/go-hclog"
)

// callLog is a Call's logger: the server's "call" logger with the call's
// id. hclog's With copies the logger and its arguments, which every call
// paid for although at the daemon's Info level most calls write no line at
// all; callLog makes that logger on the first line that is written. Safe
// for concurrent use.
type callLog struct {
	base hclog.Logger // Server.callLog
	id   string
	once sync.Once
	l    hclog.Logger
}

func newCallLog(base hclog.Logger, id string) *callLog {
	return &callLog{base: base, id: id}
}

func (c *callLog) get() hclog.Logger {
	c.once.Do(func() { c.l = c.base.With("call", c.id) })
	return c.l
}

// IsDebug reports whether Debug lines are written. A line logged on every
// call's path is built only then: its values, boxed into the arguments,
// are allocated even when the line is dropped.
func (c *callLog) IsDebug() bool { return c.base.IsDebug() }

func (c *callLog) Trace(msg string, args ...any) {
	if c.base.IsTrace() {
		c.get().Trace(msg, args...)
	}
}

func (c *callLog) Debug(msg string, args ...any) {
	if c.base.IsDebug() {
		c.get().Debug(msg, args...)
	}
}

func (c *callLog) Info(msg string, args ...any) {
	if c.base.IsInfo() {
		c.get().Info(msg, args...)
	}
}

func (c *callLog) Warn(msg string, args ...any) {
	if c.base.IsWarn() {
		c.get().Warn(msg, args...)
	}
}

func (c *callLog) Error(msg string, args ...any) {
	if c.base.IsError() {
		c.get().Error(msg, args...)
	}
}
