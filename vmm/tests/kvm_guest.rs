//! Tiny guests on this machine's /dev/kvm (a software KVM here: ~1 µs per guest
//! instruction, so each guest runs a few dozen to a few hundred instructions).

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vmm::arch::regs::EntryMode;
use vmm::{ConsoleConfig, ExitReason, Machine, MachineConfig};

/// A console sink the test can read back.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn kvm_available() -> bool {
    if std::fs::metadata("/dev/kvm").is_err() {
        eprintln!("SKIPPED: /dev/kvm is absent on this machine");
        return false;
    }
    true
}

fn machine(out: &Capture, vcpus: u8) -> Machine {
    Machine::new(MachineConfig {
        memory_mib: 32,
        vcpus,
        disks: vec![],
        nets: vec![],
        rng: true,
        console: ConsoleConfig::Writer(Box::new(out.clone())),
        ..Default::default()
    })
    .expect("build VM")
}

/// Real-mode guest: prints a string with a lodsb/out loop, then writes SLP_TYP=5|SLP_EN to
/// the ACPI sleep control register.
fn hello_then_poweroff(msg: &[u8]) -> Vec<u8> {
    let msg_addr: u16 = 0x1000 + 21;
    let mut code = vec![
        0xbe,
        msg_addr as u8,
        (msg_addr >> 8) as u8, // mov si, msg
        0xba,
        0xf8,
        0x03, // mov dx, 0x3f8
        0xac, // l: lodsb
        0x84,
        0xc0, // test al, al
        0x74,
        0x03, // jz done
        0xee, // out dx, al
        0xeb,
        0xf8, // jmp l
        0xba,
        0x00,
        0x06, // done: mov dx, 0x600
        0xb0,
        0x34, // mov al, (5 << 2) | (1 << 5)
        0xee, // out dx, al
        0xf4, // hlt (never reached)
    ];
    assert_eq!(code.len(), 21);
    code.extend_from_slice(msg);
    code.push(0);
    code
}

#[test]
fn real_mode_guest_prints_and_powers_off() {
    if !kvm_available() {
        return;
    }
    let out = Capture::default();
    let mut m = machine(&out, 1);
    m.load_raw(
        &hello_then_poweroff(b"Hello from the guest\n"),
        0x1000,
        None,
    )
    .unwrap();
    let t = Instant::now();
    let reason = m.run().unwrap();
    assert_eq!(reason, ExitReason::PowerOff);
    assert_eq!(
        String::from_utf8_lossy(&out.0.lock().unwrap()),
        "Hello from the guest\n"
    );
    assert!(t.elapsed() < Duration::from_secs(30));
}

#[test]
fn i8042_reset_is_reported_as_reset() {
    if !kvm_available() {
        return;
    }
    let out = Capture::default();
    let mut m = machine(&out, 2);
    // mov dx, 0x3f8; mov al, 'R'; out dx, al; mov al, 0xfe; out 0x64, al; hlt
    let code = [
        0xba, 0xf8, 0x03, 0xb0, b'R', 0xee, 0xb0, 0xfe, 0xe6, 0x64, 0xf4,
    ];
    m.load_raw(&code, 0x1000, None).unwrap();
    assert_eq!(m.run().unwrap(), ExitReason::Reset);
    assert_eq!(&out.0.lock().unwrap()[..], b"R");
}

#[test]
fn long_mode_entry_with_our_page_tables() {
    if !kvm_available() {
        return;
    }
    let out = Capture::default();
    let mut m = machine(&out, 1);
    // The Linux 64-bit boot state (long mode, paging on, flat segments), then:
    // mov dx, 0x3f8; mov al, '6'; out dx, al; mov al, '4'; out dx, al;
    // mov dx, 0x602; mov al, 1; out dx, al  (ACPI reset register)
    let code = [
        0x66, 0xba, 0xf8, 0x03, 0xb0, b'6', 0xee, 0xb0, b'4', 0xee, 0x66, 0xba, 0x02, 0x06, 0xb0,
        0x01, 0xee, 0xf4,
    ];
    // Above 1 MiB, as a kernel would be.
    m.load_raw(&code, 0x20_0000, Some(EntryMode::Linux64))
        .unwrap();
    assert_eq!(m.run().unwrap(), ExitReason::Reset);
    assert_eq!(&out.0.lock().unwrap()[..], b"64");
}

