#!/usr/bin/env bash
# build-image.sh: what `make image` runs. It turns this checkout into a
# bootable UEFI disk image of the edgesbc appliance:
#
#   images/out/edgesbc-<version>.img       raw GPT disk (ESP + root)
#   images/out/edgesbc-<version>.qcow2     the same disk for qemu/libvirt
#   images/out/edgesbc-<version>.img.zst   the raw disk, compressed
#   images/out/SHA256SUMS
#
# The root file system is Debian (debootstrap, minbase variant plus the
# packages in images/base/packages), the overlay in images/rootfs and the
# static edgesbc binary. Nothing is ever mounted: the root file system is
# written with mkfs.ext4 -d, the EFI system partition with mtools, the
# partition table with sfdisk, and the partitions are copied in with dd. It
# therefore builds as root in containers and CI sandboxes where loop devices
# and vfat mounts are not available (debootstrap itself still mounts /proc
# in the new root while it installs packages).
#
# The finished base root file system is kept as a tarball in the cache
# directory, keyed by suite, mirror, packages and the files in images/base;
# later builds unpack it and skip debootstrap.
#
# Options (flag or environment variable):
#   --suite S       SUITE       Debian suite            (default: the build machine's, else bookworm)
#   --mirror URL    MIRROR      Debian mirror           (default: what apt on the build machine uses)
#   --size N        IMAGE_SIZE  disk size for truncate  (default: 1G)
#   --packages L    EXTRA_PACKAGES  extra packages, comma or space separated
#   --config FILE   CONFIG      edgesbc.hcl to bake in as /etc/edgesbc/edgesbc.hcl
#                               (default: none; the appliance starts in safe mode)
#   --cache DIR     CACHE_DIR   base tarball cache      (default: images/cache)
#   --base-tar F    BASE_TAR    use this base tarball instead of the cache
#   --out DIR       OUT_DIR     output directory        (default: images/out)
#   --version V     VERSION     image version           (default: git describe)
#   --zstd-level N  ZSTD_LEVEL  compression level       (default: 12)
#   --no-cache      NO_CACHE=1  always run debootstrap (and refresh the cache)
#
# SOURCE_DATE_EPOCH (default: the last commit's time) fixes every timestamp,
# and the disk, partition and file system identifiers are constants, so two
# builds of one commit from the same base differ as little as possible.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

die() {
	echo "build-image: $*" >&2
	exit 1
}
say() { echo "build-image: $*"; }

# --- options ---------------------------------------------------------------

SUITE=${SUITE:-}
MIRROR=${MIRROR:-}
IMAGE_SIZE=${IMAGE_SIZE:-1G}
EXTRA_PACKAGES=${EXTRA_PACKAGES:-}
CONFIG=${CONFIG:-}
CACHE_DIR=${CACHE_DIR:-$repo/images/cache}
BASE_TAR=${BASE_TAR:-}
OUT_DIR=${OUT_DIR:-$repo/images/out}
VERSION=${VERSION:-}
ZSTD_LEVEL=${ZSTD_LEVEL:-12}
NO_CACHE=${NO_CACHE:-}

while [ $# -gt 0 ]; do
	case "$1" in
	--suite) SUITE=$2; shift 2 ;;
	--mirror) MIRROR=$2; shift 2 ;;
	--size) IMAGE_SIZE=$2; shift 2 ;;
	--packages) EXTRA_PACKAGES=$2; shift 2 ;;
	--config) CONFIG=$2; shift 2 ;;
	--cache) CACHE_DIR=$2; shift 2 ;;
	--base-tar) BASE_TAR=$2; shift 2 ;;
	--out) OUT_DIR=$2; shift 2 ;;
	--version) VERSION=$2; shift 2 ;;
	--zstd-level) ZSTD_LEVEL=$2; shift 2 ;;
	--no-cache) NO_CACHE=1; shift ;;
	-h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
	*) die "unknown option $1 (see --help)" ;;
	esac
done

