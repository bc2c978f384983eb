# The Collective terminal. `make demo` boots the firmware in QEMU; `make test` runs
# every test. Both install what they need first (Debian packages, cargo tools).

FIRMWARE_DIR ?= out/firmware
CARGO ?= cargo

.PHONY: all deps build firmware demo desktop-appliance desktop-boot-trace test test-unit test-system bench bench-boot clean

all: build

deps:
	./scripts/deps.sh

build:
	$(CARGO) build --workspace --locked

# The firmware: vmlinuz, initrd.img, boot.ipxe and disk.img in $(FIRMWARE_DIR).
firmware: deps
	$(CARGO) run --release --locked -p image-builder -- build --out $(FIRMWARE_DIR)

# The whole terminal on loopback: builds the firmware, a demo repository (appliances
# desk and web, user alice), serves it, and PXE-boots the firmware in QEMU on this
# terminal (serial console; Ctrl-] x quits QEMU). DEMO_SCRIPT=1 drives it without a
# person: logs in, works in the desk appliance, logs out, powers off, and exits 0 only
# if all of that happened. DEMO_DISPLAY=1 gives the terminal a screen (a QEMU window, or
# VNC on 127.0.0.1:5900) and alice a graphical appliance shown on it;
# DEMO_DESKTOP=out/desktop also gives her the Debian desktop (`make desktop-appliance`).
demo: deps
	$(CARGO) run --release --locked -p system-tests --bin collective-demo -- --dir out/demo $(if $(DEMO_SCRIPT),--script) $(if $(DEMO_DISPLAY)$(DEMO_DESKTOP),--display) $(if $(DEMO_DESKTOP),--desktop $(DEMO_DESKTOP))

# The Debian 12 Xfce desktop appliance (debootstrap; about 5 minutes and 1 GiB the
# first time) in out/desktop, and its boot trace: docs/desktop-appliance.md.
desktop-appliance: deps
	command -v debootstrap >/dev/null || apt-get install -y debootstrap
	$(CARGO) build --release --locked -p repository
	./scripts/desktop-appliance.sh out/desktop
	$(MAKE) desktop-boot-trace

# Boots out/desktop under the firmware's VMM (in QEMU, nested) until its desktop has
# settled and writes the order of its first reads to out/desktop/boot.trace, which
# publishing it (make demo DEMO_DESKTOP=out/desktop) turns into its boot profile.
desktop-boot-trace: deps
	$(CARGO) run --release --locked -p system-tests --bin collective-boot-trace -- out/desktop

# Every test: unit tests of each crate and the system tests that boot the firmware.
test: deps
	$(CARGO) build --workspace --locked --all-targets
	$(CARGO) nextest run --workspace --locked --no-fail-fast

test-unit: deps
	$(CARGO) nextest run --workspace --locked --exclude system-tests

test-system: deps
	$(CARGO) nextest run --locked -p system-tests

bench-boot: deps
	$(CARGO) bench --locked -p system-tests --bench boot

bench: deps
	$(CARGO) bench --locked --workspace

clean:
	$(CARGO) clean
	rm -rf out
