//! Logging for PID 1: everything to the kernel log, warnings and errors also to the console.
//!
//! `/dev/kmsg` keeps our messages in order with the kernel's (`dmesg` shows both), and
//! survives until the next boot on machines with pstore. Warnings and errors go to
//! `/dev/console` too, because a person at the terminal must see why something is missing.

use log::{Level, LevelFilter, Log, Metadata, Record};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::sync::Mutex;

pub struct KmsgLogger {
    level: Mutex<LevelFilter>,
    /// Whether warnings also go to the console (not in modprobe mode).
    console_enabled: std::sync::atomic::AtomicBool,
    kmsg: Mutex<Option<File>>,
    console: Mutex<Option<File>>,
}

static LOGGER: KmsgLogger = KmsgLogger {
    level: Mutex::new(LevelFilter::Info),
    console_enabled: std::sync::atomic::AtomicBool::new(true),
    kmsg: Mutex::new(None),
    console: Mutex::new(None),
};

/// Installs the logger. Safe to call before `/dev` is mounted: files open on first use.
pub fn init() {
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(LevelFilter::Info);
}

/// Keeps warnings off the console; they still reach the kernel log.
pub fn quiet_console() {
    LOGGER
        .console_enabled
        .store(false, std::sync::atomic::Ordering::Relaxed);
}

pub fn set_level(level: LevelFilter) {
    if let Ok(mut l) = LOGGER.level.lock() {
        *l = level;
    }
    log::set_max_level(level);
}

fn syslog_priority(level: Level) -> u8 {
    match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    }
}

fn write_to(slot: &Mutex<Option<File>>, path: &str, bytes: &[u8]) {
    let Ok(mut slot) = slot.lock() else { return };
    if slot.is_none() {
        *slot = OpenOptions::new().write(true).open(path).ok();
    }
    if let Some(file) = slot.as_mut() {
        if file.write_all(bytes).is_err() {
            // The device may have gone (devtmpfs remounted); reopen next time.
            *slot = None;
        }
    }
}

impl Log for KmsgLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        self.level
            .lock()
            .map(|l| metadata.level() <= *l)
            .unwrap_or(true)
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let message = record.args().to_string();
        // /dev/kmsg takes one record per write; a newline inside would split it.
        for line in message.lines() {
            let entry = format!("<{}>init: {}\n", syslog_priority(record.level()), line);
            write_to(&self.kmsg, "/dev/kmsg", entry.as_bytes());
        }
        if record.level() <= Level::Warn
            && self
                .console_enabled
                .load(std::sync::atomic::Ordering::Relaxed)
        {
            let tag = if record.level() == Level::Error {
                "error"
            } else {
                "warning"
            };
            let text = format!("\r\ninit: {tag}: {message}\r\n");
            write_to(&self.console, "/dev/console", text.as_bytes());
        }
    }

    fn flush(&self) {}
}
