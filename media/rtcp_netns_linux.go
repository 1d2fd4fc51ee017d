//go:build linux

package media

import (
	"fmt"
	"runtime"

	"golang.org/x/sys/unix"
)

// binderThread is the OS thread the RTCP binder runs on, locked to it, and
// that thread's own network namespace. Sockets are bound in the namespace
// of the thread that binds them: Offer and Answer bind RTP sockets on the
// caller's thread, the binder binds RTCP sockets later on its own. A
// daemon lives in one namespace and the two are the same; a caller that
// makes relay sockets from a thread moved into another namespace (as
// tests and the media benchmark do) gets its RTCP sockets there too,
// because the binder binds each one in the namespace of its RTP socket.
type binderThread struct {
	known    bool // the thread's own namespace is known (dev, ino)
	dev, ino uint64
}

// threadNetns is the thread's own network namespace in /proc.
const threadNetns = "/proc/thread-self/ns/net"

// lockBinderThread locks the calling goroutine to its thread and records
// the thread's namespace. Without it (no /proc), every socket is bound
// where the thread is.
func lockBinderThread() binderThread {
	runtime.LockOSThread()
	var st unix.Stat_t
	if err := unix.Stat(threadNetns, &st); err != nil {
		return binderThread{}
	}
	return binderThread{known: true, dev: uint64(st.Dev), ino: st.Ino}
}

// release unlocks the thread, which is in its own namespace.
func (t *binderThread) release() { runtime.UnlockOSThread() }

// close leaves the thread locked: a goroutine that returns without
// unlocking ends its thread with it, which is what a thread stuck in
// another namespace must do.
func (t *binderThread) close() {}

// bindNear runs bind in the network namespace of the raw socket near (the
// RTP socket beside the RTCP socket to bind). ok is false when the thread
// could not return to its own namespace afterwards: it must not bind
// anything else.
func (t *binderThread) bindNear(near int, bind func() (Socket, error)) (s Socket, ok bool, err error) {
	if !t.known || near < 0 {
		s, err = bind()
		return s, true, err
	}
	nsfd, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(near), unix.SIOCGSKNS, 0)
	if errno != 0 {
		// no CAP_NET_ADMIN or an old kernel: the daemon's one namespace
		s, err = bind()
		return s, true, err
	}
	defer unix.Close(int(nsfd))
	var st unix.Stat_t
	if err := unix.Fstat(int(nsfd), &st); err != nil || (uint64(st.Dev) == t.dev && st.Ino == t.ino) {
		s, err = bind()
		return s, true, err
	}
	home, err := unix.Open(threadNetns, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return Socket{}, true, fmt.Errorf("open %s: %w", threadNetns, err)
	}
	defer unix.Close(home)
	if err := unix.Setns(int(nsfd), unix.CLONE_NEWNET); err != nil {
		return Socket{}, true, fmt.Errorf("enter the network namespace of the rtp socket: %w", err)
	}
	s, err = bind()
	if serr := unix.Setns(home, unix.CLONE_NEWNET); serr != nil {
		return s, false, err
	}
	return s, true, err
}
