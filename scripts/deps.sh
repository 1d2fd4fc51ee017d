#!/usr/bin/env bash
# Installs the Debian packages the demo and the integration tests use, if any
# is missing ("bench" adds the baseline Kamailio of make bench, "image" the
# tools of make image and make image-test). Safe to run repeatedly; needs
# root only when something is missing.
set -euo pipefail
pkgs=(sip-tester nftables iproute2 tcpdump sipvicious)
[ "${1:-}" = bench ] && pkgs+=(kamailio rtpengine-daemon)
[ "${1:-}" = image ] && pkgs+=(debootstrap e2fsprogs mtools fdisk dosfstools systemd-boot-efi qemu-utils zstd qemu-system-x86 ovmf)
missing=()
for p in "${pkgs[@]}"; do
	dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
	echo "deps: missing packages: ${missing[*]} (run as root to install them)" >&2
	exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}"
