//! The 8250/16550 UART on COM1 (vm-superio's emulation), interrupting through an irqfd.

use std::io::Write;

use vm_superio::serial::NoEvents;
use vm_superio::{Serial as Uart, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;

/// Raises the serial interrupt by writing the irqfd registered for its GSI.
pub struct EventFdTrigger(pub EventFd);

impl Trigger for EventFdTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> Result<(), Self::E> {
        self.0.write(1)
    }
}

/// Output sink that flushes every write so an interactive console shows prompts at once.
pub struct FlushingWriter<W: Write>(pub W);

impl<W: Write> Write for FlushingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.0.write(buf)?;
        self.0.flush()?;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// COM1 as seen from the bus.
pub struct Serial {
    uart: Uart<EventFdTrigger, NoEvents, Box<dyn Write + Send>>,
}

impl Serial {
    /// A UART that interrupts through `irq` and writes the guest's output to `out`.
    pub fn new(irq: EventFd, out: Box<dyn Write + Send>) -> Self {
        Self {
            uart: Uart::new(EventFdTrigger(irq), out),
        }
    }

    /// Feeds host input to the guest; returns how many bytes fitted in the receive FIFO.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        let room = self.uart.fifo_capacity();
        let n = room.min(bytes.len());
        if n == 0 {
            return 0;
        }
        match self.uart.enqueue_raw_bytes(&bytes[..n]) {
            Ok(n) => n,
            Err(e) => {
                log::warn!("serial input dropped: {e:?}");
                0
            }
        }
    }
}

impl BusDevice for Serial {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if let (Ok(off), Some(first)) = (u8::try_from(offset), data.first_mut()) {
            *first = self.uart.read(off);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(off), Some(v)) = (u8::try_from(offset), data.first()) {
            if let Err(e) = self.uart.write(off, *v) {
                // The console going away (closed pty or pipe) must not stop the guest.
                log::debug!("serial output error: {e:?}");
            }
        }
    }
}
