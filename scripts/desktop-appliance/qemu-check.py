#!/usr/bin/env python3
"""Boots the desktop appliance in QEMU without the terminal and checks it reaches its desktop.

QEMU's microvm machine with ACPI stands in for our VMM: modern virtio-mmio devices
described in ACPI (LNRO0005), virtio-blk system and user disks, virtio-net (user-mode
network, DHCP from QEMU), virtio-gpu, a virtio keyboard and tablet, virtio-rng.

    scripts/desktop-appliance/qemu-check.py OUT_DIR [--png FILE] [--timeout SECS] [--kvm]

It polls QMP screendumps every few seconds, writes them to OUT_DIR/qemu-check/, and
reports the time from QEMU's start to the desktop: the first screen showing Xfce's panel
(a near-uniform strip across the top rows that the login-less boot never shows) that
then stays unchanged for two polls. Afterwards it moves the tablet, opens a terminal with
Ctrl+Alt+T and types checks into it through QMP (network address, route, name
resolution, /home's device, the X output, the virtio input devices), and saves that
screen as PNG (--png). Needs python3 with Pillow. Exit status 0 only when the
desktop came up.
"""
import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time

from PIL import Image


class Qmp:
    def __init__(self, path):
        self.s = socket.socket(socket.AF_UNIX)
        self.s.connect(path)
        self.f = self.s.makefile("rwb")
        self._read()  # greeting
        self.cmd("qmp_capabilities")

    def _read(self):
        while True:
            line = self.f.readline()
            if not line:
                raise RuntimeError("QMP closed")
            msg = json.loads(line)
            if "event" not in msg:
                return msg

    def cmd(self, name, **args):
        self.f.write(json.dumps({"execute": name, "arguments": args}).encode() + b"\n")
        self.f.flush()
        r = self._read()
        if "error" in r:
            raise RuntimeError(f"QMP {name}: {r['error']}")
        return r.get("return")


