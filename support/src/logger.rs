//! The one `log` backend of the terminal's programs.
//!
//! Two kinds, each with small options:
//!
//! * [`Logger::stderr`]: every message to standard error as `NAME: LEVEL: message`
//!   (the command-line tools: `cachefs`, `vmm`).
//! * [`Logger::kmsg`]: every message to the kernel log (`/dev/kmsg`) as
//!   `<PRIORITY>NAME: message`, one record per line, where it stays in order with the
//!   kernel's own (`dmesg` shows both). For init and the session.
//!   * [`Logger::warnings_to_console`]: warnings and errors also to `/dev/console`, for a
//!     person at the terminal to see why something is missing (init); can be turned off
//!     later ([`Logger::set_console`]).
//!   * [`Logger::warnings_to_stderr_without_kmsg`]: where there is no kernel log to
//!     write (a session run by hand, unprivileged), warnings and errors go to stderr.
//! * [`Logger::raw_terminal`]: lines on stderr end in `\r\n`, for programs that may put
//!   the terminal in raw mode (the `vmm` attached to a console, the session).
//!
//! LEVEL is `error`, `warning`, `info`, `debug` or `trace`. The level filter is `log`'s
//! global one: [`Logger::install`] sets it and `log::set_max_level` changes it.
//! Files (`/dev/kmsg`, `/dev/console`) open on first use and again after a failed write,
//! so init can install the logger before `/dev` is mounted.

use log::{Level, LevelFilter, Log, Metadata, Record};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// What goes to standard error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stderr {
    All,
    WarningsWithoutKmsg,
    Nothing,
}

/// A `log` backend; see the module documentation.
pub struct Logger {
    name: &'static str,
    kmsg: bool,
    stderr: Stderr,
    console: AtomicBool,
    crlf: bool,
    kmsg_file: Mutex<Option<File>>,
    console_file: Mutex<Option<File>>,
}

impl Logger {
    fn new(name: &'static str, kmsg: bool, stderr: Stderr) -> Logger {
        Logger {
            name,
            kmsg,
            stderr,
            console: AtomicBool::new(false),
            crlf: false,
            kmsg_file: Mutex::new(None),
            console_file: Mutex::new(None),
        }
    }

    /// Every message to stderr, as `NAME: LEVEL: message`.
    pub fn stderr(name: &'static str) -> Logger {
        Logger::new(name, false, Stderr::All)
    }

    /// Every message to the kernel log, as `<PRIORITY>NAME: message`.
    pub fn kmsg(name: &'static str) -> Logger {
        Logger::new(name, true, Stderr::Nothing)
    }

    /// Warnings and errors also to `/dev/console`, as `\r\nNAME: LEVEL: message\r\n`
    /// (the leading line break keeps them off a prompt's line).
    pub fn warnings_to_console(self) -> Logger {
        self.console.store(true, Ordering::Relaxed);
        self
    }

    /// Warnings and errors to stderr when the kernel log cannot be opened.
    pub fn warnings_to_stderr_without_kmsg(mut self) -> Logger {
        self.stderr = Stderr::WarningsWithoutKmsg;
        self
    }

    /// Lines on stderr end in `\r\n`.
    pub fn raw_terminal(mut self) -> Logger {
        self.crlf = true;
        self
    }

    /// Makes this the `log` backend with `level`, and returns it for the setters. If a
    /// backend was installed already, that one stays (and the level is still set).
    pub fn install(self, level: LevelFilter) -> &'static Logger {
        let logger: &'static Logger = Box::leak(Box::new(self));
        let _ = log::set_logger(logger);
        log::set_max_level(level);
        logger
    }

    /// Turns the copies of warnings and errors on `/dev/console` on or off.
    pub fn set_console(&self, on: bool) {
        self.console.store(on, Ordering::Relaxed);
    }

    fn write_stderr(&self, level: Level, message: &str) {
        let line = stderr_line(self.name, level, message, self.crlf);
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let level = record.level();
        let message = record.args().to_string();
        let mut kmsg_written = false;
        if self.kmsg {
            kmsg_written = kmsg_records(self.name, level, &message)
                .iter()
                .all(|r| write_to(&self.kmsg_file, "/dev/kmsg", r.as_bytes()));
        }
        let to_stderr = match self.stderr {
            Stderr::All => true,
            Stderr::WarningsWithoutKmsg => !kmsg_written && level <= Level::Warn,
            Stderr::Nothing => false,
        };
        if to_stderr {
            self.write_stderr(level, &message);
        }
        if level <= Level::Warn && self.console.load(Ordering::Relaxed) {
            let text = format!("\r\n{}: {}: {message}\r\n", self.name, label(level));
            write_to(&self.console_file, "/dev/console", text.as_bytes());
        }
    }

    fn flush(&self) {}
}