#[test]
fn bad_guest_reports_crash_or_reset_not_hang() {
    if !kvm_available() {
        return;
    }
    let out = Capture::default();
    let mut m = machine(&out, 1);
    // Long mode with an empty IDT: ud2 raises #UD, which cannot be delivered -> triple fault.
    m.load_raw(&[0x0f, 0x0b], 0x20_0000, Some(EntryMode::Linux64))
        .unwrap();
    let r = m.run().unwrap();
    assert!(
        matches!(r, ExitReason::Reset | ExitReason::Crash(_)),
        "{r:?}"
    );
}

fn temp_file(name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("vmm-test-{}-{name}", std::process::id()));
    std::fs::write(&p, bytes).unwrap();
    p
}

/// A minimal bzImage: a 1-sector setup with a boot-protocol-2.15 header declaring the
/// 64-bit entry, then the "protected-mode kernel": 0x200 bytes of int3, then our code.
fn synthetic_bzimage(code64: &[u8]) -> Vec<u8> {
    let mut img = vec![0u8; 1024];
    img[0x1f1] = 1; // setup_sects
    img[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
    img[0x202..0x206].copy_from_slice(b"HdrS");
    img[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    img[0x211] = 1; // loadflags: LOADED_HIGH
    img[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes()); // code32_start
    img[0x22c..0x230].copy_from_slice(&0x7fff_ffffu32.to_le_bytes()); // initrd_addr_max
    img[0x236..0x238].copy_from_slice(&1u16.to_le_bytes()); // xloadflags: XLF_KERNEL_64
    img.extend_from_slice(&[0xcc; 0x200]);
    img.extend_from_slice(code64);
    img
}

#[test]
fn bzimage_64bit_entry_gets_the_zero_page() {
    if !kvm_available() {
        return;
    }
    // At load + 0x200 in long mode, RSI = zero page:
    //   cmp dword [rsi+0x202], "HdrS"; jne bad
    //   mov eax, [rsi+0x228] (cmd_line_ptr); mov al, [rax]; mov dx, 0x3f8; out dx, al
    //   mov al, 'K'; out dx, al
    //   mov al, [rsi+0x1e8] (e820_entries); add al, '0'; out dx, al
    //   mov dx, 0x600; mov al, 0x34; out dx, al; hlt
    //   bad: ud2
    let code = [
        0x81, 0xbe, 0x02, 0x02, 0x00, 0x00, 0x48, 0x64, 0x72, 0x53, 0x75, 0x21, 0x8b, 0x86, 0x28,
        0x02, 0x00, 0x00, 0x8a, 0x00, 0x66, 0xba, 0xf8, 0x03, 0xee, 0xb0, b'K', 0xee, 0x8a, 0x86,
        0xe8, 0x01, 0x00, 0x00, 0x04, 0x30, 0xee, 0x66, 0xba, 0x00, 0x06, 0xb0, 0x34, 0xee, 0xf4,
        0x0f, 0x0b,
    ];
    let kernel = temp_file("bzimage", &synthetic_bzimage(&code));
    let initrd = temp_file("bz-initrd", &[0x5a; 5000]);
    let out = Capture::default();
    let mut m = machine(&out, 1);
    m.load_kernel(&vmm::KernelConfig {
        kernel: kernel.clone(),
        initrd: Some(initrd.clone()),
        cmdline: "Xtest console=ttyS0".into(),
        cmdline_mmio_devices: true,
    })
    .unwrap();
    // The zero page as the kernel will see it.
    use vm_memory::{Bytes, GuestAddress};
    let zp = |off: u64| -> u32 { m.memory().read_obj(GuestAddress(0x7000 + off)).unwrap() };
    assert_eq!(zp(0x210) & 0xff, 0xff, "type_of_loader");
    assert_eq!(zp(0x228), 0x20000, "cmd_line_ptr");
    let (ramdisk, ramdisk_size) = (u64::from(zp(0x218)), zp(0x21c));
    assert_eq!(ramdisk_size, 5000);
    assert_eq!(ramdisk % 4096, 0);
    assert!(ramdisk + 5000 <= 32 << 20 && ramdisk >= 0x10_0000);
    let b: u8 = m.memory().read_obj(GuestAddress(ramdisk + 4999)).unwrap();
    assert_eq!(b, 0x5a);
    assert_eq!(zp(0x70), 0xe0000, "acpi_rsdp_addr");
    let mut cmdline = vec![0u8; 80];
    m.memory()
        .read_slice(&mut cmdline, GuestAddress(0x20000))
        .unwrap();
    let cmdline = String::from_utf8_lossy(&cmdline);
    assert!(
        cmdline.starts_with("Xtest console=ttyS0 virtio_mmio.device=4K@0xd0000000:5"),
        "{cmdline}"
    );
    let reason = m.run().unwrap();
    std::fs::remove_file(kernel).ok();
    std::fs::remove_file(initrd).ok();
    assert_eq!(String::from_utf8_lossy(&out.0.lock().unwrap()), "XK3");
    assert_eq!(reason, ExitReason::PowerOff);
}

/// A minimal ELF with a PT_LOAD at 1 MiB and a PT_NOTE holding the Xen PVH entry note.
fn synthetic_pvh_elf(code32: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; 0x1000];
    f[..4].copy_from_slice(b"\x7fELF");
    f[4] = 2; // 64-bit
    f[5] = 1; // little endian
    f[6] = 1;
    f[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    f[18..20].copy_from_slice(&0x3eu16.to_le_bytes()); // x86-64
    f[20..24].copy_from_slice(&1u32.to_le_bytes());
    f[24..32].copy_from_slice(&0x100_0000u64.to_le_bytes()); // e_entry (64-bit entry, unused)
    f[32..40].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
    f[52..54].copy_from_slice(&64u16.to_le_bytes());
    f[54..56].copy_from_slice(&56u16.to_le_bytes());
    f[56..58].copy_from_slice(&2u16.to_le_bytes());
    let ph = |f: &mut Vec<u8>, at: usize, ty: u32, off: u64, paddr: u64, size: u64| {
        f[at..at + 4].copy_from_slice(&ty.to_le_bytes());
        f[at + 8..at + 16].copy_from_slice(&off.to_le_bytes());
        f[at + 16..at + 24].copy_from_slice(&paddr.to_le_bytes());
        f[at + 24..at + 32].copy_from_slice(&paddr.to_le_bytes());
        f[at + 32..at + 40].copy_from_slice(&size.to_le_bytes());
        f[at + 40..at + 48].copy_from_slice(&size.to_le_bytes());
    };
    ph(&mut f, 64, 1, 0x1000, 0x10_0000, code32.len() as u64);
    ph(&mut f, 120, 4, 0x200, 0, 20);
    // Note: namesz 4, descsz 4, type 18 (XEN_ELFNOTE_PHYS32_ENTRY), "Xen\0", entry.
    f[0x200..0x204].copy_from_slice(&4u32.to_le_bytes());
    f[0x204..0x208].copy_from_slice(&4u32.to_le_bytes());
    f[0x208..0x20c].copy_from_slice(&18u32.to_le_bytes());
    f[0x20c..0x210].copy_from_slice(b"Xen\0");
    f[0x210..0x214].copy_from_slice(&0x10_0000u32.to_le_bytes());
    f.extend_from_slice(code32);
    f
}

#[test]
fn elf_pvh_entry_gets_the_start_info() {
    if !kvm_available() {
        return;
    }
    // 32-bit protected mode, EBX = hvm_start_info:
    //   cmp dword [ebx], XEN_HVM_START_MAGIC; jne bad
    //   mov eax, [ebx+0x18] (cmdline_paddr); mov al, [eax]; mov dx, 0x3f8; out dx, al
    //   mov al, [ebx+0x0c] (nr_modules); add al, '0'; out dx, al
    //   mov al, 'P'; out dx, al; mov dx, 0x600; mov al, 0x34; out dx, al; hlt
    //   bad: ud2
    let code = [
        0x81, 0x3b, 0x78, 0xc5, 0x6e, 0x33, 0x75, 0x1b, 0x8b, 0x43, 0x18, 0x8a, 0x00, 0x66, 0xba,
        0xf8, 0x03, 0xee, 0x8a, 0x43, 0x0c, 0x04, 0x30, 0xee, 0xb0, b'P', 0xee, 0x66, 0xba, 0x00,
        0x06, 0xb0, 0x34, 0xee, 0xf4, 0x0f, 0x0b,
    ];
    let kernel = temp_file("pvh-elf", &synthetic_pvh_elf(&code));
    let initrd = temp_file("pvh-initrd", &[1; 100]);
    let out = Capture::default();
    let mut m = machine(&out, 1);
    m.load_kernel(&vmm::KernelConfig {
        kernel: kernel.clone(),
        initrd: Some(initrd.clone()),
        cmdline: "Ytest".into(),
        cmdline_mmio_devices: false,
    })
    .unwrap();
    let reason = m.run().unwrap();
    std::fs::remove_file(kernel).ok();
    std::fs::remove_file(initrd).ok();
    assert_eq!(String::from_utf8_lossy(&out.0.lock().unwrap()), "Y1P");
    assert_eq!(reason, ExitReason::PowerOff);
}

/// A guest spinning in `jmp $` never exits to the VMM on its own, so only the kick can stop
/// it. Stops are requested at different moments, including before the vCPU threads reach
/// `KVM_RUN` (the window a lone signal without `immediate_exit` could miss).
#[test]
fn spinning_guest_stops_promptly_on_one_kick() {
    if !kvm_available() {
        return;
    }
    for delay_ms in [0u64, 1, 50] {
        let out = Capture::default();
        let mut m = machine(&out, 2);
        m.load_raw(&[0xeb, 0xfe], 0x1000, None).unwrap();
        let exit = m.exit_signal();
        let stopper = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(delay_ms));
            exit.request(ExitReason::Stopped);
            Instant::now()
        });
        let reason = m.run().unwrap();
        let requested = stopper.join().unwrap();
        assert_eq!(reason, ExitReason::Stopped, "stop after {delay_ms} ms");
        assert!(
            requested.elapsed() < Duration::from_secs(2),
            "stop after {delay_ms} ms took {:?}",
            requested.elapsed()
        );
    }
}

