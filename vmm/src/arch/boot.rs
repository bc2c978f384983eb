//! Kernel loading and the boot information handed to it: the kernel image (ELF with a PVH
//! note, other ELF vmlinux, or bzImage through its 64-bit entry), the initrd, the command
//! line, the zero page or PVH start info, and the e820 memory map.

use std::fs::File;
use std::io::{Seek, SeekFrom};

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, XLF_KERNEL_64};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::{load_cmdline, BzImage, Cmdline, KernelLoader};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::layout::*;
use super::regs::EntryMode;
use crate::vstate::memory::{ram_ranges, GuestMemoryMmap};

/// Errors while loading the kernel and writing boot information.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// Neither an ELF nor a bzImage loader accepted the kernel.
    #[error("kernel is neither a loadable ELF vmlinux nor a bzImage: {0}")]
    Kernel(linux_loader::loader::Error),
    /// The bzImage is too old or lacks the 64-bit entry point.
    #[error("bzImage boot protocol {version:#x} / xloadflags {xloadflags:#x}: need >= 2.12 and a 64-bit entry")]
    OldBzImage {
        /// The header's protocol version.
        version: u16,
        /// The header's xloadflags.
        xloadflags: u16,
    },
    /// I/O on the kernel or initrd file.
    #[error("cannot read {what}: {source}")]
    Io {
        /// Which file.
        what: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The initrd does not fit in guest memory.
    #[error("initrd of {0} bytes does not fit in guest memory below the kernel's limit")]
    InitrdTooLarge(u64),
    /// Writing the initrd into guest memory failed.
    #[error("cannot copy the initrd into guest memory: {0}")]
    InitrdCopy(vm_memory::GuestMemoryError),
    /// The command line does not fit or is invalid.
    #[error("cannot load the kernel command line: {0}")]
    Cmdline(linux_loader::loader::Error),
    /// Writing the zero page or PVH start info failed.
    #[error("cannot write boot parameters: {0}")]
    BootParams(linux_loader::configurator::Error),
}

/// Where the boot vCPU starts and how.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootEntry {
    /// Boot protocol.
    pub mode: EntryMode,
    /// Guest physical address of the first instruction.
    pub entry: u64,
}

/// e820 entry types.
pub const E820_RAM: u32 = 1;
/// Reserved memory (the ACPI tables window).
pub const E820_RESERVED: u32 = 2;

/// The guest's memory map for `mem_size` bytes of RAM: low RAM, the reserved window holding
/// the ACPI tables and RSDP, RAM from 1 MiB, and RAM above 4 GiB if any.
pub fn e820_map(mem_size: u64) -> Vec<(u64, u64, u32)> {
    let mut map = vec![
        (0, EBDA_START, E820_RAM),
        (EBDA_START, HIMEM_START - EBDA_START, E820_RESERVED),
    ];
    for (start, size) in ram_ranges(mem_size) {
        let (s, e) = (start.0.max(HIMEM_START), start.0 + size);
        if e > s {
            map.push((s, e - s, E820_RAM));
        }
    }
    map
}

