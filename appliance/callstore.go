package appliance

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/edgesbc/edgesbc/media"
	"github.com/edgesbc/edgesbc/sbc"
)

// callFileName is the call store's file inside the state directory.
const callFileName = "calls.json"

// callFileVersion is written in the store's first line.
const callFileVersion = 1

// callHeader is the first line of the call store.
type callHeader struct {
	Version int       `json:"version"`
	Written time.Time `json:"written"`
}

// keptCall is one line of the call store: a confirmed call and its media,
// as a restarted daemon with media.keep_on_restart takes them over.
type keptCall struct {
	Call  sbc.CallState      `json:"call"`
	Media media.SessionState `json:"media"`
}

// CallStore keeps the calls in progress on disk for media.keep_on_restart:
// a header line, then one JSON line per call, replaced atomically, so a
// damaged line costs that call only.
type CallStore struct {
	path string
}

// NewCallStore returns the store in dir.
func NewCallStore(dir string) *CallStore {
	return &CallStore{path: filepath.Join(dir, callFileName)}
}

// Path is the store's file.
func (s *CallStore) Path() string { return s.path }

// Save replaces the store with calls.
func (s *CallStore) Save(calls []keptCall, now time.Time) error {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	_ = enc.Encode(callHeader{Version: callFileVersion, Written: now.UTC()})
	for _, c := range calls {
		if err := enc.Encode(c); err != nil {
			return fmt.Errorf("encode call %s: %w", c.Call.ID, err)
		}
	}
	if err := writeFileAtomic(s.path, buf.Bytes()); err != nil {
		return fmt.Errorf("save call store: %w", err)
	}
	return nil
}

// Load reads the store. A missing file is no calls. Lines that cannot be
// read are reported in problems and skipped; the rest are returned.
func (s *CallStore) Load() (calls []keptCall, problems []string, err error) {
	f, err := os.Open(s.path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("open call store: %w", err)
	}
	defer f.Close()
	return readCalls(f)
}

func readCalls(r io.Reader) (calls []keptCall, problems []string, err error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for n := 1; sc.Scan(); n++ {
		line := bytes.TrimSpace(sc.Bytes())
		if n == 1 {
			var h callHeader
			if json.Unmarshal(line, &h) != nil || h.Version != callFileVersion {
				return nil, []string{fmt.Sprintf("line 1: not a call store header of version %d", callFileVersion)}, nil
			}
			continue
		}
		if len(line) == 0 {
			continue
		}
		var c keptCall
		if err := json.Unmarshal(line, &c); err != nil {
			problems = append(problems, fmt.Sprintf("line %d: %v", n, err))
			continue
		}
		if c.Call.ID == "" || c.Media.ID != media.SessionID(c.Call.ID) {
			problems = append(problems, fmt.Sprintf("line %d: call and media do not belong together", n))
			continue
		}
		calls = append(calls, c)
	}
	if err := sc.Err(); err != nil {
		problems = append(problems, fmt.Sprintf("read: %v", err))
	}
	return calls, problems, nil
}
