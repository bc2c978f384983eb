//! Guest physical memory layout of the x86-64 machine this VMM builds.
//!
//! The low megabyte follows Firecracker's layout (which follows the PC's): the boot
//! structures live below 0x9FC00, the ACPI tables in the reserved window above it, the
//! RSDP at 0xE0000 where a guest that scans for it would look. Devices live in the last
//! gigabyte below 4 GiB; RAM that does not fit below that hole continues at 4 GiB.

/// Where the GDT built for the boot vCPU lives.
pub const BOOT_GDT_START: u64 = 0x500;
/// Where the (empty) IDT built for the boot vCPU lives.
pub const BOOT_IDT_START: u64 = 0x520;
/// PVH `hvm_start_info` structure.
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH module list (the initrd), right after the start info.
pub const PVH_MODLIST_START: u64 = 0x6040;
/// PVH memory map, after the module list.
pub const PVH_MEMMAP_START: u64 = 0x6100;
/// The Linux zero page (`boot_params`).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer of the boot vCPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Identity-mapping page tables: PML4, then one PDPT, then four PDs (4 GiB of 2 MiB pages).
pub const PML4_START: u64 = 0x9000;
/// Page directory pointer table.
pub const PDPTE_START: u64 = 0xa000;
/// First of the four page directories.
pub const PDE_START: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Longest command line we accept (the kernel's own x86 limit is 2048).
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// End of the first RAM range (EBDA starts here on a PC).
pub const EBDA_START: u64 = 0x9fc00;
/// ACPI tables other than the RSDP are placed from here by a bump allocator.
pub const ACPI_TABLES_START: u64 = 0xa0000;
/// The RSDP, at the conventional address (also passed in `boot_params.acpi_rsdp_addr`).
pub const RSDP_START: u64 = 0xe0000;
/// First address after the legacy BIOS area: high memory, where the kernel loads.
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the 32-bit MMIO hole (the last GiB below 4 GiB); RAM stops here.
pub const MMIO32_START: u64 = 0xc000_0000;
/// First virtio-mmio device window; each device gets [`VIRTIO_MMIO_SIZE`] bytes.
pub const VIRTIO_MMIO_START: u64 = 0xd000_0000;
/// Size of one virtio-mmio device window.
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// The IOAPIC's registers (emulated inside KVM).
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// The local APICs' registers (emulated inside KVM).
pub const APIC_START: u64 = 0xfee0_0000;
/// KVM's TSS needs three pages of guest physical space that is not RAM (Intel VMX only).
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;
/// RAM that does not fit below the MMIO hole continues here.
pub const RAM_64BIT_START: u64 = 0x1_0000_0000;

/// GSI of the serial port (COM1), as on a PC.
pub const SERIAL_GSI: u32 = 4;
/// GSIs handed to virtio-mmio devices, in order. ISA interrupts that a Linux guest may
/// claim for built-in legacy drivers (1 keyboard, 8 RTC, 9 SCI, 12 mouse, 13 FPU) are left
/// out so an edge-triggered virtio interrupt never has to share a line with them.
pub const VIRTIO_GSIS: &[u32] = &[5, 6, 7, 10, 11, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23];

/// I/O port of the first serial port.
pub const SERIAL_PORT: u16 = 0x3f8;
/// I/O ports of the PC keyboard controller (only the reset command is emulated).
pub const I8042_DATA_PORT: u16 = 0x60;
/// Command/status port of the i8042.
pub const I8042_COMMAND_PORT: u16 = 0x64;
/// CMOS/RTC index and data ports.
pub const RTC_PORT: u16 = 0x70;
/// ACPI hardware-reduced sleep control register (FADT `SLEEP_CONTROL_REG`).
pub const ACPI_SLEEP_CONTROL_PORT: u16 = 0x600;
/// ACPI sleep status register (FADT `SLEEP_STATUS_REG`).
pub const ACPI_SLEEP_STATUS_PORT: u16 = 0x601;
/// ACPI reset register (FADT `RESET_REG`).
pub const ACPI_RESET_PORT: u16 = 0x602;
/// Value the guest writes to [`ACPI_RESET_PORT`] to reset.
pub const ACPI_RESET_VALUE: u8 = 0x1;
/// Sleep type the DSDT's `_S5_` package announces for soft-off.
pub const ACPI_S5_SLEEP_TYPE: u8 = 5;
/// PCI configuration mechanism #1 ports: answered with all-ones ("no device").
pub const PCI_CONFIG_PORT_START: u16 = 0xcf8;
