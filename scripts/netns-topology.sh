#!/bin/sh
# netns-topology.sh: the three-namespace lab of the integration tests, for
# trying edgesbc by hand.
#
#   PREFIX-pbx                 PREFIX-sbc                     PREFIX-carrier
#   10.91.1.2 eth-sbc ── eth-pbx 10.91.1.1  203.0.113.1 eth-carrier ── eth-sbc 203.0.113.2
#
# The addresses are those of examples/edgesbc.hcl. IP forwarding stays off
# in the SBC namespace: the carrier cannot reach the private net except
# through a program in PREFIX-sbc, such as edgesbc. Nothing is created in
# the host's own network namespace.
#
# usage: netns-topology.sh up|down [PREFIX]     (PREFIX defaults to "edgesbc")
#
# Then, for example:
#   ip netns exec edgesbc-sbc bin/edgesbc run -config examples/edgesbc.hcl
#   ip netns exec edgesbc-carrier sipp -sn uas -i 203.0.113.2 -p 5060
#   ip netns exec edgesbc-pbx sipp -sn uac -i 10.91.1.2 -p 5060 -s 100 -m 1 10.91.1.1:5060
set -eu

usage() {
	echo "usage: $0 up|down [PREFIX]" >&2
	exit 2
}

[ $# -ge 1 ] && [ $# -le 2 ] || usage
action=$1
prefix=${2:-edgesbc}
case $prefix in
*[!A-Za-z0-9_.-]* | "") echo "$0: PREFIX may only hold letters, digits, '.', '_' and '-'" >&2; exit 2 ;;
esac

pbx=$prefix-pbx
sbc=$prefix-sbc
carrier=$prefix-carrier

if [ "$(id -u)" -ne 0 ]; then
	echo "$0: needs root (network namespaces)" >&2
	exit 1
fi

ns_exists() {
	ip netns list | awk '{print $1}' | grep -qx -- "$1"
}

# ns_down kills whatever still runs in a namespace, then deletes it: a live
# process would keep the namespace and its links alive after the name goes.
ns_down() {
	ns_exists "$1" || return 0
	pids=$(ip netns pids "$1" || true)
	if [ -n "$pids" ]; then
		# shellcheck disable=SC2086 # one pid per word
		kill -TERM $pids 2>/dev/null || true
		i=0
		while [ -n "$(ip netns pids "$1" || true)" ] && [ $i -lt 50 ]; do
			sleep 0.1
			i=$((i + 1))
		done
		pids=$(ip netns pids "$1" || true)
		# shellcheck disable=SC2086
		[ -z "$pids" ] || kill -KILL $pids 2>/dev/null || true
	fi
	ip netns del "$1"
}

down() {
	ns_down "$pbx"
	ns_down "$sbc"
	ns_down "$carrier"
}

up() {
	for ns in "$pbx" "$sbc" "$carrier"; do
		if ns_exists "$ns"; then
			echo "$0: namespace $ns exists; run: $0 down $prefix" >&2
			exit 1
		fi
	done
	# Undo a half-built lab if any step fails.
	trap 'down' EXIT
	for ns in "$pbx" "$sbc" "$carrier"; do
		ip netns add "$ns"
		ip -n "$ns" link set lo up
	done
	ip netns exec "$sbc" sh -c 'echo 0 > /proc/sys/net/ipv4/ip_forward'

	# Each veth pair is created directly inside its two namespaces.
	ip link add eth-sbc netns "$pbx" type veth peer name eth-pbx netns "$sbc"
	ip link add eth-carrier netns "$sbc" type veth peer name eth-sbc netns "$carrier"
	ip -n "$pbx" addr add 10.91.1.2/24 dev eth-sbc
	ip -n "$sbc" addr add 10.91.1.1/24 dev eth-pbx
	ip -n "$sbc" addr add 203.0.113.1/24 dev eth-carrier
	ip -n "$carrier" addr add 203.0.113.2/24 dev eth-sbc
	ip -n "$pbx" link set eth-sbc up
	ip -n "$sbc" link set eth-pbx up
	ip -n "$sbc" link set eth-carrier up
	ip -n "$carrier" link set eth-sbc up
	trap - EXIT
	echo "namespaces up: $pbx (10.91.1.2) | $sbc (10.91.1.1, 203.0.113.1) | $carrier (203.0.113.2)"
}

case $action in
up) up ;;
down) down ;;
*) usage ;;
esac
