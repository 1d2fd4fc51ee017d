package appliance

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
)

// serveAdmin listens on a unix socket readable by root only. The protocol is
// one command line in, one JSON document out. Commands: "status", and
// "bans list|show ADDR|add ADDR DURATION [REASON]|remove ADDR".
func serveAdmin(path string, a *Agent, log hclog.Logger) (func(), error) {
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("admin socket %s exists and is not a socket", path)
		}
		_ = os.Remove(path) // stale socket of an earlier run
	}
	old := syscallUmask(0o077)
	l, err := net.Listen("unix", path)
	syscallUmask(old)
	if err != nil {
		return nil, fmt.Errorf("listen on admin socket %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		_ = l.Close()
		return nil, fmt.Errorf("restrict admin socket %s: %w", path, err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			conn, err := l.Accept()
			if err != nil {
				if !errors.Is(err, net.ErrClosed) {
					log.Error("admin accept", "error", err)
				}
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				handleAdmin(conn, a, log)
			}()
		}
	}()
	return func() {
		_ = l.Close()
		wg.Wait()
		_ = os.Remove(path)
	}, nil
}

func handleAdmin(conn net.Conn, a *Agent, log hclog.Logger) {
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	r := bufio.NewReader(&limitedReader{r: conn, n: 4096})
	line, err := r.ReadString('\n')
	if err != nil && line == "" {
		return
	}
	enc := json.NewEncoder(conn)
	switch cmd := strings.TrimSpace(line); {
	case cmd == "status":
		_ = enc.Encode(a.Status())
	case strings.HasPrefix(cmd, "bans ") || cmd == "bans":
		_ = enc.Encode(adminBans(a, strings.Fields(cmd)[1:], log))
	default:
		log.Debug("unknown admin command", "command", cmd)
		_ = enc.Encode(map[string]string{"error": "unknown command"})
	}
}

type limitedReader struct {
	r interface{ Read([]byte) (int, error) }
	n int
}

func (l *limitedReader) Read(p []byte) (int, error) {
	if l.n <= 0 {
		return 0, errors.New("admin request too long")
	}
	if len(p) > l.n {
		p = p[:l.n]
	}
	n, err := l.r.Read(p)
	l.n -= n
	return n, err
}
