#!/usr/bin/env bash
# Signalling and media benchmark for edgesbc (make bench). Needs root.
#
# Builds three throw-away network namespaces (PBX side, middle box, carrier
# side), then measures with SIPp over UDP:
#   direct    SIPp UAC -> SIPp UAS, routed by the kernel through the middle
#             namespace (ip_forward=1): the load generator's own ceiling.
#   kamailio  the same calls through Debian's Kamailio as a stateful proxy
#             with record_route, topoh and dialog (bench/kamailio.cfg).
#   kamailio-rtpengine  the same Kamailio anchoring media as well: every
#             offer and answer rewritten by Debian's rtpengine (userspace
#             only), which binds a port pair per side and call, as edgesbc
#             does. The fair comparison for an SBC; its CPU and memory are
#             Kamailio's and rtpengine's together.
#   edgesbc   the same calls through bin/edgesbc (B2BUA, SDP in the INVITE,
#             so every call allocates and releases relay ports).
#   media-direct  G.711 RTP both ways for 30 s per call, SIPp to SIPp through
#             the kernel: how much RTP SIPp itself can generate here.
#   media     the same through edgesbc, at several numbers of concurrent
#             calls, every packet in the userspace relay (ip_forward=0 in
#             the middle namespace, so kernel offload is off).
#   media-offload  the same with ip_forward=1: latched streams are
#             offloaded to the kernel (nftables maps), as on the appliance.
# bench/README.md explains the method and every column of the output.
#
# Knobs (environment):
#   BENCH_TARGETS       which parts to run           "direct kamailio kamailio-rtpengine edgesbc media-direct media media-offload"
#   BENCH_RATES         call-rate ladder (calls/s)   "250 500 1000 1500 2000 3000 4000 5000 6000 8000 10000 12000"
#   BENCH_STEP_SECONDS  each step offers rate x this many calls   8
#   BENCH_MIN_CALLS     ... but never fewer calls than this        2000
#   BENCH_BISECT        bisection steps after the ladder fails    2
#   BENCH_HOLD_MS       hold time of a signalling call (ms)       1000
#   BENCH_MEDIA_CALLS   concurrent-call levels for the media part "500 1000 1500 2000"
#   BENCH_MEDIA_RAMP    seconds over which the media calls are set up   10
#   BENCH_BUDGET        wall-clock budget in seconds; later steps are skipped   840
#   BENCH_RETRY         times a failed step is repeated before it counts   1
#   BENCH_NICE          nice value of SIPp and the middle box              -10
#   BENCH_QUIET_WAIT    seconds, over the whole run, to wait for other load
#                       to settle before each part (busy CPU below 20%)    120
#   BENCH_PORT_RANGE    edgesbc media port_range                "10000-60999"
#   BENCH_EDGESBC       an edgesbc binary to use instead of building bin/edgesbc
#   BENCH_MEDIA_EXTRA   extra lines for edgesbc's media block, e.g.
#                       'pinhole_zones = []' to see what a feature costs
#   BENCH_LOG_LEVEL     edgesbc's log level (info shows why calls were refused)  warn
set -Eeuo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)

TARGETS=${BENCH_TARGETS:-"direct kamailio kamailio-rtpengine edgesbc media-direct media media-offload"}
RATES=${BENCH_RATES:-"250 500 1000 1500 2000 3000 4000 5000 6000 8000 10000 12000"}
STEP_SECONDS=${BENCH_STEP_SECONDS:-8}
MIN_CALLS=${BENCH_MIN_CALLS:-2000}
BISECT=${BENCH_BISECT:-2}
HOLD_MS=${BENCH_HOLD_MS:-1000}
MEDIA_CALLS=${BENCH_MEDIA_CALLS:-"500 1000 1500 2000"}
MEDIA_RAMP=${BENCH_MEDIA_RAMP:-10}
BUDGET=${BENCH_BUDGET:-840}
RETRY=${BENCH_RETRY:-1}
NICE=${BENCH_NICE:--10}
QUIET_WAIT=${BENCH_QUIET_WAIT:-120}
PORT_RANGE=${BENCH_PORT_RANGE:-10000-60999}
MEDIA_EXTRA=${BENCH_MEDIA_EXTRA:-}
# The rate the CPU-per-call column compares all middle boxes at, when each
# of them passed it.
REF_RATE=500
# edgesbc's default media quarantine (media.DefaultQuarantine): a released
# port pair is not reused for this long.
QUARANTINE_S=5
# media.QuarantineFloor: with no free pair, the oldest quarantined pair is
# taken once it has waited this long.
QUARANTINE_FLOOR_S=1

BUFF=4194304
# Played by sipp/uac-media.xml, which names it literally.
PCAP=/usr/share/sip-tester/g711a.pcap
SERVICE=4930123456
# The media scenario plays the pcap (7.05 s) four times, 7.1 s apart, and
# hangs up 30 s after the ACK.
MEDIA_HOLD_S=30

# Addresses of the product's example configuration (examples/edgesbc.hcl).
UAC_IP=10.91.1.2
MID_PRIV=10.91.1.1
MID_PUB=203.0.113.1
UAS_IP=203.0.113.2

tag="esbench$$"
NS_UAC="$tag-uac"
NS_MID="$tag-mid"
NS_UAS="$tag-uas"
# veth names are limited to 15 characters.
V_UAC="eb$$u"
V_MIDA="eb$$a"
V_MIDB="eb$$b"
V_UAS="eb$$s"

# edgesbc's admin socket; unix socket paths are short (108 bytes), so it
# does not live in the run directory.
ADMIN_SOCK="${TMPDIR:-/tmp}/$tag-admin.sock"

stamp=$(date +%Y%m%d-%H%M%S)
outdir="$here/out"
work="$outdir/run-$stamp"
results="$outdir/results-$stamp.md"
steps_tsv="$work/steps.tsv"
media_tsv="$work/media.tsv"

t_start=$(date +%s)
declare -a started=() # pids of processes this script started
created_ns=()
MID_PID=""
UAS_PID=""
SAMPLER_PID=""
CLK_TCK=$(getconf CLK_TCK)

log() { printf '[bench %s] %s\n' "$(date +%T)" "$*" >&2; }
die() {
	log "error: $*"
	exit 1
}

# ---------------------------------------------------------------- cleanup

# stop_pid sends TERM to one child process this script started, waits up
# to 5 s, then KILLs it. Until it is reaped by wait, a child's PID cannot be
# reused, so the signals reach only our own process; once reaped it is
# dropped from the cleanup list for the same reason.
stop_pid() {
	local pid=$1 i
	[ -n "$pid" ] || return 0
	if kill -0 "$pid" 2>/dev/null; then
		kill -TERM "$pid" 2>/dev/null || true
		for ((i = 0; i < 50; i++)); do
			alive "$pid" || break
			sleep 0.1
		done
		kill -KILL "$pid" 2>/dev/null || true
	fi
	wait "$pid" 2>/dev/null || true
	forget_pid "$pid"
}