/// The word for a level in messages.
fn label(level: Level) -> &'static str {
    match level {
        Level::Error => "error",
        Level::Warn => "warning",
        Level::Info => "info",
        Level::Debug => "debug",
        Level::Trace => "trace",
    }
}

/// The syslog priority `/dev/kmsg` takes in front of a record.
fn syslog_priority(level: Level) -> u8 {
    match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    }
}

/// `NAME: LEVEL: message` and the line end.
fn stderr_line(name: &str, level: Level, message: &str, crlf: bool) -> String {
    let end = if crlf { "\r\n" } else { "\n" };
    format!("{name}: {}: {message}{end}", label(level))
}

/// The kernel log records for a message: `/dev/kmsg` takes one record per write, and a
/// line break inside one would end up in it; so one record per line.
fn kmsg_records(name: &str, level: Level, message: &str) -> Vec<String> {
    let prio = syslog_priority(level);
    let mut records: Vec<String> = message
        .lines()
        .map(|line| format!("<{prio}>{name}: {line}\n"))
        .collect();
    if records.is_empty() {
        records.push(format!("<{prio}>{name}: \n"));
    }
    records
}

/// Writes to the file in `slot`, opening `path` first if needed; false if it could not.
fn write_to(slot: &Mutex<Option<File>>, path: &str, bytes: &[u8]) -> bool {
    let Ok(mut slot) = slot.lock() else {
        return false;
    };
    if slot.is_none() {
        *slot = OpenOptions::new().write(true).open(path).ok();
    }
    let Some(file) = slot.as_mut() else {
        return false;
    };
    if file.write_all(bytes).is_err() {
        // The device may have gone (devtmpfs remounted): open it again next time.
        *slot = None;
        return false;
    }
    true
}

/// The level named by environment variable `var` (`off`, `error`, `warn`, `info`,
/// `debug`, `trace`, in any case), or `default` when it is unset or names none.
pub fn level_from_env(var: &str, default: LevelFilter) -> LevelFilter {
    std::env::var(var)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// The level for a count of `-v` options: warnings, then info, then debug.
pub fn level_from_verbosity(count: u8) -> LevelFilter {
    match count {
        0 => LevelFilter::Warn,
        1 => LevelFilter::Info,
        _ => LevelFilter::Debug,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stderr_lines() {
        assert_eq!(
            stderr_line("cachefs", Level::Warn, "a torn record", false),
            "cachefs: warning: a torn record\n"
        );
        assert_eq!(
            stderr_line("vmm", Level::Error, "no KVM", true),
            "vmm: error: no KVM\r\n"
        );
    }

    #[test]
    fn kmsg_takes_one_record_per_line() {
        assert_eq!(
            kmsg_records("init", Level::Info, "eth0 up"),
            ["<6>init: eth0 up\n"]
        );
        assert_eq!(
            kmsg_records("session", Level::Error, "one\ntwo"),
            ["<3>session: one\n", "<3>session: two\n"]
        );
        assert_eq!(kmsg_records("init", Level::Trace, ""), ["<7>init: \n"]);
    }

    #[test]
    fn levels() {
        assert_eq!(level_from_verbosity(0), LevelFilter::Warn);
        assert_eq!(level_from_verbosity(1), LevelFilter::Info);
        assert_eq!(level_from_verbosity(9), LevelFilter::Debug);
        let var = "SUPPORT_LOGGER_TEST_LEVEL";
        assert_eq!(level_from_env(var, LevelFilter::Warn), LevelFilter::Warn);
        // This test is the only user of this variable.
        std::env::set_var(var, "DEBUG");
        assert_eq!(level_from_env(var, LevelFilter::Warn), LevelFilter::Debug);
        std::env::set_var(var, "loud");
        assert_eq!(level_from_env(var, LevelFilter::Warn), LevelFilter::Warn);
    }

    #[test]
    fn options_combine() {
        let l = Logger::kmsg("session")
            .warnings_to_stderr_without_kmsg()
            .raw_terminal();
        assert!(l.kmsg && l.crlf && l.stderr == Stderr::WarningsWithoutKmsg);
        assert!(!l.console.load(Ordering::Relaxed));
        let l = Logger::kmsg("init").warnings_to_console();
        assert!(l.console.load(Ordering::Relaxed));
        l.set_console(false);
        assert!(!l.console.load(Ordering::Relaxed));
        let l = Logger::stderr("cachefs");
        assert!(!l.kmsg && !l.crlf && l.stderr == Stderr::All);
    }
}
