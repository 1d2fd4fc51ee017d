//go:build !linux

package media

// binderThread is unused off Linux: there is no RTCP binder (see
// rtcpBinding), and bind runs where it is called.
type binderThread struct{}

func lockBinderThread() binderThread { return binderThread{} }

func (t *binderThread) release() {}

func (t *binderThread) close() {}

func (t *binderThread) bindNear(_ int, bind func() (Socket, error)) (Socket, bool, error) {
	s, err := bind()
	return s, true, err
}
