//! The access log: one line per request, appended and written with a single `write` so
//! lines from concurrent requests never interleave. System tests read it to prove which
//! chunks a terminal fetched, so the format is fixed:
//!
//! ```text
//! <unix time, s.ms> <peer ip:port> <method> <path> <status> <body bytes> <duration ms>
//! 1732320000.123 127.0.0.1:51234 GET /chunks/ab/ab12...ef 200 18342 0.4
//! ```
//!
//! The path is logged without its query string. Passwords and tokens never appear.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// An append-only access log (or none).
pub struct AccessLog {
    file: Option<Mutex<File>>,
}

impl AccessLog {
    /// Opens (creating) `path` for appending.
    pub fn open(path: Option<&Path>) -> crate::Result<AccessLog> {
        let file = match path {
            Some(p) => {
                if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
                    crate::fsutil::create_dir_all(dir)?;
                }
                Some(Mutex::new(
                    OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(p)
                        .map_err(|e| crate::fsutil::io_context("opening access log", p, e))?,
                ))
            }
            None => None,
        };
        Ok(AccessLog { file })
    }

    /// Records one request.
    pub fn record(
        &self,
        peer: &str,
        method: &str,
        path: &str,
        status: u16,
        bytes: u64,
        took: Duration,
    ) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let line = format!(
            "{}.{:03} {peer} {method} {path} {status} {bytes} {:.1}\n",
            now.as_secs(),
            now.subsec_millis(),
            took.as_secs_f64() * 1000.0
        );
        log::debug!("{}", line.trim_end());
        if let Some(f) = &self.file {
            if let Ok(mut f) = f.lock() {
                if let Err(e) = f.write_all(line.as_bytes()) {
                    log::warn!("cannot write the access log: {e}");
                }
            }
        }
    }
}