/// Loads the kernel, initrd and command line and writes the boot information.
pub fn load(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    kernel: &mut File,
    initrd: Option<&mut File>,
    cmdline: &Cmdline,
) -> Result<BootEntry, BootError> {
    let himem = Some(GuestAddress(HIMEM_START));
    let io = |what| move |source| BootError::Io { what, source };

    // ELF first (it is cheap to recognise), bzImage otherwise.
    let (entry, setup_header, kernel_end) = match Elf::load(mem, None, kernel, himem) {
        Ok(r) => {
            let entry = match r.pvh_boot_cap {
                PvhBootCapability::PvhEntryPresent(a) => BootEntry {
                    mode: EntryMode::Pvh,
                    entry: a.0,
                },
                _ => BootEntry {
                    mode: EntryMode::Linux64,
                    entry: r.kernel_load.0,
                },
            };
            (entry, None, r.kernel_end)
        }
        Err(elf_err) => {
            kernel.seek(SeekFrom::Start(0)).map_err(io("kernel"))?;
            let r = BzImage::load(mem, None, kernel, himem).map_err(|bz_err| {
                log::debug!("not an ELF kernel: {elf_err}");
                BootError::Kernel(bz_err)
            })?;
            let hdr = r.setup_header.unwrap_or_default();
            let (version, xloadflags) = (hdr.version, hdr.xloadflags);
            if version < 0x20c || xloadflags & XLF_KERNEL_64 == 0 {
                return Err(BootError::OldBzImage {
                    version,
                    xloadflags,
                });
            }
            // The 64-bit entry point sits 0x200 bytes into the protected-mode code.
            let entry = BootEntry {
                mode: EntryMode::Linux64,
                entry: r.kernel_load.0 + 0x200,
            };
            (entry, Some(hdr), r.kernel_end)
        }
    };

    // The initrd goes as high as the kernel allows in low RAM, page aligned.
    let mut ramdisk = None;
    if let Some(initrd) = initrd {
        let size = initrd.seek(SeekFrom::End(0)).map_err(io("initrd"))?;
        initrd.seek(SeekFrom::Start(0)).map_err(io("initrd"))?;
        let low_end = mem_size.min(MMIO32_START);
        let addr_max = setup_header
            .map(|h| u64::from(h.initrd_addr_max))
            .filter(|&m| m != 0)
            .unwrap_or(0x7fff_ffff);
        let top = low_end.min(addr_max + 1);
        let addr = top
            .checked_sub(size)
            .map(|a| a & !0xfff)
            .filter(|&a| a >= kernel_end && a >= HIMEM_START)
            .ok_or(BootError::InitrdTooLarge(size))?;
        mem.read_exact_volatile_from(GuestAddress(addr), initrd, size as usize)
            .map_err(BootError::InitrdCopy)?;
        ramdisk = Some((addr, size));
    }

    load_cmdline(mem, GuestAddress(CMDLINE_START), cmdline).map_err(BootError::Cmdline)?;
    let cmdline_len = cmdline
        .as_cstring()
        .map(|c| c.as_bytes().len())
        .unwrap_or(0);

    match entry.mode {
        EntryMode::Linux64 => {
            let mut bp = boot_params::default();
            if let Some(h) = setup_header {
                bp.hdr = h;
            } else {
                // An ELF vmlinux has no setup header: make the minimal one the kernel checks.
                bp.hdr.boot_flag = 0xaa55;
                bp.hdr.header = 0x5372_6448; // "HdrS"
                bp.hdr.kernel_alignment = 0x0100_0000;
            }
            bp.hdr.type_of_loader = 0xff;
            bp.hdr.cmd_line_ptr = CMDLINE_START as u32;
            bp.hdr.cmdline_size = cmdline_len as u32;
            if let Some((addr, size)) = ramdisk {
                bp.hdr.ramdisk_image = addr as u32;
                bp.hdr.ramdisk_size = size as u32;
            }
            bp.acpi_rsdp_addr = RSDP_START;
            let map = e820_map(mem_size);
            for (i, (addr, size, ty)) in map.iter().enumerate() {
                bp.e820_table[i] = boot_e820_entry {
                    addr: *addr,
                    size: *size,
                    r#type: *ty,
                };
            }
            bp.e820_entries = map.len() as u8;
            LinuxBootConfigurator::write_bootparams::<GuestMemoryMmap>(
                &BootParams::new(&bp, GuestAddress(ZERO_PAGE_START)),
                mem,
            )
            .map_err(BootError::BootParams)?;
        }
        EntryMode::Pvh => {
            let map: Vec<hvm_memmap_table_entry> = e820_map(mem_size)
                .into_iter()
                .map(|(addr, size, type_)| hvm_memmap_table_entry {
                    addr,
                    size,
                    type_,
                    reserved: 0,
                })
                .collect();
            let mut info = hvm_start_info {
                magic: 0x336e_c578, // XEN_HVM_START_MAGIC_VALUE
                version: 1,
                cmdline_paddr: CMDLINE_START,
                rsdp_paddr: RSDP_START,
                memmap_paddr: PVH_MEMMAP_START,
                memmap_entries: map.len() as u32,
                ..Default::default()
            };
            let mut params = BootParams::new(&info, GuestAddress(PVH_INFO_START));
            if let Some((paddr, size)) = ramdisk {
                info.nr_modules = 1;
                info.modlist_paddr = PVH_MODLIST_START;
                params = BootParams::new(&info, GuestAddress(PVH_INFO_START));
                let module = hvm_modlist_entry {
                    paddr,
                    size,
                    ..Default::default()
                };
                params.set_modules(&[module], GuestAddress(PVH_MODLIST_START));
            }
            params.set_sections(&map, GuestAddress(PVH_MEMMAP_START));
            PvhBootConfigurator::write_bootparams::<GuestMemoryMmap>(&params, mem)
                .map_err(BootError::BootParams)?;
        }
    }
    log::info!(
        "kernel loaded: {:?} entry {:#x}, initrd {:?}, memory ends {:#x}",
        entry.mode,
        entry.entry,
        ramdisk,
        mem.last_addr().0
    );
    Ok(entry)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e820_small_guest() {
        let m = e820_map(256 << 20);
        assert_eq!(m[0], (0, EBDA_START, E820_RAM));
        assert_eq!(m[1].2, E820_RESERVED);
        assert!(
            m[1].0 <= RSDP_START && RSDP_START < m[1].0 + m[1].1,
            "RSDP reserved"
        );
        assert_eq!(m[2], (HIMEM_START, (256 << 20) - HIMEM_START, E820_RAM));
        assert_eq!(m.len(), 3);
    }

    #[test]
    fn e820_large_guest_has_high_ram() {
        let m = e820_map(5 << 30);
        assert_eq!(m.len(), 4);
        assert_eq!(m[2], (HIMEM_START, MMIO32_START - HIMEM_START, E820_RAM));
        assert_eq!(m[3], (RAM_64BIT_START, (5 << 30) - MMIO32_START, E820_RAM));
    }

    #[test]
    fn garbage_kernel_is_rejected_not_panicking() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
        let path = std::env::temp_dir().join(format!("vmm-garbage-kernel-{}", std::process::id()));
        std::fs::write(&path, vec![0x5au8; 8192]).unwrap();
        let mut f = File::open(&path).unwrap();
        let cl = Cmdline::new(64).unwrap();
        let r = load(&mem, 16 << 20, &mut f, None, &cl);
        std::fs::remove_file(&path).ok();
        assert!(matches!(r, Err(BootError::Kernel(_))), "{r:?}");
    }
}