# forget_pid drops a reaped child from the cleanup list.
forget_pid() {
	local i
	for i in "${!started[@]}"; do
		[ "${started[$i]}" = "$1" ] && unset "started[$i]"
	done
	return 0
}

# alive reports whether a child is running (not exited, not a zombie).
alive() {
	kill -0 "$1" 2>/dev/null && [ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ]
}

cleanup() {
	local rc=$? pid ns
	trap - EXIT INT TERM
	set +e
	[ -n "$SAMPLER_PID" ] && stop_pid "$SAMPLER_PID"
	for pid in "${started[@]}"; do
		stop_pid "$pid"
	done
	# Anything still inside our own namespaces was started by this run
	# (for example Kamailio's worker processes).
	for ns in "${created_ns[@]}"; do
		for pid in $(ip netns pids "$ns" 2>/dev/null); do
			kill -KILL "$pid" 2>/dev/null
		done
		ip netns del "$ns" 2>/dev/null
	done
	rm -f "$ADMIN_SOCK"
	exit "$rc"
}
trap cleanup EXIT
# Report where the script stops on an unexpected error (errexit on; failures
# that are tested, or inside set +e, do not reach this trap's message).
trap 'rc=$?; [[ $- == *e* ]] && log "stopped: line $LINENO: $BASH_COMMAND exited with status $rc"' ERR
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- checks

[ "$(id -u)" -eq 0 ] || die "needs root (network namespaces)"
command -v sipp >/dev/null || die "sipp not found: apt-get install sip-tester"
command -v ip >/dev/null || die "ip not found: apt-get install iproute2"
command -v ss >/dev/null || die "ss not found: apt-get install iproute2"
mkdir -p "$work"

have_kamailio=0
have_rtpengine=0
if [[ " $TARGETS " == *" kamailio-rtpengine "* ]]; then
	if command -v rtpengine >/dev/null && command -v kamailio >/dev/null; then
		have_rtpengine=1
		kamailio -A WITH_RTPENGINE -c -f "$here/kamailio.cfg" >"$work/kamailio-rtpengine-check.log" 2>&1 ||
			die "bench/kamailio.cfg with WITH_RTPENGINE does not parse, see $work/kamailio-rtpengine-check.log"
	else
		log "kamailio or rtpengine not installed (apt-get install kamailio rtpengine-daemon): skipping kamailio-rtpengine"
	fi
fi
if [[ " $TARGETS " == *" kamailio "* ]]; then
	if command -v kamailio >/dev/null; then
		have_kamailio=1
		kamailio -c -f "$here/kamailio.cfg" >"$work/kamailio-check.log" 2>&1 ||
			die "bench/kamailio.cfg does not parse, see $work/kamailio-check.log"
	else
		log "kamailio not installed (apt-get install kamailio): skipping it"
	fi
fi

if [[ " $TARGETS " == *" media"* ]] && [ ! -r "$PCAP" ]; then
	die "$PCAP not found: the media parts need Debian's sip-tester"
fi

for s in rmem_max wmem_max; do
	v=$(sysctl -n "net.core.$s")
	[ "$v" -ge "$BUFF" ] || log "warning: net.core.$s=$v is below $BUFF; socket buffers are capped at it"
done

edgesbc_bin=""
edgesbc_note=""
if [[ " $TARGETS " == *" edgesbc "* || " $TARGETS " == *" media "* || " $TARGETS " == *" media-offload "* ]]; then
	if [ -n "${BENCH_EDGESBC:-}" ]; then
		edgesbc_bin=$BENCH_EDGESBC
	elif command -v go >/dev/null; then
		log "building bin/edgesbc"
		if (cd "$root" && go build -o bin/edgesbc ./cmd/edgesbc) >"$work/edgesbc-build.log" 2>&1; then
			edgesbc_bin="$root/bin/edgesbc"
		else
			edgesbc_note="build failed: $(head -c 400 "$work/edgesbc-build.log" | tr '\n' ' ')"
			log "edgesbc: $edgesbc_note"
		fi
	else
		edgesbc_note="go not found; set BENCH_EDGESBC to a binary"
	fi
fi

# ---------------------------------------------------------------- topology

add_ns() {
	ip netns add "$1"
	created_ns+=("$1")
	ip -n "$1" link set lo up
}

setup_topology() {
	add_ns "$NS_UAC"
	add_ns "$NS_MID"
	add_ns "$NS_UAS"
	ip link add "$V_UAC" netns "$NS_UAC" type veth peer name "$V_MIDA" netns "$NS_MID"
	ip link add "$V_MIDB" netns "$NS_MID" type veth peer name "$V_UAS" netns "$NS_UAS"
	ip -n "$NS_UAC" addr add "$UAC_IP/24" dev "$V_UAC"
	ip -n "$NS_MID" addr add "$MID_PRIV/24" dev "$V_MIDA"
	ip -n "$NS_MID" addr add "$MID_PUB/24" dev "$V_MIDB"
	ip -n "$NS_UAS" addr add "$UAS_IP/24" dev "$V_UAS"
	local ns dev
	for ns_dev in "$NS_UAC:$V_UAC" "$NS_MID:$V_MIDA" "$NS_MID:$V_MIDB" "$NS_UAS:$V_UAS"; do
		ns=${ns_dev%%:*} dev=${ns_dev#*:}
		ip -n "$ns" link set "$dev" up
	done
	# Used only by the direct baseline, when the middle namespace forwards.
	ip -n "$NS_UAC" route add 203.0.113.0/24 via "$MID_PRIV"
	ip -n "$NS_UAS" route add 10.91.1.0/24 via "$MID_PUB"
	set_forwarding 0
}

set_forwarding() {
	ip netns exec "$NS_MID" sysctl -q -w "net.ipv4.ip_forward=$1"
}

# ---------------------------------------------------------------- measuring

# mid_pids lists the processes in the middle namespace: the middle box and,
# for Kamailio, its workers.
mid_pids() { ip netns pids "$NS_MID" 2>/dev/null || true; }

# mid_cpu_ticks prints user+system CPU ticks of every process in the
# middle namespace (/proc/PID/stat fields 14 and 15, all threads included).
mid_cpu_ticks() {
	local total=0 pid t
	for pid in $(mid_pids); do
		t=$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | awk '{print $12 + $13}') || t=0
		total=$((total + ${t:-0}))
	done
	echo "$total"
}

# mid_mem_kb prints "PSS RSS" in KiB summed over the middle namespace.
# PSS splits shared pages (Kamailio's shared memory segment) between the
# processes that map them, so the sum counts them once; RSS would count
# them once per process.
mid_mem_kb() {
	local pids
	pids=$(mid_pids)
	[ -n "$pids" ] || {
		echo "0 0"
		return
	}
	for pid in $pids; do
		cat "/proc/$pid/smaps_rollup" 2>/dev/null || true
	done | awk '$1 == "Pss:" {p += $2} $1 == "Rss:" {r += $2} END {print p + 0, r + 0}'
}

