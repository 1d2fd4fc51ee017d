#!/usr/bin/env bash
# demo.sh: what `make demo` runs. It builds a three-namespace lab (PBX,
# SBC, carrier), runs bin/edgesbc with examples/edgesbc.hcl in the SBC
# namespace, places one call each way with SIPp (with RTP audio, echoed back
# by the callee), prints a short summary and tears everything down again,
# also on Ctrl-C or failure. It exits non-zero if a call failed.
#
# Needs root, iproute2, sipp (Debian: sip-tester), tcpdump, and Go if
# bin/edgesbc is not built yet:  sudo apt-get install sip-tester tcpdump
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

prefix=edgesbc-demo
pbx=$prefix-pbx
sbc=$prefix-sbc
carrier=$prefix-carrier
config=examples/edgesbc.hcl
scenarios=cmd/edgesbc/testdata/sipp
media_ports=20000-29999 # media.port_range of $config

die() {
	echo "demo: $*" >&2
	exit 1
}

[ "$(id -u)" -eq 0 ] || die "needs root for network namespaces; run: sudo make demo"
for tool in ip ss sipp tcpdump; do
	command -v "$tool" >/dev/null || die "$tool not found; on Debian: apt-get install iproute2 sip-tester tcpdump"
done

if [ ! -x bin/edgesbc ]; then
	command -v go >/dev/null || die "bin/edgesbc is missing and go is not installed to build it"
	echo "building bin/edgesbc"
	mkdir -p bin
	CGO_ENABLED=0 go build -o bin/edgesbc ./cmd/edgesbc
fi
bin/edgesbc check -config "$config" >/dev/null || die "$config does not pass edgesbc check"

work=$(mktemp -d /tmp/edgesbc-demo.XXXXXX)
daemon_pid=
capture_pids=()

cleanup() {
	local status=$?
	trap - EXIT INT TERM
	if [ -n "$daemon_pid" ] && kill -0 "$daemon_pid" 2>/dev/null; then
		# A graceful stop sends BYE on both legs of a call in progress; on
		# Ctrl-C the SIPp peers are gone and never answer, so do not wait long.
		kill -TERM "$daemon_pid" 2>/dev/null || true
		for _ in $(seq 25); do
			kill -0 "$daemon_pid" 2>/dev/null || break
			sleep 0.2
		done
		kill -KILL "$daemon_pid" 2>/dev/null || true
	fi
	for pid in "${capture_pids[@]}"; do
		kill -TERM "$pid" 2>/dev/null || true
	done
	wait 2>/dev/null || true
	# netns-topology.sh down also kills anything still running inside.
	scripts/netns-topology.sh down "$prefix" || true
	rm -rf "$work"
	exit "$status"
}
trap cleanup EXIT
trap 'echo; echo "demo: interrupted" >&2; exit 130' INT TERM

# A lab left over from a run that was killed outright.
scripts/netns-topology.sh down "$prefix"
scripts/netns-topology.sh up "$prefix" >/dev/null

# wait_udp NS PORT: wait up to 5 s for a UDP socket on PORT inside NS.
wait_udp() {
	for _ in $(seq 50); do
		if ip netns exec "$1" ss -Hlun "sport = :$2" | grep -q .; then
			return 0
		fi
		sleep 0.1
	done
	return 1
}

# Captures on the PBX's and the carrier's interfaces, for the RTP counts.
for side in pbx carrier; do
	ip netns exec "$prefix-$side" tcpdump -i eth-sbc -n -U --immediate-mode -Z root \
		-w "$work/$side.pcap" udp 2>"$work/tcpdump-$side.log" &
	capture_pids+=($!)
done
for side in pbx carrier; do
	for _ in $(seq 50); do
		grep -q "listening on" "$work/tcpdump-$side.log" && break
		sleep 0.1
	done
done

echo "starting edgesbc in $sbc with $config"
ip netns exec "$sbc" bin/edgesbc run -config "$config" -admin "$work/admin.sock" 2>"$work/edgesbc.log" &
daemon_pid=$!
for _ in $(seq 100); do
	grep -q "edgesbc ready" "$work/edgesbc.log" && break
	kill -0 "$daemon_pid" 2>/dev/null || break
	sleep 0.1
