//! The terminal's settings, read from the kernel command line.
//!
//! Everything a site configures travels on the command line (set in `boot.ipxe` or the
//! boot loader), so one image serves every terminal. Keys we own start with
//! `collective.`; `console=` is the kernel's own and tells us where people sit.
//! Unknown `collective.*` keys are reported, not ignored silently: a typo must not look
//! like a setting that took effect.

use std::fmt;

/// Settings with their defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// `collective.repo=URL`: the repository the terminal logs users in against.
    pub repo: Option<String>,
    /// `collective.cache=DEV`: the cache disk, by path (`/dev/vda`), `LABEL=` or `SERIAL=`.
    pub cache: Option<String>,
    /// `collective.cache_force=1`: format the cache disk even if it holds other data.
    pub cache_force: bool,
    /// `collective.log=LEVEL`: error, warn, info, debug or trace. Default info.
    pub log_level: log::LevelFilter,
    /// Consoles that get a login prompt, from `console=` (without the options after `,`).
    /// Default: `tty1` and `ttyS0`.
    pub consoles: Vec<String>,
    /// `collective.modules=a,b`: extra modules to load at boot even without their hardware.
    pub extra_modules: Vec<String>,
    /// `collective.autorun=FILE`: a program to run once bring-up has finished, its output
    /// on the console (system tests, kiosk demos). FILE holds the program and its
    /// arguments, one per line, so arguments may contain spaces.
    pub autorun: Option<String>,
    /// `collective.uplink=NIC|off`: the network card whose network appliances join as
    /// `uplink` (default: the first card, by name); `off` keeps appliances off it.
    pub uplink: Uplink,
    /// `collective.offline-days=N`: days an offline login works after the user's last
    /// online login on this terminal; 0 turns offline login off. None: the session's
    /// default (14), so the default lives in one place (the receiver).
    pub offline_days: Option<u32>,
    /// `collective.offline-users=K`: users whose offline record and user disks the
    /// terminal keeps once written back. None: the session's default (3).
    pub offline_users: Option<u32>,
    /// `collective.`-keys we did not recognise or could not parse, with the reason.
    pub problems: Vec<String>,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            repo: None,
            cache: None,
            cache_force: false,
            log_level: log::LevelFilter::Info,
            consoles: Vec::new(),
            extra_modules: Vec::new(),
            autorun: None,
            uplink: Uplink::FirstNic,
            offline_days: None,
            offline_users: None,
            problems: Vec::new(),
        }
    }
}

/// Every `collective.*` key, with what it does; shown by `help` and in docs/init.md.
pub const KEYS: &[(&str, &str)] = &[
    (
        "collective.repo=URL",
        "repository to log in against (http:// or https://)",
    ),
    (
        "collective.cache=DEV",
        "cache disk: /dev/NAME, LABEL=label, SERIAL=serial or auto",
    ),
    (
        "collective.cache_force=1",
        "format the cache disk even if it holds other data",
    ),
    (
        "collective.log=LEVEL",
        "log level: error, warn, info (default), debug, trace",
    ),
    (
        "collective.modules=A,B",
        "extra kernel modules to load at boot",
    ),
    (
        "collective.autorun=FILE",
        "after bring-up run the program in FILE (argv, one per line)",
    ),
    (
        "collective.uplink=NIC|off",
        "card bridged to appliances' uplink network (default: the first)",
    ),
    (
        "collective.offline-days=N",
        "days offline login works after the last online login (default 14; 0: off)",
    ),
    (
        "collective.offline-users=K",
        "users kept for offline login once their data is saved (default 3)",
    ),
];

/// Which network card appliances reach as their `uplink` network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Uplink {
    /// The first network card by name (`enp0s3` before `enp1s0`).
    FirstNic,
    /// This card.
    Nic(String),
    /// None: appliances asking for `uplink` start without it.
    Off,
}

impl Settings {
    /// Parses `/proc/cmdline` text.
    pub fn parse(cmdline: &str) -> Settings {
        let mut s = Settings::default();
        for word in split_cmdline(cmdline) {
            let (key, value) = match word.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (word.as_str(), None),
            };
            match (key, value) {
                ("console", Some(v)) => {
                    let name = v
                        .split(',')
                        .next()
                        .unwrap_or("")
                        .trim_start_matches("/dev/");
                    if !name.is_empty() && !s.consoles.iter().any(|c| c == name) {
                        s.consoles.push(name.to_string());
                    }
                }
                ("collective.repo", Some(v)) if !v.is_empty() => {
                    if v.starts_with("http://") || v.starts_with("https://") {
                        s.repo = Some(v.trim_end_matches('/').to_string());
                    } else {
                        s.problems.push(format!(
                            "collective.repo={v}: not an http:// or https:// URL; ignored"
                        ));
                    }
                }
                ("collective.cache", Some(v)) if !v.is_empty() => s.cache = Some(v.to_string()),
                ("collective.cache_force", Some(v)) => {
                    s.cache_force = matches!(v, "1" | "yes" | "true")
                }
                ("collective.log", Some(v)) => match v.parse() {
                    Ok(level) => s.log_level = level,
                    Err(_) => s.problems.push(format!(
                        "collective.log={v}: use error, warn, info, debug or trace"
                    )),
                },
                ("collective.autorun", Some(v)) if !v.is_empty() => s.autorun = Some(v.to_string()),
                ("collective.uplink", Some("off" | "none" | "0")) => s.uplink = Uplink::Off,
                ("collective.uplink", Some(v)) if !v.is_empty() => {
                    s.uplink = Uplink::Nic(v.to_string())
                }
                ("collective.modules", Some(v)) => s.extra_modules.extend(
                    v.split(',')
                        .filter(|m| !m.is_empty())
                        .map(|m| m.replace('-', "_")),
                ),
                ("collective.offline-days" | "collective.offline_days", Some(v)) => {
                    match number(key, v) {
                        Ok(n) => s.offline_days = Some(n),
                        Err(p) => s.problems.push(p),
                    }
                }
                ("collective.offline-users" | "collective.offline_users", Some(v)) => {
                    match number(key, v) {
                        Ok(n) => s.offline_users = Some(n),
                        Err(p) => s.problems.push(p),
                    }
                }
                (k, _) if k.starts_with("collective.") => s.problems.push(format!(
                    "{word}: unknown or empty setting; known: {}",
                    known_keys()
                )),
                _ => {}
            }
        }
        if s.consoles.is_empty() {
            s.consoles = vec!["tty1".into(), "ttyS0".into()];
        }
        s
    }
}