# start_sampler records the peak of mid_mem_kb every 0.25 s into $1 until
# stop_sampler. For edgesbc it also records the peak number of calls the
# admin socket reports.
start_sampler() {
	local file=$1 admin=${2:-}
	echo "NA NA NA NA" >"$file"
	(
		# A slow status query or a process exiting between listing and
		# reading is normal here and must not end the sampler.
		set +e
		trap - ERR
		maxp=0 maxr=0 maxc=0 maxo=0
		while :; do
			read -r p r < <(mid_mem_kb)
			((p > maxp)) && maxp=$p
			((r > maxr)) && maxr=$r
			if [ -n "$admin" ] && [ -S "$admin" ]; then
				st=$(timeout 2 "$edgesbc_bin" status -admin "$admin" 2>/dev/null)
				c=$(sed -n 's/.*"calls": *\([0-9]*\).*/\1/p' <<<"$st" | head -1)
				o=$(sed -n 's/.*"offloaded": *\([0-9]*\).*/\1/p' <<<"$st" | head -1)
				((${c:-0} > maxc)) && maxc=$c
				((${o:-0} > maxo)) && maxo=$o
			fi
			echo "$maxp $maxr $maxc $maxo" >"$file.tmp" && mv "$file.tmp" "$file"
			sleep 0.25
		done
	) &
	SAMPLER_PID=$!
}

stop_sampler() {
	stop_pid "$SAMPLER_PID"
	SAMPLER_PID=""
}

# link_counters NS DEV prints "rx_packets tx_packets" of a veth end, and
# the namespace's UDP receive-buffer drops (/proc/net/snmp RcvbufErrors).
# Interface counters are used because SIPp sends pcap RTP through a raw
# socket, which the UDP counters do not see.
link_counters() {
	ip netns exec "$1" sh -c "cat /sys/class/net/$2/statistics/rx_packets /sys/class/net/$2/statistics/tx_packets; awk '\$1 == \"Udp:\" && \$2 ~ /^[0-9]+\$/ {print \$6}' /proc/net/snmp" | tr '\n' ' '
	echo
}

# cpu_busy_pct prints how busy all CPUs were over one second, in percent.
cpu_busy_pct() {
	local a
	a=$(cpu_mark)
	sleep 1
	busy_since "$a"
}

# cpu_mark prints the wall clock and the idle + iowait ticks of all CPUs
# (/proc/stat), the starting point for busy_since.
cpu_mark() {
	echo "$(now) $(awk '$1 == "cpu" {print $5 + $6; exit}' /proc/stat)"
}

# busy_since MARK prints how busy the whole machine was since MARK, in
# percent of all its CPUs: one minus the idle time over the wall time. The
# wall clock, not the sum of /proc/stat's columns, is the denominator, as
# that sum under-counts on some virtual machines.
busy_since() {
	local b
	b=$(cpu_mark)
	awk -v a="$1" -v b="$b" -v hz="$CLK_TCK" -v n="$(nproc)" 'BEGIN {
		split(a, x, " "); split(b, y, " "); w = (y[1] - x[1]) * hz * n
		busy = w > 0 ? 100 * (1 - (y[2] - x[2]) / w) : 0
		if (busy < 0) busy = 0
		printf "%.0f", busy }'
}

# wait_quiet waits for the machine to be idle before a part starts
# (nothing of ours runs then), and sets QUIET to the busy percentage it
# last saw. Other work on the machine competes with SIPp and the middle box
# for the same cores and shows up as failed calls. QUIET_WAIT bounds the
# waiting of the whole run, not of each part, so that a busy machine cannot
# stretch the run by minutes per part.
QUIET=""
quiet_left=$QUIET_WAIT
wait_quiet() {
	local t0
	t0=$(date +%s)
	while :; do
		QUIET=$(cpu_busy_pct)
		((QUIET < 20)) && break
		if (($(date +%s) - t0 >= quiet_left)); then
			log "warning: the machine is ${QUIET}% busy with other work; results will be low and noisy"
			break
		fi
		sleep 4
	done
	quiet_left=$((quiet_left - ($(date +%s) - t0)))
	((quiet_left < 0)) && quiet_left=0
	return 0
}

# sip_socket_drops prints the datagrams the middle box's SIP sockets
# (port 5060) dropped since they were opened, from ss's skmem d field, so
# that drops can be told apart from drops on RTP sockets.
sip_socket_drops() {
	ip netns exec "$NS_MID" ss -Huanm "sport = :5060" 2>/dev/null |
		grep -o 'd[0-9]*)' | tr -d 'd)' | awk '{t += $1} END {print t + 0}'
}

# udp_drops NS prints the namespace's count of UDP datagrams dropped
# because a socket's receive buffer was full (/proc/net/snmp RcvbufErrors).
udp_drops() {
	# shellcheck disable=SC2016 # awk's fields, not shell variables
	ip netns exec "$1" awk '$1 == "Udp:" && $2 ~ /^[0-9]+$/ {print $6}' /proc/net/snmp
}

now() { date +%s.%N; }
# pct A B prints A as a percentage of B.
pct() { awk -v a="$1" -v b="$2" 'BEGIN {if (b > 0) printf "%.1f%%", 100 * a / b; else print "NA"}'; }
elapsed_budget() { echo $(($(date +%s) - t_start)); }

# ---------------------------------------------------------------- processes

start_uas() {
	local prefix=$1
	shift
	ip netns exec "$NS_UAS" nice -n "$NICE" sipp -sf "$here/sipp/uas.xml" -i "$UAS_IP" -p 5060 \
		-mi "$UAS_IP" -mp 6000 -buff_size "$BUFF" -nostdin \
		-trace_err -error_file "$prefix-uas-errors.log" "$@" \
		>/dev/null 2>"$prefix-uas.stderr" </dev/null &
	UAS_PID=$!
	started+=("$UAS_PID")
	local i
	for ((i = 0; i < 50; i++)); do
		if ip netns exec "$NS_UAS" ss -Huln "sport = :5060" | grep -q "$UAS_IP"; then
			return 0
		fi
		alive "$UAS_PID" || break
		sleep 0.1
	done
	die "sipp uas did not start, see $prefix-uas.stderr"
}

stop_uas() {
	stop_pid "$UAS_PID"
	UAS_PID=""
}

# listening_both reports whether something in the middle namespace listens
# on UDP 5060 of both middle addresses.
listening_both() {
	local l
	l=$(ip netns exec "$NS_MID" ss -Huln "sport = :5060")
	grep -q "$MID_PRIV:5060" <<<"$l" && grep -q "$MID_PUB:5060" <<<"$l"
}

