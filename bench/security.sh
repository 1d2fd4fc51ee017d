#!/usr/bin/env bash
# Security benchmark (part of make bench, and make bench-security on its own;
# needs root): the highest call rate through edgesbc that completes with
# zero failed calls, without a flood and while 50 attacker addresses send
# 20,000 INVITEs/s at the public SIP port, their sources banned or not. The
# measuring is TestIntegrationSecurityFloodBench in cmd/edgesbc, which
# builds its own network namespaces; bench/README.md explains the method
# and the columns.
#
# Knobs (environment), passed through to the test:
#   EDGESBC_SECURITY_BENCH_RATES         call-rate ladder   "50 100 200 400 800 1600 3200"
#   EDGESBC_SECURITY_BENCH_STEP_SECONDS  each step offers rate x this many calls   5
#   EDGESBC_SECURITY_BENCH_BUDGET        seconds shared by the three searches      300
set -Eeuo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
out="$here/out"
mkdir -p "$out"
stamp=$(date +%Y%m%d-%H%M%S)
results="$out/security-$stamp.md"
testlog="$out/security-$stamp.log"
[ "$(id -u)" -eq 0 ] || {
	echo "bench/security.sh: needs root (network namespaces, nftables)" >&2
	exit 1
}
rc=0
# The test's progress (one line per step) goes to the terminal and the log;
# the table goes to the results file and is printed at the end.
(cd "$root" && EDGESBC_SECURITY_BENCH=1 EDGESBC_SECURITY_BENCH_OUT="$results" \
	"${GO:-go}" test -count=1 -timeout 20m -run '^TestIntegrationSecurityFloodBench$' -v ./cmd/edgesbc) 2>&1 |
	tee "$testlog" || rc=$?
if [ -s "$results" ]; then
	cat "$results"
	echo "results written to $results (test log $testlog)" >&2
else
	echo "bench/security.sh: no results, see $testlog" >&2
	[ "$rc" -ne 0 ] || rc=1
fi
exit "$rc"
