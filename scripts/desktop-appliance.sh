#!/bin/bash
# Builds the `desktop` appliance: Debian 12 (bookworm) with Xorg on virtio-gpu, Xfce with
# autologin, a terminal and Firefox ESR, DHCP on its network card and /home on the user
# disk. With REPO_DIR, publishes it there as `desktop`. See docs/desktop-appliance.md.
#
# Usage: scripts/desktop-appliance.sh OUT_DIR [REPO_DIR]
#
# Output in OUT_DIR: vmlinuz, initrd.img, system.img (ext4), cmdline; OUT_DIR/rootfs is
# the tree the image is made from. Re-runnable: the root filesystem is kept between runs
# and rebuilt only when scripts/desktop-appliance/packages changes (or is missing); the
# configuration, initrd and image are redone every run. `rm -rf OUT_DIR` to start over.
#
# Environment:
#   DEBIAN_MIRROR      default http://deb.debian.org/debian
#   DESKTOP_PASSWORD   the local user's password (sudo, the greeter after a log out);
#                      default "desktop"
#   SYSTEM_SIZE        system disk size (e.g. 3G); default: used space + 50 %, at least +768M
#   USER_DISK_SIZE     user disk size when publishing; default 2G
#   PRUNE_MODULES      1 (default): drop kernel modules for hardware a VM never has
#                      (Wi-Fi, GPUs other than virtio, media, sound, InfiniBand, ...);
#                      0 keeps all
#   COLLECTIVE_REPO_BIN  the collective-repo binary; default: PATH, then this
#                      workspace's target/release and target/debug
#   COLLECTIVE_KEY     publisher secret key for REPO_DIR; default REPO_DIR/../publisher.key
#                      when that exists, else a new key made next to the repository
#   MEMORY_MIB, VCPUS  the published VM shape; default 1024 and 2
set -euo pipefail

die() { echo "desktop-appliance: error: $*" >&2; exit 1; }
say() { echo "desktop-appliance: $*"; }