# start_middle KIND PREFIX starts Kamailio or edgesbc in the middle
# namespace and waits until it listens on both addresses. It returns 1
# (with the reason in MID_ERR) when the box does not come up.
MID_ERR=""
start_middle() {
	local kind=$1 prefix=$2 i rc logf
	MID_ERR=""
	case $kind in
	kamailio)
		logf="$prefix-kamailio.log"
		ip netns exec "$NS_MID" nice -n "$NICE" kamailio -DD -E -f "$here/kamailio.cfg" \
			-x tlsf -m 1024 -M 32 -P "$prefix-kamailio.pid" \
			>"$logf" 2>&1 </dev/null &
		;;
	kamailio-rtpengine)
		# rtpengine first: Kamailio's module looks for it at start. Its
		# port range is edgesbc's; a deleted call's ports are kept for
		# edgesbc's quarantine, so both hold ports equally long.
		ip netns exec "$NS_MID" nice -n "$NICE" rtpengine --foreground --log-stderr --log-level=3 \
			--table=-1 --no-fallback --interface="priv/$MID_PRIV" --interface="pub/$MID_PUB" \
			--listen-ng=127.0.0.1:22222 --port-min="${PORT_RANGE%-*}" --port-max="${PORT_RANGE#*-}" \
			--delete-delay="$QUARANTINE_S" --num-threads="$(nproc)" --pidfile=/dev/null \
			>"$prefix-rtpengine.log" 2>&1 </dev/null &
		RTPE_PID=$!
		started+=("$RTPE_PID")
		for ((i = 0; i < 100; i++)); do
			ip netns exec "$NS_MID" ss -Huln "sport = :22222" | grep -q 127.0.0.1 && break
			sleep 0.1
		done
		logf="$prefix-kamailio.log"
		ip netns exec "$NS_MID" nice -n "$NICE" kamailio -A WITH_RTPENGINE -DD -E -f "$here/kamailio.cfg" \
			-x tlsf -m 1024 -M 32 -P "$prefix-kamailio.pid" \
			>"$logf" 2>&1 </dev/null &
		;;
	*)
		logf="$prefix-edgesbc.log"
		rm -f "$ADMIN_SOCK"
		ip netns exec "$NS_MID" nice -n "$NICE" "$edgesbc_bin" run -config "$work/edgesbc.hcl" \
			-admin "$ADMIN_SOCK" >"$logf" 2>&1 </dev/null &
		;;
	esac
	MID_PID=$!
	started+=("$MID_PID")
	for ((i = 0; i < 150; i++)); do
		if ! alive "$MID_PID"; then
			rc=0
			wait "$MID_PID" 2>/dev/null || rc=$?
			forget_pid "$MID_PID"
			MID_ERR="$kind exited with status $rc before listening; last log lines:"$'\n'"$(tail -n 8 "$logf" 2>/dev/null)"
			MID_PID=""
			return 1
		fi
		if [[ $kind == kamailio* ]]; then
			listening_both && sleep 0.3 && return 0
		else
			# edgesbc logs "edgesbc ready" once listening; with log level
			# warn the line may be filtered, so the sockets count too.
			if grep -q "edgesbc ready" "$logf" 2>/dev/null || listening_both; then
				sleep 0.3
				return 0
			fi
		fi
		sleep 0.1
	done
	MID_ERR="$kind not listening on $MID_PRIV:5060 and $MID_PUB:5060 after 15 s"
	stop_middle
	return 1
}

RTPE_PID=""
stop_middle() {
	stop_pid "$MID_PID"
	MID_PID=""
	stop_pid "$RTPE_PID"
	RTPE_PID=""
}

write_edgesbc_config() {
	cat >"$work/edgesbc.hcl" <<-EOF
		zone "private" {
		  address  = "$MID_PRIV"
		  sip_port = 5060
		}
		zone "public" {
		  address  = "$MID_PUB"
		  sip_port = 5060
		}
		pbx "main" {
		  zone    = "private"
		  address = "$UAC_IP:5060"
		}
		trunk "carrier" {
		  zone    = "public"
		  address = "$UAS_IP:5060"
		}
		media {
		  port_range = "$PORT_RANGE"
		  $MEDIA_EXTRA
		}
		log {
		  level = "${BENCH_LOG_LEVEL:-warn}"
		}
	EOF
}

# csv_field FILE NAME prints column NAME of the last line of a SIPp
# statistics file (semicolon separated, header on the first line).
csv_field() {
	awk -F';' -v name="$2" 'NR == 1 {for (i = 1; i <= NF; i++) if ($i == name) c = i; next}
		{v = $c} END {print (c && v != "") ? v : "NA"}' "$1"
}

# run_uac TARGET SCENARIO PREFIX CALLS RATE LIMIT HOLD_MS TIMEOUT_S [sipp args]
# runs one SIPp UAC to completion and sets U_RC, U_OK, U_FAIL, U_RETRANS, U_SETUP_MS (mean INVITE-to-200 time of the completed calls)
# and U_WALL.
run_uac() {
	local target=$1 sf=$2 prefix=$3 calls=$4 rate=$5 limit=$6 hold=$7 tmo=$8
	shift 8
	local t0 t1
	rm -f "$prefix-uac.csv"
	t0=$(now)
	set +e
	ip netns exec "$NS_UAC" nice -n "$NICE" sipp -sf "$sf" -i "$UAC_IP" -p 5060 -mi "$UAC_IP" -mp 6000 \
		"$target:5060" -s "$SERVICE" -m "$calls" -r "$rate" -rp 1000 -l "$limit" -d "$hold" \
		-buff_size "$BUFF" -recv_timeout 10000 -timeout "${tmo}s" -timeout_error -nostdin \
		-trace_stat -stf "$prefix-uac.csv" -fd 3600 \
		-trace_err -error_file "$prefix-uac-errors.log" \
		-trace_screen -screen_file "$prefix-uac-screen.log" "$@" \
		>/dev/null 2>"$prefix-uac.stderr" </dev/null &
	# Waiting with the wait builtin, rather than running SIPp in the
	# foreground, lets INT and TERM reach the cleanup at once.
	local upid=$!
	started+=("$upid")
	wait "$upid"
	U_RC=$?
	forget_pid "$upid"
	set -e
	t1=$(now)
	U_WALL=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.2f", b - a}')
	if [ -s "$prefix-uac.csv" ]; then
		U_OK=$(csv_field "$prefix-uac.csv" "SuccessfulCall(C)")
		U_FAIL=$(csv_field "$prefix-uac.csv" "FailedCall(C)")
		U_RETRANS=$(csv_field "$prefix-uac.csv" "Retransmissions(C)")
		# hh:mm:ss:microseconds -> milliseconds
		U_SETUP_MS=$(csv_field "$prefix-uac.csv" "ResponseTimesetup(C)" |
			awk -F: 'NF == 4 {printf "%.0f", ($1 * 3600 + $2 * 60 + $3) * 1000 + $4 / 1000; next} {print "NA"}')
	else
		U_OK=0 U_FAIL=NA U_RETRANS=NA U_SETUP_MS=NA
	fi
}

