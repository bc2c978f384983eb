//! `collective-repo serve` as a child process, so its memory and CPU time are its own
//! (`/proc/PID/...`) and the client threads of a test or benchmark do not share its
//! runtime.

use std::io::Read;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

use super::Fixture;

pub struct ServerProcess {
    pub child: Child,
    pub addr: SocketAddr,
    /// `http` or `https`, as the server's first line said.
    pub scheme: String,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ServerProcess {
    /// Serves `f`'s repository on a free loopback port, access log in `f.path("access.log")`,
    /// with `extra` arguments (e.g. `--tls-cert`, `--threads`).
    pub fn start(f: &Fixture, extra: &[&str]) -> ServerProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_collective-repo"))
            .arg("serve")
            .arg(&f.dir)
            .args(["--listen", "127.0.0.1:0", "--insecure-fast-kdf"])
            .args(extra)
            .arg("--access-log")
            .arg(f.path("access.log"))
            .env("RUST_LOG", "error")
            .stdout(Stdio::piped())
            .spawn()
            .expect("start collective-repo serve");
        let mut stdout = child.stdout.take().expect("the server's stdout");
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while stdout.read(&mut byte).expect("read the server's stdout") == 1 && byte[0] != b'\n' {
            line.push(byte[0]);
        }
        let line = String::from_utf8(line).expect("the server's first line is UTF-8");
        let (scheme, addr) = line
            .strip_prefix("listening on ")
            .and_then(|url| url.split_once("://"))
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
        ServerProcess {
            scheme: scheme.to_owned(),
            addr: addr.parse().expect("the server's address"),
            child,
        }
    }

    pub fn base(&self) -> String {
        format!("{}://{}/", self.scheme, self.addr)
    }

    /// Resident memory in KiB.
    pub fn rss_kb(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/PID/status")
    }

    /// CPU time (user + system) the server has used so far, in seconds.
    pub fn cpu_secs(&self) -> f64 {
        cpu_secs(self.child.id())
    }
}

/// CPU time (user + system, all threads) process `pid` has used so far, in seconds; 0 if
/// it cannot be read.
pub fn cpu_secs(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces, so split after its ')'):
    // state is field 3; utime and stime are fields 14 and 15, in clock ticks.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        f.get(i - 3)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    (ticks(14) + ticks(15)) as f64 / hz
}
