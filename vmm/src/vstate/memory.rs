//! Guest RAM: allocation (anonymous mmap through vm-memory) and registration with KVM.
//!
//! Guest RAM is backed by transparent huge pages, as QEMU does: each region's host mapping
//! starts on a 2 MiB boundary (so a guest-physical 2 MiB page is a host 2 MiB page and
//! KVM can map it with one large nested-page-table entry) and is `madvise(MADV_HUGEPAGE)`d
//! (hosts such as Debian run THP in `madvise` mode: without the advice every guest page is a
//! separate 4 KiB fault, allocation and nested mapping, very expensive under nested
//! virtualization). `VMM_NO_HUGEPAGES=1` turns both off, for comparison.

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::arch::layout::{MMIO32_START, RAM_64BIT_START};

/// The guest memory type used throughout the VMM.
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<()>;

/// Errors while setting up guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The requested size is zero or not a multiple of the page size.
    #[error("guest memory size {0:#x} must be a non-zero multiple of 4 KiB")]
    BadSize(u64),
    /// mmap of guest memory failed.
    #[error("cannot allocate guest memory: {0}")]
    Allocate(#[from] vm_memory::mmap::FromRangesError),
    /// KVM refused a memory slot.
    #[error("cannot register guest memory with KVM: {0}")]
    Register(#[source] kvm_ioctls::Error),
    /// A region's host address could not be found (should not happen).
    #[error("guest memory region has no host mapping")]
    HostAddress,
}

/// The RAM ranges `(start, size)` for a guest of `size` bytes: below the 32-bit MMIO hole,
/// and the rest from 4 GiB up.
pub fn ram_ranges(size: u64) -> Vec<(GuestAddress, u64)> {
    if size <= MMIO32_START {
        vec![(GuestAddress(0), size)]
    } else {
        vec![
            (GuestAddress(0), MMIO32_START),
            (GuestAddress(RAM_64BIT_START), size - MMIO32_START),
        ]
    }
}

/// The huge page size guest RAM is aligned to and advised for.
pub const HUGE_PAGE: usize = 2 << 20;

/// Allocates `size` bytes of guest RAM laid out by [`ram_ranges`], each region's mapping
/// 2 MiB aligned and advised for transparent huge pages.
pub fn create_guest_memory(size: u64) -> Result<GuestMemoryMmap, MemoryError> {
    if size == 0 || !size.is_multiple_of(4096) {
        return Err(MemoryError::BadSize(size));
    }
    let huge = std::env::var_os("VMM_NO_HUGEPAGES").is_none_or(|v| v == "0");
    let mut regions = Vec::new();
    for (addr, len) in ram_ranges(size) {
        let len = len as usize;
        // vm-memory maps (and on drop unmaps) the region itself, at an address of the
        // kernel's choosing; steer that choice to a 2 MiB boundary first.
        let plugs = if huge && len.is_multiple_of(HUGE_PAGE) {
            steer_to_alignment(len)
        } else {
            Vec::new()
        };
        let region = vm_memory::GuestRegionMmap::from_range(addr, len, None);
        for (p, l) in plugs {
            // SAFETY: unmaps a PROT_NONE placeholder this function mapped.
            unsafe { libc::munmap(p as *mut libc::c_void, l) };
        }
        let region = region?;
        let host = region.as_ptr() as usize;
        if huge {
            if !host.is_multiple_of(HUGE_PAGE) {
                log::warn!(
                    "guest RAM at {:#x} is not 2 MiB aligned on the host: no large nested pages",
                    addr.0
                );
            }
            // SAFETY: advice on a live mapping owned by `region`; it does not change its
            // contents or validity.
            if unsafe { libc::madvise(host as *mut libc::c_void, len, libc::MADV_HUGEPAGE) } != 0 {
                log::warn!(
                    "madvise(MADV_HUGEPAGE) on guest RAM failed: {}",
                    std::io::Error::last_os_error()
                );
            }
            // The next mapping (a thread's stack, say) would go right below and so end on
            // a 2 MiB boundary: where THP is "always", its top 2 MiB would become a huge
            // page. A 4 KiB PROT_NONE guard page below guest RAM (no memory, kept for the
            // process's life) prevents that; if the spot is taken, nothing is needed.
            if let Some(below) = host.checked_sub(4096) {
                // SAFETY: MAP_FIXED_NOREPLACE maps only if the page is free.
                unsafe {
                    libc::mmap(
                        below as *mut libc::c_void,
                        4096,
                        libc::PROT_NONE,
                        libc::MAP_PRIVATE
                            | libc::MAP_ANONYMOUS
                            | libc::MAP_NORESERVE
                            | libc::MAP_FIXED_NOREPLACE,
                        -1,
                        0,
                    )
                };
            }
        }
        log::debug!(
            "guest RAM {:#x}+{len:#x} at host {host:#x} (2 MiB aligned: {}, huge pages advised: {huge})",
            addr.0,
            host.is_multiple_of(HUGE_PAGE)
        );
        regions.push(region);
    }
    GuestMemoryMmap::from_regions(regions)
        .map_err(|e| MemoryError::Allocate(vm_memory::mmap::FromRangesError::Collection(e)))
}

/// Makes the kernel's next `mmap(NULL, len)` land on a 2 MiB boundary, and returns the
/// `PROT_NONE` placeholders that steer it (to unmap once that mapping exists).
///
/// Anonymous mappings go top-down into the highest gap that fits, at its top: probe where
/// a `len`-byte mapping would land, and if that is `m` bytes past a boundary, occupy the
/// top `m` bytes of that spot so the next one lands `m` lower, on the boundary. Another
/// thread mapping memory in between can only make the result unaligned (slower), never
/// wrong; the caller checks.
fn steer_to_alignment(len: usize) -> Vec<(usize, usize)> {
    let mut plugs = Vec::new();
    let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
    for _ in 0..16 {
        // SAFETY: a fresh PROT_NONE anonymous mapping, unmapped right away.
        let probe = unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_NONE, flags, -1, 0) };
        if probe == libc::MAP_FAILED {
            break;
        }
        // SAFETY: unmaps the probe mapped just above.
        unsafe { libc::munmap(probe, len) };
        let at = probe as usize;
        let off = at % HUGE_PAGE;
        if off == 0 {
            break;
        }
        let plug_at = at + len - off;
        // SAFETY: MAP_FIXED_NOREPLACE never replaces an existing mapping; the range was
        // free a moment ago (it belonged to the probe).
        let plug = unsafe {
            libc::mmap(
                plug_at as *mut libc::c_void,
                off,
                libc::PROT_NONE,
                flags | libc::MAP_FIXED_NOREPLACE,
                -1,
                0,
            )
        };
        if plug == libc::MAP_FAILED {
            break;
        }
        plugs.push((plug as usize, off));
        if plug as usize != plug_at {
            // An old kernel that ignores MAP_FIXED_NOREPLACE put it elsewhere: give up.
            break;
        }
    }
    plugs
}