# reject_summary PREFIX prints ", N x CODE" for the final error responses
# the UAC received, from its error log (for example ", 1034 x 503").
reject_summary() {
	[ -s "$1-uac-errors.log" ] || return 0
	{ grep -o "received 'SIP/2.0 [3-6][0-9][0-9]" "$1-uac-errors.log" || true; } | awk '{print $NF}' |
		sort | uniq -c | sort -rn | awk '{printf ", %s x %s", $1, $2}'
}

# pool_ceiling Q prints the call rate at which edgesbc's port pool runs dry
# when every call holds one RTP/RTCP pair per leg for the hold time plus Q
# seconds of quarantine.
# fd_ceiling prints how many calls of the signalling steps edgesbc can hold
# at once under this shell's hard open file limit (the daemon raises its
# soft limit to it): two relay sockets per call (RTP on each side; RTCP
# sockets are bound only once RTP flows, which it never does in these
# steps) after the 1,024 descriptors the daemon keeps aside (as its
# start-up warning counts, though at four sockets per call with media).
fd_ceiling() {
	local n
	n=$(ulimit -Hn)
	if [ "$n" = unlimited ]; then
		echo unlimited
		return
	fi
	echo $(((n - 1024) / 2))
}

pool_ceiling() {
	local lo=${PORT_RANGE%-*} hi=${PORT_RANGE#*-}
	awk -v lo="$lo" -v hi="$hi" -v hold="$HOLD_MS" -v q="$1" 'BEGIN {
		first = lo + lo % 2; pairs = int((hi - first + 1) / 2)
		printf "%d", pairs / 2 / (hold / 1000 + q) }'
}

# ---------------------------------------------------------------- signalling steps

printf 'target\trate\tcalls\tok\tfailed\tretrans\tsetup_ms\twall_s\tpass\tcpu_us_per_call\tpeak_pss_kb\tpeak_rss_kb\thost_busy\tnote\n' >"$steps_tsv"

# run_step KIND RATE sets STEP_RESULT to "pass" or "fail" and appends a
# line to steps.tsv. It runs in the main shell (not in $(...)) so that the
# processes it starts stay known to cleanup.
STEP_N=0
STEP_RESULT=""
run_step() {
	local kind=$1 rate=$2
	local calls=$((rate * STEP_SECONDS))
	((calls < MIN_CALLS)) && calls=$MIN_CALLS
	STEP_N=$((STEP_N + 1))
	local prefix
	prefix="$work/$(printf '%03d' "$STEP_N")-$kind-$rate"
	# Enough concurrent calls for the nominal rate with room for slow
	# answers; SIPp holds back new calls at this limit instead of failing.
	local limit=$((rate * (HOLD_MS + 2000) / 1000 + 200))
	local ideal=$(((calls + rate - 1) / rate + (HOLD_MS + 999) / 1000))
	local tmo=$((ideal + 20))
	local target=$MID_PRIV note=""
	local cpu0=0 cpu1=0 cpu_us=NA pss=NA rss=NA hwm=""

	if [ "$kind" = direct ]; then
		target=$UAS_IP
		set_forwarding 1
	elif ! start_middle "$kind" "$prefix"; then
		printf '%s\t%s\t%s\t0\tNA\tNA\tNA\t0\tfail\tNA\tNA\tNA\tNA\t%s\n' "$kind" "$rate" "$calls" \
			"$(head -n 1 <<<"$MID_ERR")" >>"$steps_tsv"
		log "$kind @ $rate cps: middle box did not start: $MID_ERR"
		STEP_RESULT=fail
		return
	fi
	start_uas "$prefix"
	local drops0=0
	if [ "$kind" != direct ]; then
		start_sampler "$prefix-mem"
		drops0=$(udp_drops "$NS_MID")
		cpu0=$(mid_cpu_ticks)
	fi

	local stat0 host
	stat0=$(cpu_mark)
	run_uac "$target" "$here/sipp/uac.xml" "$prefix" "$calls" "$rate" "$limit" "$HOLD_MS" "$tmo"
	host=$(busy_since "$stat0")

	if [ "$kind" != direct ]; then
		cpu1=$(mid_cpu_ticks)
		local drops=$(($(udp_drops "$NS_MID") - drops0)) sipdrops
		sipdrops=$(sip_socket_drops)
		((drops > 0)) && note="$kind dropped $drops datagrams, $sipdrops of them SIP (receive buffer full)"
		if [ "$kind" = edgesbc ]; then
			hwm=$(awk '$1 == "VmHWM:" {print $2}' "/proc/$MID_PID/status" 2>/dev/null || true)
		fi
		stop_sampler
		read -r pss rss _ <"$prefix-mem" || true
		[ -n "$hwm" ] && rss=$hwm
		if [ "${U_OK:-0}" -gt 0 ] 2>/dev/null; then
			cpu_us=$(awk -v t=$((cpu1 - cpu0)) -v hz="$CLK_TCK" -v n="$U_OK" \
				'BEGIN {printf "%.0f", t / hz * 1e6 / n}')
		fi
		if ! alive "$MID_PID"; then
			note="${note:+$note; }$kind exited during the step"
		fi
	fi
	stop_uas
	if [ "$kind" = direct ]; then
		set_forwarding 0
	else
		stop_middle
	fi

	local pass=fail
	# Passing means every call completed, none failed, and SIPp kept up
	# with the requested rate: the run took at most 25% (and 2 s) longer
	# than the calls need at that rate.
	if [ "$U_RC" -eq 0 ] && [ "$U_OK" = "$calls" ] && [ "$U_FAIL" = 0 ]; then
		if awk -v w="$U_WALL" -v i="$ideal" 'BEGIN {exit !(w <= i * 1.25 + 2)}'; then
			pass=pass
		else
			note="${note:+$note; }rate not reached: ${U_WALL}s for ${ideal}s of calls"
		fi
	else
		note="${note:+$note; }sipp exit $U_RC$(reject_summary "$prefix")"
	fi
	printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s%%\t%s\n' "$kind" "$rate" "$calls" \
		"$U_OK" "$U_FAIL" "$U_RETRANS" "$U_SETUP_MS" "$U_WALL" "$pass" "$cpu_us" "$pss" "$rss" "$host" "$note" >>"$steps_tsv"
	log "$kind @ $rate cps: $pass ($U_OK/$calls ok, $U_FAIL failed, $U_RETRANS retrans, setup ${U_SETUP_MS} ms, ${U_WALL}s, cpu ${cpu_us} us/call, pss ${pss} KiB, rss ${rss} KiB, host ${host}% busy)${note:+ - $note}"
	STEP_RESULT=$pass
}

