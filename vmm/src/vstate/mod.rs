//! KVM state: guest memory, the VM with its irqchip, vCPU threads.

pub mod memory;
pub mod vcpu;
pub mod vm;