def looks_like_desktop(img):
    """Xfce's default panel: the top 20 rows nearly one colour over the full width,
    and below it something that is not a plain console (more than a few colours)."""
    w, h = img.size
    if w < 200 or h < 200:
        return False
    top = img.crop((0, 2, w, 20)).convert("RGB").getcolors(maxcolors=1 << 16) or []
    top.sort(reverse=True)
    total = w * 18
    dominant = top[0][0] / total if top else 0
    top_color = top[0][1] if top else (0, 0, 0)
    body = img.crop((0, h // 4, w, h)).convert("RGB").resize((128, 96))
    body_colors = len(body.getcolors(maxcolors=1 << 16) or [])
    return dominant > 0.6 and top_color != (0, 0, 0) and body_colors > 16


# typed into the terminal: the network (DHCP address, route, DNS), /home on the user
# disk, the X driver and the input devices, in view for the screenshot
CHECKS = ("clear; ip -4 -br addr; ip route | head -n1; getent hosts deb.debian.org; "
          "findmnt -n /home; grep -h -o -e 'modeset(0): Output Virtual-1 connected' "
          "-e 'Adding input device QEMU Virtio [A-Za-z]*' /var/log/Xorg.0.log | sort -u; uptime\n")

QCODES = {" ": "spc", "\n": "ret", "-": "minus", ";": "semicolon", ".": "dot", "/": "slash",
          "'": "apostrophe", "[": "bracket_left", "]": "bracket_right", "~": "grave_accent", ",": "comma", "=": "equal"}
SHIFTED = {"|": "backslash", "(": "9", ")": "0", "*": "8", ":": "semicolon", "~": "grave_accent",
           "_": "minus", "<": "comma", ">": "dot"}


def type_text(qmp, text):
    for ch in text:
        if ch in SHIFTED:
            keys = ["shift", SHIFTED[ch]]
        elif ch.isupper():
            keys = ["shift", ch.lower()]
        else:
            keys = [QCODES.get(ch, ch)]
        if ch == "~":
            keys = ["shift", "grave_accent"]
        qmp.cmd("send-key", keys=[{"type": "qcode", "data": k} for k in keys])
        time.sleep(0.05)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--png", help="save the desktop screenshot here")
    ap.add_argument("--timeout", type=float, default=1200)
    ap.add_argument("--interval", type=float, default=3)
    ap.add_argument("--kvm", action="store_true", help="-accel kvm instead of tcg")
    ap.add_argument("--terminal-wait", type=float, default=30, help="seconds for the terminal to open and answer")
    a = ap.parse_args()

    out = os.path.abspath(a.out)
    work = os.path.join(out, "qemu-check")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    for f in ["vmlinuz", "initrd.img", "system.img", "cmdline"]:
        if not os.path.exists(os.path.join(out, f)):
            sys.exit(f"qemu-check: {out}/{f} is missing: run scripts/desktop-appliance.sh {out} first")
    user_img = os.path.join(work, "user.img")
    with open(user_img, "wb") as f:
        f.truncate(2 << 30)  # an empty user disk, as a first login gets
    cmdline = open(os.path.join(out, "cmdline")).read().strip()
    qmp_path = os.path.join(work, "qmp.sock")
    serial_log = os.path.join(work, "serial.log")
    qemu = [
        "qemu-system-x86_64", "-accel", "kvm" if a.kvm else "tcg", "-cpu", "max",
        "-M", "microvm,acpi=on", "-smp", "2", "-m", "1024",
        "-nodefaults", "-no-user-config", "-display", "none",
        "-global", "virtio-mmio.force-legacy=false",
        "-kernel", os.path.join(out, "vmlinuz"),
        "-initrd", os.path.join(out, "initrd.img"), "-append", cmdline,
        "-drive", f"id=sys,file={out}/system.img,format=raw,if=none,snapshot=on",
        "-device", "virtio-blk-device,drive=sys",
        "-drive", f"id=home,file={user_img},format=raw,if=none",
        "-device", "virtio-blk-device,drive=home",
        "-netdev", "user,id=n0", "-device", "virtio-net-device,netdev=n0",
        "-device", "virtio-gpu-device", "-device", "virtio-keyboard-device",
        "-device", "virtio-tablet-device", "-device", "virtio-rng-device",
        "-serial", f"file:{serial_log}",
        "-qmp", f"unix:{qmp_path},server=on,wait=off",
    ]
    t0 = time.time()
    proc = subprocess.Popen(qemu, stdout=open(os.path.join(work, "qemu.log"), "w"), stderr=subprocess.STDOUT)
    for _ in range(100):
        if os.path.exists(qmp_path):
            break
        time.sleep(0.1)
    qmp = Qmp(qmp_path)
    print(f"qemu-check: QEMU started (pid {proc.pid}); screendumps in {work}")
    ppm = os.path.join(work, "screen.ppm")
    first_desktop = None
    last_change = 0.0
    last_sig = None
    stable = 0
    up = None
    timeline = []
    shot = None
    try:
        while time.time() - t0 < a.timeout:
            if proc.poll() is not None:
                raise RuntimeError(f"QEMU exited with {proc.returncode}; see {work}/qemu.log")
            time.sleep(a.interval)
            try:
                qmp.cmd("screendump", filename=ppm)
                img = Image.open(ppm)
                img.load()
            except Exception as e:  # no scanout yet
                continue
            t = time.time() - t0
            sig = img.convert("L").resize((64, 48)).tobytes()
            if sig != last_sig:
                last_change = t
                name = os.path.join(work, f"t{int(t):04d}.png")
                img.convert("RGB").save(name)
                timeline.append((t, os.path.basename(name), img.size))
                print(f"qemu-check: {t:6.1f} s screen changed {img.size} -> {os.path.basename(name)}", flush=True)
            desktop = looks_like_desktop(img)
            if desktop and first_desktop is None:
                first_desktop = t
            if desktop and sig == last_sig:
                stable += 1
            elif desktop:
                stable = 0
            last_sig = sig
            if desktop and stable >= 2:
                up = last_change  # when the final, complete desktop appeared
                shot = img.convert("RGB")
                break
        if up is None:
            print("qemu-check: FAIL: no desktop within the timeout", flush=True)
            return 1
        print(f"qemu-check: desktop first drawn {first_desktop:.1f} s, complete {up:.1f} s after QEMU "
              f"started (polled every {a.interval:g} s; unchanged until {time.time() - t0:.1f} s)", flush=True)
        shot.save(os.path.join(work, "desktop.png"))

        # the tablet and the keyboard through QMP: pointer to the screen centre, then
        # Ctrl+Alt+T (Xfce's shortcut for a terminal), type into it
        qmp.cmd("input-send-event", events=[
            {"type": "abs", "data": {"axis": "x", "value": 16384}},
            {"type": "abs", "data": {"axis": "y", "value": 16384}}])
        qmp.cmd("send-key", keys=[{"type": "qcode", "data": k} for k in ["ctrl", "alt", "t"]])
        time.sleep(a.terminal_wait)
        type_text(qmp, CHECKS)
        time.sleep(a.terminal_wait)
        qmp.cmd("screendump", filename=ppm)
        final = Image.open(ppm).convert("RGB")
        final.save(os.path.join(work, "desktop-terminal.png"))
        if a.png:
            # 64 colours, no dithering: the desktop's flat colours and text stay exact
            # enough, and the file stays small enough for the repository (~90 KB)
            final.quantize(colors=64, method=Image.Quantize.MEDIANCUT,
                           dither=Image.Dither.NONE).save(a.png, optimize=True)
            print(f"qemu-check: screenshot {a.png} ({os.path.getsize(a.png)} bytes)")
        return 0
    finally:
        print(f"qemu-check: serial log {serial_log}")
        try:
            qmp.cmd("quit")
        except Exception:
            pass
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


if __name__ == "__main__":
    sys.exit(main())
