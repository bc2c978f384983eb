#!/bin/sh
# Nested smoke test of the vmm binary, by hand (not part of `cargo test`):
# boots KERNEL under qemu TCG (-cpu max: SVM), loads kvm-amd there, and runs the static
# vmm binary on the same KERNEL as the guest with two disks (one read-only) and 2 vCPUs.
# The guest /init (init.c) loads the virtio modules, checks the disks, writes to vdb and
# powers off; the outer init prints the vmm's exit status (0 = guest powered off).
#
# usage: [GUEST_KERNEL=.. GUEST_MODS=..] vmm/smoke/nested-smoke.sh KERNEL MODULES_DIR [reboot]
#   (a Debian linux-image-*-amd64 unpacked; "reboot" makes the guest reboot: expect exit 2;
#    "debug" runs the vmm with RUST_LOG=debug: exit counts per port/address at the end)
set -eu
KERNEL=$1; MODS=$2; EXTRA=${3:+smoke=$3}
# The appliance kernel may differ from the outer one, e.g. Debian's cloud flavour:
GUEST_KERNEL=${GUEST_KERNEL:-$KERNEL}; GUEST_MODS=${GUEST_MODS:-$MODS}
HERE=$(cd "$(dirname "$0")" && pwd); ROOT=$HERE/../..
W=$(mktemp -d); trap 'rm -rf "$W"' EXIT
RUSTFLAGS="-C target-feature=+crt-static" cargo build --release -p launcher --bin vmm --target x86_64-unknown-linux-gnu \
    --manifest-path "$ROOT/Cargo.toml"
gcc -static -O2 -o "$W/init" "$HERE/init.c"
mkdir -p "$W/g/proc" "$W/g/sys" "$W/g/dev" "$W/g/modules" "$W/o/proc" "$W/o/sys" "$W/o/dev" "$W/o/modules" "$W/o/guest"
cp "$W/init" "$W/g/init"; cp "$W/init" "$W/o/init"
for m in virtio virtio_ring virtio_mmio virtio_blk virtio-rng failover net_failover virtio_net; do cp "$(find "$GUEST_MODS" -name "$m.ko")" "$W/g/modules/"; done
for m in irqbypass ccp kvm kvm-amd tun llc stp bridge; do cp "$(find "$MODS" -name "$m.ko")" "$W/o/modules/"; done
(cd "$W/g" && find . | cpio -o -H newc 2>/dev/null) > "$W/o/guest/initrd"
cp "$GUEST_KERNEL" "$W/o/guest/vmlinuz"
cp "$ROOT/target/x86_64-unknown-linux-gnu/release/vmm" "$W/o/vmm"
printf 'root-disk-contents-here' > "$W/o/guest/disk.img"; truncate -s 1M "$W/o/guest/disk.img"
truncate -s 1M "$W/o/guest/disk2.img"
(cd "$W/o" && find . | cpio -o -H newc 2>/dev/null) > "$W/outer.cpio"
timeout 600 qemu-system-x86_64 -accel tcg -cpu max -smp 2 -m 2048 -kernel "$KERNEL" -initrd "$W/outer.cpio" \
    -append "console=ttyS0 panic=-1 quiet $EXTRA" -nographic -no-reboot | tee "$W/log"
want=0; [ "$EXTRA" = smoke=reboot ] && want=2
grep -q "GUEST MARKER" "$W/log" && grep -q "SMOKE: vmm exited status $want " "$W/log" && echo "NESTED SMOKE: PASS"