done
if ! grep -q "edgesbc ready" "$work/edgesbc.log"; then
	tail -n 20 "$work/edgesbc.log" >&2
	die "edgesbc did not start"
fi

# call NAME CALLER_NS CALLER_IP CALLER_SCENARIO CALLEE_NS CALLEE_IP NUMBER TARGET
# runs one call with audio and records ok/FAILED in results.
declare -A results
call() {
	local name=$1 from_ns=$2 from_ip=$3 uac=$4 to_ns=$5 to_ip=$6 number=$7 target=$8
	local common=(-m 1 -timeout 20s -timeout_error -nostdin -trace_err)
	(cd "$scenarios" && exec ip netns exec "$to_ns" sipp -sf uas.xml -i "$to_ip" -p 5060 -rtp_echo \
		"${common[@]}" -error_file "$work/$name-callee.err") >"$work/$name-callee.out" 2>&1 &
	local callee=$!
	if ! wait_udp "$to_ns" 5060; then
		results[$name]=FAILED
		kill "$callee" 2>/dev/null || true
		return
	fi
	local caller_status=0 callee_status=0
	(cd "$scenarios" && exec ip netns exec "$from_ns" sipp -sf "$uac" -i "$from_ip" -p 5060 -s "$number" \
		"${common[@]}" -error_file "$work/$name-caller.err" "$target") >"$work/$name-caller.out" 2>&1 || caller_status=$?
	wait "$callee" || callee_status=$?
	if [ "$caller_status" -eq 0 ] && [ "$callee_status" -eq 0 ]; then
		results[$name]=ok
	else
		results[$name]="FAILED (sipp exit: caller $caller_status, callee $callee_status)"
		for f in "$work/$name-caller.err" "$work/$name-callee.err"; do
			[ -s "$f" ] && tail -n 15 "$f" >&2
		done
	fi
}

echo "calling PBX -> carrier (3 s of audio, echoed back)"
call out "$pbx" 10.91.1.2 pbx_uac.xml "$carrier" 203.0.113.2 15551234567 10.91.1.1:5060
echo "calling carrier -> PBX (3 s of audio, echoed back)"
call in "$carrier" 203.0.113.2 uac.xml "$pbx" 10.91.1.2 1000 203.0.113.1:5060

for pid in "${capture_pids[@]}"; do
	kill -TERM "$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || true
done
capture_pids=()

# count FILE FILTER: packets in FILE matching FILTER.
count() {
	tcpdump -r "$1" -nn "$2" 2>/dev/null | wc -l
}
pbx_in=$(count "$work/pbx.pcap" "src host 10.91.1.1 and src portrange $media_ports")
pbx_out=$(count "$work/pbx.pcap" "dst host 10.91.1.1 and dst portrange $media_ports")
car_in=$(count "$work/carrier.pcap" "src host 203.0.113.1 and src portrange $media_ports")
car_out=$(count "$work/carrier.pcap" "dst host 203.0.113.1 and dst portrange $media_ports")
leaks=$(tcpdump -r "$work/carrier.pcap" -nn -A 2>/dev/null | grep -c -e '10\.91\.1\.' -e 'pbx01\.corp\.internal' || true)

echo
echo "edgesbc demo summary"
echo "  call PBX -> carrier:      ${results[out]}"
echo "  call carrier -> PBX:      ${results[in]}"
echo "  RTP on the PBX link:      $pbx_in packets from the SBC, $pbx_out to it"
echo "  RTP on the carrier link:  $car_in packets from the SBC, $car_out to it"
echo "  inside topology seen on the carrier link: $leaks packets"

if [ "${results[out]}" != ok ] || [ "${results[in]}" != ok ]; then
	echo "edgesbc log (tail):" >&2
	tail -n 30 "$work/edgesbc.log" >&2
	exit 1
fi
if [ "$pbx_in" -eq 0 ] || [ "$pbx_out" -eq 0 ] || [ "$car_in" -eq 0 ] || [ "$car_out" -eq 0 ]; then
	echo "demo: no RTP relayed on one of the links" >&2
	exit 1
fi
if [ "$leaks" -ne 0 ]; then
	echo "demo: inside addresses or host names reached the carrier" >&2
	exit 1
fi
