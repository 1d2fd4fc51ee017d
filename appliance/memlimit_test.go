package appliance

import "testing"

func TestParseMemTotal(t *testing.T) {
	b := []byte("MemFree:  100 kB\nMemTotal:        8035812 kB\nBuffers: 1 kB\n")
	got, err := parseMemTotal(b)
	if err != nil || got != 8035812*1024 {
		t.Fatalf("parseMemTotal = %d, %v; want %d", got, err, 8035812*1024)
	}
	for _, bad := range []string{"", "MemFree: 1 kB\n", "MemTotal: x kB\n", "MemTotal: 5 MB\n", "MemTotal: 99999999999999999999 kB\n"} {
		if v, err := parseMemTotal([]byte(bad)); err == nil {
			t.Errorf("parseMemTotal(%q) = %d, want an error", bad, v)
		}
	}
}

func TestParseCgroupLimit(t *testing.T) {
	cases := []struct {
		in   string
		want uint64
		ok   bool
	}{
		{"max\n", 0, false},
		{"", 0, false},
		{"1073741824\n", 1 << 30, true},
		{"9223372036854771712\n", 0, false}, // cgroup v1 "no limit"
		{"0\n", 0, false},
		{"-1\n", 0, false},
		{"12ab\n", 0, false},
	}
	for _, c := range cases {
		got, ok := parseCgroupLimit([]byte(c.in))
		if got != c.want || ok != c.ok {
			t.Errorf("parseCgroupLimit(%q) = %d, %v; want %d, %v", c.in, got, ok, c.want, c.ok)
		}
	}
}

func TestSoftLimit(t *testing.T) {
	if got := softLimit(1 << 30); got != 644245094 {
		t.Fatalf("softLimit(1 GiB) = %d", got)
	}
	if got := softLimit(^uint64(0)); got <= 0 {
		t.Fatalf("softLimit(max) = %d, want positive", got)
	}
}

func TestAvailableMemoryOnThisMachine(t *testing.T) {
	v, src := availableMemory()
	if v == 0 {
		t.Skip("no /proc/meminfo or cgroup limit here")
	}
	if v < 16<<20 || src == "" {
		t.Fatalf("availableMemory = %d from %q: implausible", v, src)
	}
}
