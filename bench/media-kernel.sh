#!/usr/bin/env bash
# Kernel media benchmark (part of make bench; needs root): RTP-sized UDP
# through a middle namespace, forwarded by hand-written nftables map rules
# (the kernel's limit), by edgesbc's relay with kernel offload and by the
# relay in userspace only, for 1 to 10,000 concurrent streams; then the rate
# at which flows are offloaded and withdrawn. See bench/README.md.
#
# Knobs (environment):
#   BENCH_KMEDIA_MODES    "raw offload userspace flowrate"
#   BENCH_KMEDIA_STREAMS  "1 100 1000 10000"
#   BENCH_KMEDIA_RATES    offered packet-rate ladder (packets/s)
#   BENCH_KMEDIA_SECONDS  seconds per step (2)
set -Eeuo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
out="$here/out"
mkdir -p "$out"
bin="$out/mediabench"
(cd "$root" && go build -o "$bin" ./bench/mediabench)
results="$out/media-kernel-$(date +%Y%m%d-%H%M%S).txt"
# The relay (this process) on CPU 1; the generator pins itself to CPU 0,
# where the kernel path's softirq work follows it.
taskset -c 1 "$bin" \
	-modes "${BENCH_KMEDIA_MODES:-raw offload userspace flowrate}" \
	-streams "${BENCH_KMEDIA_STREAMS:-1 100 1000 10000}" \
	-rates "${BENCH_KMEDIA_RATES:-25000 50000 100000 150000 200000 250000 300000 400000 500000 700000}" \
	-seconds "${BENCH_KMEDIA_SECONDS:-2}" | tee "$results"
echo "results written to $results" >&2