[ "$(id -u)" -eq 0 ] || die "needs root (debootstrap, file ownership in the image); run: sudo make image"
export PATH="$PATH:/usr/sbin:/sbin:/usr/local/go/bin"
for tool in debootstrap mkfs.ext4 mformat mmd mcopy sfdisk qemu-img zstd sha256sum tar; do
	command -v "$tool" >/dev/null || die "$tool not found; on Debian: apt-get install debootstrap e2fsprogs mtools fdisk qemu-utils zstd systemd-boot-efi"
done
boot_efi=/usr/lib/systemd/boot/efi/systemd-bootx64.efi
[ -f "$boot_efi" ] || die "$boot_efi not found; on Debian: apt-get install systemd-boot-efi"

# apt_mirror prints the first Debian archive URI that apt on this machine
# uses (deb822 .sources files first, then one-line .list files).
apt_mirror() {
	local f
	for f in /etc/apt/sources.list.d/*.sources; do
		[ -f "$f" ] || continue
		awk 'tolower($1) == "uris:" { for (i = 2; i <= NF; i++) print $i }' "$f"
	done
	for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
		[ -f "$f" ] || continue
		awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; break } }' "$f"
	done
}
if [ -z "$MIRROR" ]; then
	MIRROR=$(apt_mirror | grep -v -e security -e updates | grep -m1 debian || true)
	MIRROR=${MIRROR:-http://deb.debian.org/debian}
fi
if [ -z "$SUITE" ]; then
	SUITE=$(. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-}")
	SUITE=${SUITE:-bookworm}
fi
[ -n "$VERSION" ] || VERSION=$(git describe --tags --always --dirty 2>/dev/null || echo dev)
if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
	SOURCE_DATE_EPOCH=$(git log -1 --format=%ct 2>/dev/null || echo 0)
fi
export SOURCE_DATE_EPOCH
if [ -n "$CONFIG" ]; then
	[ -f "$CONFIG" ] || die "config $CONFIG not found"
	CONFIG=$(cd "$(dirname "$CONFIG")" && pwd)/$(basename "$CONFIG")
fi

# Fixed identifiers: the loader entry and fstab name the root partition by
# PARTUUID, so they must be known before the disk exists.
DISK_GUID=5b1c6a2e-0d6f-4b0a-9d2e-6564676573bc
ESP_PARTUUID=c12a7328-0e5b-4c5a-8e1d-6564676573e5
ROOT_PARTUUID=4f68bce3-0e5b-4c5a-8e1d-6564676573f0
ROOT_FSUUID=65646765-73bc-4000-8000-000000000001
ESP_SERIAL=0xED6E5BC0
ESP_MIB=64

pkgs=$(grep -v -e '^#' -e '^$' images/base/packages | tr '\n' ' ')
pkgs="$pkgs $(echo "$EXTRA_PACKAGES" | tr ',' ' ')"
pkgs=$(echo $pkgs | tr ' ' '\n' | sort -u | tr '\n' ',' | sed 's/,$//')

work=$(mktemp -d "${TMPDIR:-/tmp}/edgesbc-image.XXXXXX")
rootfs=$work/rootfs
cleanup() {
	local rc=$?
	# debootstrap leaves /proc and /sys mounted in the new root when it
	# fails half way; never rm -rf across a live mount.
	for m in "$rootfs/proc" "$rootfs/sys" "$rootfs/dev/pts"; do
		mountpoint -q "$m" 2>/dev/null && umount -l "$m" || true
	done
	rm -rf --one-file-system "$work"
	[ $rc -eq 0 ] || echo "build-image: failed" >&2
}
trap cleanup EXIT
trap 'exit 130' INT TERM

start=$(date +%s)
say "version $VERSION, suite $SUITE, mirror $MIRROR, size $IMAGE_SIZE"

# --- edgesbc binary --------------------------------------------------------

command -v go >/dev/null || die "go not found in PATH"
say "building edgesbc (static, CGO off)"
CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=$VERSION" -o "$work/edgesbc" ./cmd/edgesbc
if [ -n "$CONFIG" ]; then
	"$work/edgesbc" check -config "$CONFIG" || die "$CONFIG does not pass edgesbc check"
fi

# --- base root file system (cached) ------------------------------------------

key=$( {
	echo "$SUITE $MIRROR $pkgs"
	cat images/base/*
	sed -n '/^build_base() {/,/^}/p' "$0"
} | sha256sum | cut -c1-16)

build_base() {
	local target=$1
	mkdir -p "$target"
	say "debootstrap $SUITE (minbase + $pkgs)"
	debootstrap --foreign --variant=minbase --arch=amd64 --include="$pkgs" \
		"$SUITE" "$target" "$MIRROR" >"$work/debootstrap.log" 2>&1 ||
		{ tail -20 "$work/debootstrap.log" >&2; die "debootstrap (first stage) failed, log above"; }
	# Before any package is configured: no docs, no unneeded kernel
	# modules, a small initramfs.
	install -D -m 644 images/base/dpkg-excludes "$target/etc/dpkg/dpkg.cfg.d/edgesbc-excludes"
	install -D -m 644 images/base/initramfs.conf "$target/etc/initramfs-tools/conf.d/edgesbc"
	install -D -m 644 images/base/initramfs-modules "$target/etc/initramfs-tools/modules"
	chroot "$target" /debootstrap/debootstrap --second-stage >>"$work/debootstrap.log" 2>&1 ||
		{ tail -20 "$work/debootstrap.log" >&2; die "debootstrap (second stage) failed, log above"; }
	# Files the first stage unpacked before the excludes were in place.
	rm -rf "$target"/usr/share/man/* "$target"/usr/share/info/* "$target"/usr/share/lintian/*
	find "$target/usr/share/doc" -mindepth 1 ! -name copyright ! -type d -delete 2>/dev/null || true
	find "$target/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} + 2>/dev/null || true
	rm -rf "$target"/var/cache/apt/archives/*.deb "$target"/var/lib/apt/lists/* "$target"/var/log/*.log
	# apt on the appliance talks to the mirror the image was built from.
	echo "deb $MIRROR $SUITE main" >"$target/etc/apt/sources.list"
}

base_tar=${BASE_TAR:-$CACHE_DIR/base-$SUITE-$key.tar.zst}
mkdir -p "$rootfs"
if [ -z "$NO_CACHE" ] && [ -f "$base_tar" ]; then
	say "unpacking cached base $base_tar"
	tar --numeric-owner --xattrs --xattrs-include='*' -I zstd -xpf "$base_tar" -C "$rootfs"
else
	[ -z "$BASE_TAR" ] || die "base tarball $BASE_TAR not found"
	build_base "$rootfs"
	mkdir -p "$CACHE_DIR"
	say "caching base as $base_tar"
	tar --numeric-owner --xattrs --xattrs-include='*' -I 'zstd -T0 -3' -cf "$base_tar.tmp" -C "$rootfs" .
	mv "$base_tar.tmp" "$base_tar"
	# Only the newest base per suite is kept.
	find "$CACHE_DIR" -maxdepth 1 -name "base-$SUITE-*.tar.zst" ! -name "$(basename "$base_tar")" -delete
fi
say "base ready after $(($(date +%s) - start))s"

# --- appliance layer ---------------------------------------------------------

cp -a images/rootfs/. "$rootfs/"
# A checkout's file times are the time of the checkout: the overlay gets
# SOURCE_DATE_EPOCH instead.
(cd images/rootfs && find . -print0) | (cd "$rootfs" && xargs -0 touch -h -d "@$SOURCE_DATE_EPOCH")
install -m 755 "$work/edgesbc" "$rootfs/usr/sbin/edgesbc"
install -d -m 750 "$rootfs/etc/edgesbc"
if [ -n "$CONFIG" ]; then
	install -m 640 "$CONFIG" "$rootfs/etc/edgesbc/edgesbc.hcl"
	say "baked in $CONFIG"
fi
"$work/edgesbc" example >"$rootfs/etc/edgesbc/edgesbc.hcl.example"
chmod 644 "$rootfs/etc/edgesbc/edgesbc.hcl.example"

enable() { # unit target
	mkdir -p "$rootfs/etc/systemd/system/$2.wants"
	ln -sf "/etc/systemd/system/$1" "$rootfs/etc/systemd/system/$2.wants/$1"
}
enable edgesbc.service multi-user.target
enable edgesbc-report.service multi-user.target
# No timers that download or scrub behind the operator's back.
# getty-static starts gettys on tty2-6 where logind is missing: the console
# getty on tty1 and the serial one are enough.
for unit in apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer e2scrub_reap.service fstrim.timer getty-static.service; do
	ln -sf /dev/null "$rootfs/etc/systemd/system/$unit"
done
# ssh is not in the image unless asked for with --packages openssh-server;
# then every appliance must get its own host keys on first boot.
if [ -d "$rootfs/etc/ssh" ]; then
	rm -f "$rootfs"/etc/ssh/ssh_host_*
	mkdir -p "$rootfs/etc/systemd/system/ssh.service.d"
	printf '[Service]\nExecStartPre=/usr/bin/ssh-keygen -A\n' >"$rootfs/etc/systemd/system/ssh.service.d/edgesbc-hostkeys.conf"
fi

# Root logs in on the serial console without a password until the operator
# sets one (pam_unix nullok); there is no other way in.
sed -i 's/^root:[^:]*:/root::/' "$rootfs/etc/shadow"
cat >"$rootfs/etc/fstab" <<EOF
PARTUUID=$ROOT_PARTUUID / ext4 rw,errors=remount-ro 0 1
EOF
# Each appliance gets its own machine id on first boot.
: >"$rootfs/etc/machine-id"
rm -f "$rootfs/var/lib/dbus/machine-id"
rm -f "$rootfs"/var/log/*.log "$rootfs"/var/cache/debconf/*-old "$rootfs"/var/lib/dpkg/*-old

# The kernel and initramfs live on the ESP, where systemd-boot reads them.
kernel=$(ls "$rootfs"/boot/vmlinuz-* | sort -V | tail -1)
initrd=$(ls "$rootfs"/boot/initrd.img-* | sort -V | tail -1)
[ -f "$kernel" ] && [ -f "$initrd" ] || die "no kernel or initramfs in the base root file system"
mv "$kernel" "$work/vmlinuz"
mv "$initrd" "$work/initrd.img"
rm -f "$rootfs"/vmlinuz* "$rootfs"/initrd.img* "$rootfs"/boot/vmlinuz* "$rootfs"/boot/initrd.img*

# Every timestamp at most SOURCE_DATE_EPOCH.
find "$rootfs" -newermt "@$SOURCE_DATE_EPOCH" -print0 | xargs -0r touch -h -d "@$SOURCE_DATE_EPOCH"

# --- EFI system partition (mtools, no mount) --------------------------------

esp=$work/esp.img
cat >"$work/loader.conf" <<EOF
default edgesbc.conf
timeout 0
editor no
EOF
cat >"$work/edgesbc.conf" <<EOF
title   edgesbc $VERSION
linux   /edgesbc/vmlinuz
initrd  /edgesbc/initrd.img
options root=PARTUUID=$ROOT_PARTUUID rw rootwait console=tty0 console=ttyS0,115200n8 net.ifnames=0 panic=10 quiet
EOF
cp "$boot_efi" "$work/BOOTX64.EFI"
touch -d "@$SOURCE_DATE_EPOCH" "$work/loader.conf" "$work/edgesbc.conf" "$work/BOOTX64.EFI" "$work/vmlinuz" "$work/initrd.img"
export MTOOLS_SKIP_CHECK=1
mformat -i "$esp" -C -T $((ESP_MIB * 2048)) -h 64 -s 32 -F -v ESP -N "${ESP_SERIAL#0x}" ::
mmd -i "$esp" ::/EFI ::/EFI/BOOT ::/EFI/systemd ::/loader ::/loader/entries ::/edgesbc
mcopy -m -i "$esp" "$work/BOOTX64.EFI" ::/EFI/BOOT/BOOTX64.EFI
mcopy -m -i "$esp" "$work/BOOTX64.EFI" ::/EFI/systemd/systemd-bootx64.efi
mcopy -m -i "$esp" "$work/loader.conf" ::/loader/loader.conf
mcopy -m -i "$esp" "$work/edgesbc.conf" ::/loader/entries/edgesbc.conf
mcopy -m -i "$esp" "$work/vmlinuz" ::/edgesbc/vmlinuz
mcopy -m -i "$esp" "$work/initrd.img" ::/edgesbc/initrd.img

# --- root file system (mkfs.ext4 -d, no mount) ------------------------------

to_bytes() { numfmt --from=iec "$1"; }
disk_bytes=$(to_bytes "$IMAGE_SIZE")
mib=$((1024 * 1024))
[ $((disk_bytes % mib)) -eq 0 ] || die "size $IMAGE_SIZE is not a whole number of MiB"
root_start_mib=$((1 + ESP_MIB))
root_mib=$((disk_bytes / mib - root_start_mib - 1)) # 1 MiB at the end for the backup GPT
used_mib=$(($(du -sxm "$rootfs" | cut -f1) + 64))
[ "$root_mib" -gt "$used_mib" ] || die "size $IMAGE_SIZE too small: the root file system needs about $((used_mib + root_start_mib + 1)) MiB"
root=$work/root.img
E2FSPROGS_FAKE_TIME=$SOURCE_DATE_EPOCH mkfs.ext4 -q -F -L edgesbc-root -U "$ROOT_FSUUID" \
	-E "hash_seed=$ROOT_FSUUID,root_owner=0:0" -d "$rootfs" "$root" "${root_mib}M" >/dev/null
# mkfs.ext4 -d copies atime and ctime from the build machine's files, and
# ctime cannot be set there: set both to SOURCE_DATE_EPOCH in the image.
(cd "$rootfs" && find . -printf '%P\n') | awk -v t="@$SOURCE_DATE_EPOCH" '
	/"/ { next }
	{ p = "/" $0; printf "sif \"%s\" ctime %s\nsif \"%s\" atime %s\n", p, t, p, t }' >"$work/times.cmd"
E2FSPROGS_FAKE_TIME=$SOURCE_DATE_EPOCH debugfs -w -f "$work/times.cmd" "$root" >"$work/times.log" 2>&1 ||
	{ tail -5 "$work/times.log" >&2; die "debugfs could not set file times"; }

# --- disk --------------------------------------------------------------------

mkdir -p "$OUT_DIR"
name=edgesbc-$VERSION
img=$work/$name.img
truncate -s "$disk_bytes" "$img"
sfdisk -q "$img" <<EOF
label: gpt
label-id: $DISK_GUID
first-lba: 2048
start=1MiB, size=${ESP_MIB}MiB, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, uuid=$ESP_PARTUUID, name="ESP"
start=${root_start_mib}MiB, size=${root_mib}MiB, type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709, uuid=$ROOT_PARTUUID, name="edgesbc-root"
EOF
dd if="$esp" of="$img" bs=1M seek=1 conv=notrunc,sparse status=none
dd if="$root" of="$img" bs=1M seek="$root_start_mib" conv=notrunc,sparse status=none

say "writing qcow2 and zstd"
qemu-img convert -f raw -O qcow2 "$img" "$work/$name.qcow2"
zstd -q -T0 "-$ZSTD_LEVEL" -o "$work/$name.img.zst" "$img"
rm -f "$OUT_DIR/$name.img" "$OUT_DIR/$name.qcow2" "$OUT_DIR/$name.img.zst"
mv "$img" "$work/$name.qcow2" "$work/$name.img.zst" "$OUT_DIR/"
(cd "$OUT_DIR" && sha256sum "$name.img" "$name.qcow2" "$name.img.zst" >SHA256SUMS)
ln -sfn "$name.img" "$OUT_DIR/edgesbc.img"

say "done in $(($(date +%s) - start))s:"
(cd "$OUT_DIR" && ls -ls "$name.img" "$name.qcow2" "$name.img.zst" SHA256SUMS)
