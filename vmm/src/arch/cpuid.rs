//! CPUID: what KVM supports on this host, adjusted per vCPU (APIC id, CPU count, the
//! hypervisor bit, topology leaves) so the guest's topology matches the MADT.

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

const HYPERVISOR_BIT: u32 = 1 << 31; // leaf 1 ECX
const HTT_BIT: u32 = 1 << 28; // leaf 1 EDX

/// Number of bits needed to number `n` logical CPUs.
fn bits_for(n: u32) -> u32 {
    if n <= 1 {
        0
    } else {
        32 - (n - 1).leading_zeros()
    }
}

/// Adjusts one CPUID entry for vCPU `id` of `count`.
pub fn patch_entry(e: &mut kvm_cpuid_entry2, id: u8, count: u8) {
    let id = u32::from(id);
    let count = u32::from(count.max(1));
    match e.function {
        1 => {
            // EBX[31:24] initial APIC id, EBX[23:16] logical processors per package.
            e.ebx = (e.ebx & 0x0000_ffff) | (id << 24) | (count << 16);
            e.ecx |= HYPERVISOR_BIT;
            if count > 1 {
                e.edx |= HTT_BIT;
            } else {
                e.edx &= !HTT_BIT;
            }
        }
        // Intel deterministic cache parameters: EAX[31:26] = cores per package - 1.
        4 if e.eax & 0x1f != 0 => {
            e.eax = (e.eax & 0x03ff_ffff) | ((count - 1) << 26);
        }
        0xb | 0x1f => {
            // Extended topology: one thread per core, `count` cores in the package.
            match e.index {
                0 => {
                    e.eax = 0;
                    e.ebx = 1;
                    e.ecx = (1 << 8) | e.index;
                }
                1 => {
                    e.eax = bits_for(count);
                    e.ebx = count;
                    e.ecx = (2 << 8) | e.index;
                }
                _ => {
                    e.eax = 0;
                    e.ebx = 0;
                    e.ecx = e.index;
                }
            }
            e.edx = id;
        }
        _ => {}
    }
}

/// Returns `supported` adjusted for vCPU `id` of `count`.
pub fn vcpu_cpuid(supported: &CpuId, id: u8, count: u8) -> CpuId {
    let mut cpuid = supported.clone();
    for e in cpuid.as_mut_slice() {
        patch_entry(e, id, count);
    }
    cpuid
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaf1_gets_apic_id_count_and_hypervisor_bit() {
        let mut e = kvm_cpuid_entry2 {
            function: 1,
            ebx: 0xff00_0800,
            ..Default::default()
        };
        patch_entry(&mut e, 3, 4);
        assert_eq!(e.ebx >> 24, 3);
        assert_eq!((e.ebx >> 16) & 0xff, 4);
        assert_eq!(e.ebx & 0xffff, 0x0800, "CLFLUSH size kept");
        assert_ne!(e.ecx & HYPERVISOR_BIT, 0);
        assert_ne!(e.edx & HTT_BIT, 0);
    }

    #[test]
    fn topology_leaf_reports_x2apic_id() {
        let mut e = kvm_cpuid_entry2 {
            function: 0xb,
            index: 1,
            ..Default::default()
        };
        patch_entry(&mut e, 2, 3);
        assert_eq!(e.edx, 2);
        assert_eq!(e.ebx, 3);
        assert_eq!(e.eax, 2);
        assert_eq!(bits_for(1), 0);
        assert_eq!(bits_for(2), 1);
        assert_eq!(bits_for(4), 2);
        assert_eq!(bits_for(5), 3);
    }
}
