//! x86-64 specifics: memory layout, boot protocols, initial vCPU state, CPUID.

pub mod boot;
pub mod cpuid;
pub mod layout;
pub mod regs;