# run_step_retry repeats a failed step up to RETRY times: one failed call
# in tens of thousands can come from a scheduling hiccup of the shared
# machine rather than from the middle box.
run_step_retry() {
	local i=0
	run_step "$1" "$2"
	while [ "$STEP_RESULT" != pass ] && ((i < RETRY)); do
		(($(elapsed_budget) > BUDGET)) && return 0
		i=$((i + 1))
		run_step "$1" "$2"
	done
	return 0
}

# search KIND walks the ladder until a step fails, then bisects between
# the last passing and the first failing rate. It sets BEST (0 if even the
# first step failed) and SEARCH_NOTE.
BEST=0
SEARCH_NOTE=""
search() {
	local kind=$1 rate lo=0 hi=0
	BEST=0 SEARCH_NOTE=""
	for rate in $RATES; do
		if (($(elapsed_budget) > BUDGET)); then
			SEARCH_NOTE="time budget reached at $rate cps"
			log "$kind: $SEARCH_NOTE"
			break
		fi
		run_step_retry "$kind" "$rate"
		if [ "$STEP_RESULT" = pass ]; then
			lo=$rate
		else
			hi=$rate
			break
		fi
	done
	if ((hi == 0)) && [ -z "$SEARCH_NOTE" ]; then
		SEARCH_NOTE="passed the whole ladder"
	fi
	local i mid
	for ((i = 0; i < BISECT && hi > 0 && hi - lo > 100; i++)); do
		(($(elapsed_budget) > BUDGET)) && break
		mid=$(((lo + hi) / 2 / 50 * 50))
		((mid <= lo)) && break
		run_step_retry "$kind" "$mid"
		if [ "$STEP_RESULT" = pass ]; then lo=$mid; else hi=$mid; fi
	done
	BEST=$lo
	if ((hi > 0)); then
		SEARCH_NOTE="${SEARCH_NOTE:+$SEARCH_NOTE; }fails at $hi cps"
	fi
}

# ---------------------------------------------------------------- media

printf 'target\tcalls\tramp_cps\tok\tfailed\tsetup_ms\twall_s\tpass\tpeak_calls\tidle_rss_kb\tpeak_rss_kb\trss_kb_per_1000\tcpu_pct\thost_busy\trtp_sent\trtp_to_uas\trtp_echoed\trtp_back_to_uac\tnote\n' >"$media_tsv"

# RTP packets the UAC sends per call: four plays of the 236-packet pcap.
RTP_PER_CALL=944

# run_media KIND N holds N calls with RTP both ways, through edgesbc
# (KIND edgesbc) or routed by the kernel (KIND direct, to see what SIPp
# itself can generate on this machine), and appends a line to media.tsv.
run_media() {
	local kind=$1 n=$2
	STEP_N=$((STEP_N + 1))
	local prefix
	prefix="$work/$(printf '%03d' "$STEP_N")-media-$kind-$n"
	# All calls are set up within MEDIA_RAMP seconds, so every one of them
	# is up at the same time for the last MEDIA_HOLD_S - MEDIA_RAMP seconds.
	local ramp=$(((n + MEDIA_RAMP - 1) / MEDIA_RAMP))
	local ideal=$(((n + ramp - 1) / ramp + MEDIA_HOLD_S))
	local tmo=$((ideal + 30))
	local target=$MID_PRIV admin="" idle_rss=NA
	# edgesbc-offload: the middle namespace forwards, so the daemon's
	# kernel offload is on and latched streams leave userspace; plain
	# edgesbc runs with ip_forward=0, the daemon logs that offload is off
	# and every packet goes through the userspace relay.
	[ "$kind" = edgesbc-offload ] && set_forwarding 1
	if [ "$kind" = direct ]; then
		target=$UAS_IP
		set_forwarding 1
	elif ! start_middle edgesbc "$prefix"; then
		printf '%s\t%s\t%s\t0\tNA\tNA\t0\tfail\tNA\tNA\tNA\tNA\tNA\tNA\tNA\tNA\tNA\tNA\t%s\n' "$kind" "$n" "$ramp" \
			"$(head -n 1 <<<"$MID_ERR")" >>"$media_tsv"
		log "media $kind $n: edgesbc did not start: $MID_ERR"
		return
	else
		admin=$ADMIN_SOCK
		idle_rss=$(awk '$1 == "VmRSS:" {print $2}' "/proc/$MID_PID/status")
	fi
	start_uas "$prefix" -rtp_echo -rtp_buffsize "$BUFF"
	local uac0 uas0 uac1 uas1 cpu0=0 cpu1=0 t0 t1
	read -r -a uac0 < <(link_counters "$NS_UAC" "$V_UAC")
	read -r -a uas0 < <(link_counters "$NS_UAS" "$V_UAS")
	local drops0=0
	if [ "$kind" != direct ]; then
		start_sampler "$prefix-mem" "$admin"
		drops0=$(udp_drops "$NS_MID")
		cpu0=$(mid_cpu_ticks)
	fi
	t0=$(now)

	local stat0 host
	stat0=$(cpu_mark)
	run_uac "$target" "$here/sipp/uac-media.xml" "$prefix" "$n" "$ramp" "$n" 0 "$tmo"
	host=$(busy_since "$stat0")

	t1=$(now)
	read -r -a uac1 < <(link_counters "$NS_UAC" "$V_UAC")
	read -r -a uas1 < <(link_counters "$NS_UAS" "$V_UAS")
	local hwm=NA pss rss peak_calls=NA per1000=NA cpu_pct=NA note=""
	if [ "$kind" != direct ]; then
		cpu1=$(mid_cpu_ticks)
		local drops=$(($(udp_drops "$NS_MID") - drops0)) sipdrops
		sipdrops=$(sip_socket_drops)
		((drops > 0)) && note="edgesbc dropped $drops datagrams, $sipdrops of them SIP (receive buffer full)"
		hwm=$(awk '$1 == "VmHWM:" {print $2}' "/proc/$MID_PID/status" 2>/dev/null || echo NA)
		stop_sampler
		local peak_off
		read -r pss rss peak_calls peak_off <"$prefix-mem" || true
		[ "$kind" = edgesbc-offload ] && note="peak streams in the kernel: ${peak_off:-NA}${note:+; $note}"
		alive "$MID_PID" || note="${note:+$note; }edgesbc exited during the run"
		per1000=$(awk -v p="$hwm" -v i="$idle_rss" -v n="$n" \
			'BEGIN {if (p ~ /^[0-9]+$/ && i ~ /^[0-9]+$/ && n > 0) printf "%.0f", (p - i) * 1000 / n; else print "NA"}')
		cpu_pct=$(awk -v t=$((cpu1 - cpu0)) -v hz="$CLK_TCK" -v a="$t0" -v b="$t1" \
			'BEGIN {printf "%.0f%%", 100 * t / hz / (b - a)}')
	fi
	stop_uas
	if [ "$kind" != direct ]; then
		stop_middle
	fi
	set_forwarding 0

	# Packets on the two outer links (SIP included, about 0.5% of them):
	# what the UAC sends towards the middle, what the middle delivers to
	# the UAS, what the UAS echoes, and what the middle delivers back.
	local uac_out=$((uac1[1] - uac0[1])) uas_in=$((uas1[0] - uas0[0]))
	local uas_out=$((uas1[1] - uas0[1])) uac_in=$((uac1[0] - uac0[0]))
	local uas_drop=$((uas1[2] - uas0[2]))
	((uas_drop > 0)) && note="${note:+$note; }UAS dropped $uas_drop datagrams (receive buffer full)"
	local sent to_uas echoed back
	sent=$(pct "$uac_out" $((${U_OK:-0} * RTP_PER_CALL)))
	to_uas=$(pct "$uas_in" "$uac_out")
	echoed=$(pct "$uas_out" "$uas_in")
	back=$(pct "$uac_in" "$uas_out")
	local pass=fail
	if [ "$U_RC" -eq 0 ] && [ "$U_OK" = "$n" ] && [ "$U_FAIL" = 0 ]; then
		pass=pass
	else
		note="${note:+$note; }sipp exit $U_RC$(reject_summary "$prefix")"
	fi
	printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s%%\t%s\t%s\t%s\t%s\t%s\n' "$kind" "$n" "$ramp" \
		"$U_OK" "$U_FAIL" "$U_SETUP_MS" "$U_WALL" "$pass" "${peak_calls:-NA}" "$idle_rss" "$hwm" "$per1000" \
		"$cpu_pct" "$host" "$sent" "$to_uas" "$echoed" "$back" "$note" >>"$media_tsv"
	log "media $kind $n calls: $pass ($U_OK ok, $U_FAIL failed, setup ${U_SETUP_MS} ms, peak $peak_calls calls, rss $idle_rss -> $hwm KiB, $per1000 KiB/1000 calls, cpu $cpu_pct, host ${host}% busy, rtp sent $sent of expected, to uas $to_uas, echoed $echoed, back $back)${note:+ - $note}"
}

