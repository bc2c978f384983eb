//! Logging for PID 1: everything to the kernel log, warnings and errors also to the console.
//!
//! `/dev/kmsg` keeps our messages in order with the kernel's (`dmesg` shows both), and
//! survives until the next boot on machines with pstore. Warnings and errors go to
//! `/dev/console` too, because a person at the terminal must see why something is missing.
//! The logger itself is [`support::logger`]'s; this holds init's choice of options.

use log::LevelFilter;
use std::sync::OnceLock;
use support::logger::Logger;

static LOGGER: OnceLock<&'static Logger> = OnceLock::new();

/// Installs the logger at level info. Safe to call before `/dev` is mounted: files open
/// on first use.
pub fn init() {
    LOGGER.get_or_init(|| {
        Logger::kmsg("init")
            .warnings_to_console()
            .install(LevelFilter::Info)
    });
}

/// Keeps warnings off the console; they still reach the kernel log.
pub fn quiet_console() {
    if let Some(logger) = LOGGER.get() {
        logger.set_console(false);
    }
}

/// The level from the kernel command line.
pub fn set_level(level: LevelFilter) {
    log::set_max_level(level);
}
