//! The KVM VM: creation, the in-kernel irqchip (PIC + IOAPIC + LAPICs) and PIT.

use kvm_bindings::{kvm_pit_config, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Cap, Kvm, VmFd};

use crate::arch::layout::KVM_TSS_ADDRESS;

/// Errors while creating the VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// /dev/kvm could not be opened.
    #[error("cannot open /dev/kvm: {0}")]
    OpenKvm(#[source] kvm_ioctls::Error),
    /// The KVM API lacks something we rely on.
    #[error("KVM lacks the {0} capability")]
    MissingCap(&'static str),
    /// A VM-level ioctl failed.
    #[error("KVM {what} failed: {source}")]
    Kvm {
        /// Which call.
        what: &'static str,
        /// The error.
        #[source]
        source: kvm_ioctls::Error,
    },
}

fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { what, source }
}

/// Opens KVM and creates a VM with the in-kernel irqchip and PIT.
pub fn create_vm() -> Result<(Kvm, VmFd), VmError> {
    let kvm_fd = Kvm::new().map_err(VmError::OpenKvm)?;
    for (cap, name) in [
        (Cap::Irqchip, "IRQCHIP"),
        (Cap::Irqfd, "IRQFD"),
        (Cap::Ioeventfd, "IOEVENTFD"),
        (Cap::UserMemory, "USER_MEMORY"),
        (Cap::SetTssAddr, "SET_TSS_ADDR"),
        (Cap::Pit2, "PIT2"),
        (Cap::ExtCpuid, "EXT_CPUID"),
    ] {
        if !kvm_fd.check_extension(cap) {
            return Err(VmError::MissingCap(name));
        }
    }
    let vm = kvm_fd.create_vm().map_err(kvm("create_vm"))?;
    vm.set_tss_address(KVM_TSS_ADDRESS as usize)
        .map_err(kvm("set_tss_address"))?;
    vm.create_irq_chip().map_err(kvm("create_irq_chip"))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit).map_err(kvm("create_pit2"))?;
    Ok((kvm_fd, vm))
}