/// A whole number setting, or the problem to report (the default then stays).
fn number(key: &str, value: &str) -> Result<u32, String> {
    value
        .trim()
        .parse::<u32>()
        .map_err(|_| format!("{key}={value}: not a whole number; the default is used"))
}

fn known_keys() -> String {
    KEYS.iter()
        .map(|(k, _)| k.split('=').next().unwrap_or(k))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Splits like the kernel does: on spaces, except inside double quotes.
fn split_cmdline(cmdline: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    for c in cmdline.trim().chars() {
        match c {
            '"' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => {
                if !current.is_empty() {
                    words.push(std::mem::take(&mut current));
                }
            }
            c => current.push(c),
        }
    }
    if !current.is_empty() {
        words.push(current);
    }
    words
}

impl fmt::Display for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "repo={} cache={} log={} consoles={}",
            self.repo.as_deref().unwrap_or("-"),
            self.cache.as_deref().unwrap_or("-"),
            self.log_level,
            self.consoles.join(",")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uplink_is_the_first_card_unless_named_or_off() {
        assert_eq!(Settings::parse("quiet").uplink, Uplink::FirstNic);
        assert_eq!(
            Settings::parse("collective.uplink=enp2s0").uplink,
            Uplink::Nic("enp2s0".into())
        );
        assert_eq!(Settings::parse("collective.uplink=off").uplink, Uplink::Off);
    }

    #[test]
    fn reads_our_keys_and_the_kernels_consoles() {
        let s = Settings::parse(
            "BOOT_IMAGE=vmlinuz console=tty1 console=ttyS0,115200n8 loglevel=3 collective.repo=http://10.0.2.2:8080/ collective.cache=LABEL=cache collective.log=debug\n",
        );
        assert_eq!(s.repo.as_deref(), Some("http://10.0.2.2:8080"));
        assert_eq!(s.cache.as_deref(), Some("LABEL=cache"));
        assert_eq!(s.log_level, log::LevelFilter::Debug);
        assert_eq!(s.consoles, vec!["tty1", "ttyS0"]);
        assert!(s.problems.is_empty(), "{:?}", s.problems);
    }

    #[test]
    fn defaults_when_the_command_line_says_nothing() {
        let s = Settings::parse("root=/dev/sda");
        assert_eq!(s.repo, None);
        assert_eq!(s.consoles, vec!["tty1", "ttyS0"]);
        assert_eq!(s.log_level, log::LevelFilter::Info);
    }

    #[test]
    fn typos_and_bad_values_are_reported_not_ignored() {
        let s =
            Settings::parse("collective.rep=http://x collective.log=loud collective.repo=ftp://x");
        assert_eq!(s.problems.len(), 3, "{:?}", s.problems);
        assert_eq!(s.repo, None);
    }

    #[test]
    fn offline_days_and_users_are_whole_numbers() {
        let s = Settings::parse("collective.offline-days=30 collective.offline-users=1");
        assert_eq!((s.offline_days, s.offline_users), (Some(30), Some(1)));
        assert_eq!(
            Settings::parse("collective.offline-days=0").offline_days,
            Some(0)
        );
        let s = Settings::parse("collective.offline-days=two collective.offline-users=-1");
        assert_eq!((s.offline_days, s.offline_users), (None, None));
        assert_eq!(s.problems.len(), 2, "{:?}", s.problems);
        assert!(
            s.problems[0].contains("not a whole number"),
            "{:?}",
            s.problems
        );
        assert_eq!(
            Settings::default().offline_days,
            None,
            "the session's default"
        );
    }

    #[test]
    fn quotes_keep_spaces_together() {
        let s = Settings::parse("collective.cache=\"LABEL=my cache\" console=/dev/ttyS1");
        assert_eq!(s.cache.as_deref(), Some("LABEL=my cache"));
        assert_eq!(s.consoles, vec!["ttyS1"]);
    }

    #[test]
    fn autorun_names_its_argv_file() {
        let s = Settings::parse("collective.autorun=/appliance/run quiet");
        assert_eq!(s.autorun.as_deref(), Some("/appliance/run"));
    }

    #[test]
    fn extra_modules_are_normalised() {
        let s = Settings::parse("collective.modules=virtio-net,,e1000");
        assert_eq!(s.extra_modules, vec!["virtio_net", "e1000"]);
    }
}
