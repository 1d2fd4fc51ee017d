//go:build linux

package appliance

import "syscall"

func syscallUmask(m int) int { return syscall.Umask(m) }