# ---------------------------------------------------------------- main

setup_topology
write_edgesbc_config
log "topology: $NS_UAC ($UAC_IP) -- $NS_MID ($MID_PRIV | $MID_PUB) -- $NS_UAS ($UAS_IP); logs in $work"

declare -A best=() note=() busy=() bound=()
for kind in direct kamailio kamailio-rtpengine edgesbc; do
	[[ " $TARGETS " == *" $kind "* ]] || continue
	if [ "$kind" = kamailio ] && ((have_kamailio == 0)); then
		note[$kind]="kamailio not installed"
		continue
	fi
	if [ "$kind" = kamailio-rtpengine ] && ((have_rtpengine == 0)); then
		note[$kind]="kamailio or rtpengine not installed"
		continue
	fi
	if [ "$kind" = edgesbc ] && [ -z "$edgesbc_bin" ]; then
		note[$kind]=$edgesbc_note
		continue
	fi
	wait_quiet
	busy[$kind]=$QUIET
	log "== $kind: call-rate search (machine ${QUIET}% busy before it)"
	search "$kind"
	best[$kind]=$BEST
	note[$kind]=$SEARCH_NOTE
	# A part that never failed has only a lower bound.
	[ "$SEARCH_NOTE" = "passed the whole ladder" ] && bound[$kind]=">= "
done

