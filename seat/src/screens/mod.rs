//! The seat's own screens, which no appliance can see or draw: the menu the secure
//! attention key opens, the lock screen, and the text surface of console appliances.
//! Each is a [`Grid`] of character cells; the seat compares a screen's new grid with
//! the one shown and redraws only the rows that changed.

pub mod console;
pub mod grid;
pub mod lock;
pub mod menu;

pub use grid::{Cell, Grid};

/// Colours of the seat's screens (XRGB).
pub mod colors {
    /// The seat's screens' background: a dark blue no appliance is told about.
    pub const SEAT_BG: u32 = 0x0010_2040;
    pub const TEXT: u32 = 0x00e0_e0e0;
    pub const TITLE: u32 = 0x00ff_ffff;
    pub const HIGHLIGHT_BG: u32 = 0x0030_6090;
    pub const WARNING: u32 = 0x00ff_c040;
    pub const CONSOLE_BG: u32 = 0x0000_0000;
    pub const CONSOLE_FG: u32 = 0x00c0_c0c0;
}
