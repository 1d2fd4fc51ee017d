//go:build race

package testenv

// raceEnabled reports whether this test binary runs with the race detector;
// BuildBinary then builds the daemon with it too.
const raceEnabled = true