/// Gives every region of `mem` to KVM as a memory slot.
pub fn register_with_kvm(vm: &VmFd, mem: &GuestMemoryMmap) -> Result<(), MemoryError> {
    for (slot, region) in mem.iter().enumerate() {
        let host = mem
            .get_host_address(region.start_addr())
            .map_err(|_| MemoryError::HostAddress)? as u64;
        let desc = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host,
        };
        // SAFETY: the region is a live anonymous mapping owned by `mem`, which outlives the
        // VM (the VM is dropped before the memory by `Vm`'s field order); it does not overlap
        // other slots because vm-memory refuses overlapping ranges.
        unsafe { vm.set_user_memory_region(desc) }.map_err(MemoryError::Register)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_guest_is_one_range() {
        assert_eq!(ram_ranges(256 << 20), vec![(GuestAddress(0), 256 << 20)]);
    }

    #[test]
    fn large_guest_skips_the_mmio_hole() {
        let r = ram_ranges(4 << 30);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0], (GuestAddress(0), MMIO32_START));
        assert_eq!(
            r[1],
            (GuestAddress(RAM_64BIT_START), (4 << 30) - MMIO32_START)
        );
    }

    #[test]
    fn guest_ram_is_2mib_aligned_and_advised_for_huge_pages() {
        let mem = create_guest_memory(64 << 20).unwrap();
        let host = mem.get_host_address(GuestAddress(0)).unwrap() as usize;
        assert_eq!(host % HUGE_PAGE, 0, "host address {host:#x}");
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let header = format!("{host:x}-");
        let flags = smaps
            .split_inclusive('\n')
            .skip_while(|l| !l.starts_with(&header))
            .find(|l| l.starts_with("VmFlags:"))
            .unwrap_or_default()
            .to_string();
        if std::path::Path::new("/sys/kernel/mm/transparent_hugepage").exists() {
            assert!(flags.contains(" hg"), "no huge page advice: {flags}");
        }
        // Writes and reads still work at both ends.
        use vm_memory::Bytes;
        mem.write_obj(0xabu8, GuestAddress(0)).unwrap();
        mem.write_obj(0xcdu8, GuestAddress((64 << 20) - 1)).unwrap();
        assert_eq!(
            mem.read_obj::<u8>(GuestAddress((64 << 20) - 1)).unwrap(),
            0xcd
        );
    }

    #[test]
    fn rejects_bad_sizes() {
        assert!(matches!(
            create_guest_memory(0),
            Err(MemoryError::BadSize(0))
        ));
        assert!(matches!(
            create_guest_memory(4097),
            Err(MemoryError::BadSize(_))
        ));
    }
}
