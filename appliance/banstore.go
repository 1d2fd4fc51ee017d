package appliance

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/edgesbc/edgesbc/sbc/guard"
)

// banFileName is the ban store's file inside the state directory.
const banFileName = "bans.json"

// banFileVersion is written in the store's first line.
const banFileVersion = 1

// maxBanLine bounds one line of the ban store; a longer one is corrupt.
const maxBanLine = 64 << 10

// banHeader is the first line of the ban store.
type banHeader struct {
	Version int       `json:"edgesbc_bans"`
	Written time.Time `json:"written"`
}

// BanStore keeps the bans across restarts in one file of JSON lines: a
// header, then one ban per line. One line per ban means a file cut short by
// a crash or a full disk loses only its last ban, and a damaged line loses
// only itself. Writes replace the whole file atomically (temporary file,
// fsync, rename), so a reader sees either the old or the new list.
type BanStore struct {
	path string
}

// NewBanStore returns the store in dir. Nothing is read or written yet.
func NewBanStore(dir string) *BanStore {
	return &BanStore{path: filepath.Join(dir, banFileName)}
}

// Path is the store's file.
func (s *BanStore) Path() string { return s.path }

// Load reads the bans still in force at now. A missing file is an empty
// store. Damage is not fatal: every readable ban is returned, and problems
// lists what was skipped (with line numbers) so the caller can report it.
// err is set only when the file exists but cannot be read at all.
func (s *BanStore) Load(now time.Time) (bans []guard.Ban, problems []string, err error) {
	f, err := os.Open(s.path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("open ban store %s: %w", s.path, err)
	}
	defer f.Close()
	return readBans(f, now)
}

func readBans(r io.Reader, now time.Time) (bans []guard.Ban, problems []string, err error) {
	br := bufio.NewReaderSize(r, 4096)
	for n := 1; ; n++ {
		line, rerr := readLine(br)
		if rerr != nil && !errors.Is(rerr, io.EOF) && !errors.Is(rerr, errLineTooLong) {
			return bans, problems, fmt.Errorf("read ban store line %d: %w", n, rerr)
		}
		if errors.Is(rerr, errLineTooLong) {
			problems = append(problems, fmt.Sprintf("line %d: longer than %d bytes, skipped", n, maxBanLine))
			continue
		}
		eof := errors.Is(rerr, io.EOF)
		line = bytes.TrimSpace(line)
		switch {
		case len(line) == 0:
		case n == 1 && bytes.Contains(line, []byte(`"edgesbc_bans"`)):
			var h banHeader
			if err := json.Unmarshal(line, &h); err != nil || h.Version != banFileVersion {
				problems = append(problems, fmt.Sprintf("line 1: unknown header %.80q, reading on", line))
			}
		default:
			var b guard.Ban
			if err := json.Unmarshal(line, &b); err != nil {
				what := "damaged"
				if eof {
					what = "cut short"
				}
				problems = append(problems, fmt.Sprintf("line %d: %s (%v), skipped", n, what, err))
				break
			}
			if !b.Addr.IsValid() || b.Expires.IsZero() {
				problems = append(problems, fmt.Sprintf("line %d: ban without address or expiry, skipped", n))
				break
			}
			b.Addr = b.Addr.Unmap()
			if now.Before(b.Expires) {
				bans = append(bans, b)
			}
		}
		if eof {
			return bans, problems, nil
		}
	}
}

var errLineTooLong = errors.New("line too long")

// readLine reads one line without its newline; a line over maxBanLine is
// consumed and reported as errLineTooLong.
func readLine(br *bufio.Reader) ([]byte, error) {
	var line []byte
	for {
		chunk, err := br.ReadSlice('\n')
		if len(line)+len(chunk) > maxBanLine {
			line = nil
			for errors.Is(err, bufio.ErrBufferFull) {
				_, err = br.ReadSlice('\n')
			}
			if err != nil && !errors.Is(err, io.EOF) {
				return nil, err
			}
			return nil, errLineTooLong
		}
		line = append(line, chunk...)
		switch {
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		case err != nil:
			return line, err
		}
		return bytes.TrimSuffix(line, []byte("\n")), nil
	}
}

// Save replaces the store with bans, atomically.
func (s *BanStore) Save(bans []guard.Ban, now time.Time) error {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	_ = enc.Encode(banHeader{Version: banFileVersion, Written: now.UTC()})
	for _, b := range bans {
		_ = enc.Encode(b)
	}
	if err := writeFileAtomic(s.path, buf.Bytes()); err != nil {
		return fmt.Errorf("save ban store: %w", err)
	}
	return nil
}
