#!/usr/bin/env bash
# boot-test.sh: what `make image-test` runs. It boots the appliance image in
# qemu (UEFI with OVMF) and checks that it carries SIP:
#
#   1. copies the image and writes images/test/boot-test.hcl into the copy as
#      /etc/edgesbc/edgesbc.hcl (debugfs, no mount);
#   2. creates a private network namespace with two tap devices, the PBX
#      (10.91.1.2) and the carrier (203.0.113.2), and runs qemu inside it
#      with one virtio NIC on each tap: the guest reaches nothing else;
#   3. waits, bounded, for the report edgesbc-report.service prints on the
#      serial console once edgesbc.service is ready (Type=notify);
#   4. checks the report: edgesbc running, lan0/wan0 renamed by MAC with
#      their addresses, the default route, the inet edgesbc nftables table;
#   5. sends SIP OPTIONS from the carrier and from the PBX with sipp and
#      expects 200 from both zones;
#   6. places a call from the PBX to the carrier with RTP echoed back;
#   7. prints the boot-to-ready time.
#
# Everything it creates (namespace, qemu, temporary files) is removed on any
# exit. Options (environment):
#   IMAGE         image to boot         (default: images/out/edgesbc.img)
#   ACCEL         tcg, kvm or auto      (default: tcg; auto boots with KVM
#                                        first and falls back to tcg when
#                                        that does not reach ready)
#   BOOT_TIMEOUT  seconds to wait for the ready report (default: 420)
#   KEEP_LOG      path to keep the serial console log at
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

IMAGE=${IMAGE:-images/out/edgesbc.img}
ACCEL=${ACCEL:-tcg}
BOOT_TIMEOUT=${BOOT_TIMEOUT:-420}
KVM_PROBE_TIMEOUT=${KVM_PROBE_TIMEOUT:-90}
CONFIG=images/test/boot-test.hcl
SCENARIO=images/test/options.xml
OVMF_CODE=${OVMF_CODE:-/usr/share/OVMF/OVMF_CODE_4M.fd}
OVMF_VARS=${OVMF_VARS:-/usr/share/OVMF/OVMF_VARS_4M.fd}
# The MACs and addresses of images/test/boot-test.hcl.
LAN_MAC=52:54:00:e5:bc:01
WAN_MAC=52:54:00:e5:bc:02
PBX_ADDR=10.91.1.2
CARRIER_ADDR=203.0.113.2
SBC_LAN=10.91.1.1
SBC_WAN=203.0.113.1

die() {
	echo "boot-test: $*" >&2
	exit 1
}
say() { echo "boot-test: $*"; }

[ "$(id -u)" -eq 0 ] || die "needs root (network namespace, tap devices); run: sudo make image-test"
export PATH="$PATH:/usr/sbin:/sbin"
for tool in qemu-system-x86_64 debugfs sfdisk ip sipp tcpdump; do
	command -v "$tool" >/dev/null || die "$tool not found; on Debian: apt-get install qemu-system-x86 ovmf e2fsprogs fdisk iproute2 sip-tester tcpdump"
done
[ -f "$OVMF_CODE" ] && [ -f "$OVMF_VARS" ] || die "OVMF firmware not found ($OVMF_CODE); on Debian: apt-get install ovmf"
[ -c /dev/net/tun ] || die "/dev/net/tun is missing"
[ -e "$IMAGE" ] || die "$IMAGE not found; build it with: make image"

