//! Just enough of the PC keyboard controller for the guest to reset the machine.
//!
//! The status register always reads "output buffer full, input buffer empty": Linux's i8042
//! driver then drains 16 bytes, concludes there is no controller and gives up within a
//! millisecond (instead of timing out for seconds on a controller that never answers), while
//! `reboot=k` finds the input buffer empty and sends the reset pulse (command 0xFE) at once.

use std::sync::Arc;

use crate::bus::BusDevice;
use crate::exit::{ExitReason, ExitSignal};

/// Command that pulses the CPU reset line.
pub const CMD_RESET_CPU: u8 = 0xfe;

/// The i8042 on ports 0x60 (offset 0) and 0x64 (offset 4).
pub struct I8042 {
    exit: Arc<ExitSignal>,
}

impl I8042 {
    /// A controller that reports a reset through `exit`.
    pub fn new(exit: Arc<ExitSignal>) -> Self {
        Self { exit }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let v = if offset == 4 { 0x01 } else { 0x00 };
        data.fill(0);
        if let Some(b) = data.first_mut() {
            *b = v;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == 4 && data.first() == Some(&CMD_RESET_CPU) {
            self.exit.request(ExitReason::Reset);
        }
    }
}
