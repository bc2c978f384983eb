//! Where the seat's pixels go: the monitor through KMS (page flips paced by vblank, or
//! the front buffer plus `DIRTYFB`), else the firmware framebuffer (`/dev/fb0`), else
//! nothing ([`Error::NoDisplay`]: the session keeps its serial text console). An
//! in-memory output stands in for tests and the benchmark.
//!
//! Every output is XRGB8888. The seat draws a frame into [`Output::back_buffer`], then
//! calls [`Output::present`] with the rectangles it changed; the output shows them at
//! the next vblank. Between presents the seat may only draw while
//! [`Output::can_present`] is true (a flip in flight still owns the other buffer).

mod fbdev;
mod kms;
mod memory;

pub use fbdev::FbdevOutput;
pub use kms::KmsOutput;
pub use memory::{MemoryOutput, MemoryProbe};

use crate::{Error, Rect};
use std::os::fd::RawFd;
use std::time::Duration;

/// Pacing for outputs that give no vblank event: about 60 Hz.
pub const TIMER_FRAME: Duration = Duration::from_millis(16);

/// A screen the seat draws on.
pub trait Output: Send {
    /// Width and height in pixels.
    fn size(&self) -> (u32, u32);
    /// Bytes between the starts of two rows of [`Output::back_buffer`].
    fn stride(&self) -> usize;
    /// The buffer to draw the next frame into (XRGB8888). It already holds the last
    /// presented frame: only what changes needs drawing.
    fn back_buffer(&mut self) -> &mut [u8];
    /// Shows the back buffer; `damage` are the rectangles drawn since the last present.
    fn present(&mut self, damage: &[Rect]) -> Result<(), Error>;
    /// False while a presented frame has not reached the screen yet (a page flip in
    /// flight): the seat then keeps accumulating damage and waits for
    /// [`Output::poll_fd`].
    fn can_present(&self) -> bool {
        true
    }
    /// While [`Output::can_present`] is false: when to look again even if no event
    /// comes (an output that gives up on a lost event); `None` waits for the event.
    fn present_retry_in(&self) -> Option<Duration> {
        None
    }
    /// A file descriptor that becomes readable when [`Output::can_present`] may have
    /// turned true (the DRM fd's page-flip events); `None` for timer-paced outputs.
    fn poll_fd(&self) -> Option<RawFd> {
        None
    }
    /// Reads what made [`Output::poll_fd`] readable (page-flip events).
    fn dispatch(&mut self) -> Result<(), Error> {
        Ok(())
    }
    /// For outputs without vblank events: the shortest time between two presents.
    fn frame_interval(&self) -> Option<Duration> {
        Some(TIMER_FRAME)
    }
    /// The monitor's EDID, when known.
    fn edid(&self) -> Option<Vec<u8>> {
        None
    }
    /// Shows black and lets go of the display (drops DRM master) so the text console
    /// can return. Called once, at shutdown.
    fn release(&mut self) {}
}

impl dyn Output {
    /// Opens the monitor: KMS, else fbdev, else [`Error::NoDisplay`].
    pub fn open() -> Result<Box<dyn Output>, Error> {
        match KmsOutput::open() {
            Ok(kms) => return Ok(Box::new(kms)),
            Err(e) => log::info!("seat: no KMS output ({e}); trying /dev/fb0"),
        }
        match FbdevOutput::open("/dev/fb0") {
            Ok(fb) => Ok(Box::new(fb)),
            Err(e) => {
                log::warn!("seat: no framebuffer either ({e})");
                Err(Error::NoDisplay)
            }
        }
    }
}