work=$(mktemp -d "${TMPDIR:-/tmp}/edgesbc-boot.XXXXXX")
ns=edgesbc-boot-$$
qemu_pid=
cleanup() {
	local rc=$?
	if [ -n "$qemu_pid" ]; then
		kill "$qemu_pid" 2>/dev/null || true
		wait "$qemu_pid" 2>/dev/null || true
	fi
	if [ $rc -ne 0 ] && [ -f "$work/console.log" ]; then
		echo "boot-test: last lines of the serial console:" >&2
		tr -d '\r' <"$work/console.log" | sed 's/\x1b\[[0-9;]*[a-zA-Z]//g' | tail -40 >&2
	fi
	if [ -n "${KEEP_LOG:-}" ] && [ -f "$work/console.log" ]; then
		cp "$work/console.log" "$KEEP_LOG"
	fi
	ip netns del "$ns" 2>/dev/null || true
	rm -rf "$work"
	[ $rc -eq 0 ] && say "PASS" || echo "boot-test: FAIL" >&2
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- the disk: a copy of the image with the test configuration --------------

disk=$work/disk.img
cp --sparse=always "$(readlink -f "$IMAGE")" "$disk"
# The root partition is the one with the x86-64 root type (Discoverable
# Partitions Specification), whatever its number.
root_start=$(sfdisk -d "$disk" | awk -F'[=,]' '/type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709/ { gsub(/ /, "", $2); print $2 }')
[ -n "$root_start" ] || die "no root partition in $IMAGE"
rootfs="$disk?offset=$((root_start * 512))"
cat >"$work/debugfs.cmd" <<EOF
cd /etc/edgesbc
rm edgesbc.hcl
write $repo/$CONFIG edgesbc.hcl
sif edgesbc.hcl mode 0100640
sif edgesbc.hcl uid 0
sif edgesbc.hcl gid 0
EOF
debugfs -w -f "$work/debugfs.cmd" "$rootfs" >"$work/debugfs.log" 2>&1 || { cat "$work/debugfs.log" >&2; die "debugfs could not write the config"; }
debugfs -R "cat /etc/edgesbc/edgesbc.hcl" "$rootfs" 2>/dev/null | cmp -s - "$CONFIG" || die "config not found in the image after writing it"

# --- the namespace: PBX and carrier on two taps ------------------------------

ip netns add "$ns"
ip -n "$ns" link set lo up
for tap in lan:$PBX_ADDR wan:$CARRIER_ADDR; do
	name=tap-${tap%%:*}
	ip -n "$ns" tuntap add dev "$name" mode tap
	ip -n "$ns" addr add "${tap#*:}/24" dev "$name"
	ip -n "$ns" link set "$name" up
done

# boot ACCEL TIMEOUT: starts qemu in the namespace and waits until the ready
# report is complete on the console; sets ready_s. Returns non-zero when
# qemu stops, the report unit cannot run, or time runs out.
boot() {
	local accel=$1 timeout=$2 cpu=max
	[ "$accel" = kvm ] && cpu=host
	cp "$OVMF_VARS" "$work/vars.fd"
	: >"$work/console.log"
	local start_ms
	start_ms=$(($(date +%s%N) / 1000000))
	ip netns exec "$ns" qemu-system-x86_64 \
		-machine q35 -accel "$accel" -cpu "$cpu" -smp 2 -m 1024 \
		-nodefaults -no-user-config -display none \
		-serial "file:$work/console.log" \
		-drive "if=pflash,format=raw,readonly=on,file=$OVMF_CODE" \
		-drive "if=pflash,format=raw,file=$work/vars.fd" \
		-drive "if=virtio,format=raw,file=$disk" \
		-netdev tap,id=lan,ifname=tap-lan,script=no,downscript=no \
		-device "virtio-net-pci,netdev=lan,mac=$LAN_MAC" \
		-netdev tap,id=wan,ifname=tap-wan,script=no,downscript=no \
		-device "virtio-net-pci,netdev=wan,mac=$WAN_MAC" \
		>"$work/qemu.log" 2>&1 &
	qemu_pid=$!
	local deadline=$((start_ms / 1000 + timeout))
	while :; do
		if grep -q EDGESBC-REPORT-END "$work/console.log"; then
			ready_ms=$(($(date +%s%N) / 1000000 - start_ms))
			return 0
		fi
		if ! kill -0 "$qemu_pid" 2>/dev/null; then
			echo "boot-test: qemu ($accel) exited:" >&2
			cat "$work/qemu.log" >&2
			qemu_pid=
			return 1
		fi
		# Status lines are cut to the console width, hence the loose patterns.
		if grep -aEq "Dependency failed for.*edgesbc is ready|Failed to start.*Session Border Controller" "$work/console.log"; then
			echo "boot-test: edgesbc.service failed to start ($accel)" >&2
			return 1
		fi
		# A KVM that cannot run this guest (nested virtualization) tends
		# to hang before the firmware prints anything.
		if [ "$accel" = kvm ] && [ $(($(date +%s) - start_ms / 1000)) -ge 30 ] && ! grep -aq BdsDxe "$work/console.log"; then
			echo "boot-test: no firmware output within 30s (kvm)" >&2
			return 1
		fi
		if [ "$(date +%s)" -ge "$deadline" ]; then
			echo "boot-test: no ready report within ${timeout}s ($accel)" >&2
			return 1
		fi
		sleep 1
	done
}

stop_qemu() {
	[ -n "$qemu_pid" ] || return 0
	kill "$qemu_pid" 2>/dev/null || true
	wait "$qemu_pid" 2>/dev/null || true
	qemu_pid=
}

accel=$ACCEL
if [ "$ACCEL" = auto ]; then
	accel=tcg
	if [ -w /dev/kvm ]; then
		say "probing KVM: booting with -accel kvm (up to ${KVM_PROBE_TIMEOUT}s)"
		if boot kvm "$KVM_PROBE_TIMEOUT"; then
			accel=kvm
		else
			say "KVM did not boot the image; using tcg"
			stop_qemu
		fi
	fi
fi
if [ "$accel" != kvm ] || [ -z "$qemu_pid" ]; then
	say "booting $IMAGE with -accel $accel (up to ${BOOT_TIMEOUT}s)"
	boot "$accel" "$BOOT_TIMEOUT" || die "the appliance did not report ready"
fi

# --- the ready report ---------------------------------------------------------

tr -d '\r' <"$work/console.log" | sed 's/\x1b\[[0-9;]*[a-zA-Z]//g' |
	sed -n 's/.*EDGESBC-REPORT-BEGIN/EDGESBC-REPORT-BEGIN/; /^EDGESBC-REPORT-BEGIN/,/^EDGESBC-REPORT-END/p' >"$work/report"
say "ready report:"
sed 's/^/    /' "$work/report"
failures=0
check() { # description, then a command that must succeed
	local what=$1
	shift
	if "$@"; then
		say "ok: $what"
	else
		echo "boot-test: FAILED: $what" >&2
		failures=$((failures + 1))
	fi
}
has() { grep -Eq "$1" "$work/report"; }
check "edgesbc runs with the configuration" has '^status .*"mode":"running"'
check "lan0 (by MAC $LAN_MAC) has $SBC_LAN/24" has "^addr lan0 +UP +$SBC_LAN/24"
check "wan0 (by MAC $WAN_MAC) has $SBC_WAN/24" has "^addr wan0 +UP +$SBC_WAN/24"
check "default route via 203.0.113.254 on wan0" has '^route default via 203\.0\.113\.254 dev wan0'
check "nftables table inet edgesbc is loaded" has '^nft table inet edgesbc$'
check "kernel media offload is on (the image's kernel takes the rules)" has '^status .*"kernel_offload":true'

# --- SIP ------------------------------------------------------------------------

options() { # local address, SBC address
	local dir=$work/sipp-$1
	mkdir -p "$dir"
	(cd "$dir" && timeout 30 ip netns exec "$ns" sipp -sf "$repo/$SCENARIO" -i "$1" -p 5060 \
		-m 1 -timeout 20s -timeout_error -trace_err "$2:5060" >sipp.out 2>&1) ||
		{ cat "$dir"/sipp.out "$dir"/*errors.log 2>/dev/null | tail -20 >&2; return 1; }
}
check "OPTIONS from the carrier ($CARRIER_ADDR) to the public zone: 200" options "$CARRIER_ADDR" "$SBC_WAN"
check "OPTIONS from the PBX ($PBX_ADDR) to the private zone: 200" options "$PBX_ADDR" "$SBC_LAN"

# call: the PBX calls the carrier through the appliance: INVITE with SDP,
# 200, ACK, 100 RTP packets (3 s of G.711) echoed back by the carrier, BYE.
# Passes when both sipp ends complete the call and the PBX's tap saw RTP
# come back from the appliance's private address (the echo went PBX ->
# appliance -> carrier -> appliance -> PBX).
call() {
	local dir=$work/call sipp_dir=$repo/cmd/edgesbc/testdata/sipp
	mkdir -p "$dir"
	cp "$sipp_dir/uac.xml" "$sipp_dir/uas.xml" "$sipp_dir/g711a.pcap" "$dir/"
	(cd "$dir" && timeout 40 ip netns exec "$ns" sipp -sf uas.xml -i "$CARRIER_ADDR" -p 5060 -rtp_echo \
		-m 1 -timeout 35s -timeout_error -trace_err >uas.out 2>&1) &
	local uas=$!
	timeout 40 ip netns exec "$ns" tcpdump -n -i tap-lan -c 40 -w "$dir/rtp.pcap" \
		"udp and src host $SBC_LAN and dst host $PBX_ADDR and dst port 6000" >"$dir/tcpdump.out" 2>&1 &
	local dump=$!
	sleep 1
	local rc=0
	(cd "$dir" && timeout 40 ip netns exec "$ns" sipp -sf uac.xml -i "$PBX_ADDR" -p 5060 -mi "$PBX_ADDR" -mp 6000 \
		-s 15551234567 -m 1 -timeout 35s -timeout_error -trace_err "$SBC_LAN:5060" >uac.out 2>&1) || rc=1
	wait "$uas" || rc=1
	sleep 1
	kill "$dump" 2>/dev/null || true
	wait "$dump" 2>/dev/null || true
	local echoed
	echoed=$(tcpdump -n -r "$dir/rtp.pcap" 2>/dev/null | wc -l)
	say "call: RTP packets echoed back to the PBX through the appliance: $echoed (of 100 sent; the capture stops at 40)"
	[ "$echoed" -ge 20 ] || rc=1
	[ $rc -eq 0 ] || cat "$dir"/*.out "$dir"/*errors.log 2>/dev/null | tail -30 >&2
	return $rc
}
check "a call from the PBX to the carrier with RTP both ways" call

uptime_ms=$(awk '/^uptime_ms/ { print $2 }' "$work/report")
say "boot-to-ready: $((ready_ms / 1000)).$(((ready_ms % 1000) / 100))s from qemu start (-accel $accel), guest uptime at ready $((uptime_ms / 1000)).$(((uptime_ms % 1000) / 100))s"
[ $failures -eq 0 ] || die "$failures check(s) failed"
