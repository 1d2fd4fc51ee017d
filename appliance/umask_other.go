//go:build !linux

package appliance

// syscallUmask is a no-op where umask is not available; the socket is
// chmod'ed right after creation anyway.
func syscallUmask(m int) int { return m }