/// A display sink that records nothing (the guest here never drives the GPU).
struct NoDisplay;

impl vmm::DisplaySink for NoDisplay {
    fn set_scanout(&self, _: Option<Arc<vmm::Framebuffer>>) {}
    fn flush(&self, _: vmm::Rect) {}
    fn cursor(&self, _: Option<Arc<vmm::CursorImage>>, _: u32, _: u32) {}
    fn move_cursor(&self, _: u32, _: u32) {}
}

#[test]
fn display_and_inputs_come_after_the_other_devices() {
    if !kvm_available() {
        return;
    }
    let plain = machine(&Capture::default(), 1);
    let before = plain.mmio_devices().to_vec();
    assert!(plain.display_control().is_none());
    drop(plain);

    let inputs = [vmm::InputKind::Keyboard, vmm::InputKind::Tablet]
        .into_iter()
        .map(|kind| vmm::InputConfig {
            kind,
            name: String::new(),
            queue: vmm::InputQueue::new(),
        })
        .collect();
    let m = Machine::new(MachineConfig {
        memory_mib: 32,
        display: Some(vmm::DisplayConfig {
            width: 1024,
            height: 768,
            edid: None,
            sink: Arc::new(NoDisplay),
        }),
        inputs,
        ..Default::default()
    })
    .expect("build VM");
    let devices = m.mmio_devices();
    assert_eq!(devices.len(), before.len() + 3);
    assert_eq!(
        &devices[..before.len()],
        &before[..],
        "existing devices do not move"
    );
    let control = m.display_control().expect("a display");
    control.resize(800, 600, None);
    assert_eq!(control.mode().width, 800);

    // Bad display sizes are configuration errors.
    let err = Machine::new(MachineConfig {
        memory_mib: 32,
        display: Some(vmm::DisplayConfig {
            width: 0,
            height: 768,
            edid: None,
            sink: Arc::new(NoDisplay),
        }),
        ..Default::default()
    });
    assert!(matches!(err, Err(vmm::Error::Config(_))));
}