media_note=""
if [[ " $TARGETS " == *" media-direct "* ]]; then
	wait_quiet
	busy[media-direct]=$QUIET
	n=${MEDIA_CALLS##* }
	log "== media through the kernel only: can SIPp generate $n calls of RTP? (machine ${QUIET}% busy before it)"
	run_media direct "$n"
fi
if [[ " $TARGETS " == *" media "* ]]; then
	if [ -z "$edgesbc_bin" ]; then
		media_note="edgesbc not run: $edgesbc_note"
	else
		wait_quiet
		busy[media]=$QUIET
		log "== edgesbc media: concurrent calls with G.711 RTP for ${MEDIA_HOLD_S}s (machine ${QUIET}% busy before it)"
		for n in $MEDIA_CALLS; do
			if (($(elapsed_budget) > BUDGET)); then
				media_note="time budget reached before $n calls"
				break
			fi
			run_media edgesbc "$n"
		done
	fi
fi
if [[ " $TARGETS " == *" media-offload "* ]]; then
	if [ -z "$edgesbc_bin" ]; then
		media_note="${media_note:+$media_note; }edgesbc not run: $edgesbc_note"
	else
		wait_quiet
		busy[media-offload]=$QUIET
		log "== edgesbc media with kernel offload: the same calls, ip_forward=1 in the middle (machine ${QUIET}% busy before it)"
		for n in $MEDIA_CALLS; do
			if (($(elapsed_budget) > BUDGET)); then
				media_note="${media_note:+$media_note; }time budget reached before $n offloaded calls"
				break
			fi
			run_media edgesbc-offload "$n"
		done
	fi
fi

# ---------------------------------------------------------------- report

# step_value KIND RATE COLUMN prints one column of the last step of KIND at
# RATE that passed, or "-".
step_value() {
	awk -F'\t' -v k="$1" -v r="$2" -v c="$3" 'NR == 1 {for (i = 1; i <= NF; i++) if ($i == c) col = i; next}
		$1 == k && $2 == r && $9 == "pass" {v = $col} END {print (v != "" ? v : "-")}' "$steps_tsv"
}

ratio() {
	awk -v a="$1" -v b="$2" 'BEGIN {if (a ~ /^[0-9.]+$/ && b ~ /^[0-9.]+$/ && b > 0) printf "%.2f", a / b; else print "-"}'
}

# bounded_ratio A B KIND_B KIND_A prints A / B, marked when either side
# only has a lower bound: a lower bound in the denominator makes the ratio
# an upper bound.
bounded_ratio() {
	local r
	r=$(ratio "$1" "$2")
	if [ "$r" != - ]; then
		[ -n "${bound[$3]:-}" ] && r="<= $r"
		[ -n "${bound[$4]:-}" ] && r="$r (numerator is a lower bound)"
	fi
	echo "$r"
}

# The hold time and scenario are the same for every target, so CPS ratios
# compare like with like.
{
	echo "# edgesbc signalling benchmark, $(date '+%Y-%m-%d %H:%M:%S %Z')"
	echo
	echo "Host: $(nproc) CPUs ($(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)), kernel $(uname -r)."
	echo "SIPp $( (sipp -v 2>/dev/null || true) | awk '/SIPp/ {print $2; exit}'), $(kamailio -v 2>/dev/null | head -n 1 || echo 'kamailio not installed'), edgesbc $( [ -n "$edgesbc_bin" ] && "$edgesbc_bin" version 2>/dev/null | awk '{print $2}' || echo '-')."
	echo "UDP, INVITE (with SDP) / 100 (from a middle box) / 200 / ACK / ${HOLD_MS} ms / BYE / 200, no media."
	echo "Each step offers rate x ${STEP_SECONDS} s calls (at least ${MIN_CALLS}); a step passes when every call completes with none failed and SIPp kept the rate."
	echo "Direct baseline: SIPp UAC -> UAS routed by the kernel through the middle namespace (ip_forward=1)."
	echo "SIPp and the middle box run at nice ${NICE}; a failed step is repeated ${RETRY} time(s) before it counts."
	echo
	echo "## Highest call rate with zero failed calls"
	echo
	echo "| target | max CPS | CPU us/call @${REF_RATE} CPS | CPU us/call @max | peak memory @max (KiB) | other load before | note |"
	echo "|---|---:|---:|---:|---:|---:|---|"
	for kind in direct kamailio kamailio-rtpengine edgesbc; do
		[[ " $TARGETS " == *" $kind "* ]] || continue
		b=${best[$kind]:-}
		if [ -z "$b" ]; then
			echo "| $kind | not run | - | - | - | - | ${note[$kind]:-} |"
			continue
		fi
		if [ "$kind" = direct ]; then
			echo "| direct | ${bound[$kind]:-}$b | - | - | - | ${busy[$kind]:-?}% | ${note[$kind]:-} |"
			continue
		fi
		mem=$(step_value "$kind" "$b" peak_pss_kb)
		[ "$kind" = edgesbc ] && mem=$(step_value "$kind" "$b" peak_rss_kb)
		echo "| $kind | ${bound[$kind]:-}$b | $(step_value "$kind" "$REF_RATE" cpu_us_per_call) | $(step_value "$kind" "$b" cpu_us_per_call) | $mem | ${busy[$kind]:-?}% | ${note[$kind]:-} |"
	done
	echo
	if [[ " $TARGETS " == *" edgesbc "* ]]; then
		echo "edgesbc port pool: port_range ${PORT_RANGE}, quarantine ${QUARANTINE_S} s, two pairs per call: with a ${HOLD_MS} ms hold it runs out of fully quarantined pairs above about $(pool_ceiling "$QUARANTINE_S") CPS (from there pairs are reused after ${QUARANTINE_FLOOR_S} s, counted in ports_quarantine_shortened) and out of pairs altogether above about $(pool_ceiling "$QUARANTINE_FLOOR_S") CPS, where the SBC answers 503 whatever the CPU."
		echo "edgesbc descriptors: hard open file limit $(ulimit -Hn), two relay sockets per call without RTP (four once RTP flows): at most about $(fd_ceiling) calls in progress (signalling steps hold calls ${HOLD_MS} ms plus their setup time, which grows near saturation); beyond it calls get 503, logged as \"too many open files\". Kamailio without media opens no socket per call."
		echo
	fi
	echo "Other load before: CPU busy with work outside the bench in the second before the part started (should be near 0%)."
	echo "Memory: Kamailio (with rtpengine, when it runs) is the sum of PSS over its processes (shared memory counted once), sampled every 0.25 s; edgesbc is VmHWM (peak RSS). CPU is every process in the middle namespace: Kamailio's workers and, for kamailio-rtpengine, rtpengine's too."
	echo
	echo "## Ratios"
	echo
	e=${best[edgesbc]:-} k=${best[kamailio]:-} d=${best[direct]:-} kr=${best[kamailio-rtpengine]:-}
	echo "| ratio | value |"
	echo "|---|---:|"
	echo "| max CPS edgesbc / Kamailio | $(bounded_ratio "$e" "$k" kamailio edgesbc) |"
	echo "| max CPS edgesbc / Kamailio+rtpengine | $(bounded_ratio "$e" "$kr" kamailio-rtpengine edgesbc) |"
	echo "| max CPS edgesbc / direct | $(bounded_ratio "$e" "$d" direct edgesbc) |"
	echo "| max CPS Kamailio / direct | $(bounded_ratio "$k" "$d" direct kamailio) |"
	echo "| CPU per call @${REF_RATE} CPS edgesbc / Kamailio | $(ratio "$(step_value edgesbc "$REF_RATE" cpu_us_per_call)" "$(step_value kamailio "$REF_RATE" cpu_us_per_call)") |"
	echo "| CPU per call @${REF_RATE} CPS edgesbc / Kamailio+rtpengine | $(ratio "$(step_value edgesbc "$REF_RATE" cpu_us_per_call)" "$(step_value kamailio-rtpengine "$REF_RATE" cpu_us_per_call)") |"
	echo
	if [[ " $TARGETS " == *" media "* || " $TARGETS " == *" media-direct "* || " $TARGETS " == *" media-offload "* ]]; then
		echo "## G.711 media, ${MEDIA_HOLD_S} s per call, RTP both ways"
		echo
		if [ -n "$media_note" ]; then
			echo "$media_note"
			echo
		fi
		echo "| target | calls | ramp CPS | ok | failed | setup ms | result | peak calls (admin) | RSS idle -> peak (KiB) | RSS KiB per 1,000 calls | middle-box CPU | host CPU busy | RTP sent / expected | reaching UAS | echoed by UAS | echo reaching UAC | note |"
		echo "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
		awk -F'\t' 'NR > 1 {printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s -> %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", $1, $2, $3, $4, $5, $6, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19}' "$media_tsv"
		echo
		echo "direct: SIPp to SIPp routed by the kernel, to show how much RTP SIPp itself can send and echo here. edgesbc: every packet through the userspace relay (the middle namespace does not forward, so kernel offload is off). edgesbc-offload: the same calls with ip_forward=1, so latched streams are forwarded by nftables in the kernel. Middle-box CPU is percent of one core over the whole run (ramp, hold, hang-up); host CPU busy is the whole machine (all cores, SIPp included) over the same time. RTP columns count packets on the outer links (SIP included, about 0.5%): sent by the UAC against ${RTP_PER_CALL} packets per completed call; arriving at the UAS against sent by the UAC (the middle box, forward); echoed by the UAS against arrived (SIPp's echo thread; what it cannot take is dropped in its receive buffer); arriving back at the UAC against echoed (the middle box, backward)."
		echo
	fi
	echo "## Every step"
	echo
	echo "| target | rate | calls | ok | failed | retrans | setup ms | wall s | result | CPU us/call | peak PSS KiB | peak RSS KiB | host CPU busy | note |"
	echo "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---|"
	awk -F'\t' 'NR > 1 {printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14}' "$steps_tsv"
	echo
	echo "Logs: $work (run took $(elapsed_budget) s)."
} >"$results"

cat "$results"
log "results written to $results"
