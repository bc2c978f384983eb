//! The ACPI hardware-reduced sleep and reset registers named in the FADT.
//!
//! `poweroff` in a Linux guest writes `SLP_TYP(S5) << 2 | SLP_EN` to SLEEP_CONTROL_REG (the
//! sleep type comes from the DSDT's `_S5_` package); `reboot` writes the reset value to
//! RESET_REG. Both end the VM with the matching [`ExitReason`].

use std::sync::Arc;

use crate::arch::layout::{ACPI_RESET_VALUE, ACPI_S5_SLEEP_TYPE};
use crate::bus::BusDevice;
use crate::exit::{ExitReason, ExitSignal};

const SLP_EN: u8 = 1 << 5;

/// Offsets within the 3-port block.
const SLEEP_CONTROL: u64 = 0;
const RESET: u64 = 2;

/// Sleep control (offset 0), sleep status (1), reset (2).
pub struct AcpiPm {
    exit: Arc<ExitSignal>,
}

impl AcpiPm {
    /// Registers that report power-off and reset through `exit`.
    pub fn new(exit: Arc<ExitSignal>) -> Self {
        Self { exit }
    }
}

impl BusDevice for AcpiPm {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&v) = data.first() else { return };
        match offset {
            SLEEP_CONTROL if v & SLP_EN != 0 => {
                let ty = (v >> 2) & 0x7;
                if ty == ACPI_S5_SLEEP_TYPE {
                    self.exit.request(ExitReason::PowerOff);
                } else {
                    log::warn!("guest asked for unsupported sleep type {ty}; ignored");
                }
            }
            RESET if v == ACPI_RESET_VALUE => self.exit.request(ExitReason::Reset),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s5_powers_off_reset_resets_other_values_ignored() {
        let exit = Arc::new(ExitSignal::new().unwrap());
        let mut pm = AcpiPm::new(exit.clone());
        pm.write(SLEEP_CONTROL, &[(3 << 2) | SLP_EN]);
        pm.write(SLEEP_CONTROL, &[ACPI_S5_SLEEP_TYPE << 2]);
        pm.write(RESET, &[0x42]);
        assert_eq!(exit.reason(), None);
        pm.write(SLEEP_CONTROL, &[(ACPI_S5_SLEEP_TYPE << 2) | SLP_EN]);
        assert_eq!(exit.reason(), Some(ExitReason::PowerOff));

        let exit = Arc::new(ExitSignal::new().unwrap());
        let mut pm = AcpiPm::new(exit.clone());
        pm.write(RESET, &[ACPI_RESET_VALUE]);
        assert_eq!(exit.reason(), Some(ExitReason::Reset));
    }
}
