package appliance

import (
	"bufio"
	"bytes"
	"fmt"
	"math"
	"os"
	"runtime/debug"
	"strconv"
	"strings"

	"github.com/hashicorp/go-hclog"
)

// gcPercent is edgesbc's default GOGC, Go's own default. It was 300 while
// every ended call left about 14 KB of SIP transactions in memory for 32 s;
// since they end with the call (sbc/retrans.go) the live heap is small, and
// a heap allowed to grow to four times it cost more in fresh pages than the
// fewer collections saved: at 3,000 calls/s through the bench, 425 and 469
// µs of CPU per call at 100 against 465 and 561 at 300, and peak RSS 193–232
// MB against 465–585 MB (bench/run.sh, GOGC set in the environment).
const gcPercent = 100

// memoryShare is the part of the memory available to the process that the
// soft memory limit allows the Go heap and stacks to use (see tuneGC).
const memoryShare = 0.6

// tuneGC sets the collector's pace and bounds the heap: GOGC gcPercent, and
// a soft memory limit of 60% of the memory available (the smaller of the
// machine's and the cgroup's), which makes the collector work harder only
// when the heap nears it. GOGC and GOMEMLIMIT in the environment win.
func tuneGC(log hclog.Logger) {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(gcPercent)
	}
	if os.Getenv("GOMEMLIMIT") != "" {
		log.Debug("gc tuned", "gogc", os.Getenv("GOGC"), "memory_limit", os.Getenv("GOMEMLIMIT"))
		return
	}
	avail, src := availableMemory()
	if avail == 0 {
		log.Debug("gc tuned", "gogc", gcPercent, "memory_limit", "none", "reason", "available memory unknown")
		return
	}
	limit := softLimit(avail)
	debug.SetMemoryLimit(limit)
	log.Debug("gc tuned", "gogc", gcPercent, "memory_limit", limit, "available", avail, "from", src)
}

// softLimit is memoryShare of avail bytes.
func softLimit(avail uint64) int64 {
	l := float64(avail) * memoryShare
	if l >= math.MaxInt64 {
		return math.MaxInt64
	}
	return int64(l)
}

// availableMemory returns the memory this process may use: the smaller of
// MemTotal and the cgroup v2 (or v1) limit, and where it came from; 0 when
// neither can be read.
func availableMemory() (uint64, string) {
	var avail uint64
	src := ""
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		if v, err := parseMemTotal(b); err == nil {
			avail, src = v, "meminfo"
		}
	}
	for _, path := range []string{"/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"} {
		b, err := os.ReadFile(path)
		if err != nil {
			continue
		}
		if v, ok := parseCgroupLimit(b); ok && (avail == 0 || v < avail) {
			avail, src = v, path
		}
		break
	}
	return avail, src
}

// parseMemTotal reads the MemTotal line of /proc/meminfo, in bytes.
func parseMemTotal(b []byte) (uint64, error) {
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 || f[0] != "MemTotal:" {
			continue
		}
		kb, err := strconv.ParseUint(f[1], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("meminfo MemTotal %q: %w", f[1], err)
		}
		if len(f) > 2 && f[2] != "kB" {
			return 0, fmt.Errorf("meminfo MemTotal unit %q", f[2])
		}
		if kb > math.MaxUint64/1024 {
			return 0, fmt.Errorf("meminfo MemTotal %d kB out of range", kb)
		}
		return kb * 1024, nil
	}
	return 0, fmt.Errorf("meminfo: no MemTotal line")
}

// parseCgroupLimit reads a cgroup memory limit file: a number of bytes, or
// "max" (v2) or a huge number (v1) for no limit, which report ok false.
func parseCgroupLimit(b []byte) (uint64, bool) {
	s := strings.TrimSpace(string(b))
	if s == "" || s == "max" {
		return 0, false
	}
	v, err := strconv.ParseUint(s, 10, 64)
	if err != nil || v == 0 || v >= 1<<62 {
		return 0, false
	}
	return v, true
}