[ $# -ge 1 ] && [ $# -le 2 ] || die "usage: $0 OUT_DIR [REPO_DIR]"
[ "$(id -u)" -eq 0 ] || die "needs root (debootstrap, chroot, device nodes and file owners in the image)"

HERE=$(cd "$(dirname "$0")" && pwd)
WS=$(cd "$HERE/.." && pwd)
CONF=$HERE/desktop-appliance
mkdir -p "$1"
OUT=$(cd "$1" && pwd)
REPO=${2:-}
ROOT=$OUT/rootfs
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
PASSWORD=${DESKTOP_PASSWORD:-desktop}
PRUNE_MODULES=${PRUNE_MODULES:-1}
USER_DISK_SIZE=${USER_DISK_SIZE:-2G}
MEMORY_MIB=${MEMORY_MIB:-1024}
VCPUS=${VCPUS:-2}
# The same command line as the demo's appliances (tests/src/demo.rs APPLIANCE_CMDLINE):
# the VMM describes its virtio-mmio devices in ACPI, so no virtio_mmio.device= here.
CMDLINE="console=ttyS0 reboot=a panic=-1 i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd 8250.nr_uarts=1 cryptomgr.notests swiotlb=noforce tsc=reliable pci=off quiet"
# What the initramfs loads (tests/src/demo.rs display_modules, plus what a desktop wants
# early). crc32c_generic: ext4's checksums, a softdep that modules.dep does not list.
INITRD_MODULES="virtio_mmio virtio_blk virtio_net virtio_rng ext4 crc32c_generic virtio_gpu virtio_input evdev"

# ---- host tools -------------------------------------------------------------------
missing=()
for t in debootstrap:debootstrap chroot:coreutils mkfs.ext4:e2fsprogs debugfs:e2fsprogs \
         cpio:cpio gzip:gzip dpkg-deb:dpkg; do
    command -v "${t%%:*}" >/dev/null 2>&1 || missing+=("${t#*:}")
done
[ ${#missing[@]} -eq 0 ] || die "missing host tools; install them with: apt-get install -y ${missing[*]}"

# ---- mounts in the chroot, always undone --------------------------------------------
MOUNTED=()
cleanup() {
    local i
    for ((i = ${#MOUNTED[@]} - 1; i >= 0; i--)); do
        umount -l "${MOUNTED[$i]}" 2>/dev/null || true
    done
    MOUNTED=()
    rm -f "$ROOT/usr/sbin/policy-rc.d" 2>/dev/null || true
}
trap cleanup EXIT
mount_chroot() {
    local fs
    for fs in proc sys dev dev/pts; do
        mkdir -p "$ROOT/$fs"
        case $fs in
            proc) mount -t proc proc "$ROOT/proc" ;;
            sys) mount -t sysfs sys "$ROOT/sys" ;;
            dev) mount --bind /dev "$ROOT/dev" ;;
            dev/pts) mount -t devpts devpts "$ROOT/dev/pts" ;;
        esac
        MOUNTED+=("$ROOT/$fs")
    done
    # no service starts during the build
    printf '#!/bin/sh\nexit 101\n' >"$ROOT/usr/sbin/policy-rc.d"
    chmod +x "$ROOT/usr/sbin/policy-rc.d"
}
in_root() { LC_ALL=C.UTF-8 DEBIAN_FRONTEND=noninteractive chroot "$ROOT" "$@"; }

# ---- 1. root filesystem -----------------------------------------------------------
PACKAGES=$(grep -v '^\s*#' "$CONF/packages" | awk 'NF {print $1}' | sort -u | tr '\n' ' ')
STAMP=$(printf '%s %s %s\n' "$SUITE" "$MIRROR" "$PACKAGES" | sha256sum | cut -c1-16)
if [ "$(cat "$OUT/.rootfs-stamp" 2>/dev/null)" != "$STAMP" ]; then
    say "building the root filesystem in $ROOT (debootstrap $SUITE from $MIRROR)"
    rm -rf "$ROOT" "$OUT/.rootfs-stamp"
    debootstrap --variant=minbase "$SUITE" "$ROOT" "$MIRROR" >"$OUT/debootstrap.log" 2>&1 ||
        die "debootstrap failed (is $MIRROR reachable?); see $OUT/debootstrap.log"
    mount_chroot
    # The initramfs is ours (below): keep Debian's from being built at all.
    in_root dpkg-divert --local --rename --add /usr/sbin/update-initramfs >/dev/null
    ln -sf /bin/true "$ROOT/usr/sbin/update-initramfs"
    say "installing: $PACKAGES"
    in_root apt-get update -q >"$OUT/apt.log" 2>&1 || die "apt-get update failed; see $OUT/apt.log"
    # shellcheck disable=SC2086
    in_root apt-get install -y -q --no-install-recommends $PACKAGES >>"$OUT/apt.log" 2>&1 ||
        die "installing the packages failed; see $OUT/apt.log"
    in_root apt-get clean
    cleanup
    echo "$STAMP" >"$OUT/.rootfs-stamp"
else
    say "root filesystem up to date ($ROOT)"
fi

KVER=$(ls "$ROOT/lib/modules" | sort -V | tail -n1)
[ -n "$KVER" ] && [ -f "$ROOT/boot/vmlinuz-$KVER" ] || die "no kernel in $ROOT (linux-image-amd64 not installed?)"

# ---- 2. configuration (every run; each step idempotent) -----------------------------
say "configuring (kernel $KVER)"
mount_chroot
cp -a "$CONF/rootfs/." "$ROOT/"
# the desktop user (uid 1000) and its groups
if ! in_root getent passwd user >/dev/null; then
    in_root useradd -m -u 1000 -U -s /bin/bash -c "Desktop user" user
fi
in_root groupadd -f autologin
in_root usermod -a -G sudo,autologin,audio,video,plugdev,netdev user 2>/dev/null ||
    in_root usermod -a -G sudo,autologin,audio,video user
echo "user:$PASSWORD" | in_root chpasswd
# root has no password: log in as `user` and use sudo
in_root passwd -l root >/dev/null
# Xfce's panel: the default layout, without the first-start question
if [ -f "$ROOT/etc/xdg/xfce4/panel/default.xml" ]; then
    cp "$ROOT/etc/xdg/xfce4/panel/default.xml" \
        "$ROOT/etc/xdg/xfce4/xfconf/xfce-perchannel-xml/xfce4-panel.xml"
fi
# services: network, name resolution, the display manager, /home; nothing periodic
in_root systemctl enable systemd-networkd systemd-resolved collective-home.service lightdm >/dev/null 2>&1 ||
    die "systemctl enable failed in the chroot"
in_root systemctl set-default graphical.target >/dev/null
for u in systemd-networkd-wait-online.service apt-daily.timer apt-daily-upgrade.timer \
         man-db.timer e2scrub_all.timer e2scrub_reap.service fstrim.timer; do
    in_root systemctl mask "$u" >/dev/null 2>&1 || true
done
ln -sf ../run/systemd/resolve/stub-resolv.conf "$ROOT/etc/resolv.conf"
# a new machine id at each boot (the system disk is reset anyway)
: >"$ROOT/etc/machine-id"
rm -f "$ROOT/var/lib/dbus/machine-id"
cleanup

# kernel modules for hardware a VM never has
if [ "$PRUNE_MODULES" = 1 ]; then
    M=$ROOT/lib/modules/$KVER/kernel
    for d in drivers/net/wireless drivers/net/ethernet drivers/media drivers/infiniband \
             drivers/staging drivers/gpu/drm/amd drivers/gpu/drm/nouveau drivers/gpu/drm/i915 \
             drivers/gpu/drm/radeon drivers/bluetooth drivers/isdn drivers/iio drivers/mtd \
             drivers/scsi/lpfc drivers/scsi/qla2xxx drivers/scsi/mpt3sas drivers/scsi/bfa \
             drivers/scsi/be2iscsi drivers/scsi/qedi drivers/scsi/qedf drivers/target \
             drivers/net/can drivers/usb/gadget sound net/mac80211 net/wireless net/bluetooth; do
        rm -rf "${M:?}/$d"
    done
    rm -rf "$ROOT/lib/firmware"/* 2>/dev/null || true
fi
depmod -b "$ROOT" "$KVER"

# documentation and translations nobody reads on a terminal (copyright files stay);
# dpkg re-creates them if a package is reinstalled, which is harmless
find "$ROOT/usr/share/doc" -mindepth 1 ! -name copyright ! -type d -delete 2>/dev/null || true
rm -rf "$ROOT"/usr/share/man/* "$ROOT"/usr/share/info/* "$ROOT"/usr/share/help/*
find "$ROOT/usr/share/locale" -mindepth 1 -maxdepth 1 -type d ! -name 'en*' ! -name C \
    -exec rm -rf {} + 2>/dev/null || true

# leftovers of the build
rm -rf "$ROOT"/var/lib/apt/lists/* "$ROOT"/var/cache/apt/*.bin "$ROOT"/var/cache/apt/archives/*.deb \
       "$ROOT"/var/log/*.log "$ROOT"/var/log/apt/* "$ROOT"/tmp/* "$ROOT"/var/tmp/* \
       "$ROOT"/boot/initrd.img* "$ROOT"/initrd.img* "$ROOT"/root/.bash_history
mkdir -p "$ROOT/var/lib/apt/lists/partial"

# ---- 3. kernel and initramfs --------------------------------------------------------
cp "$ROOT/boot/vmlinuz-$KVER" "$OUT/vmlinuz"
say "initramfs: busybox + $INITRD_MODULES"
IR=$OUT/initrd-tree
rm -rf "$IR"
mkdir -p "$IR"/{bin,proc,sys,dev,newroot} "$IR/lib/modules/$KVER"
# busybox-static from the same archive, not installed in the appliance
BB=$OUT/busybox-static
if [ ! -x "$BB/bin/busybox" ]; then
    rm -rf "$BB" "$OUT"/busybox-static_*.deb
    mount_chroot
    # the appliance's resolv.conf points at systemd-resolved, which does not run here
    cp --remove-destination /etc/resolv.conf "$ROOT/etc/resolv.conf"
    in_root sh -c 'cd /tmp && apt-get update -q >/dev/null && apt-get download -q busybox-static >/dev/null' ||
        die "cannot download busybox-static from $MIRROR"
    ln -sf ../run/systemd/resolve/stub-resolv.conf "$ROOT/etc/resolv.conf"
    cleanup
    deb=$(ls "$ROOT"/tmp/busybox-static_*.deb | head -n1)
    dpkg-deb -x "$deb" "$BB"
    rm -f "$ROOT"/tmp/busybox-static_*.deb
    rm -rf "$ROOT"/var/lib/apt/lists/*
    mkdir -p "$ROOT/var/lib/apt/lists/partial"
fi
cp "$BB/bin/busybox" "$IR/bin/busybox"
# each module with its dependencies, as modprobe resolves them in the appliance's tree
for m in $INITRD_MODULES; do
    modprobe -d "$ROOT" -S "$KVER" --show-depends "$m" ||
        die "module $m is not in kernel $KVER"
done | awk '$1 == "insmod" {print $2}' | sort -u | while read -r ko; do
    rel=${ko#"$ROOT"}              # modprobe -d prints paths under the tree
    rel=${rel#/lib/modules/$KVER/}
    mkdir -p "$IR/lib/modules/$KVER/$(dirname "$rel")"
    cp "$ROOT/lib/modules/$KVER/$rel" "$IR/lib/modules/$KVER/$rel"
done
cp "$ROOT/lib/modules/$KVER"/modules.{order,builtin,builtin.modinfo} "$IR/lib/modules/$KVER/" 2>/dev/null || true
depmod -b "$IR" "$KVER"
sed "s/@MODULES@/$INITRD_MODULES/" "$CONF/init" >"$IR/init"
chmod 755 "$IR/init"
(cd "$IR" && mknod -m 600 dev/console c 5 1 2>/dev/null || true
 find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --reproducible -R 0:0 2>/dev/null) |
    gzip -9n >"$OUT/initrd.img"
echo "$CMDLINE" >"$OUT/cmdline"

# ---- 4. the system disk -------------------------------------------------------------
REPO_BIN=${COLLECTIVE_REPO_BIN:-}
if [ -z "$REPO_BIN" ]; then
    for c in "$(command -v collective-repo || true)" "$WS/target/release/collective-repo" \
             "$WS/target/debug/collective-repo" "$WS/../main/target/release/collective-repo" \
             "$WS/../main/target/debug/collective-repo"; do
        if [ -n "$c" ] && [ -x "$c" ]; then REPO_BIN=$c; break; fi
    done
fi
used_k=$(du -sk --apparent-size "$ROOT" | cut -f1)
if [ -n "${SYSTEM_SIZE:-}" ]; then
    size_arg=$SYSTEM_SIZE
else
    # used + 50 % (inodes, journal, room for `image update`), at least + 768 MiB,
    # rounded up to 256 MiB; free space is zeros, which chunks store as nothing
    extra=$((used_k / 2)); [ $extra -ge $((768 * 1024)) ] || extra=$((768 * 1024))
    size_m=$(( ((used_k + extra) / 1024 + 255) / 256 * 256 ))
    size_arg=${size_m}M
fi
rm -f "$OUT/system.img"
if [ -n "$REPO_BIN" ]; then
    say "system disk: $REPO_BIN image create (size $size_arg)"
    "$REPO_BIN" image create "$ROOT" --out "$OUT/system.img" --size "$size_arg" --label desktop ||
        die "collective-repo image create failed"
else
    say "system disk: mkfs.ext4 -d (no collective-repo found: build it with 'cargo build --release -p repository', or set COLLECTIVE_REPO_BIN, for a reproducible image)"
    mkfs.ext4 -q -F -b 4096 -I 256 -L desktop -E root_owner=0:0 -d "$ROOT" "$OUT/system.img" "$size_arg" ||
        die "mkfs.ext4 -d failed"
fi

human() { numfmt --to=iec-i --suffix=B "$1"; }
say "built (kernel $KVER):"
for f in vmlinuz initrd.img system.img; do
    printf '  %-11s %10s' "$f" "$(human "$(stat -c %s "$OUT/$f")")"
    [ "$f" = system.img ] && printf '  (%s allocated, root filesystem %s)' \
        "$(human $(($(stat -c %b "$OUT/$f") * 512)))" "$(human $((used_k * 1024)))"
    echo
done
echo "  cmdline     $CMDLINE"

# ---- 5. publish -----------------------------------------------------------------------
[ -n "$REPO" ] || exit 0
[ -n "$REPO_BIN" ] || die "publishing needs collective-repo: cargo build --release -p repository (or set COLLECTIVE_REPO_BIN)"
mkdir -p "$REPO"
REPO=$(cd "$REPO" && pwd)
if [ ! -f "$REPO/repository.json" ]; then
    say "creating the repository $REPO"
    "$REPO_BIN" init "$REPO" || die "collective-repo init $REPO failed"
fi
KEY=${COLLECTIVE_KEY:-}
if [ -z "$KEY" ]; then
    KEY=$(dirname "$REPO")/publisher.key
    if [ ! -f "$KEY" ]; then
        say "no publisher key: making $KEY (and publisher.pub: build it into the terminal image)"
        "$REPO_BIN" keygen --out "${KEY%.key}" || die "collective-repo keygen failed"
    fi
fi
[ -f "$KEY" ] || die "publisher key $KEY does not exist (set COLLECTIVE_KEY)"
say "publishing to $REPO as 'desktop'"
"$REPO_BIN" publish "$REPO" --name desktop \
    --kernel "$OUT/vmlinuz" --initrd "$OUT/initrd.img" --cmdline "$CMDLINE" \
    --disk "system=$OUT/system.img" --disk "user=$USER_DISK_SIZE" \
    --memory "$MEMORY_MIB" --vcpus "$VCPUS" --display --network uplink --key "$KEY" ||
    die "collective-repo publish failed"
say "assign it to a user with: collective-repo -r $REPO set assign USER desktop [OTHER...]"
